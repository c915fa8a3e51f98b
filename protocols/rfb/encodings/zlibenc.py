"""Zlib encoding: Raw pixels compressed through the connection's zlib stream.

Zlib and ZRLE each keep ONE zlib stream per connection and direction for the
whole connection.  Every rectangle's payload is ``u32 length`` followed by a
sync-flushed (``Z_SYNC_FLUSH``) chunk of that stream, so the receiver must
inflate rectangles strictly in order with the same inflater.

:class:`DeflateStream` and :class:`InflateStream` hold the two halves of such
a stream; ZRLE reuses them.

Compression level: Python's ``zlib`` cannot change the level of a live
compressor (there is no ``deflateParams``).  When the level changes after the
stream has started, the sender keeps the *same* stream going for the peer:
it starts a new raw-deflate compressor at the new level, primed with the last
32 KiB of uncompressed input as its dictionary.  Its output continues the
previous byte-aligned sync point as further deflate blocks, and its
back-references only reach data the peer's inflater already holds in its
window.  The peer therefore sees one continuous stream; nothing is reset.

The same holds for deflate blocks compressed away from the stream, on their
own (:func:`deflate_alone`): they refer to nothing before their data, so the
stream can carry them at any sync point (:meth:`DeflateStream.splice`).
ZRLE compresses photo-like and incompressible rectangles that way, once for
every connection and in worker threads; only the first bytes of such a
rectangle forgo references into the previous one, and photos hardly repeat.

These streams use Python's zlib, unlike Tight's (zlib-ng): on photo and
video data, which ZRLE compresses at level 2, zlib-ng's levels 2 to 6 are
2-4% larger than zlib's level 2 at much the same speed, and its level 1
about 40% larger.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Generator, Iterable, Sequence

import numpy as np

from ..constants import Encoding
from ..errors import ProtocolError, require
from ..limits import DEFAULT_LIMITS, Limits
from ..pixelformat import PixelCodec
from .base import DecodeGen, Decoder, Encoder, Rect, pixels_result, read_exact

DEFAULT_LEVEL = 6
# zlib's memory level (internal buffer and hash sizes): 7 rather than zlib's
# default 8 gives smaller output on screen and photo content alike (shorter
# Huffman blocks adapt better), and only the sender chooses it.
MEM_LEVEL = 7
WINDOW_BYTES = 1 << 15  # deflate's largest window, the peer's inflater history
# A zlib stream's header: deflate with a 32 KiB window, no preset dictionary
# (the level bits only describe the sender; 0x7801 is a multiple of 31).
ZLIB_HEADER = b"\x78\x01"
READ_CHUNK = 64 * 1024  # compressed bytes a decoder asks for at a time
_LENGTH = struct.Struct(">I")


def deflate_bound(size: int) -> int:
    """Most compressed bytes a sane sender produces for ``size`` input bytes.

    Stored blocks add 5 bytes per 64 KiB and fixed-Huffman blocks at most one
    bit per byte; the allowance of one eighth plus 1 KiB also covers the
    stream header and the sync-flush marker.
    """
    return size + (size >> 3) + 1024


def deflate_alone(data: bytes, level: int) -> bytes:
    """Raw deflate blocks carrying ``data`` on their own, ending in a sync flush.

    They refer to nothing before ``data``, so any stream can carry them at
    one of its sync points (see :meth:`DeflateStream.splice`), and they
    depend on nothing but ``data``: work for any thread, shared by any
    number of streams.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, MEM_LEVEL)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class DeflateStream:
    """The sending half of a connection's zlib stream."""

    def __init__(self) -> None:
        self.level = DEFAULT_LEVEL
        self._started = False  # the zlib header is sent
        self._compressor: zlib._Compress | None = None  # None: the next chunk needs a new one
        self._compressor_level = DEFAULT_LEVEL
        self._history = b""

    def set_level(self, level: int | None) -> None:
        """Level 0..9 for data compressed from now on; None means the default."""
        self.level = DEFAULT_LEVEL if level is None else min(max(level, 0), 9)

    def compress(self, data: bytes, level: int | None = None) -> bytes:
        """One sync-flushed chunk of the stream carrying ``data``.

        ``level`` overrides the stream's level for this chunk only.
        """
        compressor = self._current(level)
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self._remember(data)
        return out

    def compress_smallest(self, choices: Iterable[Sequence[bytes]]) -> bytes:
        """One sync-flushed chunk carrying, of each group of alternatives, the cheapest.

        Alternatives are judged by what they add to *this* stream (its history
        and the input still pending in the compressor included), not by their
        length: each is compressed and sync-flushed on a copy of the live
        compressor, and the live one then takes the cheapest unflushed.  The
        last group's are judged with the chunk's own flush (``_last_of``), so
        the whole chunk ends with a single sync flush.
        """
        compressor = self._current()
        groups = list(choices)
        out = []
        for alternatives in groups[:-1]:
            data = _cheapest(compressor, alternatives)
            out.append(compressor.compress(data))
            self._remember(data)
        if groups:
            out.append(self._last_of(compressor, groups[-1]))
        else:
            out.append(compressor.flush(zlib.Z_SYNC_FLUSH))
        return b"".join(out)

    def _last_of(self, compressor: zlib._Compress, alternatives: Sequence[bytes]) -> bytes:
        """The rest of the chunk with the cheapest of the last group, flushed.

        The first alternative goes on the live compressor and the others on
        copies, each flushed as the chunk ends anyway: one copy fewer than
        judging them all on copies, and nothing compressed twice.
        """
        first, *others = alternatives
        trials = [compressor.copy() for _ in others]  # before the live one moves on
        best_data, best = first, compressor.compress(first) + compressor.flush(zlib.Z_SYNC_FLUSH)
        best_compressor = compressor
        for trial, data in zip(trials, others, strict=True):
            tail = trial.compress(data) + trial.flush(zlib.Z_SYNC_FLUSH)
            if len(tail) < len(best):
                best_data, best, best_compressor = data, tail, trial
        self._compressor = best_compressor
        self._remember(best_data)
        return best

    def splice(self, chunk: bytes, data: bytes) -> bytes:
        """The stream's next chunk: ``chunk``, from :func:`deflate_alone` of ``data``.

        Only ``data``'s last 32 KiB are needed (the history the next chunk
        may refer to).  The stream's first chunk gets the zlib header in
        front; the chunk after this one comes from a new compressor primed
        with that history, as after a change of level.
        """
        header = b"" if self._started else ZLIB_HEADER
        self._started = True
        self._compressor = None
        self._remember(data)
        return header + chunk

    def _current(self, level: int | None = None) -> zlib._Compress:
        level = self.level if level is None else level
        if not self._started:
            self._compressor = zlib.compressobj(level, zlib.DEFLATED, 15, MEM_LEVEL)
            self._started = True
        elif self._compressor is None or self._compressor_level != level:
            self._compressor = self._continuation(level)
        self._compressor_level = level
        return self._compressor

    def _continuation(self, level: int) -> zlib._Compress:
        """Raw-deflate compressor that continues the stream at a new level."""
        if not self._history:
            return zlib.compressobj(level, zlib.DEFLATED, -15, MEM_LEVEL)
        return zlib.compressobj(level, zlib.DEFLATED, -15, MEM_LEVEL, zdict=self._history)

    def _remember(self, data: bytes) -> None:
        if len(data) >= WINDOW_BYTES:
            self._history = bytes(data[-WINDOW_BYTES:])
        else:
            self._history = (self._history + data)[-WINDOW_BYTES:]


