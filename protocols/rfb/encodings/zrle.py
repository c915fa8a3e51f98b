"""ZRLE encoding: 64x64 tiles, palettised and/or run-length encoded, zlib'd.

The payload is ``u32 length`` + a sync-flushed chunk of the connection's zlib
stream (see :mod:`.zlibenc`).  Inflated, it holds the rectangle's tiles left
to right, top to bottom.  Each tile starts with a subencoding byte:

* 0 raw CPIXELs; 1 solid colour (one CPIXEL);
* 2..16 packed palette: the palette, then 1-, 2- or 4-bit indexes, most
  significant bits first, each row padded to a byte;
* 128 plain RLE: runs of (CPIXEL, run length);
* 130..255 palette RLE with ``subencoding - 128`` colours: runs of one index
  byte (length 1) or index + 128 followed by the run length.

Run lengths are ``length - 1`` written as 255-bytes followed by a final byte
below 255.  Runs flow across row ends.  The encoder picks, per tile, the
subencoding with the fewest bytes before zlib, working on all the tiles of a
rectangle at once (:mod:`.zrle_tiles` analyses and chooses, :mod:`.zrle_write`
writes); on small rectangles it also tries raw on the live zlib stream and
keeps whichever compresses smaller (see :class:`ZRLEEncoder`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..constants import Encoding
from ..errors import ProtocolError, require
from ..limits import DEFAULT_LIMITS, Limits
from ..pixelformat import PixelCodec
from .base import DecodeGen, Decoder, Encoder, Rect
from .zlibenc import (
    WINDOW_BYTES,
    DeflateStream,
    InflateStream,
    deflate_alone,
    deflate_bound,
    frame,
)
from .zrle_small import small_alternatives
from .zrle_tiles import (
    MAX_PACKED,
    MAX_PALETTE,
    PLAIN_RLE,
    RAW,
    RLE_FLAG,
    SOLID,
    TILE,
    index_bits,
    packed_row_bytes,
)
from .zrle_write import tile_alternatives, tile_bytes

TRIAL_AREA = 8 * TILE * TILE  # up to this many pixels tiles are tried in every subencoding
# Rectangles whose data is mostly raw tiles (photos, video) compress about as
# small at zlib level 2 as at 6 (what zlib finds there is Huffman coding, not
# repeats) in half the time.  They are deflated on their own in ``prepare``
# (see zlibenc.deflate_alone): at level 2, 0.5% smaller than level 1 on the
# connection's stream was, for 13% more time, spent once for every
# connection and in worker threads rather than on the reactor.
PHOTO_LEVEL = 2
PHOTO_SHARE = 0.75
# Raw tiles in which deflate finds nothing (noise) go at level 0, stored:
# no smaller at level 1 (deflate falls back to stored blocks itself), and
# some fifty times faster.  Judged on byte frequencies (Huffman coding
# would gain) and, when those are flat, on samples compressed at level 1
# (repeats, such as tiles of a patterned background, would gain).
STORED_LEVEL = 0
FLAT_GAIN = 1 / 256  # less gain than this is none
FREQUENCY_STEP = 5  # every fifth byte is counted
SAMPLES = 2
SAMPLE_BYTES = 1 << 15  # deflate's window: repeats of neighbouring tiles fall inside


def tile_grid(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of every tile, in wire order."""
    return [
        (x, y, min(TILE, width - x), min(TILE, height - y))
        for y in range(0, height, TILE)
        for x in range(0, width, TILE)
    ]


def max_tile_data(width: int, height: int, cpixel: int) -> int:
    """Most inflated bytes the tiles of a width x height rectangle can take.

    Per tile of n pixels: a subencoding byte, up to 127 palette CPIXELs and
    at most max(cpixel + 1, 2) bytes per pixel (runs of length one, or raw).
    """
    tiles = len(range(0, width, TILE)) * len(range(0, height, TILE))
    return width * height * (cpixel + 2) + tiles * (MAX_PALETTE * cpixel + 1)


# -- encoder -----------------------------------------------------------------


def frequencies_flat(data: bytes) -> bool:
    """Whether Huffman coding of single bytes would gain less than ``FLAT_GAIN``."""
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8)[::FREQUENCY_STEP], minlength=256)
    shares = counts[counts > 0] / counts.sum()
    return bool(-(shares * np.log2(shares)).sum() >= 8 * (1 - FLAT_GAIN))


def samples_flat(data: bytes) -> bool:
    """Whether level 1 gains less than ``FLAT_GAIN`` on evenly spread samples of ``data``."""
    view = memoryview(data)
    step = max(len(data) // SAMPLES, 1)
    for start in range(0, step * SAMPLES, step):
        sample = view[start : start + SAMPLE_BYTES]
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 9)
        packed = len(compressor.compress(sample)) + len(compressor.flush())
        if packed < len(sample) * (1 - FLAT_GAIN):
            return False
    return True


