"""ZRLE tiles of a whole rectangle analysed at once: runs, colours, choice.

The rectangle's wire pixel values are first laid out tile after tile, each
tile row by row: the order they go out in, so a tile's raw form is one
slice of that array.  On it, all 64x64 tiles are analysed together: where
runs of equal values start (runs flow across row ends but not across
tiles), how many runs and colours each tile has, and from those the exact
size of every subencoding of every tile.  Each tile takes the smallest, the
lowest subencoding number on ties.  :mod:`.zrle_write` then writes them.

Colours are counted only where a palette can matter.  A tile with too many
runs for run-length encoding to beat raw needs its runs listed only for a
palette, and a spread sample of its pixels rules that out for photos and
noise: they cost a few passes over their pixels.  The runs of the other
tiles are listed; colours hashed into 1024 buckets rule a palette out for
most tiles of anti-aliased text, and only the rest have their runs sorted
by (tile, value) to find their palettes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..pixelformat import PixelCodec

TILE = 64
RAW = 0
SOLID = 1
MAX_PACKED = 16
RLE_FLAG = 128  # top bit of the subencoding: run-length encoded
PLAIN_RLE = RLE_FLAG
MAX_PALETTE = 127
# Pixels per tile sampled to rule a palette out: a 64x64 tile of a photo or
# of noise shows more than 127 colours in 256 spread pixels.
SAMPLE = 256
HASH_BITS = 10
_NO_OPTION = np.iinfo(np.int64).max


def index_bits(palette_size: int) -> int:
    """Bits per packed-palette index for a palette of 2..16 colours."""
    return 1 if palette_size == 2 else 2 if palette_size <= 4 else 4


def packed_row_bytes(width: int, bits: int) -> int:
    return (width * bits + 7) // 8


def index_bits_of(palette_sizes: np.ndarray) -> np.ndarray:
    """:func:`index_bits` of many palette sizes."""
    bits: np.ndarray = np.where(palette_sizes == 2, 1, np.where(palette_sizes <= 4, 2, 4))
    return bits


@dataclass(frozen=True)
class Grid:
    """The tiles of a width x height rectangle, in wire order (read-only, shared)."""

    widths: np.ndarray
    heights: np.ndarray
    sizes: np.ndarray  # pixels per tile
    starts: np.ndarray  # where each tile starts in the tile-order array
    ends: np.ndarray

    @property
    def count(self) -> int:
        return int(self.sizes.size)


@functools.lru_cache(maxsize=32)
def grid(width: int, height: int) -> Grid:
    cols, rows = -(-width // TILE), -(-height // TILE)
    widths = np.tile(np.minimum(TILE, width - TILE * np.arange(cols)), rows)
    heights = np.repeat(np.minimum(TILE, height - TILE * np.arange(rows)), cols)
    sizes = widths * heights
    ends = sizes.cumsum()
    made = Grid(widths, heights, sizes, ends - sizes, ends)
    for array in (made.widths, made.heights, made.sizes, made.starts, made.ends):
        array.flags.writeable = False
    return made


def tile_order(pixels: np.ndarray) -> np.ndarray:
    """A 2-D array's values tile after tile, each tile row by row (1-D copy).

    Four block copies at most: the full tiles, the narrower tiles of the
    right edge, the shorter tiles of the bottom edge and the corner tile.
    """
    height, width = pixels.shape
    out = np.empty(height * width, dtype=pixels.dtype)
    full_w, full_h = width - width % TILE, height - height % TILE
    cols, rows = full_w // TILE, full_h // TILE
    edge_w, edge_h = width - full_w, height - full_h
    top = out[: full_h * width].reshape(rows, TILE * width)
    if cols and rows:
        blocks = top[:, : cols * TILE * TILE].reshape(rows, cols, TILE, TILE)
        blocks[...] = pixels[:full_h, :full_w].reshape(rows, TILE, cols, TILE).swapaxes(1, 2)
    if edge_w and rows:
        right = top[:, cols * TILE * TILE :].reshape(rows, TILE, edge_w)
        right[...] = pixels[:full_h, full_w:].reshape(rows, TILE, edge_w)
    bottom = out[full_h * width :]
    if edge_h and cols:
        row = bottom[: cols * edge_h * TILE].reshape(cols, edge_h, TILE)
        row[...] = pixels[full_h:, :full_w].reshape(edge_h, cols, TILE).swapaxes(0, 1)
    if edge_h and edge_w:
        bottom[cols * edge_h * TILE :].reshape(edge_h, edge_w)[...] = pixels[full_h:, full_w:]
    return out


# -- runs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Runs:
    """The runs of some tiles (``tiles``, in wire order), tile after tile."""

    tiles: np.ndarray
    at: np.ndarray  # each run's first pixel in the tile-order array
    length: np.ndarray  # int32
    value: np.ndarray  # wire value
    first: np.ndarray  # each tile's first run
    counts: np.ndarray  # runs per tile

    def per_tile(self, values: np.ndarray) -> np.ndarray:
        """Sum of a per-run quantity over each tile's runs."""
        return np.add.reduceat(values, self.first, dtype=np.intp)

    def spread(self, values: np.ndarray) -> np.ndarray:
        """A per-tile quantity for every run."""
        spread: np.ndarray = values.repeat(self.counts)
        return spread

    def of(self, tiles: np.ndarray) -> np.ndarray:
        """The runs of the tiles where ``tiles`` (a mask over ``self.tiles``) is set."""
        runs: np.ndarray = self.spread(tiles).nonzero()[0]
        return runs


