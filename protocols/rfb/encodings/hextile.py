"""Hextile encoding: 16x16 tiles, each raw or a small RRE of its own.

Every tile starts with a subencoding byte.  Raw tiles carry their pixels;
other tiles carry an optional background, an optional foreground and
subrectangles packed into two bytes each (plus a pixel when coloured).
Background and foreground carry over from the previous tile when not
sent, except that nothing carries over a Raw tile and the foreground does
not carry over a tile with coloured subrectangles.

The encoder classifies all tiles at once with numpy (solid, two colours,
more), finds subrectangles for the tiles that could beat Raw in one
vectorised pass, and only the final per-tile choice and byte assembly run
tile by tile.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..constants import Encoding
from ..errors import ProtocolError, require
from ..pixelformat import PixelCodec
from .base import DecodeGen, Decoder, Rect, StatelessEncoder, pixels_result, read_exact
from .hextile_runs import AREA, TileRuns, run_subrects, tile_runs
from .rre import paint_subrects, run_starts

TILE = 16
RAW = 1
BACKGROUND = 2
FOREGROUND = 4
ANY_SUBRECTS = 8
COLOURED = 16
_KNOWN_FLAGS = RAW | BACKGROUND | FOREGROUND | ANY_SUBRECTS | COLOURED
_MAX_SUBRECTS = 255

_SOLID, _TWO, _MANY = 0, 1, 2
_CENTRE = TILE * (TILE // 2) + TILE // 2  # a tile's centre pixel, in a flat tile


def _tile_grid(h: int, w: int) -> tuple[int, int]:
    return -(-h // TILE), -(-w // TILE)


@functools.lru_cache(maxsize=32)
def _tile_sizes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Height and width of every tile, in wire order (read-only, shared)."""
    rows, cols = _tile_grid(h, w)
    heights = np.repeat(np.minimum(TILE, h - TILE * np.arange(rows)), cols)
    widths = np.tile(np.minimum(TILE, w - TILE * np.arange(cols)), rows)
    heights.flags.writeable = widths.flags.writeable = False
    return heights, widths


# -- encoder ---------------------------------------------------------------


@dataclass
class _Analysis:
    """Per-tile facts the encoder chooses from, all in wire pixel values."""

    blocks: np.ndarray  # (n, 16, 16), padded by repeating edge pixels
    heights: np.ndarray
    widths: np.ndarray
    kind: np.ndarray  # _SOLID, _TWO or _MANY
    background: np.ndarray
    foreground: np.ndarray  # the other colour of _TWO tiles
    candidate: np.ndarray  # tiles whose subrects are worth finding
    floor: np.ndarray  # a lower bound on each tile's encoded size
    runs: TileRuns | None = None  # of the tiles run_tiles (those of several colours)
    run_tiles: np.ndarray | None = None


def _to_blocks(words: np.ndarray) -> np.ndarray:
    """(n, 256) tiles; the margin repeats edge pixels, adding no colours."""
    h, w = words.shape
    rows, cols = _tile_grid(h, w)
    if rows * TILE != h or cols * TILE != w:
        words = np.pad(words, ((0, rows * TILE - h), (0, cols * TILE - w)), mode="edge")
    tiled = words.reshape(rows, TILE, cols, TILE).swapaxes(1, 2)
    return tiled.reshape(rows * cols, TILE * TILE)


def _most_common_per_row(values: np.ndarray) -> np.ndarray:
    """Most frequent value of each row of a 2-D array (the smallest on ties).

    Each row is sorted; its longest run of equal values wins, the first
    such run on ties.  Runs are scored length first, then earlier
    position, so one maximum per row picks the winner.
    """
    ordered = np.sort(values, axis=1)
    rows, width = ordered.shape
    change = np.empty(ordered.shape, dtype=bool)
    change[:, 0] = True
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=change[:, 1:])
    at = np.flatnonzero(change)
    column = at % width
    score = np.diff(at, append=ordered.size) * width + (width - 1 - column)
    best = np.maximum.reduceat(score, np.flatnonzero(column == 0))
    common: np.ndarray = ordered[np.arange(rows), width - 1 - best % width]
    return common


