"""A private Avahi: its own D-Bus system bus and avahi-daemon, in a namespace.

``PrivateAvahi`` starts a D-Bus system bus of its own (a socket in a
temporary directory) and an avahi-daemon inside a network namespace, on
``lo`` only; avahi-browse and avahi-publish reach it through ``env``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .netns import NetNamespace
from .procs import Spawned, spawn
from .waiting import wait_until_blocking

AVAHI_PACKAGES = "avahi-daemon avahi-utils dbus iproute2 util-linux"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

AVAHI_CONFIG = """[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces=lo
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
"""

# avahi-daemon keeps a pid file in /run/avahi-daemon; a tmpfs on /run in a
# mount namespace of its own keeps it apart from any system daemon.
AVAHI_SHELL = "mount -t tmpfs thinserve-test /run && exec avahi-daemon {args}"


def avahi_problem() -> str | None:
    """Why the Avahi test cannot run here, or None."""
    for program in (
        "ip",
        "unshare",
        "dbus-daemon",
        "avahi-daemon",
        "avahi-browse",
        "avahi-publish",
    ):
        if shutil.which(program) is None:
            return f"{program} not found"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


class PrivateAvahi:
    def __init__(self, netns: NetNamespace, workdir: Path) -> None:
        self.netns = netns
        self.workdir = workdir
        self.socket = workdir / "system_bus_socket"
        self.env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.socket}"}
        self.log = workdir / "avahi.log"  # both daemons write here
        self.processes: list[Spawned] = []

    def start(self, timeout: float = 15.0) -> None:
        (self.workdir / "bus.conf").write_text(BUS_CONFIG.format(socket=self.socket))
        (self.workdir / "avahi.conf").write_text(AVAHI_CONFIG)
        bus = self._spawn(["dbus-daemon", "--nofork", f"--config-file={self.workdir / 'bus.conf'}"])
        wait_until_blocking(self.socket.exists, timeout, "the private D-Bus socket", bus)
        args = f"--no-drop-root --no-chroot --no-rlimits -f {self.workdir / 'avahi.conf'}"
        shell = ["unshare", "--mount", "sh", "-c", AVAHI_SHELL.format(args=args)]
        daemon = self._spawn(self.netns.command(shell))
        wait_until_blocking(
            lambda: "Server startup complete" in self.log_text(), timeout, "avahi-daemon", daemon
        )

    def _spawn(self, args: list[str]) -> Spawned:
        process = spawn(args, self.log, self.env)
        self.processes.append(process)
        return process

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def avahi_unescape(text: str) -> str:
    """Undo avahi-browse's escaping of service names (``\\032`` is a space)."""
    return re.sub(r"\\(\d{3}|.)", lambda m: _unescape_one(m.group(1)), text)


def _unescape_one(code: str) -> str:
    return chr(int(code)) if code.isdigit() else code


def resolved_services(output: str) -> dict[str, list[str]]:
    """Services resolved in ``avahi-browse -p`` output, by name: [host, address, port, txt].

    Lines are replayed in order, so a service withdrawn (``-``) after being
    resolved (``=``) is not in the result.
    """
    services: dict[str, list[str]] = {}
    for line in output.splitlines():
        fields = line.split(";")
        if len(fields) < 6:
            continue
        name = avahi_unescape(fields[3])
        if fields[0] == "=" and len(fields) >= 10:
            services[name] = fields[6:10]
        elif fields[0] == "-":
            services.pop(name, None)
    return services
