"""Sources: what a terminal can watch (a desktop's mirror, a drawn screen).

A source owns a framebuffer (2-D uint32, 0x00RRGGBB) and tells its
listeners what changed.  Input from the terminal in control goes to the
source's ``input`` sink, if it has one (screens have none; a desktop's
mirror forwards to the desktop).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from protocols.rfb.encodings import Rect
from protocols.rfb.server import Cursor
from protocols.rfb.sharing import SharedWork

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
    def on_resize_answered(self, granted: bool) -> None:
        """The desktop answered a size change a terminal asked for."""


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
        self._work: SharedWork | None = None
        # The framebuffer lent out by still(), and the view it was lent as:
        # held by whoever sends from it (the source itself holds the array).
        self._lent: tuple[np.ndarray, weakref.ref[np.ndarray]] | None = None

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

    def work(self) -> SharedWork:
        """The encoding work shared by every terminal sending this picture."""
        if self._work is None:
            self._work = SharedWork()
        return self._work

    def still(self) -> np.ndarray:
        """The picture as it is now, unchanging for as long as it is held.

        It is the framebuffer itself, lent: whoever writes pixels first gets
        a copy to write to (``writable``), so a picture nobody changes while
        it goes out is never copied, and the first rectangles of a long
        update leave without waiting for a copy of the whole screen.
        """
        fb = self.framebuffer
        if not fb.flags.writeable:
            return fb  # never written: still already
        view = self._lent_view()
        if view is None:
            view = fb[:]
            self._lent = (fb, weakref.ref(view))
        return view

    def _lent_view(self) -> np.ndarray | None:
        """The view the framebuffer is lent as, if anyone still holds it."""
        if self._lent is None or self._lent[0] is not self.framebuffer:
            return None
        return self._lent[1]()

    def writable(self) -> np.ndarray:
        """The framebuffer, to change in place: a copy if the current one is
        lent out as a still picture and still held."""
        if self._lent_view() is not None:
            self.framebuffer = self.framebuffer.copy()
        self._lent = None
        return self.framebuffer

    def changed(self) -> None:
        """The pixels changed: work done on the previous picture is not for this one."""
        with self.new_picture():
            pass

    @contextlib.contextmanager
    def new_picture(self) -> Iterator[None]:
        """The pixels changed, and the listeners hear of it inside: work from
        now on is the new picture's, and the previous picture's is released
        once they have heard.  A typed character's update goes out first,
        without waiting for that."""
        old, self._work = self._work, None
        try:
            yield
        finally:
            if old is not None:
                old.release()

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
        with self.new_picture():
            grid.flags.writeable = False  # once, not by each listener that keeps it
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
            self.writable()[:] = frame
            self.damaged_grid(grid)

    def resized(self) -> None:
        self.changed()
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

    def resize_answered(self, granted: bool) -> None:
        """The desktop granted (after resizing) or turned down a size change a
        terminal asked for; its own resizes in between answer nothing."""
        for listener in list(self.listeners):
            listener.on_resize_answered(granted)


def tile_grid_shape(width: int, height: int) -> tuple[int, int]:
    return -(-height // TILE), -(-width // TILE)


def rects_grid(rects: list[Rect] | tuple[Rect, ...], width: int, height: int) -> np.ndarray:
    """The tiles that ``rects`` touch, on a width x height picture's tile grid."""
    grid = np.zeros(tile_grid_shape(width, height), dtype=bool)
    for r in rects:
        grid[r.y // TILE : -(-(r.y + r.h) // TILE), r.x // TILE : -(-(r.x + r.w) // TILE)] = True
    return grid
