"""The link to a desktop: an RFB client feeding one Mirror, reconnecting by itself.

The mirror's framebuffer is the client connection's own framebuffer, so a
desktop is decoded once however many terminals watch it.  While the
desktop is unreachable the mirror shows a drawn "unavailable" screen at the
desktop's last size, and the link retries with exponential backoff
(Twisted's ClientService).  A LinkListener hears when the link goes live
and when it goes down.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, cast

import numpy as np
from cryptography import x509
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.identity import certificate_fingerprint
from protocols.rfb import messages as m
from protocols.rfb.client import (
    ClientConnection,
    ClientEvent,
    CursorShape,
    DesktopResized,
    ServerInitReceived,
    SetDesktopSizeFailed,
    UpdateDone,
)
from protocols.rfb.constants import Encoding, ResizeReason, ResizeStatus, VeNCryptSubtype
from protocols.rfb.encodings import Rect
from protocols.rfb.pixelformat import NATIVE
from protocols.rfb.server import ClipboardText

from .. import metrics, rfbclient
from ..clock import Clock, reactor_clock
from ..damage import joined
from . import screens
from .source import Copy, InputSink, Source, rects_grid, tile_grid_shape

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
    # The key fingerprint its certificate must carry (protocols/identity.py): the
    # link is then X509Plain only, TLS pinned to that key (a node link).
    fingerprint: str | None = None

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


class MirrorFeed(InputSink, Protocol):
    """What feeds a mirror: takes the watching terminals' input, and says when
    the desktop's update is half-applied (a picture read then would tear)."""

    @property
    def in_update(self) -> bool: ...

    @property
    def live(self) -> bool:
        """Connected, with the desktop's picture on the mirror."""
        ...

    @property
    def why(self) -> str:
        """Why it is not live (the last connection's end, or its failure)."""
        ...


class Mirror(Source):
    """A desktop's picture as thinserve has it: decoded once, watched by many."""

    def __init__(self, name: str) -> None:
        width, height = DEFAULT_SIZE
        super().__init__(np.zeros((height, width), dtype=np.uint32), name)
        self.feed: MirrorFeed | None = None
        self.input = _ToFeed(self)
        self.show_screen(screens.connecting(name))

    def attach(self, feed: MirrorFeed) -> None:
        """``feed`` supplies the pictures from now on and takes the input."""
        self.feed = feed

    def detach(self, feed: MirrorFeed) -> None:
        if self.feed is feed:
            self.feed = None

    @property
    def settled(self) -> bool:
        return self.feed is None or not self.feed.in_update

    def show_screen(self, text: screens.ScreenText) -> None:
        self.set_frame(screens.render(text, self.width, self.height))

    def updated(self, copies: list[Copy], others: list[Rect]) -> None:
        """One upstream update: ``copies`` (done first) and other changed rectangles.

        Listeners get the copies and the rectangles, large neighbours joined
        (``damage.joined``: the desktop cut a large change into pieces of its
        own), with their tile damage (``on_update``).  An update that changed
        nothing is passed on too: listeners may have held back while it was
        half-applied.
        """
        with self.new_picture():
            others = joined(others)
            grid = rects_grid(others, self.width, self.height)
            grid.flags.writeable = False  # once, not by each listener that keeps it
            for listener in list(self.listeners):
                listener.on_update(copies, others, grid)

    def damaged(self, rects: list[Rect] | tuple[Rect, ...]) -> None:
        self.updated([], list(rects))

    def take_framebuffer(self, framebuffer: np.ndarray) -> None:
        """Show the upstream connection's framebuffer from now on."""
        same_size = framebuffer.shape == self.framebuffer.shape
        self.framebuffer = framebuffer
        if same_size:
            self.damaged_grid(np.ones(tile_grid_shape(self.width, self.height), dtype=bool))
        else:
            self.resized()


class _ToFeed:
    """A mirror's input: whatever feeds it now gets it (nothing while none does)."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        if feed := self.mirror.feed:
            feed.key(down, keysym, keycode)

    def pointer(self, buttons: int, x: int, y: int) -> None:
        if feed := self.mirror.feed:
            feed.pointer(buttons, x, y)

    def clipboard(self, text: str) -> None:
        if feed := self.mirror.feed:
            feed.clipboard(text)

    def set_desktop_size(self, width: int, height: int) -> bool:
        feed = self.mirror.feed
        return feed is not None and feed.set_desktop_size(width, height)


class LinkListener(Protocol):
    """Who hears when a desktop's console comes up and goes away (the manager)."""

    def link_live(self, name: str) -> None: ...
    def link_down(self, name: str, why: str) -> None: ...


