"""What the kernel knows about a TCP connection (Linux ``TCP_INFO``).

The kernel counts, for each connection, the bytes the peer acknowledged and
how long the connection was busy sending, split by what held it back: the
network (the congestion window: data waiting in the network), the
receiver's window (a peer that does not read fast enough) or the sender's
own buffer.  That tells a slow link from a slow terminal, which timing
requests and answers cannot: both make answers late.

``struct tcp_info`` grew over the years; the fields read here sit at fixed
offsets since Linux 2.6 (the first 104 bytes) and 4.1 to 4.19 (the rest).
A shorter struct from an older kernel leaves the newer fields ``None``.
Only Linux has ``TCP_INFO`` in this form: elsewhere, and for sockets that
are not TCP (a Unix socket), ``read`` answers ``None``.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

TCP_INFO = 11  # the socket option's number on Linux (include/uapi/linux/tcp.h)
ASKED_BYTES = 256  # asked of the kernel: enough for every field read here
BASE_BYTES = 104  # struct tcp_info of Linux 2.6 (up to tcpi_total_retrans)
MAX_HOPS = 8  # transports wrapped in transports (WebSocket over TLS over TCP) followed
TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

# (offset, struct format) of the fields read, little- or big-endian as the host.
_U32, _U64 = "=I", "=Q"
_FIELDS = {
    "state": (0, "=B"),
    "flags": (7, "=B"),  # bit 0: tcpi_delivery_rate_app_limited
    "snd_mss": (16, _U32),
    "unacked": (24, _U32),  # segments sent and not yet acknowledged
    "sacked": (28, _U32),  # of them, selectively acknowledged (SACK)
    "rtt": (68, _U32),  # smoothed, microseconds
    "snd_cwnd": (80, _U32),  # segments
    "bytes_acked": (120, _U64),  # Linux 4.1
    "notsent": (144, _U32),  # Linux 4.6: bytes written, not yet sent
    "min_rtt": (148, _U32),  # Linux 4.6, microseconds
    "delivery_rate": (160, _U64),  # Linux 4.9, bytes per second
    "busy": (168, _U64),  # Linux 4.10, microseconds with data to send or in flight ...
    "rwnd_limited": (176, _U64),  # ... of them limited by the receiver's window
    "sndbuf_limited": (184, _U64),  # ... or by the sender's buffer
    "bytes_sent": (200, _U64),  # Linux 4.19
}


class TcpInfoError(ValueError):
    """A TCP_INFO answer too short to be one."""


@dataclass(frozen=True)
class TcpInfo:
    """The fields of one TCP_INFO answer that measure a link; times in seconds.

    Counters (``bytes_acked``, ``busy`` and the limited times) only grow
    over a connection's life: the difference of two answers is what
    happened between them.  ``None``: the kernel is too old to say.
    """

    state: int
    snd_mss: int
    unacked: int
    sacked: int
    rtt: float
    snd_cwnd: int
    app_limited: bool  # the last delivery-rate sample had nothing more to send
    bytes_acked: int | None = None
    notsent: int | None = None
    min_rtt: float | None = None
    delivery_rate: float | None = None  # bytes per second
    busy: float | None = None
    rwnd_limited: float | None = None
    sndbuf_limited: float | None = None
    bytes_sent: int | None = None

    @property
    def delivered(self) -> int | None:
        """Bytes the peer acknowledged: cumulatively, or selectively (SACK, as
        whole segments) while an earlier one is being sent again."""
        if self.bytes_acked is None:
            return None
        return self.bytes_acked + self.sacked * self.snd_mss

    @property
    def times_limits(self) -> bool:
        """Whether it says what held the sending back (Linux 4.10 and later)."""
        return (
            self.bytes_acked is not None
            and self.busy is not None
            and self.rwnd_limited is not None
            and self.sndbuf_limited is not None
        )


def parse(raw: bytes) -> TcpInfo:
    """The fields of a ``struct tcp_info`` the kernel returned (``raw``)."""
    if len(raw) < BASE_BYTES:
        raise TcpInfoError(
            f"TCP_INFO answer of {len(raw)} bytes, under the {BASE_BYTES} of any Linux "
            "since 2.6: not a Linux tcp_info; the link is timed by the terminal's answers instead"
        )
    raw = raw[:ASKED_BYTES]
    found = {name: _field(raw, offset, fmt) for name, (offset, fmt) in _FIELDS.items()}
    return TcpInfo(
        state=_int(found["state"]),
        snd_mss=_int(found["snd_mss"]),
        unacked=_int(found["unacked"]),
        sacked=_int(found["sacked"]),
        rtt=_int(found["rtt"]) / 1e6,
        snd_cwnd=_int(found["snd_cwnd"]),
        app_limited=bool(_int(found["flags"]) & 1),
        bytes_acked=found["bytes_acked"],
        notsent=found["notsent"],
        min_rtt=_seconds(found["min_rtt"]),
        delivery_rate=None if found["delivery_rate"] is None else float(found["delivery_rate"]),
        busy=_seconds(found["busy"]),
        rwnd_limited=_seconds(found["rwnd_limited"]),
        sndbuf_limited=_seconds(found["sndbuf_limited"]),
        bytes_sent=found["bytes_sent"],
    )


def _field(raw: bytes, offset: int, fmt: str) -> int | None:
    if offset + struct.calcsize(fmt) > len(raw):
        return None  # an older kernel's shorter struct
    return int(struct.unpack_from(fmt, raw, offset)[0])


def _int(value: int | None) -> int:
    assert value is not None  # inside the base struct, which parse checked
    return value


def _seconds(microseconds: int | None) -> float | None:
    return None if microseconds is None else microseconds / 1e6


def read(sock: socket.socket) -> TcpInfo | None:
    """TCP_INFO of ``sock`` now; None off Linux, for a socket that is not
    TCP, once it is closed, or if the kernel's answer cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if sock.family not in TCP_FAMILIES or sock.type != socket.SOCK_STREAM:
            return None
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, ASKED_BYTES)
        return parse(raw)
    except (OSError, TcpInfoError):
        return None


def socket_of(transport: object) -> socket.socket | None:
    """The socket under a Twisted transport, or None.

    A TCP transport's ``getHandle()`` is its socket; once it started TLS
    (VeNCrypt) its handle is the OpenSSL connection and the socket stays
    its ``socket``.  TLS wrapped as a protocol (``TLSMemoryBIOProtocol``)
    and a browser terminal's WebSocket carry the transport they run on as
    ``transport``: followed down to the socket.
    """
    for _ in range(MAX_HOPS):
        if transport is None:
            return None
        handle = _handle(transport)
        if isinstance(handle, socket.socket):
            return handle
        own = getattr(transport, "socket", None)
        if isinstance(own, socket.socket):
            return own
        transport = getattr(transport, "transport", None)
    return None


def _handle(transport: object) -> object:
    get_handle = getattr(transport, "getHandle", None)
    if not callable(get_handle):
        return None
    try:
        return get_handle()
    except (AttributeError, OSError):  # no connection behind it (any more)
        return None


def info_of(transport: object) -> TcpInfo | None:
    """TCP_INFO of the socket under ``transport`` now, or None (see ``read``)."""
    sock = socket_of(transport)
    return None if sock is None else read(sock)
