"""Reverse connections: thinserve dials out to terminals that listen.

A terminal that cannot or should not dial in listens like a VNC "listening
viewer" (port 5500 by default) and advertises itself (protocols.terminal).
thinserve connects to it and runs its RFB *server* protocol over that
connection: the terminal stays the RFB client, only the TCP roles swap.

``connect_to_terminal`` makes one attempt.  ``ReverseConnector`` keeps one
connection per advertised terminal: it retries with exponential backoff
while the terminal is advertised, follows address and port changes, and
stops trying when the advert goes away.  Its ``terminal_added``,
``terminal_updated`` and ``terminal_removed`` methods fit
thinserve.discovery.TerminalBrowser's callbacks.  A connection that is up
when the advert goes away is left alone (mDNS can lose an advert that the
TCP connection outlives); ``stop(disconnect=True)`` closes them all.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from protocols.terminal import DEFAULT_PORT, TerminalAdvert

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PORT", "Backoff", "ReverseConnector", "connect_to_terminal"]

LostCallback = Callable[[IProtocol, Failure], None]


def connect_to_terminal(
    reactor: Any,
    host: str,
    port: int,
    protocol_factory: IProtocolFactory,
    timeout: float = 10.0,
    on_lost: LostCallback | None = None,
) -> defer.Deferred[IProtocol]:
    """Connect to a listening terminal; fires with the factory's protocol once connected.

    Fails with twisted.internet.error.TimeoutError when the TCP connection is
    not up within ``timeout`` seconds.  ``on_lost(protocol, reason)`` is
    called when a connection made this way closes.
    """
    endpoint = _endpoint(reactor, host, port, timeout)
    if on_lost is None:
        connected = endpoint.connect(protocol_factory)
    else:
        watched = endpoint.connect(_WatchingFactory(protocol_factory, on_lost))
        connected = watched.addCallback(lambda wrapper: wrapper.wrappedProtocol)
    return connected.addCallback(_dialled)


def _dialled(proto: IProtocol) -> IProtocol:
    """Tell an RFB server protocol that thinserve opened its connection (it is
    still the TLS server).  Runs on connection, before any byte is read."""
    if hasattr(proto, "dialled"):
        proto.dialled = True
    return proto


def _endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    try:
        version = ipaddress.ip_address(host.split("%")[0]).version
    except ValueError:
        return endpoints.HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout)
    if version == 4:
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)


class _Watched(ProtocolWrapper):
    factory: _WatchingFactory

    def connectionLost(self, reason: Failure) -> None:
        wrapped = self.wrappedProtocol  # the base class drops it
        super().connectionLost(reason)
        self.factory.on_lost(wrapped, reason)


class _WatchingFactory(WrappingFactory):
    protocol = _Watched

    def __init__(self, wrapped: IProtocolFactory, on_lost: LostCallback) -> None:
        super().__init__(wrapped)
        self.on_lost = on_lost


@dataclass
class Backoff:
    """Exponential delays with jitter: initial, initial*factor, ... up to maximum."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1  # each delay is scaled by a random factor in [1-jitter, 1+jitter]
    current: float = field(default=0.0, init=False)

    def next(self) -> float:
        base = self.initial if self.current == 0 else min(self.current * self.factor, self.maximum)
        self.current = base
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self.current = 0.0


ConnectedCallback = Callable[[TerminalAdvert, IProtocol], None]
DisconnectedCallback = Callable[[TerminalAdvert], None]


class ReverseConnector:
    def __init__(
        self,
        reactor: Any,
        protocol_factory: IProtocolFactory,
        connect_timeout: float = 10.0,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        stable_after: float = 10.0,
        on_connected: ConnectedCallback | None = None,
        on_disconnected: DisconnectedCallback | None = None,
    ) -> None:
        self.reactor = reactor
        self.protocol_factory = protocol_factory
        self.connect_timeout = connect_timeout
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.stable_after = stable_after  # a connection this long resets the backoff
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.links: dict[str, _Link] = {}  # by lower-case service name

    # -- TerminalBrowser callbacks ---------------------------------------------------------
    def terminal_added(self, advert: TerminalAdvert) -> None:
        key = advert.service_name.lower()
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = _Link(self, advert)
        link.advertised(advert)

    def terminal_updated(self, advert: TerminalAdvert) -> None:
        self.terminal_added(advert)

    def terminal_removed(self, advert: TerminalAdvert) -> None:
        link = self.links.get(advert.service_name.lower())
        if link is not None:
            link.withdrawn()
            self._forget_idle(link)

    def stop(self, disconnect: bool = False) -> None:
        """Stop every attempt; with ``disconnect``, close the connections too."""
        for link in list(self.links.values()):
            link.withdrawn()
            if disconnect:
                link.disconnect()
        self.links = {k: v for k, v in self.links.items() if v.protocol is not None}

    def connected(self) -> dict[str, IProtocol]:
        """The protocols of terminals connected now, by lower-case service name."""
        return {k: v.protocol for k, v in self.links.items() if v.protocol is not None}

    def _forget_idle(self, link: _Link) -> None:
        key = link.advert.service_name.lower()
        if not link.active and link.protocol is None and self.links.get(key) is link:
            del self.links[key]