def run_starts(words: np.ndarray, g: Grid) -> np.ndarray:
    """Per pixel of the tile-order array: whether a run starts there."""
    new = np.empty(words.size, dtype=bool)
    new[:1] = True
    np.not_equal(words[1:], words[:-1], out=new[1:])
    new[g.starts] = True
    return new


def runs_per_tile(new: np.ndarray, g: Grid) -> np.ndarray:
    counts = np.add.reduceat(new.view(np.uint8), g.starts, dtype=np.uint16)
    return counts.astype(np.intp)


def find_runs(
    words: np.ndarray, new: np.ndarray, g: Grid, tiles: np.ndarray, counts: np.ndarray
) -> Runs:
    """The runs of ``tiles`` (``counts``: runs per tile of the grid)."""
    if tiles.size < g.count:
        wanted = np.zeros(g.count, dtype=bool)
        wanted[tiles] = True
        new = new & wanted.repeat(g.sizes)
    at = new.nonzero()[0]
    counts = counts[tiles]
    first = counts.cumsum() - counts
    length = np.empty(at.size, dtype=np.int32)
    np.subtract(at[1:], at[:-1], out=length[:-1], casting="unsafe")
    last = first + counts - 1
    length[last] = g.ends[tiles] - at[last]
    return Runs(tiles, at, length, words[at], first, counts)


# -- colours --------------------------------------------------------------------


