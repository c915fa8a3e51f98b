"""Drives a reader generator over a byte stream that arrives in pieces.

Readers yield how many bytes they need and receive exactly that many (see
encodings/base.py).  :class:`StreamDriver` buffers what has arrived and runs
the reader as far as the data allows, so a connection can be fed bytes in
any chunking and behaves the same.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

from .errors import ProtocolError

Reader = Generator[int, bytes, None]

# Pieces up to this many bytes (message headers, requests, events) are
# sliced out of the buffer: copying a few bytes twice costs less than the
# memoryview that saves the second copy of a large piece (150 ns against 640).
SMALL_PIECE = 4096


class StreamDriver:
    """Feeds a never-ending reader generator from an incoming byte stream."""

    def __init__(self, make_reader: Callable[[], Reader], max_need: int) -> None:
        self._buffer = bytearray()
        self._offset = 0
        self._max_need = max_need
        self._reader = make_reader()
        self._need = self._start()

    def _start(self) -> int:
        return self._checked(next(self._reader))

    def _checked(self, need: int) -> int:
        if not 0 < need <= self._max_need:
            raise ProtocolError(f"message needs {need} bytes, over the limit")
        return need

    def feed(self, data: bytes) -> None:
        """Add bytes and run the reader over everything now complete."""
        self._buffer += data
        while len(self._buffer) - self._offset >= self._need:
            start = self._offset
            self._offset += self._need
            try:
                self._need = self._checked(self._reader.send(self._take(start)))
            except StopIteration:
                raise ProtocolError("stream reader ended") from None
        self._compact()

    def _take(self, start: int) -> bytes:
        """The buffered bytes from ``start`` to the offset, copied once if
        large: a slice of the bytearray would be a second copy (a full screen
        of raw pixels is 8 MB, and each copy is its own pages to fault in)."""
        if self._offset - start <= SMALL_PIECE:
            return bytes(self._buffer[start : self._offset])
        with memoryview(self._buffer) as view:
            return bytes(view[start : self._offset])

    def _compact(self) -> None:
        if self._offset and (self._offset > 65536 or self._offset == len(self._buffer)):
            del self._buffer[: self._offset]
            self._offset = 0

    @property
    def pending(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self._buffer) - self._offset
