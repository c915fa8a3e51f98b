"""Every bound the browser terminal's web listener keeps, in one place.

HTTP (``HTTPLimits``, on ``WebOptions.http``): how long a connection may take
to deliver a request, wait idle between requests and take to read a
response; how large a request line, its header fields and its body may be.
WebSocket (defaults of ``WebSocketOptions``): how large one frame and one
message may be, how long the handshakes may take and how often a quiet
peer is pinged.  docs/browser-terminal.md ("Limits") says why each value.

``RefusalLog`` keeps the log of refused connections bounded under a flood.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocols.rfb.limits import DEFAULT_LIMITS

# -- HTTP ------------------------------------------------------------------------------------
# A request (line, header fields, body) must arrive completely within this
# many seconds of the connection (or of the first byte of a later request on a
# kept-alive connection); trickled bytes do not extend it.
REQUEST_TIMEOUT = 10.0
# A kept-alive connection may wait this long without a byte for its next request.
IDLE_TIMEOUT = 15.0
# Sending one response (the largest file, noVNC's rfb.js, is 120 KB) may take
# this long; a client that stops reading is dropped after it.
RESPONSE_TIMEOUT = 60.0
MAX_REQUEST_LINE = 8 * 1024  # bytes: method, target and version (414 beyond)
MAX_HEADER_BYTES = 16 * 1024  # bytes: request line and all header fields together (431)
MAX_HEADERS = 100  # header fields per request (431 beyond)
MAX_BODY = 0  # bytes: nothing served here takes a request body (413)
# After a refusal is written (or an idle connection is closed), the peer has
# this long to take it before the connection is aborted.
CLOSE_GRACE = 2.0

# -- WebSocket -------------------------------------------------------------------------------
# The largest RFB message a terminal sends is a ClientCutText (type, 3 bytes
# padding, u32 length) carrying the largest clipboard the RFB core accepts.
# noVNC sends at most 10 KiB per WebSocket message, but another client may
# put a whole message, or a paste and the key events after it, in one.
MAX_CLIENT_RFB_MESSAGE = 8 + DEFAULT_LIMITS.max_cut_text
MAX_WS_MESSAGE = MAX_CLIENT_RFB_MESSAGE + 64 * 1024  # bytes: one frame and one message
WS_SEND_PIECE = 64 * 1024  # bytes: outgoing RFB data goes out in messages of at most this
OPEN_HANDSHAKE_TIMEOUT = 5.0  # s: the upgrade request has already arrived whole
CLOSE_HANDSHAKE_TIMEOUT = 1.0  # s: a peer that does not answer our close frame is dropped
KEY_PROOF_TIMEOUT = 10.0  # s: from the nonce sent to the key proof received
PING_INTERVAL = 30.0  # s between pings to the peer
PING_TIMEOUT = 30.0  # s to answer a ping (any frame will do) before the peer is dropped

# -- logging ---------------------------------------------------------------------------------
LOG_BURST = 50  # refusals logged per window; the rest are counted
LOG_WINDOW = 10.0  # s


@dataclass(frozen=True)
class HTTPLimits:
    """Bounds on one HTTP connection to the web listener (seconds, bytes)."""

    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    response_timeout: float = RESPONSE_TIMEOUT
    max_request_line: int = MAX_REQUEST_LINE
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADERS
    max_body: int = MAX_BODY
    close_grace: float = CLOSE_GRACE


class RefusalLog:
    """Logs refused connections, at most ``burst`` lines per ``window`` seconds.

    A flood of refusals costs a few lines, not one per connection: the ones
    over the budget are counted, and the count is logged with the first
    refusal of a later window.
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = LOG_BURST,
        window: float = LOG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        self._window_start = clock()
        self._logged = 0
        self._unlogged = 0

    def __call__(self, level: int, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._window_start >= self._window:
            if self._unlogged:
                self._logger.warning(
                    "%d more refusals were not logged (at most %d per %g s)",
                    self._unlogged,
                    self._burst,
                    self._window,
                )
            self._window_start, self._logged, self._unlogged = now, 0, 0
        if self._logged < self._burst:
            self._logged += 1
            self._logger.log(level, message, *args)
        else:
            self._unlogged += 1


def describe_peer(address: object) -> str:
    """``host:port`` of a TCP peer (``[host]:port`` for IPv6), else its repr."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