def _cheapest(compressor: zlib._Compress, alternatives: Sequence[bytes]) -> bytes:
    """The alternative whose sync-flushed compression on a copy of ``compressor`` is shortest."""
    if len(alternatives) == 1:
        return alternatives[0]
    return min(alternatives, key=lambda data: _flushed_size(compressor.copy(), data))


def _flushed_size(compressor: zlib._Compress, data: bytes) -> int:
    return len(compressor.compress(data)) + len(compressor.flush(zlib.Z_SYNC_FLUSH))


class InflateStream:
    """The receiving half of a connection's zlib stream.

    After a ProtocolError the stream is unusable, like the connection.
    """

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(15)

    def read_rectangle(self, max_output: int, max_length: int) -> Generator[int, bytes, bytes]:
        """Sub-generator: read ``u32 length`` + zlib data, return the inflated bytes.

        ``max_length`` bounds the compressed length, ``max_output`` the
        inflated size; compressed bytes are requested in bounded chunks.
        """
        header = yield from read_exact(_LENGTH.size)
        (length,) = _LENGTH.unpack(header)
        if length > max_length:
            raise ProtocolError(
                f"zlib data length {length} exceeds the bound {max_length} for this rectangle"
            )
        pieces: list[bytes] = []
        room = max_output
        left = length
        while left > 0:
            chunk = yield from read_exact(min(left, READ_CHUNK))
            left -= len(chunk)
            pieces.append(self._inflate(chunk, room))
            room -= len(pieces[-1])
        return b"".join(pieces)

    def _inflate(self, chunk: bytes, room: int) -> bytes:
        try:
            piece = self._inflater.decompress(chunk, room + 1)
        except zlib.error as exc:
            raise ProtocolError(f"corrupt zlib data: {exc}") from None
        require(len(piece) <= room, "zlib data inflates to more than the rectangle needs")
        require(not self._inflater.unused_data, "data after the end of the zlib stream")
        return piece


def frame(chunk: bytes) -> bytes:
    """``u32 length`` + chunk, the payload shape of Zlib and ZRLE rectangles."""
    return _LENGTH.pack(len(chunk)) + chunk


class ZlibEncoder(Encoder):
    encoding = Encoding.ZLIB

    def __init__(self) -> None:
        self._stream = DeflateStream()

    def prepare(self, pixels: np.ndarray, codec: PixelCodec) -> bytes:
        return codec.to_wire(pixels)

    def finish(self, prepared: object, codec: PixelCodec) -> tuple[int, bytes]:
        assert isinstance(prepared, bytes)
        return self.encoding, frame(self._stream.compress(prepared))

    def configure(self, quality: int | None, compression: int | None) -> None:
        self._stream.set_level(compression)


class ZlibDecoder(Decoder):
    encoding = Encoding.ZLIB

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._stream = InflateStream()
        self._limits = limits

    def decode(self, rect: Rect, codec: PixelCodec) -> DecodeGen:
        size = rect.area * codec.bytes_per_pixel
        max_length = min(self._limits.max_compressed_rect, deflate_bound(size))
        data = yield from self._stream.read_rectangle(size, max_length)
        require(len(data) == size, "zlib rectangle inflates to fewer bytes than its pixels")
        return pixels_result(codec.from_wire(data, rect.area), rect)
