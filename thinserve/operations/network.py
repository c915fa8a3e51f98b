"""The LAN interfaces zeroconf can use: up, not loopback, MULTICAST set, with an address."""

from __future__ import annotations

import fcntl
import socket
import struct
from pathlib import Path

SIOCGIFFLAGS = 0x8913
IFF_UP, IFF_LOOPBACK, IFF_MULTICAST = 0x1, 0x8, 0x1000


def flags(name: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", name.encode()[:15], 0)
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    return int(struct.unpack("16sH14x", answer)[1])


def multicast_interfaces(only: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Interface name -> its addresses, for the interfaces discovery can use."""
    import ifaddr

    usable: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        name = str(adapter.nice_name)
        if only and name not in only:
            continue
        try:
            bits = flags(name)
        except OSError:
            continue
        wanted = bits & IFF_UP and bits & IFF_MULTICAST and not bits & IFF_LOOPBACK
        addresses = [str(ip.ip if isinstance(ip.ip, str) else ip.ip[0]) for ip in adapter.ips]
        if wanted and addresses:
            usable[name] = addresses
    return usable


def avahi_running(proc: Path = Path("/proc")) -> bool:
    """Whether avahi-daemon runs (it shares UDP port 5353 with thinserve's zeroconf)."""
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "avahi-daemon":
                    return True
            except OSError:
                continue
    return False