class Upstream:
    """Keeps a Mirror fed from one desktop and forwards input to it.

    Twisted's ClientService reconnects.  Its attempt count restarts at every
    TCP connection, so the delays come from our own count, which restarts
    only once the desktop has answered (ServerInit): a server that accepts
    and then drops us still gets longer and longer pauses.
    """

    first_delay = 0.5
    max_delay = 10.0

    def __init__(
        self,
        address: DesktopAddress,
        mirror: Mirror | None = None,
        clock: Clock | None = None,
        listener: LinkListener | None = None,
    ) -> None:
        self.address = address
        self.mirror = mirror or Mirror(address.name)
        self.clock: Clock = clock or reactor_clock()
        self.listener = listener
        self.proto: rfbclient.RFBClientProtocol | None = None  # the live connection
        self.can_set_size = False
        self.connections = 0
        self.service: ClientService | None = None
        self._failures = 0
        self.why = "not connected yet"
        self._latency = metrics.upstream_latency(address.name)
        self._asked: float | None = None  # when the update on its way was asked for
        self._delays = backoffPolicy(
            self.first_delay, self.max_delay, factor=2.0, jitter=lambda: random.uniform(0, 0.1)
        )

    @property
    def running(self) -> bool:
        return self.service is not None

    @property
    def live(self) -> bool:
        """Connected, with the desktop's picture on the mirror."""
        return self.proto is not None

    @property
    def in_update(self) -> bool:
        return self.proto is not None and self.proto.conn.in_update

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self.service is not None:
            return
        endpoint = _Noting(_client_endpoint(self.address.endpoint), self._noted)
        self.service = ClientService(
            cast(IStreamClientEndpoint, endpoint),
            cast(IProtocolFactory, _LinkFactory(self)),
            retryPolicy=self._retry_in,
            clock=cast(IReactorTime, self.clock),
        )
        self.mirror.attach(self)
        self.service.startService()

    def stop(self) -> defer.Deferred[None]:
        """Disconnect and stop retrying; fires once the connection is closed."""
        service, self.service = self.service, None
        self.mirror.detach(self)
        if service is None:
            return defer.succeed(None)
        return service.stopService()

    def _noted(self, why: str) -> None:
        self.why = why

    def _lost(self, proto: rfbclient.RFBClientProtocol, reason: Failure | None) -> None:
        self.why = proto.error or (reason.getErrorMessage() if reason else "connection closed")
        if proto is not self.proto:
            return
        self.proto = None
        self.can_set_size = False
        if self.listener is not None:
            self.listener.link_down(self.address.name, self.why)

    def _retry_in(self, attempt: int) -> float:
        """ClientService asks how long to wait: the link is down, say so on the mirror."""
        delay = self._delays(self._failures)
        self._failures += 1
        why = self.why
        log.warning(
            "desktop %s unavailable (%s); retrying in %.1f s", self.address.name, why, delay
        )
        if self.service is not None:
            self.mirror.show_screen(screens.unavailable(self.address.name, delay, _short(why)))
        return delay

    # -- events from the desktop ------------------------------------------------------
    def _on_event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        conn = proto.conn
        if isinstance(event, ServerInitReceived):
            self._live(proto)
        elif isinstance(event, UpdateDone):
            self._updated(event)
            self._ask(conn)
        elif isinstance(event, DesktopResized):
            self.can_set_size = self.can_set_size or event.screens != ()
            self.mirror.take_framebuffer(conn.framebuffer)
            if event.reason == ResizeReason.THIS_CLIENT:
                self.mirror.resize_answered(granted=True)
        elif isinstance(event, SetDesktopSizeFailed):
            self._size_not_set(event.status)
        elif isinstance(event, CursorShape):
            self.mirror.set_cursor(event.cursor)
        elif isinstance(event, ClipboardText):
            self.mirror.clipboard(event.text)
        elif isinstance(event, m.Bell):
            self.mirror.bell()

    def _size_not_set(self, status: int) -> None:
        """The desktop did not take the size a terminal asked for: the
        terminal is scaled to it.  Forwarded, the guest may still resize
        later (QEMU with a display that takes hints), and the desktop may
        take the next request too."""
        name = self.address.name
        if status == ResizeStatus.FORWARDED:
            log.info("desktop %s passed a size change on to its guest; scaled meanwhile", name)
        else:
            log.info("desktop %s refused a size change (status %d); scaled instead", name, status)
        self.can_set_size = status == ResizeStatus.FORWARDED
        self.mirror.resize_answered(granted=False)

    def _before_update(self, conn: ClientConnection) -> None:
        """The desktop's next update is about to be written: into a copy, if
        the mirror has lent its picture to updates still going out."""
        if self.mirror.framebuffer is conn.framebuffer:
            conn.framebuffer = self.mirror.writable()

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

    def _ask(self, conn: ClientConnection, incremental: bool = True) -> None:
        """Ask for the next update; the one just done is timed from its request."""
        now = time.monotonic()
        if self._asked is not None:
            self._latency.observe(now - self._asked)
        self._asked = now
        conn.request_update(incremental=incremental)

    def _live(self, proto: rfbclient.RFBClientProtocol) -> None:
        if self.service is None:
            return  # stopped while it was shaking hands
        conn = proto.conn
        _no_delay(proto)
        self.connections += 1
        self._failures = 0
        conn.set_pixel_format(NATIVE)
        conn.set_encodings(self.address.wanted_encodings())
        self._asked = None
        self._ask(conn, incremental=False)
        self.proto = proto
        self.mirror.name = conn.name or self.address.name
        self.mirror.take_framebuffer(conn.framebuffer)
        conn.on_update_start = lambda: self._before_update(conn)
        log.info("desktop %s live at %dx%d", self.address.name, conn.width, conn.height)
        if self.listener is not None:
            self.listener.link_live(self.address.name)

    # -- InputSink ------------------------------------------------------------------
    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        if proto := self.proto:
            proto.conn.key_event(down, keysym, keycode)
            proto.flush()

    def pointer(self, buttons: int, x: int, y: int) -> None:
        if proto := self.proto:
            x = min(max(x, 0), max(proto.conn.width - 1, 0))
            y = min(max(y, 0), max(proto.conn.height - 1, 0))
            proto.conn.pointer_event(buttons, x, y)
            proto.flush()

    def clipboard(self, text: str) -> None:
        if proto := self.proto:
            proto.conn.send_clipboard(text)
            proto.flush()

    def set_desktop_size(self, width: int, height: int) -> bool:
        proto = self.proto
        if proto is None or not self.can_set_size:
            return False
        proto.conn.set_desktop_size(width, height)
        proto.flush()
        return True


