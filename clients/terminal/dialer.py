"""Connect and find modes: the terminal dials the server, and dials again.

``DialMode`` connects to the targets its ``targets`` function names (the
``--connect HOST:PORT`` servers, or what ``--find`` saw with mDNS), one
after the other: each attempt goes to the next one, so after a failure or
the end of a session the terminal tries the next server (the next node of
a site) after 1 s, 2 s, 4 s, ... up to 30 s (varied by ±10 %); a session
that lasted 10 s starts the delays over.  When there is no target yet it
looks again every second.

Once a session was lost, and until the next one starts, the status screen
says "Reconnecting..." with the server it lost and the one it tries next.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from thinserve.reverse import connect_to_terminal, retry_delays

from .trust import server_name

log = logging.getLogger(__name__)

Target = tuple[str, int]
CONNECT_TIMEOUT = 10.0
STABLE_AFTER = 10.0  # a session this long resets the backoff
LOOK_AGAIN = 1.0  # seconds between looks for a target when there is none
WAITING = "Waiting for thinserve..."
RECONNECTING = "Reconnecting..."


class DialMode:
    def __init__(
        self,
        reactor: Any,
        factory: Factory,
        targets: Callable[[], list[Target]],
        terminal_id: str,  # as the status screen shows it
        addresses: Callable[[], list[str]],
        searching: str,
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.factory = factory
        self.targets = targets
        self.terminal_id = terminal_id
        self.addresses = addresses
        self.searching = searching  # status text while there is no target
        self.delays = retry_delays(initial_delay, max_delay)
        self.retries = 0  # since the last stable session
        self.state = "idle"  # idle, searching, connecting, connected, waiting
        self.target: Target | None = None
        self.attempts = 0
        self.last_error = ""
        self.retry_at = 0.0
        self.lost: Target | None = None  # the server of a session lost, until the next one
        self._timer: IDelayedCall | None = None
        self._attempt: defer.Deferred[Any] | None = None
        self._stopped = False

    def start(self) -> None:
        self._dial()

    def stop(self) -> defer.Deferred[None]:
        self._stopped = True
        self._cancel()
        return defer.succeed(None)

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()

    # -- attempts -------------------------------------------------------------------------
    def _dial(self) -> None:
        self._timer = None
        if self._stopped:
            return
        targets = self.targets()
        if not targets:
            self.state = "searching"
            self._timer = self.reactor.callLater(LOOK_AGAIN, self._dial)
            return
        self.target = host, port = targets[self.attempts % len(targets)]
        self.attempts += 1
        self.state = "connecting"
        log.info("connecting to %s:%d", host, port)
        attempt = connect_to_terminal(self.reactor, host, port, self.factory, CONNECT_TIMEOUT)
        self._attempt = attempt
        attempt.addCallbacks(self._connected, self._failed, errbackArgs=(attempt,))

    def _connected(self, proto: Any) -> None:
        self._attempt = None
        self.state = "connected" if getattr(proto, "accepted", True) else "idle"
        if self.state == "connected":
            self.lost = None

    def _failed(self, failure: Failure, attempt: defer.Deferred[Any]) -> None:
        if attempt is not self._attempt or failure.check(defer.CancelledError):
            return
        self._attempt = None
        self.last_error = failure.getErrorMessage()
        log.info("cannot connect: %s", self.last_error)
        self._retry_later()

    def session_ended(self, lasted: float, why: str = "the session ended") -> None:
        if lasted >= STABLE_AFTER:
            self.retries = 0
        self.last_error = why
        self.lost = self.target
        self._retry_later()

    def server_name(self) -> str | None:
        """The server being dialled, as known_servers names it: ``host:port``."""
        return None if self.target is None else server_name(*self.target)

    def _retry_later(self) -> None:
        if self._stopped or self._timer is not None:
            return
        self.retries += 1
        delay = self.delays(self.retries)
        self.state = "waiting"
        self.retry_at = self.reactor.seconds() + delay
        self._timer = self.reactor.callLater(delay, self._dial)

    # -- status ------------------------------------------------------------------------------
    def status(self) -> tuple[str, list[str]]:
        lines = [f"Terminal id: {self.terminal_id}"]
        lines.append("This terminal: " + (", ".join(self.addresses()) or "no network address"))
        if self.state == "searching" or self.target is None:
            lines.append(self.searching)
            return WAITING, lines
        title = WAITING
        if self.lost is not None:
            title = RECONNECTING
            lines.append(f"Lost the connection to {_shown(self.lost)}")
        if self.state == "waiting":
            seconds = max(0, math.ceil(self.retry_at - self.reactor.seconds()))
            lines.append(f"Server: {_shown(self._next())}")
            lines.append(f"Trying in {seconds} s ({self.last_error})")
        else:
            lines.append(f"Server: {_shown(self.target)}")
            lines.append("Connecting...")
        return title, lines

    def _next(self) -> Target:
        """The server the next attempt dials."""
        targets = self.targets()
        if not targets:
            assert self.target is not None
            return self.target
        return targets[self.attempts % len(targets)]


def _shown(target: Target) -> str:
    host, port = target
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