def suited_level(data: bytes, raw: int) -> int | None:
    """The zlib level for a rectangle's tile data with ``raw`` bytes of raw tiles."""
    if not data or raw < len(data) * PHOTO_SHARE:
        return None
    if frequencies_flat(data) and samples_flat(data):
        return STORED_LEVEL
    return PHOTO_LEVEL


def encode_tiles(pixels: np.ndarray, codec: PixelCodec) -> bytes:
    """The inflated ZRLE data (all tiles) for a rectangle of internal pixels."""
    return tile_bytes(pixels, codec)[0]


@dataclass(frozen=True)
class TileData:
    """A rectangle's ZRLE tiles before zlib: groups of alternatives, in wire
    order (the connection's stream keeps the cheapest of each)."""

    choices: list[list[bytes]]


@dataclass(frozen=True)
class Deflated:
    """A rectangle's ZRLE tiles deflated on their own, at ``level``; ``tail``
    is the end of the tile data, the history the stream goes on from."""

    chunk: bytes
    tail: bytes
    level: int


class ZRLEEncoder(Encoder):
    """ZRLE with one zlib stream per connection.

    Small rectangles (typed characters, a clock, a status bar) pick each
    tile's subencoding by what it adds to the compressed stream: the
    estimate's choice and raw are both tried on the live stream, whose
    history often makes the longer raw form the cheaper one (a glyph repeats
    pixels sent raw before).  Larger rectangles go by the sizes before zlib,
    which costs one pass.  If most of their data is raw tiles, ``prepare``
    deflates it on its own, at ``PHOTO_LEVEL`` or stored when deflate would
    find nothing in it (see :func:`suited_level`), and ``finish`` only
    splices it into the connection's stream.
    """

    encoding = Encoding.ZRLE
    # Each band costs a fixed number of numpy calls, and its zlib chunk a
    # sync flush: bands twice the usual size (128 rows of a 1920-wide
    # screen) are 13-28% faster on screen content and noise, and no band's
    # bytes grow; photo bands, deflated in worker threads, still give the
    # pool eight or nine bands a frame to share out.
    band_pixels = 1 << 18

    def __init__(self) -> None:
        self._stream = DeflateStream()

    def prepare(self, pixels: np.ndarray, codec: PixelCodec) -> TileData | Deflated:
        """Every tile's alternatives on small rectangles; else the chosen
        forms, deflated here already where they are mostly raw tiles."""
        small = small_alternatives(pixels, codec)
        if small is not None:
            return TileData(small)
        if pixels.size <= TRIAL_AREA:
            return TileData(tile_alternatives(pixels, codec))
        data, raw = tile_bytes(pixels, codec)
        level = suited_level(data, raw)
        if level is None:
            return TileData([[data]])
        return Deflated(deflate_alone(data, level), data[-WINDOW_BYTES:], level)

    def finish(self, prepared: object, codec: PixelCodec) -> tuple[int, bytes]:
        """The tile data through this connection's zlib stream."""
        if isinstance(prepared, Deflated):
            return self.encoding, frame(self._stream.splice(prepared.chunk, prepared.tail))
        assert isinstance(prepared, TileData)
        choices = prepared.choices
        if len(choices) == 1 and len(choices[0]) == 1:
            return self.encoding, frame(self._stream.compress(choices[0][0]))
        return self.encoding, frame(self._stream.compress_smallest(choices))

    def configure(self, quality: int | None, compression: int | None) -> None:
        self._stream.set_level(compression)


# -- decoder -----------------------------------------------------------------