class _LinkFactory(protocol.Factory):
    """RFB client protocols whose end the Upstream hears before ClientService does."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def buildProtocol(self, addr: object) -> rfbclient.RFBClientProtocol:
        upstream = self.upstream
        address = upstream.address
        options = rfbclient.ClientOptions(
            password=address.password, username=address.username, ca_file=address.ca_file
        )
        if address.fingerprint is not None:
            options = replace(
                options,
                methods=(VeNCryptSubtype.X509_PLAIN,),
                server_check=KeyPin(address.fingerprint),
            )
        proto = rfbclient.RFBClientProtocol(options, upstream._on_event)
        proto.closed.addBoth(lambda reason: upstream._lost(proto, reason))
        return proto


class KeyPin:
    """A server check (thinserve.tls.ServerCheck) that trusts exactly one key:
    the server's certificate must carry the key whose fingerprint was published."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def check(self, certificate: x509.Certificate, trusted: bool) -> None:
        from ..tls import ServerRefused

        found = certificate_fingerprint(certificate)
        if not hmac.compare_digest(found, self.fingerprint):
            raise ServerRefused(
                f"its certificate's key is sha256:{found}, not the pinned sha256:"
                f"{self.fingerprint}; the node's certificate changed or this is not that node"
            )

    def confirmed(self, certificate: x509.Certificate) -> None:
        pass


class _Endpoint(Protocol):
    """A client endpoint (IStreamClientEndpoint), as mypy can check its calls."""

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]: ...


def _client_endpoint(description: str) -> _Endpoint:
    from twisted.internet import reactor  # the one the program installed

    endpoint = endpoints.clientFromString(reactor, description)
    return cast(_Endpoint, endpoint)


@implementer(IStreamClientEndpoint)
class _Noting:
    """A client endpoint that tells why a connection attempt failed."""

    def __init__(self, endpoint: _Endpoint, note: Callable[[str], None]) -> None:
        self.endpoint = endpoint
        self.note = note

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self.note(failure.getErrorMessage())
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


def _no_delay(proto: rfbclient.RFBClientProtocol) -> None:
    """Requests and input go out at once."""
    set_no_delay = getattr(proto.transport, "setTcpNoDelay", None)
    if set_no_delay is not None:  # TCP only: Unix sockets have no Nagle
        with contextlib.suppress(OSError):
            set_no_delay(True)


def _short(why: str) -> str:
    return why if len(why) <= 80 else why[:77] + "..."


__all__ = ["DesktopAddress", "KeyPin", "LinkListener", "Mirror", "MirrorFeed", "Upstream"]
