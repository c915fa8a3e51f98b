"""Sources: what a terminal can watch (a desktop's mirror, a drawn screen).

A source owns a framebuffer (2-D uint32, 0x00RRGGBB) and tells its
listeners what changed.  Input from the terminal in control goes to the
source's ``input`` sink, if it has one (screens have none; a desktop's
mirror forwards to the desktop).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from protocols.rfb.encodings import Rect
from protocols.rfb.server import Cursor

from ..damage import TILE, changed_tiles

Copy = tuple[Rect, int, int]  # destination, src_x, src_y


class SourceListener(Protocol):
    def on_damage(self, grid: np.ndarray) -> None: ...
    def on_update(self, copies: list[Copy], rects: list[Rect], grid: np.ndarray) -> None:
        """A desktop's update as it came: ``copies`` first, then ``rects`` (as ``grid``)."""

    def on_resize(self) -> None: ...
    def on_cursor(self, cursor: Cursor) -> None: ...
    def on_clipboard(self, text: str) -> None: ...
    def on_bell(self) -> None: ...
    def on_resize_refused(self) -> None: ...


class InputSink(Protocol):
    def key(self, down: bool, keysym: int, keycode: int | None) -> None: ...
    def pointer(self, buttons: int, x: int, y: int) -> None: ...
    def clipboard(self, text: str) -> None: ...
    def set_desktop_size(self, width: int, height: int) -> bool: ...


class Source:
    def __init__(self, framebuffer: np.ndarray, name: str = "thinserve") -> None:
        self.framebuffer = framebuffer
        self._setup(name)

    def _setup(self, name: str) -> None:
        self.name = name
        self.cursor: Cursor | None = None
        self.input: InputSink | None = None
        self.listeners: list[SourceListener] = []

    @property
    def width(self) -> int:
        return int(self.framebuffer.shape[1])

    @property
    def height(self) -> int:
        return int(self.framebuffer.shape[0])

    @property
    def settled(self) -> bool:
        """Whether the picture is whole: not halfway through one of the source's updates."""
        return True

    def subscribe(self, listener: SourceListener) -> None:
        if listener not in self.listeners:
            self.listeners.append(listener)

    def unsubscribe(self, listener: SourceListener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    # -- changes ----------------------------------------------------------------
    def damaged(self, rects: list[Rect] | tuple[Rect, ...]) -> None:
        """Announce that these rectangles of the framebuffer changed."""
        if not rects:
            return
        self.damaged_grid(rects_grid(rects, self.width, self.height))

    def damaged_grid(self, grid: np.ndarray) -> None:
        for listener in list(self.listeners):
            listener.on_damage(grid)

    def set_frame(self, frame: np.ndarray) -> None:
        """Replace the picture; listeners hear only about tiles that differ."""
        if frame.shape != self.framebuffer.shape:
            self.framebuffer = frame.copy()
            self.resized()
            return
        grid = changed_tiles(self.framebuffer, frame)
        if grid.any():
            self.framebuffer[:] = frame
            self.damaged_grid(grid)

    def resized(self) -> None:
        for listener in list(self.listeners):
            listener.on_resize()

    def set_cursor(self, cursor: Cursor) -> None:
        self.cursor = cursor
        for listener in list(self.listeners):
            listener.on_cursor(cursor)

    def clipboard(self, text: str) -> None:
        for listener in list(self.listeners):
            listener.on_clipboard(text)

    def bell(self) -> None:
        for listener in list(self.listeners):
            listener.on_bell()

    def resize_refused(self) -> None:
        """The desktop turned down a size change a terminal asked for."""
        for listener in list(self.listeners):
            listener.on_resize_refused()


def tile_grid_shape(width: int, height: int) -> tuple[int, int]:
    return -(-height // TILE), -(-width // TILE)


def rects_grid(rects: list[Rect] | tuple[Rect, ...], width: int, height: int) -> np.ndarray:
    """The tiles that ``rects`` touch, on a width x height picture's tile grid."""
    grid = np.zeros(tile_grid_shape(width, height), dtype=bool)
    for r in rects:
        grid[r.y // TILE : -(-(r.y + r.h) // TILE), r.x // TILE : -(-(r.x + r.w) // TILE)] = True
    return grid
