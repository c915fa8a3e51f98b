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

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from ..constants import Encoding
from ..errors import ProtocolError, require
from ..pixelformat import PixelCodec
from .base import DecodeGen, Rect, pixels_result, read_exact
from .rre import find_subrects, paint_subrects

TILE = 16
RAW = 1
BACKGROUND = 2
FOREGROUND = 4
ANY_SUBRECTS = 8
COLOURED = 16
_KNOWN_FLAGS = RAW | BACKGROUND | FOREGROUND | ANY_SUBRECTS | COLOURED
_MAX_SUBRECTS = 255

_SOLID, _TWO, _MANY = 0, 1, 2


def _tile_grid(h: int, w: int) -> tuple[int, int]:
    return -(-h // TILE), -(-w // TILE)


def _tile_sizes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Height and width of every tile, in wire order."""
    rows, cols = _tile_grid(h, w)
    heights = np.minimum(TILE, h - TILE * np.arange(rows))
    widths = np.minimum(TILE, w - TILE * np.arange(cols))
    return np.repeat(heights, cols), np.tile(widths, rows)


# -- encoder ---------------------------------------------------------------


@dataclass
class _Analysis:
    """Per-tile facts the encoder chooses from, all in wire pixel values."""

    blocks: np.ndarray  # (n, 16, 16), padding set to the tile background
    heights: np.ndarray
    widths: np.ndarray
    kind: np.ndarray  # _SOLID, _TWO or _MANY
    background: np.ndarray
    foreground: np.ndarray  # the other colour of _TWO tiles
    candidate: np.ndarray  # tiles whose subrectangles are worth finding


def _to_blocks(words: np.ndarray) -> np.ndarray:
    """(n, 256) tiles; the margin repeats edge pixels, adding no colours."""
    h, w = words.shape
    rows, cols = _tile_grid(h, w)
    padded = np.pad(words, ((0, rows * TILE - h), (0, cols * TILE - w)), mode="edge")
    tiled = padded.reshape(rows, TILE, cols, TILE).swapaxes(1, 2)
    return tiled.reshape(rows * cols, TILE * TILE)


def _margin_mask(h: int, w: int) -> np.ndarray:
    """(n, 256) bool, True on padding outside the rectangle."""
    rows, cols = _tile_grid(h, w)
    outside = np.ones((rows * TILE, cols * TILE), dtype=bool)
    outside[:h, :w] = False
    return outside.reshape(rows, TILE, cols, TILE).swapaxes(1, 2).reshape(rows * cols, -1)


def _most_common_per_row(values: np.ndarray) -> np.ndarray:
    """Most frequent value of each row of a 2-D array."""
    ordered = np.sort(values, axis=1)
    count = ordered.shape[1]
    index = np.arange(count)
    run_start = np.zeros(ordered.shape, dtype=np.intp)
    run_start[:, 1:] = np.where(ordered[:, 1:] != ordered[:, :-1], index[1:], 0)
    np.maximum.accumulate(run_start, axis=1, out=run_start)
    best = np.argmax(index - run_start, axis=1)
    return ordered[np.arange(ordered.shape[0]), best]


def _classify(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tile: kind, background (most common colour), other colour."""
    first = blocks[:, 0]
    same = blocks == first[:, None]
    n_first = same.sum(axis=1)
    high = np.where(same, 0, blocks).max(axis=1)
    low = np.where(same, np.iinfo(np.uint32).max, blocks).min(axis=1)
    kind = np.full(first.shape, _MANY, dtype=np.int8)
    kind[high == low] = _TWO
    kind[n_first == blocks.shape[1]] = _SOLID
    first_wins = 2 * n_first >= blocks.shape[1]
    background = np.where(first_wins, first, high)
    foreground = np.where(first_wins, high, first)
    many = kind == _MANY
    if many.any():
        background[many] = _most_common_per_row(blocks[many])
    return kind, background, foreground


def _corner_count(blocks: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Lower bound on subrectangles per tile.

    A non-background pixel whose left and upper neighbours (or tile edge)
    differ from it is the top-left corner of whichever one-colour rect
    covers it, so each such pixel needs a rect of its own.
    """
    fresh = blocks != background[:, None, None]
    fresh[:, :, 1:] &= blocks[:, :, 1:] != blocks[:, :, :-1]
    fresh[:, 1:, :] &= blocks[:, 1:, :] != blocks[:, :-1, :]
    return fresh.sum(axis=(1, 2))


def _analyse(words: np.ndarray, bpp: int) -> _Analysis:
    h, w = words.shape
    flat = _to_blocks(words)
    kind, background, foreground = _classify(flat)
    if h % TILE or w % TILE:
        flat = np.where(_margin_mask(h, w), background[:, None], flat)
    blocks = flat.reshape(-1, TILE, TILE)
    heights, widths = _tile_sizes(h, w)
    raw_size = heights * widths * bpp
    candidate = kind == _TWO
    many = kind == _MANY
    if many.any():
        corners = _corner_count(blocks[many], background[many])
        candidate[many] = 1 + corners * (bpp + 2) < raw_size[many]
    return _Analysis(blocks, heights, widths, kind, background, foreground, candidate)


@dataclass
class _Carry:
    """Background and foreground the peer will assume for the next tile."""

    background: int | None = None
    foreground: int | None = None


@dataclass(frozen=True)
class _SubrectTable:
    """Packed subrects of candidate tiles; tile i owns entries offsets[i]..+counts[i]."""

    counts: list[int]
    offsets: list[int]
    mono: bytes  # 2 bytes each
    coloured: bytes  # pixel + 2 bytes each


class _TileWriter:
    """Assembles tiles one by one, tracking what carries over."""

    def __init__(self, analysis: _Analysis, codec: PixelCodec, table: _SubrectTable) -> None:
        self.analysis = analysis
        self.codec = codec
        self.bpp = codec.bytes_per_pixel
        self.counts = table.counts
        self.offsets = table.offsets
        self.mono = table.mono
        self.coloured = table.coloured
        self.carry = _Carry()
        self.parts: list[bytes] = []
        self.kinds: list[int] = analysis.kind.tolist()
        self.backgrounds: list[int] = analysis.background.tolist()
        self.foregrounds: list[int] = analysis.foreground.tolist()
        self.candidates: list[bool] = analysis.candidate.tolist()
        self.areas: list[int] = (analysis.heights * analysis.widths).tolist()
        wire = codec.pf.wire_dtype
        self.bg_bytes = analysis.background.astype(wire).tobytes()
        self.fg_bytes = analysis.foreground.astype(wire).tobytes()

    def write_all(self) -> bytes:
        for i in range(len(self.kinds)):
            self.write(i)
        return b"".join(self.parts)

    def write(self, i: int) -> None:
        if self.kinds[i] == _SOLID:
            self._solid(i)
            return
        size = self._subrect_size(i)
        if size is None or size >= 1 + self.areas[i] * self.bpp:
            self._raw(i)
        elif self.kinds[i] == _TWO:
            self._mono(i)
        else:
            self._coloured(i)

    def _subrect_size(self, i: int) -> int | None:
        """Bytes the tile needs as subrects, or None if that form is ruled out."""
        count = self.counts[i]
        if not self.candidates[i] or count > _MAX_SUBRECTS:
            return None
        if self.kinds[i] == _TWO:
            return 2 + self._bg_cost(i) + self._fg_cost(i) + 2 * count
        return 2 + self._bg_cost(i) + count * (self.bpp + 2)

    def _bg_cost(self, i: int) -> int:
        return 0 if self.carry.background == self.backgrounds[i] else self.bpp

    def _fg_cost(self, i: int) -> int:
        return 0 if self.carry.foreground == self.foregrounds[i] else self.bpp

    def _pixel(self, table: bytes, i: int) -> bytes:
        return table[i * self.bpp : (i + 1) * self.bpp]

    def _head(self, i: int, flags: int) -> list[bytes]:
        """Subencoding byte and background, sending the latter if needed."""
        if self._bg_cost(i):
            self.carry.background = self.backgrounds[i]
            return [bytes([flags | BACKGROUND]), self._pixel(self.bg_bytes, i)]
        return [bytes([flags])]

    def _solid(self, i: int) -> None:
        self.parts += self._head(i, 0)

    def _mono(self, i: int) -> None:
        count = self.counts[i]
        send_fg = self._fg_cost(i) > 0
        head = self._head(i, ANY_SUBRECTS | (FOREGROUND if send_fg else 0))
        if send_fg:
            head.append(self._pixel(self.fg_bytes, i))
            self.carry.foreground = self.foregrounds[i]
        start = self.offsets[i]
        head.append(bytes([count]))
        head.append(self.mono[2 * start : 2 * (start + count)])
        self.parts += head

    def _coloured(self, i: int) -> None:
        count = self.counts[i]
        head = self._head(i, ANY_SUBRECTS | COLOURED)
        self.carry.foreground = None
        size = self.bpp + 2
        start = self.offsets[i]
        head.append(bytes([count]))
        head.append(self.coloured[size * start : size * (start + count)])
        self.parts += head

    def _raw(self, i: int) -> None:
        a = self.analysis
        tile = a.blocks[i, : a.heights[i], : a.widths[i]]
        self.parts += [bytes([RAW]), tile.astype(self.codec.pf.wire_dtype).tobytes()]
        self.carry = _Carry()


def _subrect_table(analysis: _Analysis, codec: PixelCodec) -> _SubrectTable:
    """Find and pack the subrects of every candidate tile."""
    chosen = np.flatnonzero(analysis.candidate)
    found = find_subrects(analysis.blocks[chosen], analysis.background[chosen])
    tile = chosen[found.block]
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
    return _SubrectTable(counts.tolist(), offsets.tolist(), mono.tobytes(), coloured.tobytes())


class HextileEncoder:
    encoding = Encoding.HEXTILE

    def encode(self, pixels: np.ndarray, codec: PixelCodec) -> bytes:
        words = codec.to_words(pixels)
        if words.size == 0:
            return b""
        analysis = _analyse(words, codec.bytes_per_pixel)
        table = _subrect_table(analysis, codec)
        return _TileWriter(analysis, codec, table).write_all()

    def configure(self, quality: int | None, compression: int | None) -> None:
        pass


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


class HextileDecoder:
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
    require(not flags & ~_KNOWN_FLAGS, f"unknown hextile subencoding bits {flags:#04x}")
    require(
        not (flags & FOREGROUND and flags & COLOURED),
        "hextile tile sets both ForegroundSpecified and SubrectsColoured",
    )
    head_size = bpp * (bool(flags & BACKGROUND) + bool(flags & FOREGROUND))
    head = yield from read_exact(head_size + bool(flags & ANY_SUBRECTS))
    order = "big" if codec.pf.big_endian else "little"
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