def _most_of_one_value_per_row(values: np.ndarray) -> np.ndarray:
    """Per row, an upper bound on how often any one value occurs: a low-byte histogram.

    Rows are counted 256 at a time, so each histogram (16-bit keys: row,
    low byte) stays small enough for the processor's caches.
    """
    low = values.astype(np.uint8)  # unsigned casts keep the low bits
    most = np.empty(values.shape[0], dtype=np.intp)
    row_keys = (np.arange(256, dtype=np.uint16) << 8)[:, None]
    for start in range(0, low.shape[0], 256):
        part = low[start : start + 256]
        keys = part.astype(np.uint16)
        keys |= row_keys[: part.shape[0]]
        counts = np.bincount(keys.reshape(-1), minlength=part.shape[0] * 256)
        most[start : start + part.shape[0]] = counts.reshape(-1, 256).max(axis=1)
    return most


@dataclass(frozen=True)
class _Colours:
    """Of tiles that are not solid: two-coloured or not, background, other colour."""

    two: np.ndarray
    background: np.ndarray  # for tiles of more colours: provisional
    foreground: np.ndarray
    majority: np.ndarray  # the lowest or highest value where it covers most pixels
    has_majority: np.ndarray


def _classify(runs: TileRuns, low: np.ndarray, high: np.ndarray) -> _Colours:
    """Two colours when the lowest and highest values cover the tile.

    The background of a two-colour tile is its first pixel's colour
    unless the other colour covers more than half.
    """
    n_low = runs.per_tile(runs.length * (runs.colour == runs.spread(low)))
    n_high = runs.per_tile(runs.length * (runs.colour == runs.spread(high)))
    two = n_low + n_high == TILE * TILE
    first = runs.colour[runs.first]
    n_first = np.where(first == low, n_low, n_high)
    other = np.where(first == low, high, low)
    first_wins = 2 * n_first >= TILE * TILE
    return _Colours(
        two,
        np.where(first_wins, first, other),
        np.where(first_wins, other, first),
        np.where(2 * n_low > TILE * TILE, low, high),
        2 * np.maximum(n_low, n_high) > TILE * TILE,
    )


def _subrect_bytes(count: np.ndarray, bpp: int) -> np.ndarray:
    """Bytes of a coloured-subrect tile with ``count`` subrects, background carried."""
    return 2 + count * (bpp + 2)


def _analyse(words: np.ndarray, bpp: int) -> _Analysis:
    """Classify every tile; find backgrounds only where subrects might beat Raw."""
    h, w = words.shape
    flat = _to_blocks(words)
    heights, widths = _tile_sizes(h, w)
    low, high = flat.min(axis=1), flat.max(axis=1)
    n = low.size
    a = _Analysis(
        blocks=flat.reshape(-1, TILE, TILE),
        heights=heights,
        widths=widths,
        kind=np.full(n, _SOLID, dtype=np.int8),
        background=low,
        foreground=high,
        candidate=np.zeros(n, dtype=bool),
        floor=np.ones(n, dtype=np.intp),
    )
    busy = np.flatnonzero(low != high)
    tiles = flat[busy]
    starts = run_starts(tiles.reshape(-1, TILE, TILE)).reshape(busy.size, TILE * TILE)
    run_counts = _count_per_row(starts)
    kept = np.flatnonzero(_not_ruled_out(a, tiles, starts, run_counts, busy, bpp))
    if kept.size < busy.size:
        busy, tiles, starts, run_counts = busy[kept], tiles[kept], starts[kept], run_counts[kept]
    if busy.size:
        _analyse_busy(a, tile_runs(tiles, starts, run_counts), tiles, busy, bpp)
    return a


