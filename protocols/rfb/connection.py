"""What both connection roles share: the handshake, then a message stream.

Bytes go to the handshake until it reports HandshakeDone; from then on a
StreamDriver runs the role's reader over them.  Output never spans a
StartTLS: the handshake's bytes go out alone, so the caller can start TLS
between two calls of ``data_to_send``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Generic, TypeVar

from .handshake import ClientHandshake, HandshakeDone, ServerHandshake
from .limits import Limits
from .stream import StreamDriver

# The role's own handshake, so a role can reach what only its side has.
HandshakeT = TypeVar("HandshakeT", bound=ClientHandshake | ServerHandshake)


class Connection(Generic[HandshakeT]):
    def __init__(self, handshake: HandshakeT, limits: Limits) -> None:
        self.limits = limits
        self._handshake = handshake
        self._handshake_output = True  # the handshake may still queue bytes
        self._out = bytearray()
        self._events: list[Any] = []
        self._driver: StreamDriver | None = None
        self.handshake_result: HandshakeDone | None = None

    def receive_data(self, data: bytes) -> list[Any]:
        """Feed received bytes; returns the events they complete."""
        if self._driver is None:
            for event in self._handshake.receive_data(data):
                self._events.append(event)
                if isinstance(event, HandshakeDone):
                    self._start_messages(event)
        else:
            self._driver.feed(data)
        return self._take_events()

    def _take_events(self) -> list[Any]:
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        """Bytes to write now; never spans a StartTLS (call again after it)."""
        if self._handshake_output:
            handshake = self._handshake.data_to_send()
            if handshake:
                # Handshake output comes first; it may be the last bytes before
                # TLS starts, so nothing else goes with it in this call.
                return handshake
            # A finished handshake queues nothing more: not asked again.
            self._handshake_output = self._driver is None
        out = bytes(self._out)
        self._out.clear()
        return out

    def _start_messages(self, done: HandshakeDone) -> None:
        self.handshake_result = done
        self._handshake_done()
        self._driver = StreamDriver(self._reader, self._max_need())
        if self._handshake.leftover:
            self._driver.feed(self._handshake.leftover)

    def _handshake_done(self) -> None:
        """The role's first step once the handshake succeeded."""

    def _reader(self) -> Generator[int, bytes, None]:
        raise NotImplementedError

    def _max_need(self) -> int:
        raise NotImplementedError
