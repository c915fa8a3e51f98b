"""One RFB session with a server: what the terminal asks for and how it reacts.

``RFBSession`` drives the client side of a connection (an RFBClientProtocol
from thinserve.rfbclient, whichever side dialled): on ServerInit it asks for
the terminal's pixel format and encodings and the first full update; then it
keeps updates coming (a request after each update, or continuous updates
when the server offers them), asks the server once to take the terminal's
screen size when it offers ExtendedDesktopSize, and hands pixels, cursor
shapes and clipboard text to the terminal.  Input goes out through
``key``, ``pointer`` and ``clipboard``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from protocols.rfb import messages as m
from protocols.rfb.client import (
    ContinuousUpdatesSupported,
    CursorShape,
    DesktopResized,
    ExtendedKeysSupported,
    ServerInitReceived,
    SetDesktopSizeFailed,
    UpdateDone,
)
from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect
from protocols.rfb.pixelformat import NATIVE
from protocols.rfb.server import ClipboardText, Cursor
from thinserve.rfbclient import RFBClientProtocol

log = logging.getLogger(__name__)

# What the terminal asks for, in order of preference.
RECT_ENCODINGS = (
    Encoding.TIGHT,
    Encoding.ZRLE,
    Encoding.HEXTILE,
    Encoding.ZLIB,
    Encoding.RRE,
    Encoding.RAW,
    Encoding.COPYRECT,
)
PSEUDO_ENCODINGS = (
    Encoding.CURSOR,
    Encoding.DESKTOP_SIZE,
    Encoding.EXTENDED_DESKTOP_SIZE,
    Encoding.LAST_RECT,
    Encoding.QEMU_EXTENDED_KEY_EVENT,
    Encoding.EXTENDED_CLIPBOARD,
    Encoding.FENCE,
    Encoding.CONTINUOUS_UPDATES,
)


def encodings(quality: int | None) -> list[int]:
    """The SetEncodings list; a JPEG quality level only when one is chosen."""
    chosen = [*RECT_ENCODINGS, *PSEUDO_ENCODINGS]
    if quality is not None:
        chosen.append(Encoding.JPEG_QUALITY_0 + quality)
    return [int(e) for e in chosen]


class View(Protocol):
    """Where a session's pixels and cursor go (clients.terminal.display.Display)."""

    def show_framebuffer(self, framebuffer: np.ndarray) -> None: ...
    def damage(self, rects: Sequence[Rect]) -> None: ...
    def set_cursor(self, cursor: Cursor) -> None: ...


class RFBSession:
    def __init__(
        self,
        proto: RFBClientProtocol,
        screen_size: tuple[int, int],
        quality: int | None,
        view: View,
        on_update: Callable[[RFBSession], None],
        on_clipboard: Callable[[str], None],
    ) -> None:
        self.proto = proto
        self.conn = proto.conn
        self.screen_size = screen_size
        self.quality = quality
        self.view = view
        self.on_update = on_update
        self.on_clipboard = on_clipboard
        self.started = time.monotonic()
        self.name = ""
        self.size = (0, 0)
        self.initialised = False  # ServerInit arrived: input may go out
        self.updates = 0
        self.continuous = False
        self.resize_asked = False
        self.refresh = False  # the next request is non-incremental

    @property
    def ready(self) -> bool:
        """The first update has arrived: the screen shows the server's pixels."""
        return self.updates > 0

    @property
    def framebuffer(self) -> np.ndarray:
        return self.conn.framebuffer

    # -- events from the server -----------------------------------------------------------
    def handle(self, event: object) -> None:
        if isinstance(event, ServerInitReceived):
            self._server_init(event)
        elif isinstance(event, UpdateDone):
            self._update_done(event)
        elif isinstance(event, DesktopResized):
            self._resized(event)
        elif isinstance(event, CursorShape):
            self.view.set_cursor(event.cursor)
        elif isinstance(event, ClipboardText):
            self.on_clipboard(event.text)
        elif isinstance(event, ContinuousUpdatesSupported):
            self._start_continuous()
        elif isinstance(event, m.EndOfContinuousUpdates):
            self._continuous_ended()
        elif isinstance(event, SetDesktopSizeFailed):
            log.info("the server kept its size (status %d)", event.status)
        elif isinstance(event, ExtendedKeysSupported):
            log.debug("the server takes scancodes")

    def _server_init(self, event: ServerInitReceived) -> None:
        self.name = event.name
        self.size = (event.width, event.height)
        self.initialised = True
        log.info("session with %r, %dx%d", event.name, event.width, event.height)
        if event.pixel_format != NATIVE:
            self.conn.set_pixel_format(NATIVE)
        self.conn.set_encodings(encodings(self.quality))
        self.conn.request_update(incremental=False)
        self.view.show_framebuffer(self.conn.framebuffer)

    def _update_done(self, event: UpdateDone) -> None:
        self.updates += 1
        self.view.damage(event.rects)
        if self.refresh:
            self.refresh = False
            self.conn.request_update(incremental=False)
        elif not self.continuous:
            self.conn.request_update(incremental=True)
        self.on_update(self)

    def _resized(self, event: DesktopResized) -> None:
        size = (event.width, event.height)
        if size != self.size:
            # Servers may repeat the size (TigerVNC does after every full
            # request): only a real change asks for the whole screen again.
            log.info("desktop size %dx%d (reason %d)", *size, event.reason)
            self.size = size
            self.view.show_framebuffer(self.conn.framebuffer)
            self.refresh = True
            if self.continuous:
                self.conn.enable_continuous_updates(True)  # the whole new screen
        if event.screens and not self.resize_asked:
            self._ask_for_screen_size(*size)

    def _ask_for_screen_size(self, width: int, height: int) -> None:
        """Once per session: ask the server to match the terminal's screen."""
        self.resize_asked = True
        if (width, height) != self.screen_size:
            log.info("asking for %dx%d", *self.screen_size)
            self.conn.set_desktop_size(*self.screen_size)

    def _start_continuous(self) -> None:
        """The server offers continuous updates: take them instead of requesting."""
        log.debug("continuous updates")
        self.continuous = True
        self.conn.enable_continuous_updates(True)

    def _continuous_ended(self) -> None:
        """The server stopped continuous updates: go back to requesting."""
        log.debug("continuous updates ended by the server")
        self.continuous = False
        self.conn.request_update(incremental=True)

    # -- input to the server ----------------------------------------------------------------
    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        if not self.initialised:
            return
        self.conn.key_event(down, keysym, keycode)
        self.proto.flush()

    def pointer(self, buttons: int, x: int, y: int) -> None:
        height, width = self.conn.framebuffer.shape
        if self.initialised and width and height:
            self.conn.pointer_event(buttons, min(max(x, 0), width - 1), min(max(y, 0), height - 1))
            self.proto.flush()

    def clipboard(self, text: str) -> None:
        if not self.initialised:
            return
        self.conn.send_clipboard(text)
        self.proto.flush()

    def close(self) -> None:
        if self.proto.transport is not None:
            self.proto.transport.loseConnection()