def many_colours(words: np.ndarray, g: Grid, tiles: np.ndarray) -> np.ndarray:
    """Per tile of ``tiles``: whether a spread sample of its pixels has > 127 colours."""
    sizes = g.sizes[tiles, None]
    step = np.maximum(sizes // SAMPLE, 1)
    sample = np.sort(words[g.starts[tiles, None] + np.arange(SAMPLE) * step % sizes], axis=1)
    distinct = 1 + np.count_nonzero(sample[:, 1:] != sample[:, :-1], axis=1)
    found: np.ndarray = distinct > MAX_PALETTE
    return found


def hashed_colours(runs: Runs) -> np.ndarray:
    """Per tile of ``runs``: how many of 1024 hash buckets its colours fill.

    A lower bound on its colours, close to the count where there are a
    few hundred.
    """
    buckets = (runs.value * np.uint32(0x9E3779B1)) >> np.uint32(32 - HASH_BITS)
    buckets += runs.spread(np.arange(runs.tiles.size, dtype=np.uint32) << np.uint32(HASH_BITS))
    filled = np.zeros(runs.tiles.size << HASH_BITS, dtype=np.uint8)
    filled[buckets] = 1
    starts = np.arange(0, filled.size, 1 << HASH_BITS)
    counts: np.ndarray = np.add.reduceat(filled, starts, dtype=np.intp)
    return counts


def sort_by_tile(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort values grouped in tiles (``counts`` per tile) by (tile, value).

    Returns the order and the sorted keys (equal keys: same tile and value).
    Where (tile, value, position) fits in 64 bits the keys carry their own
    position and a plain sort, several times faster than an argsort, does.
    """
    tile = np.arange(counts.size, dtype=np.uint64).repeat(counts)
    value_bits = int(values.max()).bit_length()
    place_bits = int(values.size - 1).bit_length()
    tile_bits = int(counts.size - 1).bit_length()
    if tile_bits + value_bits + place_bits > 64:
        keys = (tile << np.uint64(32)) | values.astype(np.uint64)
        order = keys.argsort()
        return order, keys[order]
    keys = (tile << np.uint64(value_bits)) | values.astype(np.uint64)
    keys <<= np.uint64(place_bits)
    keys |= np.arange(values.size, dtype=np.uint64)
    keys.sort()
    order = (keys & np.uint64((1 << place_bits) - 1)).astype(np.intp)
    keys >>= np.uint64(place_bits)
    return order, keys


@dataclass(frozen=True)
class Palettes:
    """Colours of the tiles of some runs, each tile's in ascending wire value.

    ``sizes`` is per tile of the runs (0 where not counted); ``index`` per
    run is its colour's place in its tile's palette; ``entries`` lists one
    run of every colour, tile after tile, in palette order.
    """

    sizes: np.ndarray
    index: np.ndarray
    entries: np.ndarray


def palettes(runs: Runs, counted: np.ndarray) -> Palettes:
    """Count the colours of the tiles ``counted`` (a mask over ``runs.tiles``).

    Their runs are sorted once by (tile, value): a new key is a new colour,
    and its rank within the tile is its palette index.
    """
    sizes = np.zeros(runs.tiles.size, dtype=np.intp)
    index = np.zeros(runs.at.size, dtype=np.intp)
    chosen = runs.of(counted)
    if not chosen.size:
        return Palettes(sizes, index, chosen)
    counts = runs.counts[counted]
    order, colours = sort_by_tile(runs.value[chosen], counts)
    new = np.empty(colours.size, dtype=bool)
    new[0] = True
    np.not_equal(colours[1:], colours[:-1], out=new[1:])
    rank = new.cumsum() - 1
    first = counts.cumsum() - counts
    base = rank[first]
    sizes[counted] = rank[first + counts - 1] - base + 1
    index[chosen[order]] = rank - base.repeat(counts)
    return Palettes(sizes, index, chosen[order[new]])


# -- choice ---------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Per tile of the grid: the subencoding, and its size after the subencoding byte."""

    sub: np.ndarray
    size: np.ndarray


def choose(runs: Runs, pal: Palettes, g: Grid, solid: np.ndarray, cpixel: int) -> Choice:
    """The smallest subencoding of every tile, as (size, subencoding) orders them.

    Tiles outside ``runs`` are solid or raw.  For the others, plain RLE
    costs a CPIXEL and the length bytes per run, palette RLE its palette,
    an index byte per run and the length bytes of runs longer than one,
    a packed palette its palette and the packed rows.
    """
    sub = np.where(solid, SOLID, RAW)
    size = np.where(solid, cpixel, g.sizes * cpixel)
    if not runs.tiles.size:
        return Choice(sub, size)
    tiles, colours = runs.tiles, pal.sizes
    # Every option as one number, size * 256 + subencoding: the smallest
    # wins, the lowest subencoding among equal sizes.
    length_bytes = runs.per_tile((runs.length - 1) // 255 + 1)
    plain = runs.counts * cpixel + length_bytes
    best = np.minimum(size[tiles] * 256 + RAW, plain * 256 + PLAIN_RLE)
    with_palette = (colours >= 2) & (colours <= MAX_PALETTE)
    if with_palette.any():
        table = colours * cpixel
        rle = table + length_bytes + runs.per_tile(runs.length > 1)
        best = np.minimum(best, np.where(with_palette, rle * 256 + RLE_FLAG + colours, _NO_OPTION))
        packs = with_palette & (colours <= MAX_PACKED)
        if packs.any():
            rows = g.heights[tiles] * ((g.widths[tiles] * index_bits_of(colours) + 7) // 8)
            best = np.minimum(best, np.where(packs, (table + rows) * 256 + colours, _NO_OPTION))
    sub[tiles] = best % 256
    size[tiles] = best // 256
    return Choice(sub, size)


@dataclass(frozen=True)
class Analysis:
    """Everything a rectangle's tile data is written from."""

    g: Grid
    words: np.ndarray  # wire pixel values, tile order
    runs: Runs
    pal: Palettes
    choice: Choice


def analyse(pixels: np.ndarray, codec: PixelCodec) -> Analysis:
    """Find the runs and colours the choice needs, and choose (a non-empty rectangle)."""
    height, width = pixels.shape
    g = grid(width, height)
    words = codec.to_words(tile_order(np.asarray(pixels, dtype=np.uint32)))
    new = run_starts(words, g)
    counts = runs_per_tile(new, g)
    cpixel = codec.zrle_cpixel_bytes
    solid = counts == 1
    # Plain RLE costs at least a CPIXEL and a length byte per run.
    may_rle = counts * (cpixel + 1) < g.sizes * cpixel
    may_palette = ~solid
    crowded = ((counts > MAX_PALETTE) & ~may_rle).nonzero()[0]
    if crowded.size:
        may_palette[crowded] = ~many_colours(words, g, crowded)
    busy = (~solid & (may_rle | may_palette)).nonzero()[0]
    runs = find_runs(words, new, g, busy, counts)
    counted = may_palette[busy]
    if (runs.counts[counted] > MAX_PALETTE).any():
        counted &= hashed_colours(runs) <= MAX_PALETTE
    pal = palettes(runs, counted)
    return Analysis(g, words, runs, pal, choose(runs, pal, g, solid, cpixel))
