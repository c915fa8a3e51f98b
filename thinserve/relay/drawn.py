"""Screens thinserve draws, costing a connection nothing while it waits.

A terminal that shows a drawn screen (a pairing code, "starting", "in use")
holds only the screen's text.  The pixels are drawn when an update needs
them and kept in one small cache shared by every terminal: the same screen
at the same size is one picture however many terminals show it, and a
screen nobody needs any more is dropped from the cache as others come.  So
a flood of connections that never get a desktop costs a few hundred bytes
each, not a framebuffer each.

Drawing takes a few milliseconds.  Screens wait their turn in one queue
and are drawn one per turn of the reactor, so a burst of arriving
terminals never holds up the terminals already at work: between two
drawings the reactor serves everything else.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import screens
from .source import Source, tile_grid_shape

CACHE_BYTES = 8 << 20  # the drawn pictures kept, all terminals together (a few screens)

_Key = tuple[object, ...]
_cache: OrderedDict[_Key, np.ndarray] = OrderedDict()


class DrawnScreen(Source):
    """A screen's text at one size; its pixels come from the shared cache."""

    def __init__(self, text: screens.ScreenText, width: int, height: int) -> None:
        self._setup("thinserve")
        self.text = text
        self._size = (max(width, 1), max(height, 1))
        self._key: _Key = (*_text_key(text), *self._size)

    @property  # type: ignore[override]
    def framebuffer(self) -> np.ndarray:
        """The picture (read-only), drawn now unless the cache has it."""
        return picture(self._key, self.text, *self._size)

    @property
    def settled(self) -> bool:
        """Whether the picture is drawn; if not, it is queued, and whoever
        watches is told (as damage to the whole screen) once it is."""
        if self._key in _cache:
            return True
        _queue.add(self)
        return False

    @property
    def width(self) -> int:
        return self._size[0]

    @property
    def height(self) -> int:
        return self._size[1]


class _DrawQueue:
    """Screens waiting to be drawn, one drawing per turn of the reactor."""

    def __init__(self) -> None:
        self.waiting: OrderedDict[_Key, list[DrawnScreen]] = OrderedDict()
        self._turn: object | None = None

    def add(self, screen: DrawnScreen) -> None:
        screens_of_key = self.waiting.setdefault(screen._key, [])
        if screen not in screens_of_key:
            screens_of_key.append(screen)
        if self._turn is None:
            from twisted.internet import reactor

            self._turn = reactor.callLater(0, self._draw_next)  # type: ignore[attr-defined]

    def _draw_next(self) -> None:
        self._turn = None
        key, waiting = self.waiting.popitem(last=False)
        watched = [s for s in waiting if s.listeners]
        if watched:
            first = watched[0]
            picture(key, first.text, *first._size)
            for screen in watched:
                screen.damaged_grid(np.ones(tile_grid_shape(*screen._size), dtype=bool))
        if self.waiting and self._turn is None:
            from twisted.internet import reactor

            self._turn = reactor.callLater(0, self._draw_next)  # type: ignore[attr-defined]


_queue = _DrawQueue()


def picture(key: _Key, text: screens.ScreenText, width: int, height: int) -> np.ndarray:
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found
    drawn = screens.render(text, width, height)
    drawn.flags.writeable = False
    _cache[key] = drawn
    while sum(p.nbytes for p in _cache.values()) > CACHE_BYTES and len(_cache) > 1:
        _cache.popitem(last=False)
    return drawn


def cached_pictures() -> int:
    """How many pictures the cache holds (for tests and status)."""
    return len(_cache)


def _text_key(text: screens.ScreenText) -> tuple[object, ...]:
    extra = tuple(sorted(text.extra.items()))
    return (text.title, text.lines, text.highlight, text.footer, text.progress, extra)
