"""The terminal's screen: a pygame (SDL2) window or full screen.

The session's framebuffer (uint32 0x00RRGGBB, which is B, G, R, 0 in memory
on little-endian machines) is wrapped without copying as a BGRA surface
whose alpha is ignored; each render blits only the rectangles that
changed.  A framebuffer larger than the screen is scaled down to fit, a
smaller one is centred.  The server's cursor shape becomes the SDL cursor,
so the pointer moves without drawing or network traffic.  With no session,
a status screen says what the terminal is waiting for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pygame

from protocols.rfb.encodings import Rect
from protocols.rfb.server import Cursor

log = logging.getLogger(__name__)

BACKGROUND = (0, 0, 0)
STATUS_BACKGROUND = (22, 30, 44)
STATUS_TITLE = (235, 240, 250)
STATUS_TEXT = (170, 185, 205)
MAX_DIRTY_RECTS = 64  # more than this: update the whole picture
# 0x00RRGGBB words in memory: B, G, R, 0 (little-endian) or 0, R, G, B (big-endian)
MEMORY_FORMAT = "BGRA" if sys.byteorder == "little" else "ARGB"


@dataclass(frozen=True)
class Layout:
    """Where the framebuffer is drawn on the screen."""

    scale: float
    x: int
    y: int
    width: int
    height: int
    source_width: int
    source_height: int

    def to_framebuffer(self, sx: int, sy: int) -> tuple[int, int]:
        """A screen position as a framebuffer position, clamped to the framebuffer."""
        fx = int((sx - self.x) / self.scale)
        fy = int((sy - self.y) / self.scale)
        return (
            min(max(fx, 0), self.source_width - 1),
            min(max(fy, 0), self.source_height - 1),
        )


def fit(source: tuple[int, int], screen: tuple[int, int]) -> Layout:
    """Centre ``source`` on ``screen``, scaled down (never up) if it is larger."""
    (fw, fh), (sw, sh) = source, screen
    scale = min(1.0, sw / fw, sh / fh)
    width, height = fw, fh
    if scale < 1.0:
        width, height = max(1, round(fw * scale)), max(1, round(fh * scale))
    return Layout(scale, (sw - width) // 2, (sh - height) // 2, width, height, fw, fh)


def cursor_surface(cursor: Cursor) -> pygame.Surface:
    """An RGBA surface of a cursor: its pixels where the mask is set, clear elsewhere."""
    pixels = cursor.pixels
    height, width = pixels.shape
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = (pixels >> 16) & 0xFF
    rgba[..., 1] = (pixels >> 8) & 0xFF
    rgba[..., 2] = pixels & 0xFF
    rgba[..., 3] = np.where(cursor.mask, 0xFF, 0)
    return pygame.image.frombuffer(rgba.tobytes(), (width, height), "RGBA")


class Display:
    def __init__(self, size: tuple[int, int] | None, title: str = "thinserve terminal") -> None:
        """A window of ``size``, or the whole screen when ``size`` is None."""
        self.fullscreen = size is None
        if self.fullscreen:
            os.environ.setdefault("SDL_GRAB_KEYBOARD", "1")  # Alt+Tab etc. go to the desktop
        pygame.display.init()
        pygame.font.init()
        if size is None:
            size = pygame.display.get_desktop_sizes()[0]
            self.screen = pygame.display.set_mode(size, pygame.FULLSCREEN)
            pygame.event.set_grab(True)
        else:
            self.screen = pygame.display.set_mode(size)
        pygame.display.set_caption(title)
        self.size: tuple[int, int] = self.screen.get_size()
        self.layout: Layout | None = None
        self._framebuffer: np.ndarray | None = None
        self._view: pygame.Surface | None = None
        self._dirty: list[pygame.Rect] = []
        self._whole = False
        self._cursor: Cursor | None = None
        self._fonts: dict[int, pygame.font.Font] = {}
        self._cursor_warned = False
        self.showing_status = False  # the status screen is up, not the framebuffer

    # -- the session's picture ------------------------------------------------------------
    def show_framebuffer(self, framebuffer: np.ndarray) -> None:
        """Show this framebuffer (a new one after every resize) from the next render."""
        height, width = framebuffer.shape
        if not (width and height):
            self._framebuffer = self._view = self.layout = None
            return
        self._framebuffer = framebuffer  # the surface reads this memory
        self._view = pygame.image.frombuffer(framebuffer, (width, height), MEMORY_FORMAT)
        self._view.set_alpha(None)  # the padding byte is not alpha
        self.layout = fit((width, height), self.size)
        self._whole = True
        self._dirty.clear()
        self._apply_cursor()

    def damage(self, rects: Sequence[Rect]) -> None:
        """These framebuffer rectangles changed: draw them at the next render."""
        self._dirty.extend(pygame.Rect(r.x, r.y, r.w, r.h) for r in rects if r.w and r.h)
        if len(self._dirty) > MAX_DIRTY_RECTS:
            self._dirty.clear()
            self._whole = True

    def render(self) -> None:
        """Draw what changed since the last render."""
        view, layout = self._view, self.layout
        if self.showing_status or view is None or layout is None:
            return
        if not (self._whole or self._dirty):
            return
        if layout.scale != 1.0:
            self._render_scaled(view, layout)
        elif self._whole:
            self.screen.fill(BACKGROUND)
            self.screen.blit(view, (layout.x, layout.y))
            pygame.display.flip()
        else:
            x, y = layout.x, layout.y
            drawn = [self.screen.blit(view, (x + r.x, y + r.y), r) for r in self._dirty]
            pygame.display.update(drawn)
        self._whole = False
        self._dirty.clear()

    def _render_scaled(self, view: pygame.Surface, layout: Layout) -> None:
        scaled = pygame.transform.smoothscale(view, (layout.width, layout.height))
        scaled.set_alpha(None)
        if self._whole:
            self.screen.fill(BACKGROUND)
        self.screen.blit(scaled, (layout.x, layout.y))
        pygame.display.flip()

    def to_framebuffer(self, position: tuple[int, int]) -> tuple[int, int] | None:
        """A screen position in framebuffer coordinates; None when nothing is shown."""
        if self.layout is None or self.showing_status:
            return None
        return self.layout.to_framebuffer(*position)

    # -- cursor ---------------------------------------------------------------------------
    def set_cursor(self, cursor: Cursor) -> None:
        self._cursor = cursor
        self._apply_cursor()

    def _apply_cursor(self) -> None:
        cursor, layout = self._cursor, self.layout
        if cursor is None or layout is None:
            return
        if cursor.pixels.size == 0:  # the server hides the pointer
            with contextlib.suppress(pygame.error):
                pygame.mouse.set_visible(False)
            return
        surface = cursor_surface(cursor)
        hx, hy = cursor.hotspot_x, cursor.hotspot_y
        if layout.scale != 1.0:
            w, h = surface.get_size()
            size = (max(1, round(w * layout.scale)), max(1, round(h * layout.scale)))
            surface = pygame.transform.smoothscale(surface, size)
            hx, hy = int(hx * layout.scale), int(hy * layout.scale)
        w, h = surface.get_size()
        try:
            pygame.mouse.set_cursor((min(hx, w - 1), min(hy, h - 1)), surface)
            pygame.mouse.set_visible(True)
        except pygame.error as exc:
            if not self._cursor_warned:
                self._cursor_warned = True
                log.warning("cannot set the cursor shape: %s", exc)

    def _default_cursor(self) -> None:
        self._cursor = None
        with contextlib.suppress(pygame.error):
            pygame.mouse.set_cursor(pygame.SYSTEM_CURSOR_ARROW)

    # -- what is shown ----------------------------------------------------------------------
    def show_session(self) -> None:
        """Show the framebuffer (the first update of a session has arrived)."""
        self.showing_status = False
        self._whole = True

    def forget(self) -> None:
        """The session ended: drop its framebuffer and cursor."""
        self._framebuffer = self._view = self.layout = None
        self._dirty.clear()
        self._default_cursor()

    # -- status screen ---------------------------------------------------------------------
    def show_status(self, title: str, lines: Sequence[str]) -> None:
        """A screen of text drawn here, in place of the framebuffer until show_session."""
        self.showing_status = True
        width, height = self.size
        self.screen.fill(STATUS_BACKGROUND)
        big = self._font(max(18, height // 12))
        small = self._font(max(14, height // 28))
        rows = [(big, title, STATUS_TITLE)] + [(small, line, STATUS_TEXT) for line in lines]
        total = sum(font.get_linesize() for font, _, _ in rows) + big.get_linesize() // 2
        y = (height - total) // 2
        for index, (font, text, colour) in enumerate(rows):
            image = font.render(text, True, colour)
            self.screen.blit(image, ((width - image.get_width()) // 2, y))
            y += font.get_linesize() + (big.get_linesize() // 2 if index == 0 else 0)
        pygame.display.flip()

    def _font(self, size: int) -> pygame.font.Font:
        if size not in self._fonts:
            self._fonts[size] = pygame.font.Font(None, size)
        return self._fonts[size]

    def close(self) -> None:
        pygame.display.quit()