class TileReader:
    """Parses inflated ZRLE tile data into internal pixels."""

    def __init__(self, data: bytes, codec: PixelCodec) -> None:
        self.data = data
        self.view = np.frombuffer(data, dtype=np.uint8)
        self.memory = memoryview(data)
        self.codec = codec
        self.cpixel = codec.zrle_cpixel_bytes
        self.pos = 0

    def take(self, count: int) -> np.ndarray:
        require(self.pos + count <= len(self.data), "ZRLE tile data ends early")
        chunk = self.view[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def colours(self, count: int) -> np.ndarray:
        start = self.pos
        self.take(count * self.cpixel)
        return self.codec.unpack_cpixels(self.memory[start : self.pos], count)

    def tile(self, width: int, height: int) -> np.ndarray:
        """Internal pixels of the next tile, shape (height, width) or (1, 1) when solid."""
        sub = int(self.take(1)[0])
        count = width * height
        if sub == RAW:
            return self.colours(count).reshape(height, width)
        if sub == SOLID:
            return self.colours(1).reshape(1, 1)
        if sub <= MAX_PACKED:
            palette = self.colours(sub)
            pixels: np.ndarray = palette[self.packed_indexes(width, height, sub)]
            return pixels
        if sub == PLAIN_RLE:
            return self.plain_rle(count).reshape(height, width)
        if sub <= RLE_FLAG + 1:  # the reason formatted only when needed: once per tile
            raise ProtocolError(f"invalid ZRLE subencoding {sub}")
        return self.palette_rle(count, sub - RLE_FLAG).reshape(height, width)

    def packed_indexes(self, width: int, height: int, size: int) -> np.ndarray:
        bits = index_bits(size)
        per_byte = 8 // bits
        row_bytes = packed_row_bytes(width, bits)
        rows = self.take(row_bytes * height).reshape(height, row_bytes)
        shifts = (np.arange(per_byte - 1, -1, -1) * bits).astype(np.uint8)
        fields = (rows[:, :, None] >> shifts) & ((1 << bits) - 1)
        indexes = fields.reshape(height, row_bytes * per_byte)[:, :width]
        require(int(indexes.max()) < size, "ZRLE palette index out of range")
        return indexes

    def plain_rle(self, count: int) -> np.ndarray:
        heads, lengths = self.runs(scan_plain_runs, count, self.cpixel)
        offsets = np.asarray(heads)[:, None] + np.arange(self.cpixel)
        colours = self.codec.unpack_cpixels(self.view[offsets].tobytes(), len(heads))
        return np.repeat(colours, lengths)

    def palette_rle(self, count: int, size: int) -> np.ndarray:
        palette = self.colours(size)
        indexes, lengths = self.runs(scan_palette_runs, count, 1)
        index_array = np.asarray(indexes)
        require(int(index_array.max()) < size, "ZRLE palette index out of range")
        return np.repeat(palette[index_array], lengths)

    def runs(self, scan: RunScanner, count: int, head: int) -> tuple[list[int], list[int]]:
        """Run records covering exactly ``count`` pixels, read by ``scan``."""
        try:
            heads, lengths, self.pos = scan(self.data, self.pos, count, head)
        except IndexError:
            raise ProtocolError("ZRLE tile data ends inside a run") from None
        require(sum(lengths) == count, "ZRLE run overflows its tile")
        return heads, lengths


RunScan = tuple[list[int], list[int], int]  # (heads, run lengths, position after)
RunScanner = Callable[[bytes, int, int, int], RunScan]  # (data, pos, pixels, head size)


def scan_plain_runs(data: bytes, pos: int, count: int, cpixel: int) -> RunScan:
    """Walk plain-RLE records: heads are the offsets of the runs' CPIXELs.

    The record format is sequential, so this is one short step per run;
    expanding the runs is vectorised by the caller.
    """
    heads: list[int] = []
    lengths: list[int] = []
    add_head = heads.append
    add_length = lengths.append
    filled = 0
    while filled < count:
        add_head(pos)
        pos += cpixel
        run = 1
        byte = data[pos]
        while byte == 255:
            run += 255
            pos += 1
            byte = data[pos]
        pos += 1
        run += byte
        add_length(run)
        filled += run
    return heads, lengths, pos


def scan_palette_runs(data: bytes, pos: int, count: int, head: int) -> RunScan:
    """Walk palette-RLE records: heads are the runs' palette indexes (``head`` is 1)."""
    heads: list[int] = []
    lengths: list[int] = []
    add_head = heads.append
    add_length = lengths.append
    filled = 0
    while filled < count:
        index = data[pos]
        pos += 1
        if index < 128:
            add_head(index)
            add_length(1)
            filled += 1
            continue
        run = 1
        byte = data[pos]
        while byte == 255:
            run += 255
            pos += 1
            byte = data[pos]
        pos += 1
        run += byte
        add_head(index - 128)
        add_length(run)
        filled += run
    return heads, lengths, pos


def decode_tiles(data: bytes, rect: Rect, codec: PixelCodec) -> np.ndarray:
    """Internal pixels (h, w) for a rectangle's inflated ZRLE data."""
    out = np.empty((rect.h, rect.w), dtype=np.uint32)
    reader = TileReader(data, codec)
    for x, y, w, h in tile_grid(rect.w, rect.h):
        out[y : y + h, x : x + w] = reader.tile(w, h)
    require(reader.pos == len(data), "trailing data after the last ZRLE tile")
    return out


class ZRLEDecoder(Decoder):
    encoding = Encoding.ZRLE

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._stream = InflateStream()
        self._limits = limits

    def decode(self, rect: Rect, codec: PixelCodec) -> DecodeGen:
        budget = max_tile_data(rect.w, rect.h, codec.zrle_cpixel_bytes)
        max_length = min(self._limits.max_compressed_rect, deflate_bound(budget))
        data = yield from self._stream.read_rectangle(budget, max_length)
        return decode_tiles(data, rect, codec)
