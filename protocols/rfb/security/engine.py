"""Runs a handshake written as a generator over a byte stream, sans I/O.

A *flow* is a generator that yields how many bytes it needs next and
receives exactly that many, or yields :data:`PAUSE` to wait for the caller
(an authentication decision) and receives ``b""`` when resumed.  While it
runs it queues output, events and TLS barriers on the engine.

Output is kept in segments split at TLS barriers: :meth:`Engine.take_output`
returns one segment per call, so bytes meant for the clear channel (the
VeNCrypt ack) never leave together with bytes meant for inside TLS.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

from ..errors import ProtocolError


class Pause:
    """Yielded by a flow to wait for the caller rather than for bytes."""

    def __repr__(self) -> str:
        return "PAUSE"


PAUSE: Final = Pause()

Flow = Generator[int | Pause, bytes, None]

MAX_PENDING = 64 * 1024  # bytes a peer may send while the flow waits for the caller


def read(count: int) -> Generator[int | Pause, bytes, bytes]:
    """Sub-flow: ``data = yield from read(n)``."""
    if count <= 0:
        return b""
    return (yield count)


class Engine:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._segments: list[bytearray] = [bytearray()]
        self._events: list[object] = []
        self._flow: Flow | None = None
        self._need: int | Pause = 0
        self._finished = False
        self._error: ProtocolError | None = None

    # -- state ------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """The flow completed without failing."""
        return self._finished

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def paused(self) -> bool:
        return self._need is PAUSE and not self._finished and self._error is None

    @property
    def leftover(self) -> bytes:
        """Bytes received after the flow finished."""
        return bytes(self._buffer) if self._finished else b""

    # -- driving ----------------------------------------------------------
    def start(self, flow: Flow) -> None:
        self._flow = flow
        self._advance(None)

    def feed(self, data: bytes) -> list[object]:
        """Add received bytes, run the flow as far as they go, return events."""
        if self._error is not None:
            raise self._error
        if self.paused and len(self._buffer) + len(data) > MAX_PENDING:
            self._fail_now(ProtocolError("peer sent too much data during authentication"))
        self._buffer += data
        self._pump()
        return self.take_events()

    def resume(self) -> None:
        """Continue a paused flow (the caller's decision is stored by the role)."""
        if not self.paused:
            raise RuntimeError("the handshake is not waiting for a decision")
        self._advance(b"")
        self._pump()

    def take_events(self) -> list[object]:
        events, self._events = self._events, []
        return events

    def _pump(self) -> None:
        while not self._finished and isinstance(self._need, int):
            need = self._need
            if len(self._buffer) < need:
                return
            chunk = bytes(self._buffer[:need])
            del self._buffer[:need]
            self._advance(chunk)

    def _advance(self, value: bytes | None) -> None:
        if self._flow is None:
            raise RuntimeError("the flow was not started")
        try:
            self._need = next(self._flow) if value is None else self._flow.send(value)
        except StopIteration:
            self._finished = self._error is None
        except ProtocolError as error:
            self._error = error
            raise

    def _fail_now(self, error: ProtocolError) -> None:
        self._error = error
        if self._flow is not None:
            self._flow.close()
        raise error

    # -- used by flows ----------------------------------------------------
    def write(self, data: bytes) -> None:
        self._segments[-1] += data

    def emit(self, event: object) -> None:
        self._events.append(event)

    def tls_barrier(self) -> None:
        """Start a new output segment: what follows must go inside TLS.

        Bytes already received but not consumed arrived before TLS could
        have started, so they are not trusted as TLS plaintext.
        """
        if self._buffer:
            raise ProtocolError("peer sent data before TLS started")
        self._segments.append(bytearray())

    def fail(self, error: ProtocolError) -> None:
        """Mark the handshake failed; later feeds raise ``error``."""
        self._error = error

    # -- output -----------------------------------------------------------
    def take_output(self) -> bytes:
        """Queued bytes up to the next TLS barrier (which is then passed)."""
        if len(self._segments) == 1 and not self._segments[0]:
            return b""  # nothing queued: the usual case once the handshake is over
        first = self._segments.pop(0)
        if not self._segments:
            self._segments.append(bytearray())
        return bytes(first)
