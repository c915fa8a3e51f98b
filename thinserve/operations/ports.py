"""Is a configured TCP port free, and if not, which process listens on it?

The holder is found the way ``ss -ltnp`` finds it: the listening socket's
inode in /proc/net/tcp{,6}, then the process with that socket among its
open files.  Without the right to look into another user's /proc/PID/fd the
holder stays unknown, and the message says to ask ``ss`` as root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
MAX_TABLE = 16 * 1024 * 1024  # bytes read from /proc/net/tcp*


@dataclass(frozen=True)
class Port:
    """A TCP endpoint thinserve listens on: ``interface`` "" means every address."""

    port: int
    interface: str = ""
    endpoint: str = ""


def tcp_ports(endpoints: tuple[str, ...]) -> list[Port]:
    """The TCP ports among Twisted server endpoint strings (tcp:5900,
    tcp:port=5900:interface=127.0.0.1, ssl:...); port 0 and unix sockets are left out."""
    ports = []
    for endpoint in endpoints:
        parts = _split(endpoint)
        if parts[0] not in ("tcp", "tcp6", "ssl"):
            continue
        keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        positional = [p for p in parts[1:] if "=" not in p]
        text = keywords.get("port") or (positional[0] if positional else "")
        if text.isdigit() and int(text) > 0:
            ports.append(Port(int(text), keywords.get("interface", ""), endpoint))
    return ports


def _split(endpoint: str) -> list[str]:
    """Split on the colons Twisted splits on (a backslash escapes one)."""
    parts, current, escaped = [], "", False
    for char in endpoint:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def in_use(port: Port) -> bool:
    """Whether binding ``port`` fails because something holds it."""
    family = socket.AF_INET6 if ":" in port.interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((port.interface, port.port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def holders(port: int, proc: Path = Path("/proc")) -> list[int]:
    """The pids with a socket listening on TCP ``port`` open (those this user may see)."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return []
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and _has_socket(entry / "fd", inodes):
            found.append(int(entry.name))
    return sorted(found)


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            with open(proc / "net" / table, encoding="ascii", errors="replace") as f:
                lines = f.read(MAX_TABLE).splitlines()[1:]
            for line in lines:
                fields = line.split()
                listening = len(fields) > 9 and fields[3] == LISTEN
                if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _has_socket(fd_dir: Path, inodes: set[str]) -> bool:
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(fd_dir / name)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


def command_name(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"
