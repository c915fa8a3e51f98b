"""Damage tracking on a grid of 16x16 tiles, with numpy.

A region is kept as a boolean grid, so adding damage is a slice assignment
and any number of small changes merge by themselves.  ``rects()`` turns the
grid back into few rectangles: runs of dirty tiles per tile row, merged
downwards when consecutive rows have the same runs.
"""

from __future__ import annotations

import functools
from typing import cast

import numpy as np

from protocols.rfb.encodings import Rect

TILE = 16
# A rectangle joined to its neighbours only from this many pixels on: a
# piece of a large change (Xvnc's are 64K pixels).  Replaying a scrolling
# page's updates, joining every neighbour cost ZRLE 0.8% more bytes and
# saved Tight 3.7%; joining only these saved 0.2% and 3.0%.
JOIN_PIXELS = 1 << 15


class Damage:
    """The damaged tiles of one terminal's picture.

    A terminal that has sent everything takes the source's next grid as it
    is (every terminal watching is handed the same one), and copies it only
    to change it: fifty terminals watching one desktop do not each merge
    and clear a grid of their own per update.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        rows, cols = -(-height // TILE), -(-width // TILE)
        self._blank = np.zeros((rows, cols), dtype=bool)
        self._blank.flags.writeable = False
        self.grid = self._blank
        # Known to be empty: asked after every update of every terminal, and
        # cheaper to remember than to find again.
        self._clean = True

    def add(self, rect: Rect) -> None:
        x0, y0 = max(rect.x, 0), max(rect.y, 0)
        x1, y1 = min(rect.x + rect.w, self.width), min(rect.y + rect.h, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        self._own()[y0 // TILE : -(-y1 // TILE), x0 // TILE : -(-x1 // TILE)] = True
        self._clean = False

    def add_all(self) -> None:
        self._own()[:] = True
        self._clean = False

    def add_grid(self, grid: np.ndarray) -> None:
        """Add a tile grid of the same shape; a clean one takes it as it is,
        read-only from then on (whoever hands it out writes no more to it)."""
        if self._clean:
            if grid.flags.writeable:  # sources hand theirs out read-only already
                grid.flags.writeable = False
            self.grid = grid
        else:
            self._own()[...] |= grid
        self._clean = False

    def clear(self) -> None:
        self.grid = self._blank
        self._clean = True

    def _own(self) -> np.ndarray:
        """The grid, copied first if it is borrowed, to change in place."""
        if not self.grid.flags.writeable:
            self.grid = self.grid.copy()
        return self.grid

    def intersects(self, rect: Rect) -> bool:
        """Whether any damaged tile overlaps ``rect``."""
        x0, y0 = max(rect.x, 0), max(rect.y, 0)
        x1, y1 = min(rect.x + rect.w, self.width), min(rect.y + rect.h, self.height)
        if x1 <= x0 or y1 <= y0:
            return False
        return bool(self.grid[y0 // TILE : -(-y1 // TILE), x0 // TILE : -(-x1 // TILE)].any())

    def forget_inside(self, rect: Rect) -> None:
        """Forget the damage of the tiles wholly inside ``rect``."""
        self._clear_inside(rect)

    def __bool__(self) -> bool:
        if self._clean:
            return False
        self._clean = not self.grid.any()
        return not self._clean

    def rects(self, clip: Rect | None = None) -> list[Rect]:
        """Rectangles covering the damage (clipped to ``clip`` if given)."""
        out = [self._to_pixels(r) for r in grid_rects(self.grid)]
        if clip is not None:
            out = [c for r in out if (c := intersect(r, clip)) is not None]
        return out

    def take(self, clip: Rect | None = None) -> list[Rect]:
        """Rectangles covering the damage inside ``clip``; forget that part."""
        rects = self.rects(clip)
        if clip is None:
            self.clear()
        else:
            for r in rects:
                self._clear_inside(r)
        return rects

    def _clear_inside(self, rect: Rect) -> None:
        # Only tiles wholly inside rect are forgotten; edge tiles stay dirty.
        c0, r0 = -(-rect.x // TILE), -(-rect.y // TILE)
        c1 = (rect.x + rect.w) // TILE if rect.x + rect.w < self.width else self.grid.shape[1]
        r1 = (rect.y + rect.h) // TILE if rect.y + rect.h < self.height else self.grid.shape[0]
        if r0 < r1 and c0 < c1:
            self._own()[r0:r1, c0:c1] = False

    def _to_pixels(self, cells: Rect) -> Rect:
        x, y = cells.x * TILE, cells.y * TILE
        w = min(cells.w * TILE, self.width - x)
        h = min(cells.h * TILE, self.height - y)
        return Rect(x, y, w, h)


def grid_rects(grid: np.ndarray) -> list[Rect]:
    """Cover the True cells of a boolean grid with rectangles (in cells).

    Runs of True cells are found for all rows at once; a run continues the
    rectangle above it when the row above had a run at the same columns.
    """
    done: list[Rect] = []
    open_runs: dict[tuple[int, int], Rect] = {}
    previous = -2
    for row, runs in _runs_by_row(grid).items():
        if row != previous + 1:
            done.extend(open_runs.values())
            open_runs = {}
        still_open = {}
        for run in runs:
            above = open_runs.pop(run, None)
            if above is not None:
                still_open[run] = Rect(above.x, above.y, above.w, above.h + 1)
            else:
                still_open[run] = Rect(run[0], row, run[1], 1)
        done.extend(open_runs.values())
        open_runs = still_open
        previous = row
    done.extend(open_runs.values())
    return done


def _runs_by_row(grid: np.ndarray) -> dict[int, list[tuple[int, int]]]:
    """(start, length) of every run of True cells, by row, rows in order."""
    padded = np.zeros((grid.shape[0], grid.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = grid
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    out: dict[int, list[tuple[int, int]]] = {}
    for row, start, end in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True):
        out.setdefault(row, []).append((start, end - start))
    return out


def clipped(rects: list[Rect], clip: Rect) -> list[Rect]:
    """The parts of ``rects`` inside ``clip`` (those wholly inside as they are)."""
    x0, y0, x1, y1 = clip.x, clip.y, clip.x + clip.w, clip.y + clip.h
    out = []
    for r in rects:
        if x0 <= r.x and y0 <= r.y and r.x + r.w <= x1 and r.y + r.h <= y1:
            out.append(r)
        elif (c := intersect(r, clip)) is not None:
            out.append(c)
    return out


def joined(rects: list[Rect]) -> list[Rect]:
    """``rects`` with large neighbours that make one rectangle joined: side
    by side with the same rows, then stacked with the same columns; top to
    bottom.  Where none is large, ``rects`` as they are.

    A desktop's VNC server sends a large change in pieces of its own (64K
    pixels: 34 rows at 1920 wide).  Encoded as they came, each would be cut
    again by the encoder (a first piece of 8 rows at 1920, then rows of
    whole JPEG blocks), where the whole change is cut once.  Only where one
    of the two has at least JOIN_PIXELS: small neighbours (a line of text
    each) keep their shapes, whose small tiles ZRLE codes in fewer bits.
    """
    if len(rects) < 2 or all(r.area < JOIN_PIXELS for r in rects):
        return rects  # a join needs a large one (a typed character: 0.4 us, not 3)
    rows = _join(sorted(rects, key=lambda r: (r.y, r.h, r.x)), across=True)
    columns = _join(sorted(rows, key=lambda r: (r.x, r.w, r.y)), across=False)
    return sorted(columns, key=lambda r: (r.y, r.x))


def _join(ordered: list[Rect], across: bool) -> list[Rect]:
    """Join each rectangle to the last one kept where it continues it:
    to its right (``across``) or below it."""
    out = [ordered[0]]
    for r in ordered[1:]:
        last = out[-1]
        if max(last.area, r.area) < JOIN_PIXELS:
            out.append(r)
        elif across and (r.y, r.h) == (last.y, last.h) and r.x == last.x + last.w:
            out[-1] = Rect(last.x, last.y, last.w + r.w, last.h)
        elif not across and (r.x, r.w) == (last.x, last.w) and r.y == last.y + last.h:
            out[-1] = Rect(last.x, last.y, last.w, last.h + r.h)
        else:
            out.append(r)
    return out


def tiles_covered(rects: list[Rect], most: int = 64) -> int | None:
    """How many tiles ``rects`` touch, counted only while the rectangles'
    own tiles, overlaps counted twice, are at most ``most`` (None beyond: a
    grid counts large areas faster).

    Every terminal watching a desktop asks this of the same rectangles
    after each of its updates: the last few answers are kept.
    """
    return _tiles_covered(tuple(rects), most)


@functools.lru_cache(maxsize=16)
def _tiles_covered(rects: tuple[Rect, ...], most: int) -> int | None:
    """``tiles_covered``: a row of tiles is a bitmask of the columns
    touched, so the work grows with rows, not tiles."""
    masks: dict[int, int] = {}  # tile row: a bit for each tile column touched
    upper = 0  # tiles counted with overlaps: a bound on the true count
    for r in rects:
        first, last = r.y // TILE, -(-(r.y + r.h) // TILE)
        col = r.x // TILE
        cols = -(-(r.x + r.w) // TILE) - col
        upper += (last - first) * cols
        if upper > most:
            return None
        span = ((1 << cols) - 1) << col
        for row in range(first, last):
            masks[row] = masks.get(row, 0) | span
    return sum(mask.bit_count() for mask in masks.values())


def intersect(a: Rect, b: Rect) -> Rect | None:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    if x1 <= x0 or y1 <= y0:
        return None
    return Rect(x0, y0, x1 - x0, y1 - y0)


def changed_tiles(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Boolean tile grid of where two equal-shaped framebuffers differ."""
    h, w = new.shape
    diff = old != new
    rows, cols = -(-h // TILE), -(-w // TILE)
    padded = np.zeros((rows * TILE, cols * TILE), dtype=bool)
    padded[:h, :w] = diff
    # Two of the four axes remain: an array, never numpy's scalar bool.
    return cast(np.ndarray, padded.reshape(rows, TILE, cols, TILE).any(axis=(1, 3)))
