"""HTTP connections with deadlines and size bounds (twisted.web underneath).

twisted.web already bounds a request's header bytes, its number of header
fields and one line, but answers every overflow with a bare 400 (or none at
all, for a long line) and never logs it; and its only clock is an idle timer
that every received byte restarts, so a client trickling one byte a second
holds a connection for as long as it likes.  ``BoundedHTTPChannel`` adds:

- a hard deadline for each request: its line, header fields and body must
  have arrived ``request_timeout`` seconds after the connection was made (or
  after the first byte of a later request on a kept-alive connection),
  however the bytes trickle in; then 408 and close;
- the idle timer for kept-alive connections, ``idle_timeout``;
- a deadline for sending a response, ``response_timeout`` (a client that
  stops reading is aborted);
- 414 for a long request line, 431 for too many or too large header fields,
  413 for a request body (nothing here takes one), 400 for a malformed
  request; each answer is short, says ``Connection: close``, and the
  connection is aborted if the peer does not take it within ``close_grace``;
- one log line per refusal, with the peer and the reason (``RefusalLog``
  keeps a flood to a few lines).

A WebSocket upgrade hands the connection over (``hand_over``): the clocks
stop, and bytes that arrived right behind the upgrade request go to the
WebSocket protocol instead of being buffered for an HTTP request that never
comes.  A response that streams for as long as the client stays (the
dashboard's Server-Sent Events) stops the clocks the same way
(``stream_response``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol, cast

from twisted.internet.interfaces import IAddress, ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ..clock import Timer
from .limits import HTTPLimits, RefusalLog, describe_peer

log = logging.getLogger(__name__)

if TYPE_CHECKING:

    class _HTTPChannel(HTTPChannel):
        """HTTPChannel with the signatures Twisted leaves unannotated, of the
        methods used here (``callLater`` is the reactor's, set by the Site)."""

        def connectionMade(self) -> None: ...
        def connectionLost(self, reason: Failure = connectionDone) -> None: ...
        def dataReceived(self, data: bytes) -> None: ...
        def lineReceived(self, line: bytes) -> None: ...
        def headerReceived(self, line: bytes) -> bool: ...
        def allHeadersReceived(self) -> None: ...
        def allContentReceived(self) -> None: ...
        def requestDone(self, request: Request) -> None: ...
        def loseConnection(self) -> None: ...
        def setTimeout(self, period: float | None) -> float | None: ...
        def callLater(self, period: float, func: Callable[[], object]) -> Timer: ...

    class _Site(Site):
        def __init__(self, resource: Resource) -> None: ...

else:
    _HTTPChannel, _Site = HTTPChannel, Site


class _Connection(Protocol):
    """A channel's transport (ITransport): TCP, or TLS over it."""

    def write(self, data: bytes) -> None: ...
    def getPeer(self) -> IAddress: ...
    def abortConnection(self) -> None: ...


class _TCPConnection(_Connection, Protocol):
    """A plain TCP transport (ITCPTransport), which can close one half."""

    def resumeProducing(self) -> None: ...
    def loseWriteConnection(self) -> None: ...


class _Receiver(Protocol):
    """The protocol that takes a connection over (IProtocol)."""

    def dataReceived(self, data: bytes) -> None: ...


class BoundedHTTPChannel(_HTTPChannel):
    """One HTTP/1.x connection to a ``BoundedSite``."""

    site: BoundedSite
    _request_clock: Timer | None = None
    _response_clock: Timer | None = None
    _abort_clock: Timer | None = None
    _request_begun = False  # a byte of the current request has arrived
    _in_headers = False  # the request line has arrived, the blank line not yet
    _closing = False  # refused or timed out: the rest of the input is ignored
    _upgraded: _Receiver | None = None

    @property
    def _link(self) -> _Connection | None:
        """``transport``, as what this channel calls on it."""
        return cast("_Connection | None", self.transport)

    # -- the clocks -------------------------------------------------------------------------
    def connectionMade(self) -> None:
        limits = self.site.limits
        self.maxHeaders = limits.max_headers
        self.totalHeadersSize = limits.max_header_bytes
        self.MAX_LENGTH = max(limits.max_header_bytes, limits.max_request_line)
        super().connectionMade()
        self._start_request_clock()

    def _start_request_clock(self) -> None:
        self._request_clock = self.callLater(
            self.site.limits.request_timeout, self._request_too_slow
        )

    def _request_too_slow(self) -> None:
        self._request_clock = None
        timeout = self.site.limits.request_timeout
        if self._request_begun:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, f"request not complete within {timeout:g} s")
        else:
            self._report("no request within %g s; closed", timeout)
            self._close()

    def _response_too_slow(self) -> None:
        self._response_clock = None
        self._report(
            "response not taken within %g s; connection aborted",
            self.site.limits.response_timeout,
        )
        self._stop_clocks()
        self._closing = True
        if self._link is not None:
            self._link.abortConnection()

    def timeoutConnection(self) -> None:
        """twisted.web's idle timer: no byte for ``idle_timeout`` seconds."""
        if self._request_begun:
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                f"no byte for {self.site.limits.idle_timeout:g} s in the middle of a request",
            )
        else:
            log.debug("web client %s: idle, closed", self._peer())
            self._close()

    def _stop_clocks(self, idle_too: bool = True) -> None:
        clocks = (self._request_clock, self._response_clock)
        self._request_clock = self._response_clock = None
        for clock in clocks:
            _cancel(clock)
        if idle_too:
            self.setTimeout(None)

    # -- input ------------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if data and not self._handlingRequest:
            self._request_begun = True
            if self._request_clock is None:  # the first byte of a kept-alive request
                self._start_request_clock()
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._upgraded is not None:  # bytes sent right behind the upgrade request
            self._upgraded.dataReceived(data)
            return
        super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._closing:  # refused earlier in the same read
            return
        limits = self.site.limits
        if not self._in_headers:
            if len(line) > limits.max_request_line:
                self._refuse(
                    HTTPStatus.REQUEST_URI_TOO_LONG,
                    f"request line over {limits.max_request_line} bytes",
                )
                return
            self._in_headers = bool(line)  # one blank line before a request is tolerated
        elif self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request header fields over {self.totalHeadersSize} bytes",
            )
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_headers:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"a header line over {self.MAX_LENGTH} bytes",
            )
        else:
            self._refuse(
                HTTPStatus.REQUEST_URI_TOO_LONG,
                f"request line over {self.site.limits.max_request_line} bytes",
            )

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"more than {self.maxHeaders} header fields",
            )
            return False
        return super().headerReceived(line)

    def allHeadersReceived(self) -> None:
        body = self.length  # None: chunked
        if body is None or body > self.site.limits.max_body:
            size = "a chunked body" if body is None else f"a body of {body} bytes"
            self._refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{size} (at most {self.site.limits.max_body} accepted)",
            )
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._stop_clocks(idle_too=False)  # twisted.web sets its idle timer aside itself
        self._in_headers = self._request_begun = False
        self._response_clock = self.callLater(
            self.site.limits.response_timeout, self._response_too_slow
        )
        super().allContentReceived()  # answers the request

    def requestDone(self, request: Request) -> None:
        clock, self._response_clock = self._response_clock, None
        _cancel(clock)
        super().requestDone(request)  # may go on with a request already buffered

    def _respondToBadRequestAndDisconnect(self) -> None:
        """twisted.web's answer to a request it cannot parse."""
        self._refuse(HTTPStatus.BAD_REQUEST, "malformed request")

    # -- the WebSocket takes over -----------------------------------------------------------
    def hand_over(self, protocol: _Receiver) -> None:
        """The connection now belongs to ``protocol`` (a WebSocket)."""
        self._stop_clocks()
        self._upgraded = protocol

    def stream_response(self) -> None:
        """The response under way lasts as long as the client keeps it open
        (Server-Sent Events): no deadline for sending it and no idle timer.
        The resource streaming it drops a client that stops reading."""
        self._stop_clocks()

    # -- refusing and closing ---------------------------------------------------------------
    def _refuse(self, status: HTTPStatus, reason: str) -> None:
        link = self._link
        if self._closing or link is None:
            return
        self._report("refused with %d: %s", status.value, reason)
        content_type, body = self.site.refusal(status, reason)
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            "Connection: close\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        link.write(head + body)
        self._close(linger=True)

    def _close(self, linger: bool = False) -> None:
        """Close after what was written; abort if the peer has not let go
        ``close_grace`` seconds later.

        With ``linger`` (after a refusal, while the peer may still be sending
        its request) only our half is shut and whatever still arrives is read
        and dropped: closing with unread input would make the kernel answer
        with a reset, which can destroy the refusal before the peer reads it.
        """
        self._stop_clocks()
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._abort_clock = self.callLater(self.site.limits.close_grace, self._abort)
        transport = self.transport
        if (
            linger
            and ITCPTransport.providedBy(transport)
            and not ISSLTransport.providedBy(transport)
        ):
            tcp = cast(_TCPConnection, transport)
            self._networkProducer.unregisterProducer()
            tcp.resumeProducing()  # keep reading (and dropping) until the peer closes
            tcp.loseWriteConnection()
        else:
            self.loseConnection()

    def _abort(self) -> None:
        self._abort_clock = None
        if self._link is not None:
            self._link.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_clocks()
        clock, self._abort_clock = self._abort_clock, None
        _cancel(clock)
        super().connectionLost(reason)

    def _peer(self) -> str:
        return describe_peer(self._link.getPeer()) if self._link else "?"

    def _report(self, message: str, *args: object) -> None:
        """Log a refusal or a close (``site.refusals`` bounds a flood of them)."""
        self.site.refusals(logging.INFO, "web client %s: " + message, self._peer(), *args)


def _cancel(clock: Timer | None) -> None:
    if clock is not None and clock.active():
        clock.cancel()


class BoundedSite(_Site):
    """A twisted.web Site whose connections keep ``limits``."""

    protocol = BoundedHTTPChannel  # type: ignore[assignment]  # HTTP/1.1 only, no HTTP/2

    def __init__(self, resource: Resource, limits: HTTPLimits | None = None) -> None:
        super().__init__(resource)
        self.limits = limits or HTTPLimits()
        self.timeOut = self.limits.idle_timeout  # twisted.web's idle timer
        self.refusals = RefusalLog(log)

    def refusal(self, status: HTTPStatus, reason: str) -> tuple[str, bytes]:
        """The content type and body of a refusal the channel writes itself."""
        return "text/plain; charset=utf-8", f"{status.phrase}: {reason}\n".encode()
