"""Screens thinserve draws, costing a connection nothing while it waits.

A terminal that shows a drawn screen (a pairing code, "starting", "in use")
holds only the screen's text.  The pixels are drawn when an update needs
them and kept in one small cache shared by every terminal: the same screen
at the same size is one picture however many terminals show it, and a
screen nobody needs any more is dropped from the cache as others come.  So
a flood of connections that never get a desktop costs a few hundred bytes
each, not a framebuffer each.

Drawing takes a few milliseconds.  At most one screen is drawn per turn
of the reactor; others wait their turn in one queue, so a burst of
arriving terminals never holds up the terminals already at work: between
two drawings the reactor serves everything else.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..clock import Timer, reactor_clock
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

    @property
    def framebuffer(self) -> np.ndarray:  # type: ignore[override]  # read-only, unlike Source's
        """The picture (read-only), drawn now unless the cache has it."""
        return picture(self._key, self.text, *self._size)

    @property
    def settled(self) -> bool:
        """Whether the picture is drawn (now, if this turn has drawn nothing
        yet); if not, it is queued, and whoever watches is told (as damage
        to the whole screen) once it is."""
        return self._key in _cache or _queue.draw_or_queue(self)

    @property
    def width(self) -> int:
        return self._size[0]

    @property
    def height(self) -> int:
        return self._size[1]


class _DrawQueue:
    """At most one drawing per turn of the reactor: the first screen asked for
    in a turn is drawn at once, later ones wait for turns of their own."""

    def __init__(self) -> None:
        self.waiting: OrderedDict[_Key, list[DrawnScreen]] = OrderedDict()
        self._turn: Timer | None = None  # set while this turn has drawn

    def draw_or_queue(self, screen: DrawnScreen) -> bool:
        """Draw ``screen`` now (True) or queue it (False: its watchers are told)."""
        if self._turn is None:
            picture(screen._key, screen.text, *screen._size)
            self._next_turn()
            return True
        screens_of_key = self.waiting.setdefault(screen._key, [])
        if screen not in screens_of_key:
            screens_of_key.append(screen)
        return False

    def _next_turn(self) -> None:
        self._turn = reactor_clock().callLater(0, self._on_turn)

    def _on_turn(self) -> None:
        """Draw the oldest screen still watched (those nobody watches any more
        are dropped on the way), and tell its watchers."""
        self._turn = None
        while self.waiting:
            key, waiting = self.waiting.popitem(last=False)
            watched = [s for s in waiting if s.listeners]
            if watched:
                picture(key, watched[0].text, *watched[0]._size)
                self._next_turn()
                for screen in watched:
                    screen.damaged_grid(np.ones(tile_grid_shape(*screen._size), dtype=bool))
                return


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


def _text_key(text: screens.ScreenText) -> tuple[object, ...]:
    extra = tuple(sorted(text.extra.items()))
    return (text.title, text.lines, text.highlight, text.footer, text.progress, extra)
