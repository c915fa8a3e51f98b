"""Test helpers: network namespaces, a private Avahi daemon, child processes.

``NetNamespace`` creates a namespace whose only interface is loopback (up,
with the MULTICAST flag set), runs commands in it, and can move the calling
thread into it for a while (``entered``): sockets made meanwhile belong to
the namespace.  Create no threads while inside, they would stay there.

``PrivateAvahi`` starts a D-Bus system bus of its own (a socket in a
temporary directory) and an avahi-daemon inside a namespace, on ``lo``
only; avahi-browse and avahi-publish reach it through ``env``.

``missing`` fails in CI (``CI=true``) and skips elsewhere.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from twisted.internet import protocol
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

CLONE_NEWNET = 0x40000000
AVAHI_PACKAGES = "avahi-daemon avahi-utils dbus iproute2 util-linux"


def missing(what: str, install: str) -> NoReturn:
    """A required component is absent: fail in CI, skip elsewhere."""
    message = f"{what}; install {install}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


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


# -- network namespaces ---------------------------------------------------------------------
class NetNamespace:
    def __init__(self, prefix: str = "ts") -> None:
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.created = False

    def create(self) -> None:
        _run(["ip", "netns", "add", self.name])
        self.created = True
        _run(["ip", "-n", self.name, "link", "set", "lo", "up", "multicast", "on"])

    def delete(self) -> None:
        if self.created:
            self.created = False
            subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=10)

    def command(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Move this thread into the namespace, and back afterwards."""
        libc = ctypes.CDLL(None, use_errno=True)
        threads = set(threading.enumerate())
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(libc, target)
            try:
                yield
            finally:
                _setns(libc, home)
        finally:
            os.close(target)
            os.close(home)
        stray = [t.name for t in threading.enumerate() if t not in threads]
        if stray:
            raise RuntimeError(f"threads started inside namespace {self.name}: {stray}")


def _setns(libc: ctypes.CDLL, fd: int) -> None:
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")


# -- a private Avahi -------------------------------------------------------------------------------
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


class PrivateAvahi:
    def __init__(self, netns: NetNamespace, workdir: Path) -> None:
        self.netns = netns
        self.workdir = workdir
        self.socket = workdir / "system_bus_socket"
        self.env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.socket}"}
        self.log = workdir / "avahi.log"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 15.0) -> None:
        (self.workdir / "bus.conf").write_text(BUS_CONFIG.format(socket=self.socket))
        (self.workdir / "avahi.conf").write_text(AVAHI_CONFIG)
        self._spawn(["dbus-daemon", "--nofork", f"--config-file={self.workdir / 'bus.conf'}"])
        _wait(self.socket.exists, timeout, "the private D-Bus socket")
        args = f"--no-drop-root --no-chroot --no-rlimits -f {self.workdir / 'avahi.conf'}"
        shell = ["unshare", "--mount", "sh", "-c", AVAHI_SHELL.format(args=args)]
        self._spawn(self.netns.command(shell))
        try:
            _wait(lambda: "Server startup complete" in self.log_text(), timeout, "avahi-daemon")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}; its log:\n{self.log_text()}") from None

    def _spawn(self, args: list[str]) -> None:
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        time.sleep(0.05)
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited at once; log:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.processes.clear()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait(ready: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.05)


# -- avahi-browse output --------------------------------------------------------------------------
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


# -- child processes under the reactor -----------------------------------------------------------
class Child(protocol.ProcessProtocol):
    """A child process whose output lines the test can wait for without blocking the reactor."""

    def __init__(self) -> None:
        self.output = b""
        self.pid: int | None = None
        self.ended = False
        self.code: int | None = None

    @classmethod
    def spawn(cls, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        child = cls()
        process = _reactor.spawnProcess(  # type: ignore[attr-defined]
            child, args[0], list(args), env=env if env is not None else dict(os.environ)
        )
        child.pid = process.pid
        return child

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.pid = None
        self.ended = True
        self.code = getattr(reason.value, "exitCode", None)

    def write(self, line: str) -> None:
        self.transport.write(line.encode() + b"\n")  # type: ignore[union-attr]

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    async def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (match := re.search(pattern, self.text)) is None:
            if self.ended:
                raise RuntimeError(f"child ended without {pattern!r}; output:\n{self.text}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} after {timeout} s; output:\n{self.text}")
            await deferLater(_reactor, 0.05)
        return match

    async def stop(self, timeout: float = 5.0) -> None:
        """End the child by its pid (TERM, then KILL) and wait for it."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.pid is None:
                return
            os.kill(self.pid, sig)
            deadline = time.monotonic() + timeout
            while self.pid is not None and time.monotonic() < deadline:
                await deferLater(_reactor, 0.05)


async def run(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 20.0) -> str:
    """Run a command to its end under the reactor; its output, or an error if it failed."""
    child = Child.spawn(args, env)
    try:
        deadline = time.monotonic() + timeout
        while not child.ended:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{args[0]} still running after {timeout} s")
            await deferLater(_reactor, 0.05)
        if child.code != 0:
            raise RuntimeError(f"{' '.join(args)} exited with {child.code}:\n{child.text}")
        return child.text
    finally:
        await child.stop()
