"""Small JPEG pictures of every desktop and every terminal's screen, for the dashboard's wall.

A picture follows a source: a desktop's mirror (``hub.mirrors``) or what a
connected terminal shows (``hub.terminals[id].session.view``, which changes
when the terminal gets another desktop or screen).  Each picture listens to
its source and only notes that something changed; nothing else happens on
a change.

Work is done only while someone watches (an events client is connected, or
a thumbnail was fetched in the last ``WATCH_WINDOW`` seconds): then one
timer ticks every ``TICK`` seconds and encodes the pictures that changed,
each at most once per ``MIN_INTERVAL``, at most ``max_encoding`` at once;
it follows the terminals' screens when the hub reports a change (and every
``RESYNC`` seconds, for a screen a terminal's resize replaced).  A tick
with nothing changed does nothing but look at two flags.  The reactor thread only copies the
source's framebuffer (a still picture, which the source keeps changing
meanwhile); scaling down and JPEG encoding run in the runner's threads.  A
picture nothing changed in is never copied nor encoded again.

Versions only grow, and start from the time the server started (in
milliseconds), so a version names one picture even across restarts: the
thumbnail resource uses it as its ETag.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import unquote

import numpy as np
import simplejpeg
from PIL import Image
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import resource, server

from ..admin.errors import ApiError, not_found
from ..admin.http import error_reply
from ..clock import Clock
from ..relay.source import Copy, Source

if TYPE_CHECKING:
    from protocols.rfb.encodings import Rect
    from protocols.rfb.server import Cursor

    from ..hub import Hub

log = logging.getLogger(__name__)

MAX_SIDE = 320  # pixels: the longest side of a thumbnail
QUALITY = 75  # JPEG quality of the thumbnails
MIN_INTERVAL = 0.5  # seconds between two encodes of one picture (at most 2 per second)
TICK = 0.25  # seconds between two looks at what changed, while watched
RESYNC = 2.0  # seconds between two looks at every terminal's screen, while watched
JITTER = 0.05  # seconds a timer may fire late: MIN_INTERVAL allows for it
WATCH_WINDOW = 10.0  # seconds a fetched thumbnail keeps the pictures up to date
MAX_ENCODING = 2  # pictures encoding at once
MAX_WAITERS = 16  # requests waiting for one picture's first encode

Thumbnail = tuple[int, bytes]  # version, JPEG


class Runner(Protocol):
    """Runs work in a worker thread (thinserve.verifier.Verifier)."""

    def run(self, work: Callable[[], bytes]) -> Deferred[bytes]: ...


class TooManyWaiting(Exception):
    """More requests wait for a picture's first encode than MAX_WAITERS."""


