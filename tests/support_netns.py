"""Test helpers: network namespaces, a private Avahi daemon, child processes.

``NetNamespace`` creates a namespace whose only interface is loopback (up,
with the MULTICAST flag set), runs commands in it, and can move the calling
thread into it for a while (``entered``): sockets made meanwhile belong to
the namespace.  Create no threads while inside, they would stay there.

``PrivateAvahi`` starts a D-Bus system bus of its own (a socket in a
temporary directory) and an avahi-daemon inside a namespace, on ``lo``
only; avahi-browse and avahi-publish reach it through ``env``.

``Lan`` is a private Ethernet segment: a bridge in one namespace (a
server's) and other namespaces (terminals, an attacker) joined to it by veth
pairs, on a subnet of the test's choosing.  Hosts can give up an address and
take another's, announcing it with a gratuitous ARP as any machine on a real
LAN can.

``ZeroconfPublisher`` publishes DNS-SD adverts with python-zeroconf from a
child process, in a namespace if given one, on one interface address.

``missing`` fails in CI (``CI=true``) and skips elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
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


# -- a private LAN ---------------------------------------------------------------------------------
def lan_problem() -> str | None:
    """Why a LAN of namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "ip not found"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


ETH_P_ARP = 0x0806


class Lan:
    """A bridge ``br0`` with ``SUBNET.SERVER_HOST/24`` in the namespace ``self.server``,
    and hosts (namespaces of their own) whose ``eth0`` is a veth pair's end,
    the other end a port of the bridge.

    Nothing here touches the calling namespace's interfaces: every address
    lives inside the namespaces, which ``delete`` removes with their links.
    """

    def __init__(self, subnet: str, prefix: str = "tslan", server_host: int = 1) -> None:
        if len(subnet.split(".")) != 3:
            raise ValueError(f"{subnet!r}: give the first three octets of a /24")
        self.subnet = subnet
        self.prefix = prefix
        self.server_host = server_host
        self.server = NetNamespace(prefix)
        self.hosts: dict[str, NetNamespace] = {}

    def address(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    @property
    def server_address(self) -> str:
        return self.address(self.server_host)

    def create(self) -> None:
        self.server.create()
        ip = ["ip", "-n", self.server.name]
        _run([*ip, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        _run([*ip, "addr", "add", f"{self.server_address}/24", "dev", "br0"])
        _run([*ip, "link", "set", "br0", "up"])

    def add_host(self, name: str, host: int) -> NetNamespace:
        """A namespace on the LAN with address ``SUBNET.host``."""
        if name in self.hosts or not re.fullmatch(r"[a-z][a-z0-9]{0,8}", name):
            raise ValueError(f"host name {name!r}: new, 1-9 lower-case letters and digits")
        netns = NetNamespace(f"{self.prefix}-{name}")
        netns.create()
        self.hosts[name] = netns
        port = f"lan-{name}"
        ip = ["ip", "-n", self.server.name]
        peer = ["peer", "name", "eth0", "netns", netns.name]
        _run([*ip, "link", "add", port, "type", "veth", *peer])
        _run([*ip, "link", "set", port, "master", "br0", "up"])
        _run(["ip", "-n", netns.name, "link", "set", "eth0", "up"])
        self.add_address(name, host)
        return netns

    def add_address(self, name: str, host: int) -> None:
        """Give host ``name`` the address ``SUBNET.host`` and announce it (the
        ARP caches on the LAN now send that address's packets to this host)."""
        netns = self.hosts[name]
        _run(["ip", "-n", netns.name, "addr", "add", f"{self.address(host)}/24", "dev", "eth0"])
        self.announce(name, host)

    def remove_address(self, name: str, host: int) -> None:
        netns = self.hosts[name]
        _run(["ip", "-n", netns.name, "addr", "del", f"{self.address(host)}/24", "dev", "eth0"])

    def announce(self, name: str, host: int) -> None:
        """A gratuitous ARP from host ``name`` for ``SUBNET.host``: every
        neighbour that knew the address updates its entry to this host's MAC."""
        address = socket.inet_aton(self.address(host))
        with self.hosts[name].entered():
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        with sock:
            sock.bind(("eth0", ETH_P_ARP))
            mac = sock.getsockname()[4]
            arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, a request
            frame = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
            sock.send(frame + arp + mac + address + b"\x00" * 6 + address)

    def delete(self) -> None:
        for netns in self.hosts.values():
            netns.delete()
        self.hosts.clear()
        self.server.delete()


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


# -- adverts from another process -----------------------------------------------------------------
ZEROCONF_PUBLISHER = r"""
import asyncio, json, sys
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

TYPE, INTERFACE = sys.argv[1], sys.argv[2]

def info_for(cmd):
    return ServiceInfo(
        TYPE, cmd["name"] + "." + TYPE, port=cmd["port"], properties=cmd["properties"],
        parsed_addresses=cmd["addresses"], server=cmd["host"] + ".local.",
    )

async def main():
    zc = AsyncZeroconf(interfaces=[INTERFACE], ip_version=IPVersion.V4Only)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        if cmd["op"] == "register":
            await (await zc.async_register_service(info_for(cmd)))
        elif cmd["op"] == "unregister":
            await (await zc.async_unregister_service(info_for(cmd)))
        print("done", cmd["seq"], flush=True)
    await zc.async_close()

asyncio.run(main())
"""


class ZeroconfPublisher:
    """Registers and withdraws DNS-SD services from a child process that
    runs python-zeroconf on ``interface`` (an IPv4 address), inside
    ``netns`` when given."""

    def __init__(
        self, service_type: str, interface: str, netns: NetNamespace | None = None
    ) -> None:
        args = [sys.executable, "-c", ZEROCONF_PUBLISHER, service_type, interface]
        self.child = Child.spawn(netns.command(args) if netns is not None else args)
        self.seq = 0

    async def ready(self, timeout: float = 15.0) -> None:
        await self.child.wait_for(r"ready\n", timeout)

    async def send(
        self, op: str, name: str, port: int, address: str, host: str, **properties: str
    ) -> None:
        """``op`` "register" or "unregister" the service ``name`` at
        ``address``:``port`` (host name ``host``.local) with TXT ``properties``;
        returns once announced."""
        self.seq += 1
        command = {"op": op, "seq": self.seq, "name": name, "port": port, "host": host}
        command.update(addresses=[address], properties=properties)
        self.child.write(json.dumps(command))
        await self.child.wait_for(rf"done {self.seq}\n", timeout=15)

    async def stop(self) -> None:
        await self.child.stop()

    def kill(self) -> None:
        """End the child now, where nothing can wait (a fixture's teardown)."""
        if self.child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signal.SIGKILL)


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
