"""ZRLE tiles of small rectangles, one tile at a time, over its runs.

:mod:`.zrle_tiles` analyses all the tiles of a rectangle at once in about a
hundred numpy calls: cheap per pixel, but some 0.2 ms whatever the size.  A
typed character, a clock's digits or a cursor cell are one tile of a few
hundred pixels, where that fixed cost is the whole encoding.  Here a tile's
runs are found with a few numpy calls and everything else is done over its
runs (a few dozen on a glyph) in Python.

Rectangles under ``TINY_AREA`` pixels (a glyph cell, a clock's digit) in
the usual pixel formats go without numpy altogether, over Python ints:
each numpy call is cheap in a loop but costs tens of microseconds when a
keystroke wakes an idle server (see :mod:`.tight_tiny`).

The rules are those of :mod:`.zrle_tiles`: the smallest subencoding, the
lowest number on ties, palettes in ascending wire value, so the bytes are
the same; only the time differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from ..pixelformat import PixelCodec
from .base import pack_index_rows
from .zrle_tiles import MAX_PACKED, MAX_PALETTE, PLAIN_RLE, RAW, RLE_FLAG, SOLID, TILE, index_bits

# A rectangle goes tile by tile here up to this many pixels and runs in all:
# past either the whole-rectangle analysis is quicker.  Measured warm from
# 4096 to 12288 pixels: text (90-240 runs) 26-133 us here against 96-244
# there; 600-1000 runs of a few colours 158-223 us against 209-273 at 4096
# pixels, but 239-340 against 231-274 at 8K-12K (hence 768 runs, not
# 1024).  After an idle pause each numpy call of the whole-rectangle way
# costs tens of us: a typed character's update with a 180x23 status field
# (4140 pixels) took 1.33-1.36 ms to its first byte with the field here,
# 1.58-1.62 ms there.
SMALL_AREA = 12288
SMALL_RUNS = 768
TINY_AREA = 256

Pack = Callable[[list[int]], bytes]  # CPIXELs of wire values


def small_alternatives(pixels: np.ndarray, codec: PixelCodec) -> list[list[bytes]] | None:
    """Per tile, in wire order: its bytes as chosen, and raw when that is another
    form (what :func:`.zrle_write.tile_alternatives` gives); None when the
    rectangle is too large or has too many runs for this to be the quicker way."""
    if pixels.size > SMALL_AREA:
        return None
    order = codec.cpixel_byteorder
    if pixels.size < TINY_AREA and order is not None:
        tiny = tiny_alternatives(pixels, order)
        if tiny is not None:
            return tiny
    words = codec.to_words(pixels)
    height, width = words.shape
    tiles = []
    runs = 0
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = words[y : y + TILE, x : x + TILE]
            change = run_changes(tile.reshape(-1))
            runs += change.size + 1
            if runs > SMALL_RUNS:
                return None
            tiles.append((tile, change))
    return [tile_alternatives(tile, change, codec) for tile, change in tiles]


def run_changes(flat: np.ndarray) -> np.ndarray:
    """Where a run starts in a tile's values, after the first."""
    changes: np.ndarray = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return changes


def tile_alternatives(words: np.ndarray, change: np.ndarray, codec: PixelCodec) -> list[bytes]:
    """One tile of wire values (``change``: :func:`run_changes` of them): the
    chosen form, then raw unless that is the choice."""
    height, width = words.shape
    flat = words.reshape(-1)
    if not change.size:
        return [bytes([SOLID]) + codec.pack_cpixel_words(flat[:1])]
    starts = np.empty(change.size + 1, dtype=np.intp)
    starts[0], starts[1:] = 0, change
    ends = np.empty_like(starts)
    ends[:-1], ends[-1] = change, flat.size
    runs = Runs(flat[starts].tolist(), (ends - starts).tolist())
    raw = bytes([RAW]) + codec.pack_cpixel_words(flat)
    return runs.alternatives(width, height, codec.zrle_cpixel_bytes, raw, _numpy_pack(codec))


def tiny_alternatives(
    pixels: np.ndarray, order: Literal["little", "big"]
) -> list[list[bytes]] | None:
    """:func:`small_alternatives` of a tiny rectangle whose wire values are its
    pixels and whose CPIXELs are three bytes in ``order``: Python ints only
    (None for pixels that are not 0x00RRGGBB, which the general path masks)."""

    def pack(values: list[int]) -> bytes:
        return b"".join([value.to_bytes(3, order) for value in values])

    height, width = pixels.shape
    tiles = []
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = pixels[y : y + TILE, x : x + TILE]
            values = tile.ravel().tolist()
            runs = Runs(*python_runs(values))
            if runs.colours[-1] > 0xFFFFFF:
                return None
            if len(runs.values) == 1:
                tiles.append([bytes([SOLID]) + pack(runs.values)])
                continue
            raw = bytes([RAW]) + pack(values)
            tiles.append(runs.alternatives(tile.shape[1], tile.shape[0], 3, raw, pack))
    return tiles


