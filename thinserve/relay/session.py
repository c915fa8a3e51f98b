"""One terminal's session: it shows one source at a time.

The session sends only what changed since the terminal's last update, and
only when the terminal asked (or enabled continuous updates) and its
connection can take more: a slow terminal pauses the producer, its damage
keeps merging in a tile grid, and when it resumes it gets the newest pixels.

What the session shows is decided elsewhere (the hub calls ``show`` with
the broker's decisions).  Input reaches the source only while the session
is in control.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import numpy as np

from protocols.rfb import messages as m
from protocols.rfb.constants import Encoding, FenceFlag, ResizeStatus
from protocols.rfb.encodings import Rect
from protocols.rfb.server import ClipboardIgnored, ClipboardText, Cursor, ServerEvent, UpdateStream
from protocols.rfb.sharing import Job
from protocols.rfb.updates import BAND_PIXELS
from protocols.rfb.updatestats import UPDATE_HEADER, UpdateStats

from .. import metrics
from ..broker import TerminalInfo
from ..clock import Clock, Timer, reactor_clock
from ..damage import TILE, Damage, clipped, intersect, tiles_covered
from ..rfbserver import RFBServerProtocol
from .bandwidth import LinkQuality
from .encodepool import EncodeWorkers
from .scaling import ScaledSource
from .source import Source

log = logging.getLogger(__name__)

MAX_COPIES = 16  # CopyRects waiting for one update; more go out as damage
MAX_EXACT = 64  # rectangles kept exactly as the source reported them
# A large update goes out this many pixels (about one band) per turn of the
# reactor: the terminal decodes the first bands while the next are encoded,
# and other terminals are served in between.
SLICE_PIXELS = BAND_PIXELS
MAX_IGNORED_NOTES = 8  # kinds of ignored messages logged per connection
LINK_FENCE = b"thinserve-link"  # payload of the fences that time a terminal's link
Copy = tuple[Rect, int, int]  # destination, src_x, src_y


class TerminalSession:
    def __init__(
        self,
        on_attach: Callable[[TerminalSession], Source],
        on_detach: Callable[[TerminalSession], None] = lambda s: None,
        clock: Clock | None = None,
        *,
        info: TerminalInfo | None = None,
        advertised_key: str | None = None,
        workers: EncodeWorkers | None = None,
    ) -> None:
        self._on_attach = on_attach
        # Threads that prepare large updates' rectangles (None: all is done
        # on the reactor thread, in turns).
        self.workers = workers
        self._on_detach = on_detach
        self.clock = clock or reactor_clock()
        # Who the terminal is: what it said about itself and the key its
        # advert named (both recorded, never trusted), and the id it was
        # given when it attached (None before, and once turned away).
        self.info = info or TerminalInfo()
        self.advertised_key = advertised_key
        self.terminal_id: str | None = None
        self.proto: RFBServerProtocol | None = None  # the connection, while attached
        self.source: Source | None = None
        self.view: Source | None = None  # source, or a scaled view of it
        self.control = False
        self.damage = Damage(0, 0)
        self.copies: list[Copy] = []  # go out before the damage, as CopyRect
        # The damage exactly as the source's rectangles, while that is known
        # (None: only the tile grid knows); sent instead of tile-aligned
        # rectangles when smaller.
        self.exact: list[Rect] | None = []
        self.requested: Rect | None = None
        self.width = 0
        self.height = 0
        self.wanted_size: tuple[int, int] | None = None
        self.pending_size: tuple[int, int] | None = None  # asked of the desktop
        self.ended = ""  # why the connection ended, once it has
        self.ignored: set[str] = set()  # what the terminal sent that was ignored, noted once
        self.bytes_sent = 0
        self.updates_sent = 0
        self.connected_at = self.last_input = self.clock.seconds()  # for the idle time
        # The JPEG quality the terminal's link carries, read from its socket.
        self.link = LinkQuality(lambda: None if self.proto is None else self.proto.transport)
        self.stream: UpdateStream | None = None  # the update going out, slice by slice
        self.stream_started = 0.0
        self._next_slice: Timer | None = None
        self._waiting = False  # for a worker to finish the next rectangle

    # -- Session interface (RFBServerProtocol) --------------------------------------
    def attach(self, proto: RFBServerProtocol) -> None:
        self.proto = proto
        _no_delay(proto.transport)
        source = self._on_attach(self)
        self.width, self.height = source.width, source.height
        proto.conn.server_init(self.width, self.height, source.name)
        self._new_damage(self.width, self.height)
        if self.source is None:
            self.show(source, control=self.control)

    def detach(self, why: str = "") -> None:
        self.ended = why
        self._unwatch()
        self._drop_stream()
        self.proto = None
        self._on_detach(self)

    def resumed(self) -> None:
        self.try_send()

    @property
    def connected(self) -> bool:
        """Whether the session is attached to an open connection: from the end
        of the handshake until the connection ends (the protocol detaches it)."""
        return self.proto is not None

    def close(self, why: str) -> None:
        """End the terminal's connection, if it is still open, for the reason ``why``."""
        if self.proto is not None:
            self.proto.close(why)

    def handle(self, event: ServerEvent) -> None:
        if isinstance(event, m.FramebufferUpdateRequest):
            self._request(event)
        elif isinstance(event, m.SetEncodings):
            self._encodings_changed()
        elif isinstance(event, m.SetDesktopSize):
            self._set_desktop_size(event)
        elif isinstance(event, m.Fence):
            self._fence_answered(event)
        elif isinstance(event, m.EnableContinuousUpdates | m.SetPixelFormat):
            self._damage_all()
            self.try_send()
        elif isinstance(event, ClipboardIgnored):
            self._note_ignored(event.reason)
        else:
            self._input(event)

    # -- what is shown ---------------------------------------------------------------
    def show(self, source: Source, control: bool) -> None:
        """Watch ``source`` from now on (in control or view-only)."""
        self.control = control
        if source is self.source:
            return
        self._unwatch()
        self.source = source
        if self.proto is None:
            return
        self._fit_view()
        self._damage_all()
        if self.view is not None and self.view.cursor is not None:
            self.on_cursor(self.view.cursor)
        self.try_send()

    def _unwatch(self) -> None:
        if self.pending_size is not None:
            # Asked of a desktop no longer shown, which will not answer here:
            # the next one is scaled to it.
            self.wanted_size, self.pending_size = self.pending_size, None
        if self.stream is not None:
            self.stream.blank()  # the rest of its picture is no longer this terminal's
        self._drop_view()
        self.source = None

    def _fit_view(self) -> None:
        """Watch the source itself, or a scaled view when sizes cannot match."""
        assert self.source is not None
        self._drop_view()
        source = self.source
        target = self.wanted_size or (source.width, source.height)
        if target != (self.width, self.height):
            self._resize_terminal(*target)
        if (source.width, source.height) == (self.width, self.height):
            self.view = source
        else:
            self.view = ScaledSource(source, self.width, self.height)
        self.view.subscribe(self)

    def _drop_view(self) -> None:
        if self.view is not None:
            self.view.unsubscribe(self)
            if isinstance(self.view, ScaledSource):
                self.view.close()
        self.view = None

    def _resize_terminal(self, width: int, height: int) -> bool:
        assert self.proto is not None
        if (width, height) == (self.width, self.height):
            return True
        if not self.proto.conn.resize(width, height):
            return False
        self.width, self.height = width, height
        self._new_damage(width, height)
        return True

    # -- terminal requests --------------------------------------------------------------
    def _request(self, req: m.FramebufferUpdateRequest) -> None:
        rect = Rect(req.x, req.y, req.width, req.height)
        if not req.incremental:
            self.damage.add(rect)
            self._add_exact([rect])
        self.requested = rect
        assert self.proto is not None
        self.link.request_arrived(time.monotonic(), self.proto.written)
        self.try_send()

    def _encodings_changed(self) -> None:
        # A terminal that now accepts resizes can get the source at its size.
        if self.source is not None and self.view is not self.source:
            self._fit_view()
        if self.view is not None and self.view.cursor is not None:
            self.on_cursor(self.view.cursor)
        self.try_send()

    def _adapt_quality(self) -> bool:
        """Encode with the JPEG quality the link carries, at most the terminal's;
        True if it changed.

        Checked before each update and each later slice of a long one, the link
        read right then: a SetEncodings resets the encoders to the terminal's
        own level, which is then the new ceiling.  The log line names the
        figures that set the link's level.
        """
        assert self.proto is not None
        conn = self.proto.conn
        now = time.monotonic()
        self.link.observe(now, self.proto.written)
        quality = self.link.quality(conn.settings.quality)
        if quality == conn.jpeg_quality:
            return False
        log.info(
            "terminal %s: JPEG quality level %s (asked for %s): %s",
            self.proto.peer(),
            quality,
            conn.settings.quality,
            self.link.describe(now),
        )
        conn.jpeg_quality = quality
        return True

    def _set_desktop_size(self, req: m.SetDesktopSize) -> None:
        assert self.proto is not None
        sink = self.source.input if self.source is not None else None
        if self.control and sink is not None and sink.set_desktop_size(req.width, req.height):
            # The desktop resizes itself; its resize reaches every terminal.
            self.wanted_size = None
            self.pending_size = (req.width, req.height)
            return
        self._scale_to(req.width, req.height)

    def _scale_to(self, width: int, height: int) -> None:
        """Show the source scaled to the size the terminal asked for."""
        assert self.proto is not None
        self.wanted_size = (width, height)
        if self.source is not None:
            self._fit_view()
        # Answered after the resize, so the reply (reason 1) carries the new size.
        self.proto.conn.answer_set_desktop_size(ResizeStatus.OK)
        self._damage_all()
        self.try_send()

    def _note_ignored(self, reason: str) -> None:
        """Say once per kind, per connection, what the terminal sent in vain."""
        if reason in self.ignored:
            return
        if len(self.ignored) < MAX_IGNORED_NOTES:
            self.ignored.add(reason)
            peer = self.proto.peer() if self.proto is not None else "?"
            log.info("terminal %s: %s; ignored", peer, reason)

    def _input(self, event: ServerEvent) -> None:
        self.last_input = self.clock.seconds()
        if not self.control or self.view is None or self.view.input is None:
            return
        sink = self.view.input
        if isinstance(event, m.KeyEvent):
            sink.key(event.down, event.key, None)
        elif isinstance(event, m.QemuKeyEvent):
            sink.key(event.down, event.keysym, event.keycode)
        elif isinstance(event, m.PointerEvent):
            sink.pointer(event.buttons, event.x, event.y)
        elif isinstance(event, ClipboardText):
            sink.clipboard(event.text)

    # -- SourceListener -------------------------------------------------------------------
    def on_damage(self, grid: np.ndarray) -> None:
        self._add_grid(grid)
        self.exact = None
        self.try_send()

    def on_update(self, copies: list[Copy], rects: list[Rect], grid: np.ndarray) -> None:
        """The source copied blocks (in order), then changed ``rects`` (tiles ``grid``)."""
        for dest, sx, sy in copies:
            if self._can_copy(dest, sx, sy):
                self.copies.append((dest, sx, sy))
                self.damage.forget_inside(dest)  # the copy brings these tiles up to date
                if self.exact is not None:
                    self.exact = [r for r in self.exact if intersect(r, dest) != r]
            else:
                self.damage.add(dest)
                self._add_exact([dest])
        self._add_grid(grid)
        self._add_exact(rects)
        self.try_send()

    def _add_exact(self, rects: list[Rect]) -> None:
        if self.exact is not None:
            self.exact.extend(rects)
            if len(self.exact) > MAX_EXACT:
                self.exact = None

    def _can_copy(self, dest: Rect, sx: int, sy: int) -> bool:
        """A copy can go out as CopyRect if the terminal has its source up to date."""
        if self.proto is None or self.view is None or self.view is not self.source:
            return False
        inside = Rect(0, 0, self.width, self.height)
        source = Rect(sx, sy, dest.w, dest.h)
        return (
            self.proto.conn.settings.supports(Encoding.COPYRECT)
            and len(self.copies) < MAX_COPIES
            and intersect(source, inside) == source
            and intersect(dest, inside) == dest
            and not self.damage.intersects(source)
        )

    def _add_grid(self, grid: np.ndarray) -> None:
        if grid.shape == self.damage.grid.shape:
            self.damage.add_grid(grid)
        else:
            self._damage_all()

    def _damage_all(self) -> None:
        """Everything goes out again: waiting copies are pointless."""
        self.copies = []
        self.exact = None
        self.damage.add_all()

    def _new_damage(self, width: int, height: int) -> None:
        self.copies = []
        self.exact = []
        self.damage = Damage(width, height)

    def on_resize_answered(self, granted: bool) -> None:
        """The desktop answered the size this terminal asked of it (if it did):
        granted, the terminal already shows the new size and hears so as the
        answer to its request; refused, it gets the desktop scaled instead."""
        size, self.pending_size = self.pending_size, None
        if size is None or self.proto is None:
            return
        if granted:
            self.proto.conn.answer_set_desktop_size(ResizeStatus.OK)
            self.try_send()
        else:
            self._scale_to(*size)

    def on_resize(self) -> None:
        """The desktop's size changed: on its own (a guest's mode switch) or
        for a terminal.  A size this terminal asked for stays pending until
        the desktop answers it."""
        if self.proto is None or self.source is None:
            return
        self._fit_view()
        self._damage_all()
        self.try_send()

    def on_cursor(self, cursor: Cursor) -> None:
        if self.proto is not None and self.proto.conn.set_cursor(cursor):
            self.try_send()

    def on_clipboard(self, text: str) -> None:
        if self.proto is not None and self.control:
            self.proto.conn.send_clipboard(text)
            self.proto.flush()

    def on_bell(self) -> None:
        if self.proto is not None:
            self.proto.conn.send_bell()
            self.proto.flush()

    # -- sending ------------------------------------------------------------------------------
    def try_send(self) -> None:
        proto = self.proto
        if proto is None or proto.paused or self.view is None:
            return
        if self.stream is not None:
            self._next_slice_of_stream()
            return
        conn = proto.conn
        if self.requested is None and not conn.continuous_updates:
            return
        # The source's own rectangles come with their tiles' damage: while
        # there are any, the damage grid need not be searched.
        if not (self.exact or self.damage or self.copies or conn.has_pending_pseudo):
            return
        if not self.view.settled:
            return  # the rest of the source's update is on its way; it calls again
        clip = Rect(0, 0, self.width, self.height)
        if not conn.continuous_updates and self.requested is not None:
            clip = self.requested
        rects = self._take(clip)
        if not rects and not self.copies and not conn.has_pending_pseudo:
            return
        self.requested = None
        copies, self.copies = self.copies, []
        self._adapt_quality()
        self.stream_started = time.monotonic()
        work = self.view.work()
        shared = len(self.view.listeners) > 1
        conn.rect_encoder.share_streams(shared)
        # zlib's time is spent once per picture, its bytes once per terminal:
        # with several watchers the bytes cost more than the time saved.
        conn.rect_encoder.prefer_speed(not shared and self.link.fast())
        stats = conn.send_prepared(rects, copies, work)
        if stats is not None:
            proto.flush()
            self._update_sent(UPDATE_HEADER + sum(stats.bytes.values()), stats)
            return
        long = sum(r.area for r in rects) > SLICE_PIXELS
        picture, pool = self._picture(long)
        self.stream = conn.begin_update(picture, rects, copies, work=work, pool=pool)
        # A long update's first rectangle goes out alone: the terminal draws it
        # while the rest is encoded.
        self._send_slice(1 if long else SLICE_PIXELS)

    def _picture(self, long: bool) -> tuple[np.ndarray, Callable[[Job], None] | None]:
        """What an update shows: a still picture if it is ``long`` (takes
        several slices), and then the workers that may prepare it meanwhile.

        The source keeps changing while a long update goes out; encoding its
        later slices from the live picture would tear it (and leave the
        terminal's pixels matching no moment of the source's).  The source
        lends its picture and writes to a copy while it is held.
        """
        assert self.view is not None
        if not long:
            return self.view.framebuffer, None
        return self.view.still(), self.workers.submit if self.workers is not None else None

    def _send_slice(self, pixels: int = SLICE_PIXELS) -> None:
        """Send the next slice (about ``pixels``) of the update going out; the
        rest on a later turn."""
        assert self.proto is not None and self.stream is not None
        stream = self.stream
        more = stream.send(pixels)
        self.proto.flush()
        if more:
            self._next_turn(stream)
            return
        self.stream = None
        self._update_sent(stream.bytes, stream.stats)

    def _update_sent(self, size: int, stats: UpdateStats) -> None:
        """An update of ``size`` bytes went out whole."""
        self.bytes_sent += size
        self.updates_sent += 1
        metrics.update_sent(stats)
        self._time_link(size)
        self.try_send()  # asked for more meanwhile, or continuous updates

    def _time_link(self, size: int) -> None:
        """Time how long the terminal takes to take in what was just sent,
        where its socket gives no TCP_INFO (``self.link`` ignores it elsewhere).

        A classic viewer's next request says it for the update before; a
        terminal on continuous updates answers a fence (see
        ``bandwidth.FenceBatch``).
        """
        assert self.proto is not None
        conn = self.proto.conn
        if not conn.continuous_updates:
            self.link.update_sent(size, self.stream_started)
        elif conn.settings.supports(Encoding.FENCE) and self.link.pushed(size, self.stream_started):
            conn.send_fence(FenceFlag.BLOCK_BEFORE, LINK_FENCE)
            self.proto.flush()

    def _fence_answered(self, fence: m.Fence) -> None:
        if fence.payload == LINK_FENCE:
            self.link.fence_answered(time.monotonic())

    def _next_turn(self, stream: UpdateStream) -> None:
        """Send the next slice on a later turn, or once a worker has prepared it."""
        if self._next_slice is not None or self._waiting:
            return
        job = stream.waiting_for
        if job is not None and self.workers is not None:
            self._waiting = True
            self.workers.when_done(job, self._worker_done)
        else:
            self._next_slice = self.clock.callLater(0, self._later_slice)

    def _worker_done(self) -> None:
        self._waiting = False
        self._later_slice()

    def _later_slice(self) -> None:
        self._next_slice = None
        if self.stream is not None and self.proto is not None and not self.proto.paused:
            self._next_slice_of_stream()

    def _next_slice_of_stream(self) -> None:
        """A later slice of the update going out, with the link read again: a
        slow link shows during a long update, and the rest goes lighter.  (The
        first slice follows the reading made just before the update began.)"""
        assert self.stream is not None
        if self._adapt_quality():
            self.stream.renew()
        self._send_slice()

    def _drop_stream(self) -> None:
        self.stream = None
        if self._next_slice is not None and self._next_slice.active():
            self._next_slice.cancel()
        self._next_slice = None

    def _take(self, clip: Rect) -> list[Rect]:
        """The rectangles to send inside ``clip``: the source's own when known
        and smaller than the tile-aligned ones."""
        exact = self.exact
        if exact and clip == (0, 0, self.width, self.height):
            inside = clipped(exact, clip)
            if self._exact_pays(inside):
                self.damage.clear()
                self.exact = []
                return inside
        rects = self.damage.take(clip)
        self.exact = None if self.damage else []
        return rects

    def _exact_pays(self, inside: list[Rect]) -> bool:
        """Whether the source's rectangles cover no more pixels than the damaged tiles.

        The tiles they cover themselves are damaged, so when those alone are
        enough (a typed character's few tiles, counted here) the whole grid
        is not counted.
        """
        area = 0
        for r in inside:  # a loop, not a generator: run for every terminal and update
            area += r.w * r.h
        covered = tiles_covered(inside)
        if covered is not None and area <= covered * TILE * TILE:
            return True
        return area <= int(np.count_nonzero(self.damage.grid)) * TILE * TILE


def _no_delay(transport: object) -> None:
    """Updates go out at once: no waiting to coalesce small writes (Nagle)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        with contextlib.suppress(OSError):  # not a TCP socket after all
            set_no_delay(True)
