"""Telling systemd how the service is doing: the sd_notify protocol.

Under a ``Type=notify`` unit systemd passes a datagram socket in
$NOTIFY_SOCKET (a path, or an abstract name written with a leading "@");
each message is one datagram of ``NAME=value`` lines.  thinserve sends
READY=1 once every part of the service runs, RELOADING=1 (with the
monotonic clock, as systemd asks) and READY=1 again around a reload, and
STOPPING=1 when it stops, each with a STATUS= line people see in
``systemctl status``.  Without $NOTIFY_SOCKET every call does nothing, so
the server runs the same by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

SOCKET_ENV = "NOTIFY_SOCKET"
MAX_STATUS = 1024  # characters of STATUS=; systemd shows one line of it


class Notifier:
    """Sends sd_notify messages to one socket; None: to nowhere."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get(SOCKET_ENV) or None)

    def ready(self, status: str) -> None:
        self.send({"READY": "1", "STATUS": status})

    def reloading(self, status: str = "reloading the configuration") -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send({"RELOADING": "1", "MONOTONIC_USEC": str(usec), "STATUS": status})

    def stopping(self, status: str = "stopping") -> None:
        self.send({"STOPPING": "1", "STATUS": status})

    def send(self, fields: Mapping[str, str]) -> bool:
        """Send one message; False (logged once at debug) when it cannot be."""
        if self.address is None:
            return False
        lines = [f"{name}={_one_line(value)}" for name, value in fields.items()]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(("\n".join(lines) + "\n").encode(), _sockaddr(self.address))
        except OSError as exc:
            log.debug("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True


def _sockaddr(address: str) -> str | bytes:
    """An abstract socket ("@name") is named by a leading NUL byte."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def _one_line(value: str) -> str:
    return " ".join(value.split())[:MAX_STATUS]
