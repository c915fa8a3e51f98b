"""Tight wire pieces: control-byte layout, compact lengths, the four zlib streams.

Every Tight rectangle starts with a compression-control byte.  Its low four
bits ask the receiver to reset zlib streams 0..3 before the rectangle; its
high four bits pick the method: ``0sfx`` BasicCompression on stream ``s``
(``f`` set: a filter-id byte follows), ``1000`` Fill, ``1001`` JPEG.

Lengths of zlib and JPEG data use a compact form of one to three bytes
holding up to 22 bits, seven bits per byte (low bits first) with the top bit
meaning "more follows"; the third byte carries eight bits.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import cast

from zlib_ng import zlib_ng as zlib

from ..errors import ProtocolError, require
from .base import read_exact

MAX_WIDTH = 2048  # widest rectangle the spec allows for BasicCompression
MAX_AREA = 65536  # largest rectangle thinserve's encoder accepts
MIN_TO_COMPRESS = 12  # filtered data shorter than this is sent as is
# A fresh stream's chunk of less data than this gets a window no larger
# than the data and a small hash table (see ``independent_chunk``).
INDEPENDENT_SMALL = 8 * 1024
MIN_WINDOW_BITS = 9  # the smallest window zlib deflates with
SMALL_MEM_LEVEL = 2
STREAM_COUNT = 4
# zlib-ng's stub declares ``error`` an instance; it is the exception class.
ZLIB_ERROR = cast(type[Exception], zlib.error)
MAX_COMPACT = (1 << 22) - 1

RESET_MASK = 0x0F
FILL = 0x8
JPEG = 0x9
READ_FILTER_BIT = 0x4
STREAM_BITS = 0x3

FILTER_COPY = 0
FILTER_PALETTE = 1
FILTER_GRADIENT = 2

STREAM_FULL = 0  # full colour, copy filter
STREAM_MONO = 1  # two-colour palette
STREAM_INDEXED = 2  # 3..256-colour palette
STREAM_GRADIENT = 3  # full colour, gradient filter


def basic_control(stream: int, with_filter: bool, resets: int = 0) -> int:
    """Compression-control byte for BasicCompression on ``stream``."""
    method = stream | (READ_FILTER_BIT if with_filter else 0)
    return (method << 4) | (resets & RESET_MASK)


def pack_compact(value: int) -> bytes:
    """Compact representation of a length 0..4194303."""
    if not 0 <= value <= MAX_COMPACT:
        raise ValueError(f"length {value} does not fit a Tight compact length")
    if value < 0x80:
        return bytes([value])
    if value < 0x4000:
        return bytes([value & 0x7F | 0x80, value >> 7])
    return bytes([value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14])


def read_compact(limit: int) -> Generator[int, bytes, int]:
    """Sub-generator reading a compact length; ProtocolError above ``limit``."""
    value = 0
    for index, shift in enumerate((0, 7, 14)):
        byte = (yield from read_exact(1))[0]
        if index == 2:
            value |= byte << shift
            break
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    if value > limit:  # the reason formatted only when needed: once per rectangle
        raise ProtocolError(f"Tight data length {value} exceeds the bound {limit}")
    return value


def deflate_bound(size: int) -> int:
    """Most zlib bytes a sane sender needs for ``size`` input bytes.

    Stored blocks cost 5 bytes per 64 KiB; a sync-flushed chunk adds a few
    bytes of header and marker.  One eighth plus 64 bytes covers both.
    """
    return size + (size >> 3) + 64


class DeflateStreams:
    """The sender's four zlib streams.

    Python cannot change the level of a live compressor, so a new level takes
    effect by restarting a stream and asking the peer to reset it too.  The
    streams are compressed with zlib-ng, whose output any zlib inflater
    reads: on palette indices and gradient residuals at Tight's levels it is
    about 1.8 times as fast as zlib and 8-15% smaller.
    """

    def __init__(self) -> None:
        self._compressors: list[zlib._Compress | None] = [None] * STREAM_COUNT
        self._levels = [0] * STREAM_COUNT
        self._unknown = 0  # streams whose state on the peer's side this side does not hold

    def compress(self, stream: int, data: bytes, level: int) -> tuple[bytes, int]:
        """(sync-flushed zlib chunk, reset bits the control byte must carry)."""
        compressor = self._compressors[stream]
        resets = self._unknown & (1 << stream)
        self._unknown &= ~resets
        if compressor is not None and self._levels[stream] != level:
            compressor, resets = None, 1 << stream
        if compressor is None:
            compressor = zlib.compressobj(level)
            self._compressors[stream] = compressor
            self._levels[stream] = level
        chunk = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return chunk, resets

    def forget(self) -> None:
        """Hold none of the streams any more: each is reset before its next use."""
        self._compressors = [None] * STREAM_COUNT
        self._unknown = (1 << STREAM_COUNT) - 1

    def send_independent(self, stream: int) -> int:
        """A chunk of a fresh stream (``independent_chunk``) goes out on
        ``stream``: the peer resets the stream first (the reset bits returned),
        and the next chunk on it resets it again."""
        self._compressors[stream] = None
        self._unknown |= 1 << stream
        return 1 << stream


def independent_chunk(data: bytes, level: int) -> bytes:
    """``data`` as the first sync-flushed chunk of a fresh zlib stream.

    It depends on nothing but the data and the level, so it can be made
    once, in any thread, for every connection that sends the same
    rectangle: each sends it after resetting the stream.  On large
    rectangles the history of the connection's stream saves almost nothing
    (whole screens of text, windows or photos: under 0.1%).

    Small data gets a window and a hash table to its size: the same bytes,
    and a compressor of a few KiB instead of about 256 KiB, which costs
    mapping fresh pages on every chunk (thinserve hands buffers over 128 KiB
    back to the system).  Every inflater reads a stream with a smaller
    window than its own.
    """
    if len(data) >= INDEPENDENT_SMALL:
        compressor = zlib.compressobj(level)
    else:
        bits = max(MIN_WINDOW_BITS, (len(data) - 1).bit_length())
        compressor = zlib.compressobj(level, zlib.DEFLATED, bits, SMALL_MEM_LEVEL)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class InflateStreams:
    """The receiver's four zlib streams.

    A stream that failed (corrupt data, wrong length, ended) is unusable
    until the peer resets it: its dictionary no longer matches the sender's.
    """

    def __init__(self) -> None:
        self._inflaters: list[zlib._Decompress | None] = [None] * STREAM_COUNT
        self._broken = [False] * STREAM_COUNT

    def reset(self, mask: int) -> None:
        for stream in range(STREAM_COUNT):
            if mask & (1 << stream):
                self._inflaters[stream] = None
                self._broken[stream] = False

    def inflate(self, stream: int, data: bytes, size: int) -> bytes:
        """Exactly ``size`` (> 0) bytes inflated from ``data`` on ``stream``."""
        require(size > 0, "nothing to inflate")
        if self._broken[stream]:
            raise ProtocolError(f"zlib stream {stream} used after an error without a reset")
        inflater = self._inflaters[stream]
        if inflater is None:
            inflater = self._inflaters[stream] = zlib.decompressobj()
        try:
            return self._checked(inflater, data, size)
        except ProtocolError:
            self._broken[stream] = True
            raise

    @staticmethod
    def _checked(inflater: zlib._Decompress, data: bytes, size: int) -> bytes:
        try:
            out = inflater.decompress(data, size)
            extra = inflater.decompress(inflater.unconsumed_tail, 1)
        except ZLIB_ERROR as exc:
            raise ProtocolError(f"corrupt Tight zlib data: {exc}") from None
        require(len(out) == size, "Tight zlib data inflates to fewer bytes than needed")
        require(
            not extra and not inflater.unconsumed_tail,
            "Tight zlib data inflates to more bytes than needed",
        )
        require(not inflater.eof, "Tight zlib stream ended")
        return out