def python_runs(values: list[int]) -> tuple[list[int], list[int]]:
    """The value and length of each run of equal values."""
    heads, lengths = [], []
    previous, count = values[0], 0
    for value in values:
        if value == previous:
            count += 1
        else:
            heads.append(previous)
            lengths.append(count)
            previous, count = value, 1
    heads.append(previous)
    lengths.append(count)
    return heads, lengths


def _numpy_pack(codec: PixelCodec) -> Pack:
    def pack(values: list[int]) -> bytes:
        return codec.pack_cpixel_words(np.array(values, dtype=np.uint32))

    return pack


class Runs:
    """A tile's runs: the wire value and the length of each, in order."""

    def __init__(self, values: list[int], lengths: list[int]) -> None:
        self.values = values
        self.lengths = lengths
        self.colours = sorted(set(values))

    def choice(self, width: int, height: int, cpixel: int) -> int:
        """The smallest subencoding, the lowest on ties, sized from the
        specification's layouts (sizes after the subencoding byte)."""
        lengths = self.lengths
        if max(lengths) <= 255:
            length_bytes = len(lengths)
        else:
            length_bytes = sum((n - 1) // 255 + 1 for n in lengths)
        options = [
            (width * height * cpixel, RAW),
            (len(lengths) * cpixel + length_bytes, PLAIN_RLE),
        ]
        count = len(self.colours)
        table = count * cpixel
        if 2 <= count <= MAX_PALETTE:
            longer = len(lengths) - lengths.count(1)
            options.append((table + length_bytes + longer, RLE_FLAG + count))
        if 2 <= count <= MAX_PACKED:
            row = (width * index_bits(count) + 7) // 8
            options.append((table + height * row, count))
        return min(options)[1]

    def alternatives(
        self, width: int, height: int, cpixel: int, raw: bytes, pack: Pack
    ) -> list[bytes]:
        """The chosen form, then ``raw`` unless that is the choice."""
        sub = self.choice(width, height, cpixel)
        if sub == RAW:
            return [raw]
        return [bytes([sub]) + self.body(sub, width, height, pack, cpixel), raw]

    def body(self, sub: int, width: int, height: int, pack: Pack, cpixel: int) -> bytes:
        """What follows the subencoding byte for a run or palette subencoding."""
        if sub == PLAIN_RLE:
            return self._plain(pack, cpixel)
        table = pack(self.colours)
        place = {colour: i for i, colour in enumerate(self.colours)}
        if sub > RLE_FLAG:
            return table + self._palette_rle(place)
        return table + self._packed(place, width, height)

    def _plain(self, pack: Pack, cpixel: int) -> bytes:
        heads = pack(self.values)
        out = bytearray()
        for i, n in enumerate(self.lengths):
            out += heads[i * cpixel : (i + 1) * cpixel]
            out += run_length(n)
        return bytes(out)

    def _palette_rle(self, place: dict[int, int]) -> bytes:
        out = bytearray()
        for value, n in zip(self.values, self.lengths, strict=True):
            if n == 1:
                out.append(place[value])
            elif n <= 255:
                out += bytes((place[value] | RLE_FLAG, n - 1))
            else:
                out.append(place[value] | RLE_FLAG)
                out += run_length(n)
        return bytes(out)

    def _packed(self, place: dict[int, int], width: int, height: int) -> bytes:
        bits = index_bits(len(self.colours))
        if width * height < TINY_AREA:
            runs = zip(self.values, self.lengths, strict=True)
            indexes = [place[value] for value, n in runs for _ in range(n)]
            return pack_index_rows(indexes, width, bits)
        per_run = np.array([place[value] for value in self.values], dtype=np.uint8)
        rows = per_run.repeat(self.lengths).reshape(height, width)
        return pack_rows(rows, bits)


def run_length(n: int) -> bytes:
    """A run length on the wire: ``n - 1`` as 255-bytes and a final byte below 255."""
    past = n - 1
    if past < 255:
        return bytes((past,))
    return b"\xff" * (past // 255) + bytes((past % 255,))


def pack_rows(indexes: np.ndarray, bits: int) -> bytes:
    """Palette indexes (height x width) packed ``bits`` to a pixel, most
    significant bits first, each row padded to a byte."""
    if bits == 1:
        return np.packbits(indexes, axis=1).tobytes()
    height, width = indexes.shape
    per_byte = 8 // bits
    padded = np.zeros((height, -(-width // per_byte) * per_byte), dtype=np.uint8)
    padded[:, :width] = indexes
    fields = padded.reshape(height, -1, per_byte)
    shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)
    packed: np.ndarray = np.bitwise_or.reduce(fields << shifts, axis=2)
    return packed.tobytes()
