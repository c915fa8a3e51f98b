"""Horizontal runs of 16x16 tiles, and the subrectangles Hextile builds from them.

A tile of a few colours has far fewer runs of equal pixels than pixels, so
after one pass that finds where runs start, everything Hextile needs per
tile (how much of each colour, corner pixels, subrectangles) is worked
out run by run.  Where runs start is also kept as one 16-bit word per
tile row: whether a run continues the one directly above it (same
columns, same colour) is then a few bit operations per run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rre import Subrects

TILE = 16
AREA = TILE * TILE


def _trailing_ones_table() -> np.ndarray:
    """For every 16-bit value, how many of its lowest bits are set in a row."""
    values = np.arange(1 << TILE, dtype=np.uint32)
    count = np.zeros(values.size, dtype=np.uint8)
    unbroken = np.ones(values.size, dtype=bool)
    for bit in range(TILE):
        unbroken &= (values >> bit) & 1 == 1
        count += unbroken
    return count


_TRAILING_ONES = _trailing_ones_table()


def _row_bits(mask: np.ndarray) -> np.ndarray:
    """(k, 256) bools to (k, 16) words: bit x of word y is pixel (x, y)."""
    return np.packbits(mask.reshape(-1), bitorder="little").view("<u2").reshape(-1, TILE)


@dataclass(frozen=True)
class TileRuns:
    """The runs of k tiles, tile by tile, each tile's rows top to bottom.

    ``first[t]`` is the index of tile t's first run; ``start_bits`` has
    one word per tile row, bit x set where a run starts at pixel x.
    """

    row: np.ndarray  # tile * 16 + y: the run's row among all tile rows
    x: np.ndarray
    length: np.ndarray
    colour: np.ndarray
    corner: np.ndarray  # the run's first pixel differs from the one above (or is on top)
    first: np.ndarray
    counts: np.ndarray  # runs per tile
    start_bits: np.ndarray

    def per_tile(self, values: np.ndarray) -> np.ndarray:
        """Sum of a per-run quantity over each tile's runs."""
        return np.add.reduceat(values, self.first, dtype=np.intp)

    def spread(self, values: np.ndarray) -> np.ndarray:
        """A per-tile quantity for every run (several times faster than indexing by tile)."""
        return np.repeat(values, self.counts)


def tile_runs(tiles: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> TileRuns:
    """The runs of (k, 256) tiles in row order, from ``run_starts`` and runs per tile."""
    at = np.flatnonzero(starts)
    row = at >> 4
    pixels = tiles.reshape(-1)
    colour = pixels[at]
    return TileRuns(
        row=row,
        x=at & (TILE - 1),
        length=_gaps(at, tiles.size),
        colour=colour,
        corner=(pixels[at - TILE] != colour) | (row & (TILE - 1) == 0),
        first=np.cumsum(counts) - counts,
        counts=counts,
        start_bits=_row_bits(starts),
    )


def _gaps(at: np.ndarray, end: int) -> np.ndarray:
    """Distance from each position to the next (the last: to ``end``)."""
    gaps = np.empty_like(at)
    np.subtract(at[1:], at[:-1], out=gaps[:-1])
    gaps[-1:] = end - at[-1:]
    return gaps


def run_subrects(
    runs: TileRuns, heads: np.ndarray, widths: np.ndarray, heights: np.ndarray
) -> Subrects:
    """Subrects covering the runs ``heads`` (indices into ``runs``, in order).

    A head run extends the rect of the head run directly above it when
    that run covers exactly the same columns in the same colour.  The
    rects come out in the order of their top runs, so grouped by tile.
    Tiles narrower or shorter than 16 (``widths``, ``heights``) are
    padded by repeating their edge pixels: rects are cut at their edges.
    """
    row, x, length = runs.row[heads], runs.x[heads], runs.length[heads]
    tile, y = row >> 4, row & (TILE - 1)
    continues = _continues(runs, heads, row, x, length)
    column_bits = _column_bits(tile, x, y, continues, runs.start_bits.shape[0])
    top = np.flatnonzero(~continues)
    tile, x, y, length = tile[top], x[top], y[top], length[top]
    below = column_bits[tile * TILE + x].astype(np.intp) >> (y + 1)
    height = 1 + _TRAILING_ONES[below]
    if (widths < TILE).any() or (heights < TILE).any():
        length = np.minimum(length, widths[tile] - x)
        height = np.minimum(height, heights[tile] - y)
    return Subrects(tile, x, y, length, height, runs.colour[heads[top]])


def _continues(
    runs: TileRuns, heads: np.ndarray, row: np.ndarray, x: np.ndarray, length: np.ndarray
) -> np.ndarray:
    """Per run: whether the run above covers the same columns in the same colour.

    Its first pixel is like the one above, and in the row above runs
    start at its first column and right after its last (or the row
    ends there), and nowhere in between.
    """
    above = runs.start_bits.reshape(-1)[row - 1].astype(np.intp) | (1 << TILE)
    window = ((2 << length) - 1) << x
    edges = ((1 << length) | 1) << x
    same: np.ndarray = ~runs.corner[heads] & ((above & window) == edges)
    return same


def _column_bits(
    tile: np.ndarray, x: np.ndarray, y: np.ndarray, continues: np.ndarray, tiles: int
) -> np.ndarray:
    """(tiles * 16,) words: bit y of word (tile, x) says a run at (x, y) continues."""
    marks = np.zeros(tiles * AREA, dtype=bool)
    down = np.flatnonzero(continues)
    marks[(tile[down] * TILE + x[down]) * TILE + y[down]] = True
    return _row_bits(marks).reshape(-1)