class Thumbnails:
    """The thumbnails of the hub's desktops and terminals (see the module's docstring)."""

    def __init__(
        self, hub: Hub, reactor: Clock, runner: Runner, max_encoding: int = MAX_ENCODING
    ) -> None:
        self.hub = hub
        self.clock = reactor
        self.runner = runner
        self.max_encoding = max_encoding
        self.pictures: dict[str, _Picture] = {}  # "desktop/NAME", "terminal/ID"
        self.on_change: list[Callable[[], None]] = []  # told when versions() changes
        self.encodes = 0  # encodes started so far
        self.running = False
        self._watchers = 0
        self._fetched = -math.inf  # when a thumbnail was last fetched
        self._encoding = 0
        self._pending = True  # a picture may be dirty: the next tick looks
        self._synced = -math.inf  # when the pictures last followed the hub
        self._last_version = int(reactor.seconds() * 1000)
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = cast(IReactorTime, reactor)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self.hub.on_change.append(self._hub_changed)
        self._wake()

    def stop(self) -> None:
        """Stop ticking and stop listening to every source."""
        self.running = False
        if self._hub_changed in self.hub.on_change:
            self.hub.on_change.remove(self._hub_changed)
        if self._ticker.running:
            self._ticker.stop()
        for picture in self.pictures.values():
            picture.drop()
        self.pictures.clear()

    # -- who watches ----------------------------------------------------------------------
    def add_watcher(self) -> None:
        """An events client connected: keep the pictures up to date until it leaves."""
        self._watchers += 1
        self._wake()

    def remove_watcher(self) -> None:
        self._watchers = max(0, self._watchers - 1)

    @property
    def watched(self) -> bool:
        return self._watchers > 0 or self.clock.seconds() - self._fetched < WATCH_WINDOW

    def _fetching(self) -> None:
        self._fetched = self.clock.seconds()
        self._wake()

    def _wake(self) -> None:
        if self.running and not self._ticker.running and self.watched:
            self._ticker.start(TICK, now=True)

    # -- what callers read ----------------------------------------------------------------
    def versions(self) -> dict[str, int]:
        """The current version of every picture encoded so far."""
        return {key: p.version for key, p in self.pictures.items() if p.version}

    def image(self, kind: str, name: str) -> Thumbnail | None:
        """The newest thumbnail of ``kind`` ("desktop" or "terminal") ``name``,
        if there is one yet.  Counts as watching."""
        self._fetching()
        picture = self.pictures.get(f"{kind}/{name}")
        if picture is None or not picture.version:
            return None
        return picture.version, picture.jpeg

    def known(self, kind: str, name: str) -> bool:
        """Whether ``kind`` ``name`` exists now (a desktop, a connected terminal)."""
        self._fetching()
        if self.running:
            self._sync()
        return f"{kind}/{name}" in self.pictures

    def names(self, kind: str) -> list[str]:
        prefix = f"{kind}/"
        return [key[len(prefix) :] for key in self.pictures if key.startswith(prefix)]

    def fetch(self, kind: str, name: str) -> Deferred[Thumbnail | None]:
        """The thumbnail, at once or after its first encode; None when the
        picture goes away first.  Fails with TooManyWaiting when too many wait."""
        found = self.image(kind, name)
        picture = self.pictures.get(f"{kind}/{name}")
        if found is not None or picture is None:
            return succeed(found)
        if len(picture.waiters) >= MAX_WAITERS:
            raise TooManyWaiting(f"{MAX_WAITERS} requests already wait for {kind} {name}")
        waiter: Deferred[Thumbnail | None] = Deferred(picture.waiters.remove)
        picture.waiters.append(waiter)
        self._pump()
        return waiter

    # -- the timer ------------------------------------------------------------------------
    def _tick(self) -> None:
        if not self.watched:
            self._ticker.stop()
            return
        if self.clock.seconds() - self._synced >= RESYNC:
            self._sync()
        if self._pending:
            self._pump()

    def _hub_changed(self) -> None:
        """What a terminal shows may have changed: follow it at the next tick."""
        self._synced = -math.inf

    def _noted(self) -> None:
        """A picture's source changed (its listener says so)."""
        self._pending = True

    def _sync(self) -> None:
        """One picture per desktop and per connected terminal, each on its current source."""
        self._synced = self.clock.seconds()
        wanted: dict[str, Source] = {}
        for name, mirror in self.hub.mirrors.items():
            wanted["desktop/" + name] = mirror
        for terminal_id, terminal in self.hub.terminals.items():
            view = terminal.session.view
            if view is not None:
                wanted["terminal/" + terminal_id] = view
        gone = [key for key in self.pictures if key not in wanted]
        for key in gone:
            self.pictures.pop(key).drop()
        for key, source in wanted.items():
            picture = self.pictures.get(key)
            if picture is None:
                self.pictures[key] = _Picture(key, source, self._noted)
                self._pending = True
            else:
                picture.follow(source)
        if gone:
            self._changed()

    def _pump(self) -> None:
        """Start encoding the changed pictures that are due, the longest waiting first."""
        room = self.max_encoding - self._encoding
        if room <= 0 or not self.running or not self.watched:
            return
        now = self.clock.seconds()
        due = [p for p in self.pictures.values() if p.due(now)]
        if len(due) > room:
            due.sort(key=lambda p: p.started)
        for picture in due[:room]:
            self._encode(picture, now)
        self._pending = any(p.dirty for p in self.pictures.values())

    # -- encoding -------------------------------------------------------------------------
    def _encode(self, picture: _Picture, now: float) -> None:
        source = picture.source
        frame = source.framebuffer.copy()  # still, while the source keeps changing
        picture.dirty = False
        picture.encoding = True
        picture.started = now
        self._encoding += 1
        self.encodes += 1
        done = self.runner.run(lambda: encode_jpeg(frame))
        done.addCallbacks(
            self._encoded, self._failed, callbackArgs=(picture, source), errbackArgs=(picture,)
        )

    def _encoded(self, jpeg: bytes, picture: _Picture, source: Source) -> None:
        self._finished(picture)
        if self.pictures.get(picture.key) is not picture or picture.source is not source:
            self._pump()
            return  # gone, or it shows something else now (and is due again)
        if jpeg != picture.jpeg:
            self._last_version += 1
            picture.version = self._last_version
            picture.jpeg = jpeg
            self._changed()
        picture.serve_waiters()
        self._pump()

    def _failed(self, failure: Failure, picture: _Picture) -> None:
        self._finished(picture)
        if not failure.check(CancelledError) and self.running:
            log.error("a thumbnail of %s failed: %s", picture.key, failure.getErrorMessage())
        self._pump()

    def _finished(self, picture: _Picture) -> None:
        self._encoding -= 1
        picture.encoding = False

    def _changed(self) -> None:
        for callback in list(self.on_change):
            callback()