class _Link:
    """One terminal: connecting, connected, or waiting to retry."""

    def __init__(self, owner: ReverseConnector, advert: TerminalAdvert) -> None:
        self.owner = owner
        self.advert = advert
        self.active = False  # advertised: keep trying
        self.backoff = Backoff(owner.initial_delay, owner.max_delay)
        self.attempt: defer.Deferred[IProtocol] | None = None
        self.timer: IDelayedCall | None = None
        self.protocol: IProtocol | None = None
        self.connected_at = 0.0
        self.attempts = 0

    def advertised(self, advert: TerminalAdvert) -> None:
        moved = (advert.addresses, advert.port) != (self.advert.addresses, self.advert.port)
        self.advert = advert
        if self.protocol is not None:
            self.active = True
            return  # later reconnects use the new address
        if self.active and not moved:
            return
        self.active = True
        self._cancel()
        self.backoff.reset()
        self._connect()

    def withdrawn(self) -> None:
        self.active = False
        self._cancel()

    def disconnect(self) -> None:
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.loseConnection()

    def _cancel(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.cancel()

    # -- attempts ---------------------------------------------------------------------------
    def _connect(self) -> None:
        self.timer = None
        self.attempts += 1
        attempt = defer.ensureDeferred(self._first_that_answers(self.advert))
        self.attempt = attempt
        attempt.addCallbacks(self._up, self._failed, (attempt,), None, (attempt,), None)

    async def _first_that_answers(self, advert: TerminalAdvert) -> IProtocol:
        owner = self.owner
        failure = Failure(ConnectionError("the advert lists no address"))
        for host in advert.addresses:
            try:
                return await connect_to_terminal(
                    owner.reactor,
                    host,
                    advert.port,
                    owner.protocol_factory,
                    owner.connect_timeout,
                    self._lost,
                )
            except defer.CancelledError:
                raise
            except Exception:
                failure = Failure()
                log.debug("terminal %s: %s:%d: %s", advert.instance, host, advert.port, failure)
        failure.raiseException()
        raise AssertionError("unreachable")  # raiseException always raises

    def _up(self, protocol: IProtocol, attempt: defer.Deferred[IProtocol]) -> None:
        if attempt is not self.attempt:  # cancelled meanwhile: keep nothing half-open
            protocol.transport.loseConnection()  # type: ignore[attr-defined]
            return
        self.attempt = None
        self.protocol = protocol
        self.connected_at = self.owner.reactor.seconds()
        log.info("connected to terminal %s (%s)", self.advert.instance, self.advert.terminal_id)
        if self.owner.on_connected is not None:
            _guarded(self.owner.on_connected, self.advert, protocol)

    def _failed(self, failure: Failure, attempt: defer.Deferred[IProtocol]) -> None:
        if attempt is not self.attempt or failure.check(defer.CancelledError):
            return
        self.attempt = None
        delay = self.backoff.next()
        log.info(
            "terminal %s unreachable (%s); retrying in %.1f s",
            self.advert.instance,
            failure.getErrorMessage(),
            delay,
        )
        self._retry_in(delay)

    def _lost(self, protocol: IProtocol, reason: Failure) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        lasted = self.owner.reactor.seconds() - self.connected_at
        log.info("terminal %s disconnected after %.1f s", self.advert.instance, lasted)
        if self.owner.on_disconnected is not None:
            _guarded(self.owner.on_disconnected, self.advert)
        if not self.active:
            self.owner._forget_idle(self)
            return
        if lasted >= self.owner.stable_after:
            self.backoff.reset()
        self._retry_in(self.backoff.next())

    def _retry_in(self, delay: float) -> None:
        if self.active and self.timer is None and self.attempt is None:
            self.timer = self.owner.reactor.callLater(delay, self._connect)


def _guarded(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("reverse connection callback %r failed", callback)
