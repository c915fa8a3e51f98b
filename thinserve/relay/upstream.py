"""The link to a desktop: an RFB client feeding one Mirror, reconnecting by itself.

The mirror's framebuffer is the client connection's own framebuffer, so a
desktop is decoded once however many terminals watch it.  While the
desktop is unreachable the mirror shows a drawn "unavailable" screen at the
desktop's last size, and the link retries with exponential backoff.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from twisted.internet import reactor as default_reactor
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from protocols.rfb import messages as m
from protocols.rfb.client import (
    ClientEvent,
    CursorShape,
    DesktopResized,
    ServerInitReceived,
    SetDesktopSizeFailed,
    UpdateDone,
)
from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect
from protocols.rfb.pixelformat import NATIVE
from protocols.rfb.server import ClipboardText

from .. import rfbclient
from . import screens
from .source import Source, tile_grid_shape

log = logging.getLogger(__name__)

PSEUDO = (
    Encoding.CURSOR,
    Encoding.EXTENDED_DESKTOP_SIZE,
    Encoding.DESKTOP_SIZE,
    Encoding.LAST_RECT,
    Encoding.QEMU_EXTENDED_KEY_EVENT,
    Encoding.EXTENDED_CLIPBOARD,
)
LOCAL_ENCODINGS = (Encoding.RAW, Encoding.COPYRECT, *PSEUDO)
REMOTE_ENCODINGS = (
    Encoding.TIGHT,
    Encoding.ZRLE,
    Encoding.HEXTILE,
    Encoding.ZLIB,
    Encoding.RRE,
    Encoding.RAW,
    Encoding.COPYRECT,
    Encoding.COMPRESS_LEVEL_0 + 2,
    *PSEUDO,
)
DEFAULT_SIZE = (1024, 768)


@dataclass(frozen=True)
class DesktopAddress:
    """Where a desktop's VNC console is and how to log in to it."""

    name: str
    endpoint: str  # Twisted client endpoint, e.g. tcp:host=127.0.0.1:port=5901
    password: str | None = None
    username: str | None = None
    ca_file: str | None = None
    encodings: tuple[int, ...] | None = None  # None: chosen by where it is

    @property
    def is_local(self) -> bool:
        if self.endpoint.startswith("unix:"):
            return True
        host = _endpoint_host(self.endpoint)
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def wanted_encodings(self) -> tuple[int, ...]:
        if self.encodings is not None:
            return self.encodings
        return LOCAL_ENCODINGS if self.is_local else REMOTE_ENCODINGS


def _endpoint_host(endpoint: str) -> str:
    for part in endpoint.replace("\\:", "\0").split(":")[1:]:
        if part.startswith("host="):
            return part[5:].replace("\0", ":")
    parts = endpoint.split(":")
    return parts[1] if len(parts) > 1 else ""


Copy = tuple[Rect, int, int]  # destination, src_x, src_y