def _not_ruled_out(
    a: _Analysis,
    tiles: np.ndarray,
    starts: np.ndarray,
    run_counts: np.ndarray,
    busy: np.ndarray,
    bpp: int,
) -> np.ndarray:
    """Per busy tile: False where subrects provably cost more than Raw (marked so).

    Only tiles with more runs than Raw has room for subrects are checked
    (photos, noise), pixel by pixel, before any of their runs is listed.
    A tile of more than two colours needs a subrect per corner pixel (a
    run start unlike the pixel above) not of its background; a low-byte
    histogram bounds the background's share from above.
    """
    raw_size = a.heights[busy] * a.widths[busy] * bpp
    keep = np.ones(busy.size, dtype=bool)
    crowded = np.flatnonzero(run_counts * (bpp + 2) > raw_size)
    if not crowded.size:
        return keep
    block, low, high = tiles[crowded], a.background[busy[crowded]], a.foreground[busy[crowded]]
    two = _count_per_row(block == low[:, None]) + _count_per_row(block == high[:, None]) == AREA
    unlike_above = np.ones(block.shape, dtype=bool)
    np.not_equal(block[:, TILE:], block[:, :-TILE], out=unlike_above[:, TILE:])
    corners = _count_per_row(starts[crowded] & unlike_above)
    spare = _most_of_one_value_per_row(block)
    drop = crowded[~two & (_subrect_bytes(corners - spare, bpp) >= 1 + raw_size[crowded])]
    a.kind[busy[drop]] = _MANY
    a.floor[busy[drop]] = 1 + raw_size[drop]
    keep[drop] = False
    return keep


def _count_per_row(mask: np.ndarray) -> np.ndarray:
    """How many values are True in each row of a (n, 256) bool array.

    The rows are summed as 64-bit words, eight byte-wide counters at a
    time, then the counters are folded together.
    """
    words = np.ascontiguousarray(mask).view(np.uint64).sum(axis=1, dtype=np.uint64)
    pairs = (words & 0x00FF00FF00FF00FF) + ((words >> 8) & 0x00FF00FF00FF00FF)
    counts: np.ndarray = ((pairs * 0x0001000100010001) >> 48).astype(np.intp)
    return counts


def _most_common(tiles: np.ndarray, rows: np.ndarray, colours: _Colours) -> np.ndarray:
    """The most common value of each of ``rows``.

    A value that covers more than half a tile is its most common: the
    lowest or highest value, or else the centre pixel's, often is.  Only
    tiles where none of them is are sorted.
    """
    common: np.ndarray = colours.majority[rows]
    unsettled = np.flatnonzero(~colours.has_majority[rows])
    block = tiles[rows[unsettled]]
    centre = block[:, _CENTRE]
    held = 2 * _count_per_row(block == centre[:, None]) > block.shape[1]
    common[unsettled[held]] = centre[held]
    common[unsettled[~held]] = _most_common_per_row(block[~held])
    return common


def _analyse_busy(
    a: _Analysis, runs: TileRuns, tiles: np.ndarray, busy: np.ndarray, bpp: int
) -> None:
    """Fill in the tiles of more than one colour, working on their runs.

    A tile of more colours needs a subrect per corner pixel (a run's first
    pixel unlike the one above) not of its background; bounding the
    background's share by a low-byte histogram rules most noisy tiles out
    before their colours are sorted.
    """
    colours = _classify(runs, a.background[busy], a.foreground[busy])
    total = runs.per_tile(runs.corner)
    raw_size = a.heights[busy] * a.widths[busy] * bpp
    two = colours.two
    background = colours.background
    floor = np.where(two, np.minimum(1 + raw_size, 4), 1 + raw_size)
    candidate = two.copy()
    many = np.flatnonzero(~two)
    hopeful = _subrect_bytes(total[many], bpp) < 1 + raw_size[many]
    unsure = many[~hopeful]
    spare = _most_of_one_value_per_row(tiles[unsure])
    hopeful[~hopeful] = _subrect_bytes(total[unsure] - spare, bpp) < 1 + raw_size[unsure]
    chosen = many[hopeful]
    background[chosen] = _most_common(tiles, chosen, colours)
    own = runs.per_tile(runs.corner & (runs.colour == runs.spread(background)))
    needed = total[chosen] - own[chosen]
    floor[chosen] = np.minimum(floor[chosen], _subrect_bytes(needed, bpp))
    candidate[chosen] = 1 + needed * (bpp + 2) < raw_size[chosen]
    a.kind[busy] = np.where(two, _TWO, _MANY)
    a.background[busy] = background
    a.foreground[busy] = colours.foreground
    a.floor[busy] = floor
    a.candidate[busy] = candidate
    a.runs, a.run_tiles = runs, busy


