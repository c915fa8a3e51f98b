"""A scaled view of a source, for a terminal whose screen has another size.

Pixels are picked with precomputed row and column index maps (nearest
neighbour, vectorised); only tiles whose source tiles changed are redone.
Pointer positions from the terminal are mapped back to the source.
"""

from __future__ import annotations

import numpy as np

from protocols.rfb.encodings import Rect
from protocols.rfb.server import Cursor

from ..damage import TILE, grid_rects
from .source import Copy, InputSink, Source, rects_grid, tile_grid_shape


class ScaledSource(Source):
    def __init__(self, inner: Source, width: int, height: int) -> None:
        super().__init__(np.zeros((height, width), dtype=np.uint32), inner.name)
        self.inner = inner
        self.cursor = inner.cursor
        self.input = _ScaledInput(self) if inner.input is not None else None
        self._maps()
        self._redraw_all()
        inner.subscribe(self)

    @property
    def settled(self) -> bool:
        return self.inner.settled

    def close(self) -> None:
        self.inner.unsubscribe(self)

    # -- geometry ------------------------------------------------------------------
    def _maps(self) -> None:
        self.rows = _index_map(self.height, self.inner.height)
        self.cols = _index_map(self.width, self.inner.width)
        self.tile_rows = _tile_span(self.rows)
        self.tile_cols = _tile_span(self.cols)

    def to_inner(self, x: int, y: int) -> tuple[int, int]:
        x = min(max(x, 0), self.width - 1)
        y = min(max(y, 0), self.height - 1)
        return int(self.cols[x]), int(self.rows[y])

    # -- listening to the inner source -----------------------------------------------
    def on_damage(self, grid: np.ndarray) -> None:
        ours = self._map_grid(grid)
        for cells in grid_rects(ours):
            self._redraw(cells.y * TILE, cells.x * TILE, cells.h * TILE, cells.w * TILE)
        if ours.any():
            self.damaged_grid(ours)

    def on_update(self, copies: list[Copy], rects: list[Rect], grid: np.ndarray) -> None:
        """Copies are redrawn like any damage: a scaled copy is not a copy."""
        moved = rects_grid([dest for dest, _, _ in copies], self.inner.width, self.inner.height)
        self.on_damage(grid | moved)

    def on_resize(self) -> None:
        self._maps()
        self._redraw_all()
        self.damaged_grid(np.ones(tile_grid_shape(self.width, self.height), dtype=bool))

    def on_cursor(self, cursor: Cursor) -> None:
        self.set_cursor(cursor)

    def on_clipboard(self, text: str) -> None:
        self.clipboard(text)

    def on_bell(self) -> None:
        self.bell()

    def on_resize_answered(self, granted: bool) -> None:
        self.resize_answered(granted)

    # -- drawing --------------------------------------------------------------------
    def _redraw_all(self) -> None:
        self._redraw(0, 0, self.height, self.width)

    def _redraw(self, y: int, x: int, h: int, w: int) -> None:
        rows = self.rows[y : y + h]
        cols = self.cols[x : x + w]
        self.writable()[y : y + len(rows), x : x + len(cols)] = self.inner.framebuffer[
            np.ix_(rows, cols)
        ]

    def _map_grid(self, grid: np.ndarray) -> np.ndarray:
        """Our tiles whose pixels come from any dirty tile of the inner grid."""
        sums = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), dtype=np.int32)
        sums[1:, 1:] = grid.cumsum(0).cumsum(1)
        r0, r1 = self.tile_rows
        c0, c1 = self.tile_cols
        total: np.ndarray = (
            sums[r1[:, None], c1[None, :]]
            - sums[r0[:, None], c1[None, :]]
            - sums[r1[:, None], c0[None, :]]
            + sums[r0[:, None], c0[None, :]]
        )
        return total > 0


class _ScaledInput:
    """Input through a scaled view: pointer positions mapped to the source."""

    def __init__(self, view: ScaledSource) -> None:
        self.view = view

    @property
    def _inner(self) -> InputSink:
        assert self.view.inner.input is not None
        return self.view.inner.input

    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        self._inner.key(down, keysym, keycode)

    def pointer(self, buttons: int, x: int, y: int) -> None:
        self._inner.pointer(buttons, *self.view.to_inner(x, y))

    def clipboard(self, text: str) -> None:
        self._inner.clipboard(text)

    def set_desktop_size(self, width: int, height: int) -> bool:
        return False


def _index_map(out_size: int, in_size: int) -> np.ndarray:
    """For each output pixel, the nearest input pixel."""
    if in_size == 0:
        return np.zeros(out_size, dtype=np.intp)
    positions = (np.arange(out_size) + 0.5) * in_size / max(out_size, 1)
    return np.minimum(positions.astype(np.intp), in_size - 1)


def _tile_span(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output tile: the [first, last+1) range of input tiles it reads."""
    tiles = -(-len(index) // TILE)
    starts = index[np.arange(tiles) * TILE] // TILE
    ends = index[np.minimum(np.arange(tiles) * TILE + TILE - 1, len(index) - 1)] // TILE + 1
    return starts.astype(np.intp), ends.astype(np.intp)