class Mirror(Source):
    """A desktop's picture as thinserve has it, and the state of its link."""

    def __init__(self, name: str) -> None:
        width, height = DEFAULT_SIZE
        super().__init__(np.zeros((height, width), dtype=np.uint32), name)
        self.state = "connecting"
        self.detail = ""
        self.in_update: Callable[[], bool] = lambda: False  # the desktop's update half-applied
        self.show_screen(screens.connecting(name))

    @property
    def settled(self) -> bool:
        return not self.in_update()

    def show_screen(self, text: screens.ScreenText) -> None:
        self.set_frame(screens.render(text, self.width, self.height))

    def updated(self, copies: list[Copy], others: list[Rect]) -> None:
        """One upstream update: ``copies`` (done first) and other changed rectangles.

        Listeners that take updates as they came (``on_update``) get the
        copies and the rectangles with their tile damage; the others get
        everything as tile damage.  An update that changed nothing is passed
        on too: listeners may have held back while it was half-applied.
        """
        grid = self._grid(others)
        everything = grid | self._grid([dest for dest, _, _ in copies]) if copies else grid
        for listener in list(self.listeners):
            on_update = getattr(listener, "on_update", None)
            if on_update is not None:
                on_update(copies, others, grid)
            else:
                listener.on_damage(everything)

    def damaged(self, rects: list[Rect] | tuple[Rect, ...]) -> None:
        self.updated([], list(rects))

    def _grid(self, rects: list[Rect]) -> np.ndarray:
        grid = np.zeros(tile_grid_shape(self.width, self.height), dtype=bool)
        for r in rects:
            grid[r.y // 16 : -(-(r.y + r.h) // 16), r.x // 16 : -(-(r.x + r.w) // 16)] = True
        return grid

    def take_framebuffer(self, framebuffer: np.ndarray) -> None:
        """Show the upstream connection's framebuffer from now on."""
        same_size = framebuffer.shape == self.framebuffer.shape
        self.framebuffer = framebuffer
        if same_size:
            self.damaged_grid(np.ones(tile_grid_shape(self.width, self.height), dtype=bool))
        else:
            self.resized()


class Upstream:
    """Keeps a Mirror fed from one desktop and forwards input to it."""

    first_delay = 0.5
    max_delay = 10.0

    def __init__(
        self,
        address: DesktopAddress,
        mirror: Mirror | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.address = address
        self.mirror = mirror or Mirror(address.name)
        self.mirror.input = self
        self.clock = clock or default_reactor  # type: ignore[assignment]
        self.proto: rfbclient.RFBClientProtocol | None = None
        self.delay = self.first_delay
        self.retry_call: IDelayedCall | None = None
        self.running = False
        self.can_set_size = False
        self.connections = 0

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self._connect()

    def stop(self) -> None:
        self.running = False
        if self.retry_call is not None and self.retry_call.active():
            self.retry_call.cancel()
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.loseConnection()

    def _connect(self) -> None:
        self.retry_call = None
        options = rfbclient.ClientOptions(
            password=self.address.password,
            username=self.address.username,
            ca_file=self.address.ca_file,
        )
        d = rfbclient.connect(self.address.endpoint, options, self._on_event)
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, proto: rfbclient.RFBClientProtocol) -> None:
        self.proto = proto
        set_no_delay = getattr(proto.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:  # requests and input go out at once
            with contextlib.suppress(OSError):
                set_no_delay(True)
        proto.closed.addBoth(lambda reason: self._lost(proto, reason))

    def _failed(self, failure: Failure) -> None:
        self._went_down(failure.getErrorMessage())

    def _lost(self, proto: rfbclient.RFBClientProtocol, reason: Failure | None) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self.mirror.in_update = lambda: False  # its half-applied update will never end
        why = proto.error or (reason.getErrorMessage() if reason else "connection closed")
        self._went_down(why)

    def _went_down(self, why: str) -> None:
        self.can_set_size = False
        if not self.running:
            return
        delay = self.delay * random.uniform(0.8, 1.2)
        self.delay = min(self.delay * 2, self.max_delay)
        log.warning(
            "desktop %s unavailable (%s); retrying in %.1f s", self.address.name, why, delay
        )
        self.mirror.state, self.mirror.detail = "down", why
        self.mirror.show_screen(screens.unavailable(self.address.name, delay, _short(why)))
        self.retry_call = self.clock.callLater(delay, self._connect)

    # -- events from the desktop ------------------------------------------------------
    def _on_event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        conn = proto.conn
        if isinstance(event, ServerInitReceived):
            self._live(proto)
        elif isinstance(event, UpdateDone):
            self._updated(event)
            conn.request_update(incremental=True)
        elif isinstance(event, DesktopResized):
            self.can_set_size = self.can_set_size or event.screens != ()
            self.mirror.take_framebuffer(conn.framebuffer)
        elif isinstance(event, SetDesktopSizeFailed):
            log.info(
                "desktop %s refused a size change (status %d)", self.address.name, event.status
            )
            self.can_set_size = False
            self.mirror.resize_refused()
        elif isinstance(event, CursorShape):
            self.mirror.set_cursor(event.cursor)
        elif isinstance(event, ClipboardText):
            self.mirror.clipboard(event.text)
        elif isinstance(event, m.Bell):
            self.mirror.bell()

    def _updated(self, event: UpdateDone) -> None:
        """Tell the mirror what changed: copies apart when they came first."""
        copies = list(event.copies)
        kinds = event.encodings
        copies_first = Encoding.COPYRECT not in kinds[kinds.count(Encoding.COPYRECT) :]
        if not copies_first or len(copies) != kinds.count(Encoding.COPYRECT):
            self.mirror.damaged(event.rects)  # a copy after other rectangles: all as damage
            return
        others = [r for r, e in zip(event.rects, kinds, strict=True) if e != Encoding.COPYRECT]
        self.mirror.updated(copies, others)

    def _live(self, proto: rfbclient.RFBClientProtocol) -> None:
        conn = proto.conn
        self.connections += 1
        self.delay = self.first_delay
        conn.set_pixel_format(NATIVE)
        conn.set_encodings(self.address.wanted_encodings())
        conn.request_update(incremental=False)
        self.mirror.name = conn.name or self.address.name
        self.mirror.state, self.mirror.detail = "live", ""
        self.mirror.take_framebuffer(conn.framebuffer)
        self.mirror.in_update = lambda: conn.in_update
        log.info("desktop %s live at %dx%d", self.address.name, conn.width, conn.height)

    # -- InputSink ------------------------------------------------------------------
    def _conn(self) -> rfbclient.RFBClientProtocol | None:
        if self.proto is None or self.mirror.state != "live":
            return None
        return self.proto

    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        if proto := self._conn():
            proto.conn.key_event(down, keysym, keycode)
            proto.flush()

    def pointer(self, buttons: int, x: int, y: int) -> None:
        if proto := self._conn():
            x = min(max(x, 0), max(proto.conn.width - 1, 0))
            y = min(max(y, 0), max(proto.conn.height - 1, 0))
            proto.conn.pointer_event(buttons, x, y)
            proto.flush()

    def clipboard(self, text: str) -> None:
        if proto := self._conn():
            proto.conn.send_clipboard(text)
            proto.flush()

    def set_desktop_size(self, width: int, height: int) -> bool:
        proto = self._conn()
        if proto is None or not self.can_set_size:
            return False
        proto.conn.set_desktop_size(width, height)
        proto.flush()
        return True


def _short(why: str) -> str:
    return why if len(why) <= 80 else why[:77] + "..."


__all__ = ["DesktopAddress", "Mirror", "Upstream"]
