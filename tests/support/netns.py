"""Network namespaces, and a private Ethernet LAN made of them.

``NetNamespace`` creates a namespace whose only interface is loopback (up,
with the MULTICAST flag set), runs commands in it, and can move the calling
thread into it for a while (``entered``): sockets made meanwhile belong to
the namespace.  Create no threads while inside, they would stay there.

``Lan`` is a private Ethernet segment: a bridge in one namespace (a
server's) and other namespaces (terminals, an attacker) joined to it by veth
pairs, on a subnet of the test's choosing.  Hosts can give up an address and
take another's, announcing it with a gratuitous ARP as any machine on a real
LAN can.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
ETH_P_ARP = 0x0806


class NetNamespace:
    def __init__(self, prefix: str = "ts") -> None:
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.created = False

    def create(self) -> None:
        run_ip(["ip", "netns", "add", self.name])
        self.created = True
        run_ip(["ip", "-n", self.name, "link", "set", "lo", "up", "multicast", "on"])

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


def run_ip(args: list[str]) -> None:
    """Run a short set-up command (``ip ...``); its error output if it fails."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")


def lan_problem() -> str | None:
    """Why a LAN of namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "ip not found"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


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
        run_ip([*ip, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        run_ip([*ip, "addr", "add", f"{self.server_address}/24", "dev", "br0"])
        run_ip([*ip, "link", "set", "br0", "up"])

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
        run_ip([*ip, "link", "add", port, "type", "veth", *peer])
        run_ip([*ip, "link", "set", port, "master", "br0", "up"])
        run_ip(["ip", "-n", netns.name, "link", "set", "eth0", "up"])
        self.add_address(name, host)
        return netns

    def add_address(self, name: str, host: int) -> None:
        """Give host ``name`` the address ``SUBNET.host`` and announce it (the
        ARP caches on the LAN now send that address's packets to this host)."""
        netns = self.hosts[name]
        run_ip(["ip", "-n", netns.name, "addr", "add", f"{self.address(host)}/24", "dev", "eth0"])
        self.announce(name, host)

    def remove_address(self, name: str, host: int) -> None:
        netns = self.hosts[name]
        run_ip(["ip", "-n", netns.name, "addr", "del", f"{self.address(host)}/24", "dev", "eth0"])

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
