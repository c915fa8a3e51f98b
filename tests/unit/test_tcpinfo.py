"""TCP_INFO, parsed by offset: synthetic structs of several kernels' sizes, and a real socket."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.support.waiting import wait_until_blocking
from thinserve.relay.tcpinfo import (
    ASKED_BYTES,
    BASE_BYTES,
    TcpInfo,
    TcpInfoError,
    info_of,
    parse,
    read,
    socket_of,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's")


def struct_of(size: int) -> bytes:
    """A tcp_info of ``size`` bytes (as a kernel of that age returns), known values in it."""
    raw = bytearray(max(size, 232))
    raw[0] = 1  # TCP_ESTABLISHED
    raw[7] = 0b1  # delivery rate app-limited
    struct.pack_into("=I", raw, 16, 1448)  # snd_mss
    struct.pack_into("=II", raw, 24, 12, 3)  # unacked, sacked
    struct.pack_into("=I", raw, 68, 2_500)  # rtt, microseconds
    struct.pack_into("=I", raw, 80, 40)  # snd_cwnd
    struct.pack_into("=Q", raw, 120, 9_000_000_000)  # bytes_acked, past 32 bits
    struct.pack_into("=II", raw, 144, 4096, 150)  # notsent, min_rtt
    struct.pack_into("=QQQQ", raw, 160, 250_000, 1_500_000, 400_000, 100_000)
    struct.pack_into("=Q", raw, 200, 9_100_000_000)  # bytes_sent
    return bytes(raw[:size])


def test_every_field_at_its_offset() -> None:
    info = parse(struct_of(232))  # Linux 5.x
    assert info == TcpInfo(
        snd_mss=1448,
        sacked=3,
        bytes_acked=9_000_000_000,
        busy=1.5,
        rwnd_limited=0.4,
        sndbuf_limited=0.1,
    )
    assert info.times_limits
    assert info.delivered == 9_000_000_000 + 3 * 1448


@pytest.mark.parametrize(
    ("size", "newest"),
    [
        (BASE_BYTES, None),  # Linux 2.6: no byte counters
        (136, "bytes_acked"),  # 4.1
        (168, "bytes_acked"),  # 4.9: nothing read is newer
        (192, "sndbuf_limited"),  # 4.10
        (208, "sndbuf_limited"),  # 4.19
    ],
)
def test_an_older_kernels_shorter_struct_leaves_the_newer_fields_unknown(
    size: int, newest: str | None
) -> None:
    info = parse(struct_of(size))
    assert info.snd_mss == 1448 and info.sacked == 3  # the base is always there
    order = ["bytes_acked", "busy", "rwnd_limited", "sndbuf_limited"]
    known = order if newest == "sndbuf_limited" else order[:1] if newest else []
    for name in order:
        assert (getattr(info, name) is not None) == (name in known), name
    assert info.times_limits == ("sndbuf_limited" in known)


def test_a_longer_struct_from_a_newer_kernel_is_read_up_to_what_is_known() -> None:
    longer = struct_of(232) + b"\xff" * 1000
    assert parse(longer) == parse(struct_of(232))


def test_an_answer_shorter_than_any_kernels_is_refused_clearly() -> None:
    with pytest.raises(TcpInfoError, match=r"TCP_INFO answer of 50 bytes.*timed by the terminal"):
        parse(bytes(50))


def info_when(sock: socket.socket, check: Callable[[TcpInfo], bool]) -> TcpInfo | None:
    """TCP_INFO of ``sock`` if ``check`` holds for it, else None."""
    info = read(sock)
    return info if info is not None and check(info) else None


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair on loopback whose receiver keeps a small buffer."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        receiver = socket.socket()
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.connect(server.getsockname())
        sender, _ = server.accept()
    with sender, receiver:
        yield sender, receiver


@linux_only
def test_bytes_acknowledged_grow_as_the_peer_reads(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = tcp_pair
    sender.setblocking(False)
    written = 0
    with pytest.raises(BlockingIOError):
        while True:  # until the receiver's window and the send buffer are full
            written += sender.send(b"\x5a" * 65536)
    # The window stays closed while the peer does not read: the kernel counts it.
    before = wait_until_blocking(
        lambda: info_when(sender, lambda info: bool(info.rwnd_limited)),
        10,
        "the sender to be held back by the receiver's window",
    )
    assert before.times_limits and before.bytes_acked is not None
    assert before.bytes_acked < written  # what the peer has not read cannot all be acknowledged
    assert before.snd_mss > 0  # established: a segment size agreed
    received = 0
    receiver.settimeout(10)
    while received < written:
        received += len(receiver.recv(1 << 20))
    after = wait_until_blocking(
        lambda: info_when(sender, lambda info: info.bytes_acked == written),
        10,
        "every byte written to be acknowledged",
    )
    assert after.busy is not None and before.busy is not None and after.busy >= before.busy


@linux_only
def test_only_tcp_sockets_answer() -> None:
    unix, other = socket.socketpair()
    with unix, other:
        assert read(unix) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert read(udp) is None
    closed = socket.socket()
    closed.close()
    assert read(closed) is None


class Handle:
    """A transport whose handle is ``handle`` and that runs on ``transport``."""

    def __init__(self, handle: object, transport: object = None) -> None:
        self.handle = handle
        self.transport = transport
        self.socket: socket.socket | None = None

    def getHandle(self) -> object:
        return self.handle


class Wrapper:
    """A transport that only wraps another one (a WebSocket's)."""

    def __init__(self, transport: object) -> None:
        self.transport = transport


@linux_only
def test_the_socket_is_found_under_tls_and_websocket_wrappers(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, _ = tcp_pair
    tcp = Handle(sender)
    assert socket_of(tcp) is sender
    started_tls = Handle(object())  # a TCP transport after startTLS: getHandle is OpenSSL's
    started_tls.socket = sender
    assert socket_of(started_tls) is sender
    tls = Handle(object(), transport=tcp)  # TLSMemoryBIOProtocol: an OpenSSL connection
    websocket = Wrapper(tls)
    assert socket_of(websocket) is sender
    info = info_of(websocket)
    assert info is not None and info.snd_mss > 0
    assert socket_of(None) is None
    assert socket_of(Wrapper(Wrapper(None))) is None
    looped = Wrapper(None)
    looped.transport = looped  # bounded however the wrappers go
    assert socket_of(looped) is None
    assert info_of(object()) is None


def test_the_kernel_is_asked_for_enough() -> None:
    assert ASKED_BYTES >= 192  # up to tcpi_sndbuf_limited
