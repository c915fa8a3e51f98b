"""``GET /api/v1/events``: the dashboard's live updates, as Server-Sent Events.

Every event is a whole snapshot of what changed-tracking needs, so events
can be merged and skipped freely::

    event: changed
    data: {"revision": 12, "thumbnails": {"desktop/office-1": 1718000000123, ...}}

``revision`` grows with every change the hub reports (``hub.on_change``:
what a terminal shows, who is connected, logins, desktops' states, any
change made through the API); the page reloads the lists it shows when it
grows, and fetches the thumbnails whose version changed (a new picture
sends an event but leaves the revision alone).  Changes are coalesced:
at most one event per ``MIN_GAP`` seconds, whatever the rate of changes.
A comment line (``: keepalive``) every ``KEEPALIVE`` seconds keeps proxies
from closing a quiet stream.

A stream lasts as long as the page is open, so it is exempt from the
site's deadline for sending a response (``BoundedHTTPChannel.stream_response``).
Nothing is buffered for a client that stops reading: each stream is a
push producer, and while its socket is full the events meant for it are
skipped (it gets the newest one when it resumes); a client that has taken
nothing for ``STALL_LIMIT`` seconds is dropped.  At most ``max_clients``
streams are open at once (503 beyond).
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Protocol, cast

from twisted.internet import task
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer

from ..admin.errors import ApiError
from ..admin.http import error_reply
from ..clock import Clock, Timer
from .thumbnails import Thumbnails

if TYPE_CHECKING:
    from ..hub import Hub

log = logging.getLogger(__name__)

MIN_GAP = 0.25  # seconds between two events (at most 4 per second)
KEEPALIVE = 15.0  # seconds between two keepalive comments
STALL_LIMIT = 30.0  # seconds a client may take nothing before it is dropped
MAX_CLIENTS = 50  # event streams open at once
RECONNECT_MS = 3000  # the browser's wait before it reconnects a lost stream
RETRY_AFTER = 10  # seconds, in the 503 answer to one client too many
KEEPALIVE_LINE = b": keepalive\n\n"


class _Abortable(Protocol):
    def abortConnection(self) -> None: ...


class EventsResource(resource.Resource):
    """The event streams of the dashboard's pages (see the module's docstring).

    Listens to ``hub.on_change`` and ``thumbnails.on_change`` from the
    start; ``close`` ends every stream and stops listening.
    """

    isLeaf = True

    def __init__(
        self, hub: Hub, thumbnails: Thumbnails, reactor: Clock, max_clients: int = MAX_CLIENTS
    ) -> None:
        super().__init__()
        self.hub = hub
        self.thumbnails = thumbnails
        self.clock = reactor
        self.max_clients = max_clients
        self.revision = 0
        self.clients: list[_Client] = []
        self._flush: Timer | None = None
        self._last_event = -math.inf
        self._keepalive = task.LoopingCall(self._keep_alive)
        self._keepalive.clock = cast(IReactorTime, reactor)
        hub.on_change.append(self.changed)
        thumbnails.on_change.append(self._soon)

    def close(self) -> None:
        """End every stream; stop listening to the hub and the thumbnails."""
        for callbacks, callback in (
            (self.hub.on_change, self.changed),
            (self.thumbnails.on_change, self._soon),
        ):
            if callback in callbacks:
                callbacks.remove(callback)
        for client in list(self.clients):
            client.end()
        self._stop_timers()

    # -- HTTP -----------------------------------------------------------------------------
    def render_GET(self, request: server.Request) -> bytes | int:
        if len(self.clients) >= self.max_clients:
            return error_reply(request, _too_many(self.max_clients))
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")  # nginx: pass each event on at once
        stream_response = getattr(request.channel, "stream_response", None)
        if stream_response is not None:
            stream_response()  # no deadline for this response (web/channel.py)
        client = _Client(self, request)
        self.clients.append(client)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(self._gone, client)
        self.thumbnails.add_watcher()
        if not self._keepalive.running:
            self._keepalive.start(KEEPALIVE, now=False)
        request.write(f"retry: {RECONNECT_MS}\n\n".encode() + self._event())
        return server.NOT_DONE_YET

    def _gone(self, result: Failure | None, client: _Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
            self.thumbnails.remove_watcher()
        if not self.clients:
            self._stop_timers()

    # -- changes --------------------------------------------------------------------------
    def changed(self) -> None:
        """Something the dashboard's lists show changed: a new revision, and an
        event soon (cheap; coalesced)."""
        self.revision += 1
        self._soon()

    def _soon(self) -> None:
        """An event soon: the revision or a thumbnail's version changed."""
        if self.clients and self._flush is None:
            wait = max(0.0, self._last_event + MIN_GAP - self.clock.seconds())
            self._flush = self.clock.callLater(wait, self._send_all)

    def _send_all(self) -> None:
        self._flush = None
        self._last_event = self.clock.seconds()
        event = self._event()
        for client in list(self.clients):
            client.send(event)

    def _event(self) -> bytes:
        data = json.dumps(
            {"revision": self.revision, "thumbnails": self.thumbnails.versions()},
            separators=(",", ":"),
        )
        return f"event: changed\ndata: {data}\n\n".encode()

    def _keep_alive(self) -> None:
        now = self.clock.seconds()
        for client in list(self.clients):
            if client.paused_since is None:
                client.request.write(KEEPALIVE_LINE)
            elif now - client.paused_since >= STALL_LIMIT:
                log.info(
                    "dashboard event client %s took nothing for %g s; dropped",
                    client.peer(),
                    STALL_LIMIT,
                )
                client.abort()

    def _stop_timers(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None


def _too_many(limit: int) -> ApiError:
    return ApiError(
        503,
        f"{limit} event streams are open already",
        "close other dashboard pages, or try again later",
        code="rate_limited",
        retry_after=RETRY_AFTER,
    )


@implementer(IPushProducer)
class _Client:
    """One open stream; its connection pauses it while the socket is full."""

    def __init__(self, events: EventsResource, request: server.Request) -> None:
        self.events = events
        self.request = request
        self.paused_since: float | None = None
        self.missed = False  # an event was skipped while paused

    def send(self, event: bytes) -> None:
        if self.paused_since is not None:
            self.missed = True
            return
        self.request.write(event)

    # -- IPushProducer ---------------------------------------------------------------------
    def pauseProducing(self) -> None:
        if self.paused_since is None:
            self.paused_since = self.events.clock.seconds()

    def resumeProducing(self) -> None:
        self.paused_since = None
        if self.missed:
            self.missed = False
            self.request.write(self.events._event())

    def stopProducing(self) -> None:
        self.abort()

    # -- ending ----------------------------------------------------------------------------
    def end(self) -> None:
        """Finish the stream (the server stops)."""
        self.request.unregisterProducer()
        self.request.finish()

    def abort(self) -> None:
        """Drop the connection at once, whatever it still had to send."""
        transport = self.request.channel.transport if self.request.channel else None
        if transport is not None:
            cast(_Abortable, transport).abortConnection()

    def peer(self) -> str:
        address = self.request.getClientAddress()
        return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
