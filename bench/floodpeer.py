"""A flood of handshaken fake terminals: cheap RFB clients that never decode.

Each peer connects from its own source address (127.0.0.0/8 has plenty),
speaks RFB 3.8 with security type None, sends ClientInit, asks for Raw and
for one pixel of the screen (a full, non-incremental request), reads that
20-byte update, and then sits idle, as a flood of abandoned terminals
would.  A refused peer records the server's reason, and every peer when
it was begun and when it first reached each stage.  Used by the flood test
and, through bench/floodproc.py, by ``python -m bench flood`` and ``soak``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IReactorTCP

ONE_PIXEL_UPDATE = 4 + 12 + 4  # header, one Raw rectangle header, one 32-bit pixel


@dataclass
class PeerState:
    source: str
    stage: str = "connecting"  # connecting, handshake, admitted, updated, refused, closed
    reason: str = ""
    started: float = 0.0  # perf_counter when the connection was begun
    reached: dict[str, float] = field(default_factory=dict)  # stage -> perf_counter, first time


class FloodPeer(protocol.Protocol):
    def __init__(self, state: PeerState, changed: Callable[[], None]) -> None:
        self.state = state
        self._changed = changed
        self._buffer = b""
        self._need: tuple[int, Callable[[bytes], None]] = (12, self._version)

    def connectionMade(self) -> None:
        self._set("handshake")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self._need[0] and self._need[0] > 0:
            size, step = self._need
            chunk, self._buffer = self._buffer[:size], self._buffer[size:]
            step(chunk)
        if self._need[0] == 0:
            self._buffer = b""  # idle: whatever comes is dropped

    def connectionLost(self, reason: object = None) -> None:
        if self.state.stage not in ("refused",):
            self._set("closed")

    def _version(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"RFB 003.008\n")
        self._need = (1, self._types)

    def _types(self, data: bytes) -> None:
        count = data[0]
        if count == 0:
            self._need = (4, self._reason_length)
            return
        self._need = (count, self._choose)

    def _choose(self, offered: bytes) -> None:
        assert self.transport is not None
        if 1 not in offered:
            self.state.reason = f"no security type None: {list(offered)}"
            self.transport.loseConnection()
            return
        self.transport.write(b"\x01")
        self._need = (4, self._result)

    def _result(self, data: bytes) -> None:
        assert self.transport is not None
        if data != bytes(4):
            self._need = (4, self._reason_length)
            return
        self.transport.write(b"\x01")  # ClientInit, shared
        self._need = (24, self._server_init)

    def _server_init(self, data: bytes) -> None:
        (name_length,) = struct.unpack(">I", data[20:24])
        self._need = (name_length, self._name)

    def _name(self, data: bytes) -> None:
        assert self.transport is not None
        self._set("admitted")
        set_encodings = struct.pack(">BxHi", 2, 1, 0)  # Raw only
        request = struct.pack(">BBHHHH", 3, 0, 0, 0, 1, 1)  # one pixel, in full
        self.transport.write(set_encodings + request)
        self._need = (ONE_PIXEL_UPDATE, self._updated)

    def _updated(self, data: bytes) -> None:
        self._set("updated")
        self._need = (0, self._updated)

    def _reason_length(self, data: bytes) -> None:
        (length,) = struct.unpack(">I", data)
        self._need = (min(length, 4096), self._reason)

    def _reason(self, data: bytes) -> None:
        assert self.transport is not None
        self.state.reason = data.decode("utf-8", "replace")
        self._set("refused")
        self.transport.loseConnection()

    def _set(self, stage: str) -> None:
        self.state.stage = stage
        self.state.reached.setdefault(stage, time.perf_counter())
        self._changed()


@dataclass
class Flood:
    """Peers and how far each got."""

    peers: list[PeerState]
    protocols: list[FloodPeer]

    def count(self, *stages: str) -> int:
        return sum(p.stage in stages for p in self.peers)

    def settled(self) -> bool:
        """Every peer updated, refused or closed (none still on its way)."""
        return self.count("connecting", "handshake", "admitted") == 0

    def close(self) -> None:
        for proto in self.protocols:
            if proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]


def sources(count: int, prefix: str = "127.3") -> list[str]:
    """``count`` distinct loopback source addresses under ``prefix`` (a /16)."""
    return [f"{prefix}.{n // 250}.{n % 250 + 1}" for n in range(count)]


def connect_peer(
    reactor: IReactorTCP, port: int, state: PeerState, changed: Callable[[], None]
) -> tuple[FloodPeer, defer.Deferred[FloodPeer]]:
    """Begin one peer's connection from ``state.source``: the peer and the attempt."""
    endpoint = endpoints.TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, timeout=30, bindAddress=(state.source, 0)
    )
    peer = FloodPeer(state, changed)
    state.started = time.perf_counter()
    return peer, endpoint.connect(protocol.Factory.forProtocol(lambda: peer))


async def flood(
    reactor: IReactorTCP, port: int, addresses: Sequence[str], changed: Callable[[], None]
) -> Flood:
    """Connect one peer from each address (all at once); returns when all connected."""
    peers = [PeerState(a) for a in addresses]
    protocols: list[FloodPeer] = []

    def connect(state: PeerState) -> defer.Deferred[FloodPeer]:
        peer, attempt = connect_peer(reactor, port, state, changed)
        protocols.append(peer)
        return attempt

    attempts = [connect(p) for p in peers]
    for state, result in zip(
        peers, await defer.DeferredList(attempts, consumeErrors=True), strict=True
    ):
        ok, value = result
        if not ok:
            state.stage, state.reason = "closed", str(getattr(value, "value", value))
    return Flood(peers, protocols)