@dataclass
class _Carry:
    """Background and foreground the peer will assume for the next tile."""

    background: int | None = None
    foreground: int | None = None


@dataclass(frozen=True)
class _SubrectTable:
    """Packed subrects of candidate tiles; tile i owns entries offsets[i]..+counts[i]."""

    counts: np.ndarray
    offsets: np.ndarray
    mono: bytes  # 2 bytes each
    coloured: bytes  # pixel + 2 bytes each


@dataclass(frozen=True)
class _Plan:
    """Per tile, what goes out: Raw or not, and which colours are sent."""

    raw: np.ndarray
    mono: np.ndarray  # subrects in the foreground colour
    coloured: np.ndarray  # subrects with their own colours
    send_bg: np.ndarray
    send_fg: np.ndarray


def _plan(a: _Analysis, counts: np.ndarray, bpp: int) -> _Plan:
    """Choose Raw or subrects per tile exactly as a tile-by-tile writer would.

    A tile's size depends on what the previous tiles left the peer
    assuming, which depends on whether they went Raw.  Each round
    recomputes every choice from the previous round's; round k gets at
    least the first k tiles right, so a round that changes nothing has
    every tile right.  Real content settles in two or three rounds.
    """
    two = a.kind == _TWO
    solid = a.kind == _SOLID
    possible = a.candidate & (counts <= _MAX_SUBRECTS)
    base = 2 + counts * np.where(two, 2, bpp + 2)
    limit = 1 + a.heights * a.widths * bpp
    raw = ~solid & (~possible | (base + bpp + two * bpp >= limit))
    for _ in range(raw.size + 1):
        bg_cost, fg_cost = _costs(a, raw, two, bpp)
        again = ~solid & (~possible | (base + bg_cost + two * fg_cost >= limit))
        if np.array_equal(again, raw):
            break
        raw = again
    mono = two & ~raw
    return _Plan(raw, mono, (a.kind == _MANY) & ~raw, ~raw & (bg_cost > 0), mono & (fg_cost > 0))