class _Picture:
    """One thumbnail: its source (listened to, cheaply), whether it changed, its JPEG."""

    def __init__(self, key: str, source: Source, noted: Callable[[], None]) -> None:
        self.key = key
        self.source = source
        self.noted = noted  # told when the picture becomes dirty
        self.dirty = True
        self.encoding = False
        self.started = -math.inf  # when its last encode started
        self.version = 0  # 0: never encoded
        self.jpeg = b""
        self.waiters: list[Deferred[Thumbnail | None]] = []
        source.subscribe(self)

    def due(self, now: float) -> bool:
        return (
            self.dirty
            and not self.encoding
            and now - self.started >= MIN_INTERVAL - JITTER
            and self.source.settled
        )

    def follow(self, source: Source) -> None:
        if source is not self.source:
            self.source.unsubscribe(self)
            self.source = source
            self.mark()
            source.subscribe(self)

    def mark(self) -> None:
        self.dirty = True
        self.noted()

    def drop(self) -> None:
        self.source.unsubscribe(self)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def serve_waiters(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback((self.version, self.jpeg))

    # -- SourceListener: only note that something changed ------------------------------
    def on_damage(self, grid: np.ndarray) -> None:
        self.mark()

    def on_update(self, copies: list[Copy], rects: list[Rect], grid: np.ndarray) -> None:
        if copies or rects:
            self.mark()

    def on_resize(self) -> None:
        self.mark()

    def on_cursor(self, cursor: Cursor) -> None:
        pass

    def on_clipboard(self, text: str) -> None:
        pass

    def on_bell(self) -> None:
        pass

    def on_resize_answered(self, granted: bool) -> None:
        pass


def thumbnail_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` picture scaled to fit ``max_side``."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_jpeg(frame: np.ndarray, max_side: int = MAX_SIDE, quality: int = QUALITY) -> bytes:
    """``frame`` (uint32 0x00RRGGBB) scaled down (area average), as a JPEG.

    A whole-number scale is Pillow's ``reduce`` (a box average at about
    twice the speed of ``resize``), any other ``resize``; simplejpeg
    (libjpeg-turbo) encodes.  Runs in a worker thread: it reads only its own
    copy of the picture."""
    height, width = frame.shape
    words = np.ascontiguousarray(frame, dtype="<u4")  # bytes B, G, R, 0
    image = Image.frombuffer("RGB", (width, height), words, "raw", "BGRX", 0, 1)
    size = thumbnail_size(width, height, max_side)
    factor = width // size[0]
    if factor > 1 and (width, height) == (size[0] * factor, size[1] * factor):
        image = image.reduce(factor)  # the same box average as resize, about twice as fast
    elif image.size != size:
        image = image.resize(size, Image.Resampling.BOX)
    pixels = np.asarray(image)
    return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420")


# -- HTTP ---------------------------------------------------------------------------------
FETCH_TIMEOUT = 10.0  # seconds a request waits for a picture's first encode
PLURALS = {"desktops": "desktop", "terminals": "terminal"}
RETRY_AFTER = 3  # seconds, in 503 answers


class ThumbnailResource(resource.Resource):
    """``GET /api/v1/thumbnails/desktops/NAME.jpg`` and ``.../terminals/ID.jpg``.

    The ETag is the picture's version; a request naming it in If-None-Match
    gets 304.  ``Cache-Control: no-cache``: the browser asks again each time,
    and gets 304 while the picture is the same.  A picture not encoded yet
    is waited for (at most FETCH_TIMEOUT seconds).  Only the last two path
    segments count, wherever the resource is mounted.
    """

    isLeaf = True

    def __init__(self, thumbnails: Thumbnails) -> None:
        super().__init__()
        self.thumbnails = thumbnails

    def render_GET(self, request: server.Request) -> bytes | int:
        try:
            kind, name = _target(request.postpath or [])
        except ApiError as error:
            return error_reply(request, error)
        thumbnails = self.thumbnails
        if not thumbnails.known(kind, name):
            hint = f"see GET /api/v1/{kind}s for the names; a terminal must be connected"
            return error_reply(request, not_found(kind, name, thumbnails.names(kind), hint))
        found = thumbnails.image(kind, name)
        if found is not None:
            return _send(request, found)
        try:
            waiting = thumbnails.fetch(kind, name)
        except TooManyWaiting as exc:
            return error_reply(request, _not_ready(str(exc)))
        waiting.addTimeout(FETCH_TIMEOUT, cast(IReactorTime, thumbnails.clock))
        _answer_later(request, waiting, kind, name)
        return server.NOT_DONE_YET


def _target(postpath: list[bytes]) -> tuple[str, str]:
    if len(postpath) < 2:
        raise ApiError(404, "no such thumbnail", "ask for /api/v1/thumbnails/desktops/NAME.jpg")
    plural, file = (unquote(part.decode("utf-8", "replace")) for part in postpath[-2:])
    kind = PLURALS.get(plural)
    if kind is None or not file.endswith(".jpg") or len(file) == 4:
        raise ApiError(
            404,
            f"no such thumbnail: {plural}/{file}",
            "ask for /api/v1/thumbnails/desktops/NAME.jpg or /api/v1/thumbnails/terminals/ID.jpg",
        )
    return kind, file[:-4]


def _send(request: server.Request, found: Thumbnail) -> bytes:
    version, jpeg = found
    etag = f'"{version}"'
    request.setHeader(b"ETag", etag.encode())
    request.setHeader(b"Cache-Control", b"no-cache")
    if _matches(request.getHeader(b"If-None-Match"), etag):
        request.setResponseCode(304)
        return b""
    request.setHeader(b"Content-Type", b"image/jpeg")
    return jpeg


def _matches(header: bytes | None, etag: str) -> bool:
    """Whether If-None-Match names ``etag`` (weakly compared, as RFC 9110 says)."""
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.decode("latin-1").split(",")]
    return "*" in tags or etag in tags


def _answer_later(
    request: server.Request, waiting: Deferred[Thumbnail | None], kind: str, name: str
) -> None:
    gone = [False]
    request.notifyFinish().addErrback(lambda _: gone.__setitem__(0, True))

    def answer(found: Thumbnail | None) -> None:
        if gone[0]:
            return
        if found is None:
            request.write(error_reply(request, not_found(kind, name, [], "it went away")))
        else:
            request.write(_send(request, found))
        request.finish()

    def failed(failure: Failure) -> None:
        if not gone[0]:
            request.write(error_reply(request, _not_ready(failure.getErrorMessage())))
            request.finish()

    waiting.addCallbacks(answer, failed)


def _not_ready(why: str) -> ApiError:
    return ApiError(
        503,
        f"the thumbnail is not ready: {why}",
        "try again in a few seconds",
        code="rate_limited",
        retry_after=RETRY_AFTER,
    )
