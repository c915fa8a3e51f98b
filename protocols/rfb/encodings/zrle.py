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
subencoding with the fewest bytes, estimated from run counts and palette size;
on small rectangles it also tries raw on the live zlib stream and keeps
whichever compresses smaller (see :class:`ZRLEEncoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..constants import Encoding
from ..errors import ProtocolError, require
from ..limits import DEFAULT_LIMITS, Limits
from ..pixelformat import PixelCodec
from .base import DecodeGen, Decoder, Encoder, Rect
from .zlibenc import DeflateStream, InflateStream, deflate_bound, frame

TILE = 64
RAW = 0
SOLID = 1
MAX_PACKED = 16
RLE_FLAG = 128  # top bit of the subencoding: run-length encoded
PLAIN_RLE = RLE_FLAG
MAX_PALETTE = 127
TRIAL_AREA = 8 * TILE * TILE  # up to this many pixels tiles are tried in every subencoding
# Rectangles whose data is mostly raw tiles (photos, video) compress as small
# at zlib level 1 as at 6 (what zlib finds there is Huffman coding, not
# repeats) in half the time: they go at level 1.
PHOTO_LEVEL = 1
PHOTO_SHARE = 0.75


def tile_grid(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of every tile, in wire order."""
    return [
        (x, y, min(TILE, width - x), min(TILE, height - y))
        for y in range(0, height, TILE)
        for x in range(0, width, TILE)
    ]


def index_bits(palette_size: int) -> int:
    """Bits per packed-palette index for a palette of 2..16 colours."""
    return 1 if palette_size == 2 else 2 if palette_size <= 4 else 4


def packed_row_bytes(width: int, bits: int) -> int:
    return (width * bits + 7) // 8


def max_tile_data(width: int, height: int, cpixel: int) -> int:
    """Most inflated bytes the tiles of a width x height rectangle can take.

    Per tile of n pixels: a subencoding byte, up to 127 palette CPIXELs and
    at most max(cpixel + 1, 2) bytes per pixel (runs of length one, or raw).
    """
    tiles = len(range(0, width, TILE)) * len(range(0, height, TILE))
    return width * height * (cpixel + 2) + tiles * (MAX_PALETTE * cpixel + 1)


# -- encoder -----------------------------------------------------------------


def find_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of every run of equal values in a 1-D array."""
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], starts))
    lengths = np.diff(np.append(starts, flat.size))
    return starts, lengths


def palette_of_runs(heads: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(first run of each colour, colour index of each run), or None if > 127 colours."""
    if heads.size > MAX_PALETTE:
        ordered = np.sort(heads)
        if np.count_nonzero(ordered[1:] != ordered[:-1]) >= MAX_PALETTE:
            return None
    _, first, inverse = np.unique(heads, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def run_length_bytes(lengths: np.ndarray) -> np.ndarray:
    """Bytes each run length takes on the wire."""
    return (lengths - 1) // 255 + 1


def runs_bytes(heads: np.ndarray, lengths: np.ndarray, counted: np.ndarray) -> bytes:
    """Run records: each run's head bytes, then its length where ``counted``."""
    head_size = heads.shape[1]
    tails = np.where(counted, run_length_bytes(lengths), 0)
    ends = np.cumsum(head_size + tails)
    starts = ends - (head_size + tails)
    out = np.full(int(ends[-1]), 255, dtype=np.uint8)
    out[starts[:, None] + np.arange(head_size)] = heads
    out[ends[counted] - 1] = (lengths[counted] - 1) % 255
    return out.tobytes()


def pack_indexes(indexes: np.ndarray, bits: int) -> bytes:
    """Packed-palette rows: ``bits``-bit indexes, leftmost in the high bits."""
    height, width = indexes.shape
    per_byte = 8 // bits
    row_bytes = packed_row_bytes(width, bits)
    padded = np.zeros((height, row_bytes * per_byte), dtype=np.uint8)
    padded[:, :width] = indexes
    shifts = (np.arange(per_byte - 1, -1, -1) * bits).astype(np.uint8)
    fields = padded.reshape(height, row_bytes, per_byte) << shifts
    packed: np.ndarray = np.bitwise_or.reduce(fields, axis=2)
    return packed.astype(np.uint8).tobytes()


class TilePlan:
    """Runs and palette of one tile, with the size of every candidate encoding.

    Runs and colours are found on wire pixel values, so colours the peer's
    format cannot tell apart share a palette entry and a run.
    """

    def __init__(self, pixels: np.ndarray, words: np.ndarray, codec: PixelCodec) -> None:
        self.height, self.width = words.shape
        self.pixels = pixels.reshape(-1)
        self.codec = codec
        self.cpixel = codec.zrle_cpixel_bytes
        self.starts, self.lengths = find_runs(words.reshape(-1))
        self.palette: tuple[np.ndarray, np.ndarray] | None = None
        if self.starts.size > 1:
            self.palette = palette_of_runs(words.reshape(-1)[self.starts])

    def options(self) -> list[tuple[int, int]]:
        """(estimated bytes, subencoding) of every encoding that fits the tile."""
        if self.starts.size == 1:
            return [(self.cpixel, SOLID)]
        length_bytes = run_length_bytes(self.lengths)
        options = [
            (self.width * self.height * self.cpixel, RAW),
            (self.starts.size * self.cpixel + int(length_bytes.sum()), PLAIN_RLE),
        ]
        if self.palette is not None:
            size = self.palette[0].size
            table = size * self.cpixel
            index_bytes = np.where(self.lengths == 1, 1, 1 + length_bytes)
            options.append((table + int(index_bytes.sum()), RLE_FLAG + size))
            if size <= MAX_PACKED:
                rows = self.height * packed_row_bytes(self.width, index_bits(size))
                options.append((table + rows, size))
        return options

    def choose(self) -> tuple[int, int]:
        """(estimated bytes, subencoding) of the smallest encoding before zlib."""
        return min(self.options())

    def alternatives(self) -> list[bytes]:
        """The tile as the estimate chooses it, and raw if that is another choice.

        Raw is the form zlib's history most often holds already (whole
        frames of varied content go raw); the other forms rarely beat the
        estimate's choice once compressed.
        """
        _, sub = self.choose()
        if sub in (SOLID, RAW):
            return [self.encode(sub)]
        return [self.encode(sub), self.encode(RAW)]

    def encode(self, sub: int | None = None) -> bytes:
        """The tile in subencoding ``sub`` (by default the smallest before zlib)."""
        if sub is None:
            _, sub = self.choose()
        if sub == SOLID:
            body = self.cpixels(self.pixels[:1])
        elif sub == RAW:
            body = self.cpixels(self.pixels)
        elif sub == PLAIN_RLE:
            body = self.plain_rle()
        else:
            body = self.with_palette(sub)
        return bytes([sub]) + body

    def with_palette(self, sub: int) -> bytes:
        """Palette then packed indexes (sub 2..16) or palette runs (sub > 128)."""
        assert self.palette is not None, "choose() offers palettes only when found"
        first_runs, run_colours = self.palette
        table = self.cpixels(self.pixels[self.starts[first_runs]])
        if sub > RLE_FLAG:
            return table + self.palette_rle(run_colours)
        return table + self.packed(run_colours, sub)

    def cpixels(self, pixels: np.ndarray) -> bytes:
        return self.codec.pack_cpixels(pixels)

    def plain_rle(self) -> bytes:
        heads = np.frombuffer(self.cpixels(self.pixels[self.starts]), dtype=np.uint8)
        counted = np.ones(self.lengths.size, dtype=bool)
        return runs_bytes(heads.reshape(-1, self.cpixel), self.lengths, counted)

    def palette_rle(self, run_colours: np.ndarray) -> bytes:
        counted = self.lengths > 1
        heads = run_colours.astype(np.uint8) | (counted.astype(np.uint8) << 7)
        return runs_bytes(heads[:, None], self.lengths, counted)

    def packed(self, run_colours: np.ndarray, size: int) -> bytes:
        indexes = np.repeat(run_colours.astype(np.uint8), self.lengths)
        return pack_indexes(indexes.reshape(self.height, self.width), index_bits(size))


def tile_plans(pixels: np.ndarray, codec: PixelCodec) -> Iterator[TilePlan]:
    """A plan for every tile of a rectangle of internal pixels, in wire order."""
    px = np.asarray(pixels, dtype=np.uint32)
    height, width = px.shape
    words = codec.to_words(px).reshape(height, width)
    for x, y, w, h in tile_grid(width, height):
        yield TilePlan(px[y : y + h, x : x + w], words[y : y + h, x : x + w], codec)


def encode_tiles(pixels: np.ndarray, codec: PixelCodec) -> bytes:
    """The inflated ZRLE data (all tiles) for a rectangle of internal pixels."""
    return b"".join(plan.encode() for plan in tile_plans(pixels, codec))


class ZRLEEncoder(Encoder):
    """ZRLE with one zlib stream per connection.

    Small rectangles (typed characters, a clock, a status bar) pick each
    tile's subencoding by what it adds to the compressed stream: the
    estimate's choice and raw are both tried on the live stream, whose
    history often makes the longer raw form the cheaper one (a glyph repeats
    pixels sent raw before).  Larger rectangles go by the sizes before zlib,
    which costs one pass; if most of their data is raw tiles they are
    compressed at ``PHOTO_LEVEL``.
    """

    encoding = Encoding.ZRLE

    def __init__(self) -> None:
        self._stream = DeflateStream()

    def encode(self, pixels: np.ndarray, codec: PixelCodec) -> bytes:
        if pixels.size <= TRIAL_AREA:
            alternatives = (plan.alternatives() for plan in tile_plans(pixels, codec))
            return frame(self._stream.compress_smallest(alternatives))
        tiles = [plan.encode() for plan in tile_plans(pixels, codec)]
        raw = sum(len(tile) for tile in tiles if tile[0] == RAW)
        data = b"".join(tiles)
        level = PHOTO_LEVEL if raw >= len(data) * PHOTO_SHARE else None
        return frame(self._stream.compress(data, level))

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
        require(sub > RLE_FLAG + 1, f"invalid ZRLE subencoding {sub}")
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
