"""Free loopback ports and X displays found at run time, and an RFB readiness probe."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
RFB_BANNER_SIZE = 12  # "RFB 003.008\n"


def free_tcp_port(host: str = LOOPBACK) -> int:
    """A TCP port on host that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def display_free(number: int) -> bool:
    """No X server holds display :number (lock file, socket, or its TCP ports)."""
    taken = Path(f"/tmp/.X{number}-lock").exists() or Path(f"/tmp/.X11-unix/X{number}").exists()
    return not taken and _port_free(6000 + number) and _port_free(5900 + number)


def free_display(first: int = 100, count: int = 800) -> int:
    """A free X display number, searched from a random start so parallel runs differ.

    Servers started by these helpers use -displayfd instead (no race at all); this is
    for programs that must be told a display number up front.
    """
    start = random.randrange(count)
    for step in range(count):
        number = first + (start + step) % count
        if display_free(number):
            return number
    raise RuntimeError(f"no free X display between :{first} and :{first + count - 1}")


def rfb_banner(host: str, port: int, timeout: float = 2.0) -> bytes | None:
    """The 12-byte RFB ProtocolVersion a VNC server sends on connect, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            while len(data) < RFB_BANNER_SIZE:
                chunk = sock.recv(RFB_BANNER_SIZE - len(data))
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    return data if data.startswith(b"RFB ") else None


def tcp_listening(port: int) -> bool:
    """Whether some socket on this machine listens on TCP ``port`` (read from /proc)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False