def _costs(
    a: _Analysis, raw: np.ndarray, two: np.ndarray, bpp: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per tile, the bytes its background and foreground cost given the Raw choices.

    The background carries over any tile but a Raw one; the foreground
    is the one of the last tile with foreground subrects, unless a Raw
    tile or a tile with coloured subrects came after it.
    """
    n = raw.size
    kept_before = np.zeros(n, dtype=bool)
    kept_before[1:] = ~raw[:-1] & (a.background[1:] == a.background[:-1])
    mono = two & ~raw
    sets_fg = raw | ~(two | (a.kind == _SOLID))
    last = np.maximum.accumulate(np.where(sets_fg | mono, np.arange(n), -1))
    before = np.concatenate(([-1], last[:-1]))
    source = np.maximum(before, 0)
    fg_kept = (before >= 0) & mono[source] & (a.foreground[source] == a.foreground)
    return np.where(kept_before, 0, bpp), np.where(fg_kept, 0, bpp)


def _subrect_table(analysis: _Analysis, codec: PixelCodec) -> _SubrectTable:
    """Find and pack the subrects of every candidate tile."""
    runs, tiles = analysis.runs, analysis.run_tiles
    if runs is None or tiles is None:  # every tile is solid
        tiles = np.empty(0, dtype=np.intp)
        none = np.empty((0, TILE * TILE), dtype=bool)
        runs = tile_runs(none.astype(analysis.blocks.dtype), none, tiles)
    candidate, background = analysis.candidate[tiles], analysis.background[tiles]
    heads = np.flatnonzero(runs.spread(candidate) & (runs.colour != runs.spread(background)))
    found = run_subrects(runs, heads, analysis.widths[tiles], analysis.heights[tiles])
    tile = tiles[found.block]
    n = analysis.kind.size
    counts = np.bincount(tile, minlength=n)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    mono = np.empty((len(found), 2), dtype=np.uint8)
    mono[:, 0] = (found.x << 4) | found.y
    mono[:, 1] = ((found.w - 1) << 4) | (found.h - 1)
    coloured = np.empty(
        len(found), dtype=[("colour", codec.pf.wire_dtype), ("xy", "u1"), ("wh", "u1")]
    )
    coloured["colour"] = found.colour
    coloured["xy"] = mono[:, 0]
    coloured["wh"] = mono[:, 1]
    return _SubrectTable(counts, offsets, mono.tobytes(), coloured.tobytes())


def _headers(
    a: _Analysis, plan: _Plan, counts: np.ndarray, wire: np.dtype
) -> tuple[bytes, np.ndarray]:
    """Every tile's subencoding byte, colours and subrect count, and where each starts."""
    bpp = wire.itemsize
    subrects = plan.mono | plan.coloured
    flags = (
        np.where(plan.raw, RAW, 0)
        | np.where(plan.send_bg, BACKGROUND, 0)
        | np.where(plan.send_fg, FOREGROUND, 0)
        | np.where(subrects, ANY_SUBRECTS, 0)
        | np.where(plan.coloured, COLOURED, 0)
    )
    length = 1 + bpp * plan.send_bg + bpp * plan.send_fg + subrects
    ends = np.cumsum(length)
    starts = ends - length
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    out[starts] = flags
    span = np.arange(bpp)
    pixels = a.background.astype(wire).view(np.uint8).reshape(-1, bpp)
    out[(starts + 1)[plan.send_bg, None] + span] = pixels[plan.send_bg]
    pixels = a.foreground.astype(wire).view(np.uint8).reshape(-1, bpp)
    out[(starts + 1 + bpp * plan.send_bg)[plan.send_fg, None] + span] = pixels[plan.send_fg]
    out[(ends - 1)[subrects]] = counts[subrects]
    return out.tobytes(), np.append(starts, ends[-1])


def _raw_pixels(a: _Analysis, tiles: np.ndarray, wire: np.dtype) -> bytes:
    """The pixels of ``tiles``, tile after tile, row by row, in wire form."""
    blocks = a.blocks[tiles]
    heights, widths = a.heights[tiles], a.widths[tiles]
    if (heights < TILE).any() or (widths < TILE).any():
        index = np.arange(TILE)
        inside = (index[:, None] < heights[:, None, None]) & (index < widths[:, None, None])
        blocks = blocks[inside]
    pixels: bytes = blocks.astype(wire).tobytes()
    return pixels


def _bodies(
    a: _Analysis, plan: _Plan, table: _SubrectTable, wire: np.dtype
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Every tile's subrects or raw pixels in one buffer, and where each starts and ends."""
    bpp = wire.itemsize
    raw_lengths = a.heights * a.widths * bpp * plan.raw
    raw_starts = np.cumsum(raw_lengths) - raw_lengths
    raw_at = len(table.mono) + len(table.coloured)
    starts = np.where(plan.raw, raw_at + raw_starts, 0)
    starts = np.where(plan.mono, 2 * table.offsets, starts)
    starts = np.where(plan.coloured, len(table.mono) + (bpp + 2) * table.offsets, starts)
    lengths = raw_lengths + table.counts * (2 * plan.mono + (bpp + 2) * plan.coloured)
    body = table.mono + table.coloured + _raw_pixels(a, np.flatnonzero(plan.raw), wire)
    return body, starts, starts + lengths


def _assemble(
    head: bytes, head_at: np.ndarray, body: bytes, starts: np.ndarray, ends: np.ndarray
) -> bytes:
    """Interleave each tile's header with its body: one gather of every output byte."""
    n = starts.size
    source_at = np.empty(2 * n, dtype=np.intp)
    source_at[0::2] = head_at[:-1]
    source_at[1::2] = starts + len(head)
    lengths = np.empty(2 * n, dtype=np.intp)
    lengths[0::2] = np.diff(head_at)
    lengths[1::2] = ends - starts
    out_at = np.cumsum(lengths) - lengths
    index = np.repeat(source_at - out_at, lengths)
    index += np.arange(index.size)
    out: bytes = np.frombuffer(head + body, dtype=np.uint8)[index].tobytes()
    return out


class HextileEncoder(StatelessEncoder):
    """Hextile payloads.

    ``encode_unless_raw`` answers None, without finding any subrects, when
    the tiles' size bounds already add up to more than Raw.
    """

    encoding = Encoding.HEXTILE
    # Each band costs a fixed number of numpy calls: bands six times the
    # usual size (384 rows of a 1920-wide screen, about 4 ms to encode)
    # spread that cost over more tiles.
    band_pixels = 3 << 18

    def encode(self, pixels: np.ndarray, codec: PixelCodec) -> bytes:
        """The Hextile payload, whatever its size."""
        words = codec.to_words(pixels)
        if words.size == 0:
            return b""
        return _encode(_analyse(words, codec.bytes_per_pixel), codec)

    def encode_unless_raw(self, pixels: np.ndarray, codec: PixelCodec) -> bytes | None:
        """The Hextile payload, or None when it is provably longer than Raw."""
        words = codec.to_words(pixels)
        if words.size == 0:
            return b""
        bpp = codec.bytes_per_pixel
        analysis = _analyse(words, bpp)
        if int(analysis.floor.sum()) > words.size * bpp:
            return None
        return _encode(analysis, codec)


def _encode(analysis: _Analysis, codec: PixelCodec) -> bytes:
    bpp = codec.bytes_per_pixel
    table = _subrect_table(analysis, codec)
    plan = _plan(analysis, table.counts, bpp)
    wire = codec.pf.wire_dtype
    head, head_at = _headers(analysis, plan, table.counts, wire)
    body, starts, ends = _bodies(analysis, plan, table, wire)
    return _assemble(head, head_at, body, starts, ends)


# -- decoder ---------------------------------------------------------------


@dataclass
class _Collected:
    """What the tiles said, painted in one go once the last tile is read."""

    backgrounds: list[int] = field(default_factory=list)
    raw: list[tuple[int, bytes]] = field(default_factory=list)
    mono_tiles: list[int] = field(default_factory=list)
    mono_counts: list[int] = field(default_factory=list)
    mono_colours: list[int] = field(default_factory=list)
    mono: list[bytes] = field(default_factory=list)
    coloured: list[bytes] = field(default_factory=list)
    coloured_tiles: list[int] = field(default_factory=list)
    coloured_counts: list[int] = field(default_factory=list)


class HextileDecoder(Decoder):
    encoding = Encoding.HEXTILE

    def decode(self, rect: Rect, codec: PixelCodec) -> DecodeGen:
        heights, widths = _tile_sizes(rect.h, rect.w)
        got = _Collected()
        carry = _Carry()
        for i, (th, tw) in enumerate(zip(heights.tolist(), widths.tolist(), strict=True)):
            carry = yield from _read_tile(i, th, tw, codec, carry, got)
        words = _paint(rect, codec, got, heights, widths)
        return pixels_result(codec.from_words(words), rect)


def _read_tile(
    i: int, th: int, tw: int, codec: PixelCodec, carry: _Carry, got: _Collected
) -> Generator[int, bytes, _Carry]:
    """Read one tile into ``got``; return the carry-over for the next."""
    bpp = codec.bytes_per_pixel
    (flags,) = yield from read_exact(1)
    if flags & RAW:
        got.backgrounds.append(0)
        got.raw.append((i, (yield from read_exact(th * tw * bpp))))
        return _Carry()
    if flags & ~_KNOWN_FLAGS:  # the reason formatted only when needed: once per tile
        raise ProtocolError(f"unknown hextile subencoding bits {flags:#04x}")
    require(
        not (flags & FOREGROUND and flags & COLOURED),
        "hextile tile sets both ForegroundSpecified and SubrectsColoured",
    )
    head_size = bpp * (bool(flags & BACKGROUND) + bool(flags & FOREGROUND))
    head = yield from read_exact(head_size + bool(flags & ANY_SUBRECTS))
    order: Literal["big", "little"] = "big" if codec.pf.big_endian else "little"
    background, foreground = carry.background, carry.foreground
    if flags & BACKGROUND:
        background = int.from_bytes(head[:bpp], order)
    if flags & FOREGROUND:
        foreground = int.from_bytes(head[head_size - bpp : head_size], order)
    if background is None:
        raise ProtocolError("hextile tile relies on a background that is not defined")
    got.backgrounds.append(background)
    count = head[-1] if flags & ANY_SUBRECTS else 0
    if flags & COLOURED:
        got.coloured.append((yield from read_exact(count * (bpp + 2))))
        got.coloured_tiles.append(i)
        got.coloured_counts.append(count)
        return _Carry(background, None)
    if count:
        if foreground is None:
            raise ProtocolError("hextile subrects rely on a foreground that is not defined")
        got.mono.append((yield from read_exact(count * 2)))
        got.mono_tiles.append(i)
        got.mono_counts.append(count)
        got.mono_colours.append(foreground)
    return _Carry(background, foreground)


def _paint(
    rect: Rect, codec: PixelCodec, got: _Collected, heights: np.ndarray, widths: np.ndarray
) -> np.ndarray:
    """Wire pixel values for the whole rectangle from the collected tiles."""
    rows, cols = _tile_grid(rect.h, rect.w)
    if rows * cols == 0:
        return np.zeros((rect.h, rect.w), dtype=np.uint32)
    grid = np.array(got.backgrounds, dtype=np.uint32).reshape(rows, cols)
    words = np.repeat(np.repeat(grid, TILE, axis=0), TILE, axis=1)[: rect.h, : rect.w]
    words = np.ascontiguousarray(words)
    wire = codec.pf.wire_dtype
    for i, data in got.raw:
        y, x = divmod(i, cols)
        tile = np.frombuffer(data, dtype=wire).reshape(heights[i], widths[i])
        words[y * TILE : y * TILE + heights[i], x * TILE : x * TILE + widths[i]] = tile
    tiles, xy, wh, colour = _gather_subrects(got, wire)
    _paint_subrects(words, tiles, xy, wh, colour, cols, heights, widths)
    return words


def _gather_subrects(
    got: _Collected, wire: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All subrects as arrays (tile, xy byte, wh byte, colour)."""
    mono = np.frombuffer(b"".join(got.mono), dtype=np.uint8).reshape(-1, 2)
    mono_tiles = np.repeat(np.array(got.mono_tiles, dtype=np.intp), got.mono_counts)
    mono_colour = np.repeat(np.array(got.mono_colours, dtype=np.uint32), got.mono_counts)
    record = np.dtype([("colour", wire), ("xy", "u1"), ("wh", "u1")])
    coloured = np.frombuffer(b"".join(got.coloured), dtype=record)
    coloured_tiles = np.repeat(np.array(got.coloured_tiles, dtype=np.intp), got.coloured_counts)
    return (
        np.concatenate((mono_tiles, coloured_tiles)),
        np.concatenate((mono[:, 0], coloured["xy"])),
        np.concatenate((mono[:, 1], coloured["wh"])),
        np.concatenate((mono_colour, coloured["colour"].astype(np.uint32))),
    )


def _paint_subrects(
    words: np.ndarray,
    tiles: np.ndarray,
    xy: np.ndarray,
    wh: np.ndarray,
    colour: np.ndarray,
    cols: int,
    heights: np.ndarray,
    widths: np.ndarray,
) -> None:
    """Check every subrect lies in its tile, then paint them all."""
    x = (xy >> 4).astype(np.intp)
    y = (xy & 15).astype(np.intp)
    right = x + (wh >> 4) + 1
    bottom = y + (wh & 15) + 1
    inside = (right <= widths[tiles]) & (bottom <= heights[tiles])
    require(bool(inside.all()), "hextile subrectangle extends outside its tile")
    tile_y, tile_x = np.divmod(tiles, cols)
    ox, oy = tile_x * TILE, tile_y * TILE
    paint_subrects(words, ox + x, oy + y, ox + right, oy + bottom, colour)
