"""Reverse connections: thinserve dials out to terminals that listen.

A terminal that cannot or should not dial in listens like a VNC "listening
viewer" (port 5500 by default) and advertises itself (protocols.terminal).
thinserve connects to it and runs its RFB *server* protocol over that
connection: the terminal stays the RFB client, only the TCP roles swap.

``connect_to_terminal`` makes one attempt.  ``ReverseConnector`` is a
service with one child per advertised terminal, a ``TerminalLink``: a
Twisted ClientService that dials the terminal's addresses and, while the
terminal is advertised, dials again with exponential backoff after a
failure or the end of a connection.  A connection that lasted
``stable_after`` seconds starts the delays over; one that the terminal ends
at once does not, so such a terminal is not dialled in a tight loop.

An advert that changes replaces the link, so new addresses are dialled at
once; while the link is connected the replacement waits for the connection
to end.  When the advert goes away a link that is not connected stops; a
connected one is left alone (mDNS can lose an advert that the TCP
connection outlives) and stops when its connection ends.  Stopping the
connector closes every connection.  Its ``terminal_added``,
``terminal_updated`` and ``terminal_removed`` methods fit
thinserve.discovery.TerminalBrowser's callbacks.

Several nodes of a site see the same adverts.  Given a ``gate`` (in cluster
mode, thinserve/cluster/dialing.py) a link asks it before every attempt
whether this node may dial the terminal (it holds the terminal's ``dial``
lease); when not, it asks again every ``refused_delay`` seconds, so when the
dialling node dies another one takes over once its lease expires.  A link
that is let go gives the lease up.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.terminal import DEFAULT_PORT, TerminalAdvert

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PORT",
    "ReverseConnector",
    "TerminalLink",
    "connect_to_terminal",
    "retry_delays",
]

LostCallback = Callable[[IProtocol, Failure], None]


class DialGate(Protocol):
    """Which node dials a terminal: one of the site's nodes at a time."""

    def may_dial(self, advert: TerminalAdvert) -> defer.Deferred[bool]:
        """Whether this node may dial ``advert``'s terminal now (it holds its lease)."""
        ...

    def done_with(self, advert: TerminalAdvert) -> None:
        """This node no longer dials ``advert``'s terminal: another may."""
        ...


class DialledElsewhere(ConnectionError):
    """Another node of the site dials this terminal."""


FactoryFor = Callable[[TerminalAdvert], Factory[Any]]
AdvertCallback = Callable[[TerminalAdvert], None]


def connect_to_terminal(
    reactor: Any,  # IReactorTCP: a zope interface, which mypy cannot check
    host: str,
    port: int,
    protocol_factory: Factory[Any],
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
        return endpoint.connect(_provider(protocol_factory)).addCallback(_dialled)
    watching = _Watching(protocol_factory, on_lost)  # tells the protocol it was dialled
    return endpoint.connect(_provider(watching)).addCallback(_unwrapped)


def retry_delays(initial: float, maximum: float, jitter: float = 0.1) -> Callable[[int], float]:
    """Seconds to wait before retry ``n`` (from 1): ``initial``, doubling up to
    ``maximum``, each varied by up to ``jitter`` of itself at random, so that
    links that broke together do not all dial again together."""
    policy = backoffPolicy(initial, maximum, factor=2.0, jitter=lambda: 0.0)
    return lambda n: policy(n - 1) * random.uniform(1 - jitter, 1 + jitter)


def _dialled(proto: IProtocol) -> IProtocol:
    """Tell an RFB server protocol that thinserve opened its connection (it is
    still the TLS server).  Runs before any byte is read."""
    if hasattr(proto, "dialled"):
        proto.dialled = True
    return proto


def _unwrapped(proto: IProtocol) -> IProtocol:
    return proto.wrappedProtocol if isinstance(proto, _Watched) else proto


def _provider(factory: Factory[Any]) -> IProtocolFactory:
    """A Factory as the IProtocolFactory it implements (zope: mypy cannot tell)."""
    return cast(IProtocolFactory, factory)


class _Endpoint(Protocol):
    """A client endpoint (IStreamClientEndpoint), as mypy can check its calls."""

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]: ...


def _endpoint(reactor: Any, host: str, port: int, timeout: float) -> _Endpoint:
    try:
        version = ipaddress.ip_address(host.split("%")[0]).version
    except ValueError:
        return endpoints.HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout)
    if version == 4:
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)


class _Watched(ProtocolWrapper):
    """A dialled connection's protocol, whose end is reported."""

    factory: _Watching

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        wrapped = self.wrappedProtocol  # the base class drops it
        super().connectionLost(reason)
        self.factory.on_lost(wrapped, reason)


class _Watching(WrappingFactory[_Watched]):
    """Protocols for dialled connections: told so at once, and watched for their end."""

    protocol = _Watched

    def __init__(self, wrapped: Factory[Any], on_lost: LostCallback) -> None:
        super().__init__(wrapped)
        self.on_lost = on_lost

    def buildProtocol(self, addr: IAddress | None) -> _Watched:
        watched = super().buildProtocol(addr)
        _dialled(watched.wrappedProtocol)
        return watched


class ReverseConnector(service.MultiService):
    """One TerminalLink (a ClientService) per advertised terminal or listening viewer."""

    def __init__(
        self,
        reactor: Any,  # IReactorTCP and IReactorTime: zope interfaces, which mypy cannot check
        factory_for: FactoryFor,
        connect_timeout: float = 10.0,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        stable_after: float = 10.0,
        on_connected: AdvertCallback | None = None,
        on_disconnected: AdvertCallback | None = None,
        gate: DialGate | None = None,
        refused_delay: float = 2.0,
    ) -> None:
        """``factory_for(advert)``: the protocol factory for a terminal's connections.
        ``gate``: asked before each attempt (see the module); ``refused_delay``:
        seconds until it is asked again after saying no."""
        super().__init__()
        self.gate = gate
        self.refused_delay = refused_delay
        self.reactor = reactor
        self.factory_for = factory_for
        self.connect_timeout = connect_timeout
        self.delays = retry_delays(initial_delay, max_delay)
        self.stable_after = stable_after  # a connection this long resets the backoff
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.links: dict[str, TerminalLink] = {}  # by lower-case service name

    # -- TerminalBrowser callbacks ---------------------------------------------------------
    def terminal_added(self, advert: TerminalAdvert) -> None:
        link = self.links.get(_key(advert))
        if link is None or (not link.connected and link.advert != advert):
            self._replace(advert)
        else:
            link.readvertised(advert)

    def terminal_updated(self, advert: TerminalAdvert) -> None:
        self.terminal_added(advert)

    def terminal_removed(self, advert: TerminalAdvert) -> None:
        link = self.links.get(_key(advert))
        if link is None:
            return
        if link.connected:
            link.withdrawn()
        else:
            self._forget(link)

    def stopService(self) -> None:
        """Stop every link: no more dialling, and each connection asked to close.

        Not waiting for the connections to end: an RFB connection over TLS
        ends only once its protocol has stopped producing (rfbproto.close),
        which the hub does for every session after this (thinserve.service).
        """
        super().stopService()

    # -- links -----------------------------------------------------------------------------
    def _replace(self, advert: TerminalAdvert) -> None:
        """A new link for ``advert`` (it dials at once while the connector runs)."""
        old = self.links.get(_key(advert))
        if old is not None:
            self._forget(old, keep_lease=True)  # the new link dials in its place
        link = self.links[_key(advert)] = TerminalLink(self, advert)
        self.addService(link)

    def _forget(self, link: TerminalLink, keep_lease: bool = False) -> None:
        """Stop ``link`` (closing its connection, if any) and let it go."""
        if self.links.get(_key(link.advert)) is link:
            del self.links[_key(link.advert)]
            self.removeService(link)
            if self.gate is not None and link.may_dial and not keep_lease:
                self.gate.done_with(link.advert)

    def ended(self, link: TerminalLink) -> None:
        """``link``'s connection ended: replace it for a newer advert, let it go if withdrawn."""
        if self.links.get(_key(link.advert)) is not link:
            return
        if link.newer is not None:
            self._replace(link.newer)
        elif not link.advertised:
            self._forget(link)


class TerminalLink(ClientService):
    """One terminal, dialled at its advertised addresses while it is advertised."""

    def __init__(self, connector: ReverseConnector, advert: TerminalAdvert) -> None:
        self.connector = connector
        self.advert = advert
        self.advertised = True
        self.newer: TerminalAdvert | None = None  # a changed advert, for after this connection
        self.attempts = 0
        self.retries = 0  # delays waited since the last stable connection
        self.connected_at: float | None = None
        self.may_dial = False  # the gate said yes to the last attempt
        self._why = ""
        factory = _Watching(connector.factory_for(advert), self._lost)
        super().__init__(
            cast(IStreamClientEndpoint, _Dial(self)),
            _provider(factory),
            retryPolicy=self._retry_in,
            clock=cast(IReactorTime, connector.reactor),
            prepareConnection=self._up,
        )

    @property
    def connected(self) -> bool:
        return self.connected_at is not None

    def readvertised(self, advert: TerminalAdvert) -> None:
        self.advertised = True
        self.newer = advert if advert != self.advert else None

    def withdrawn(self) -> None:
        self.advertised = False
        self.newer = None

    async def dial(self, factory: IProtocolFactory) -> IProtocol:
        """One attempt: the advertised addresses in turn, until one answers."""
        advert, connector = self.advert, self.connector
        if connector.gate is not None:
            await self._ask_gate(connector.gate)
        self.attempts += 1
        error: Exception = ConnectionError("the advert lists no address")
        for host in advert.addresses:
            endpoint = _endpoint(connector.reactor, host, advert.port, connector.connect_timeout)
            try:
                return await endpoint.connect(factory)
            except defer.CancelledError:
                raise
            except Exception as exc:
                error = exc
                log.debug("terminal %s: %s:%d: %s", advert.instance, host, advert.port, exc)
        self._why = f"unreachable ({error})"
        raise error

    async def _ask_gate(self, gate: DialGate) -> None:
        """DialledElsewhere unless this node may dial the terminal now."""
        try:
            self.may_dial = await gate.may_dial(self.advert)
        except defer.CancelledError:
            raise
        except Exception as exc:
            self.may_dial = False
            self._why = f"not dialled: cannot tell which node dials it ({exc})"
            raise DialledElsewhere(self._why) from None
        if not self.may_dial:
            self._why = "dialled by another node"
            raise DialledElsewhere(self._why)

    def _up(self, _proto: IProtocol) -> None:
        self.connected_at = self.connector.reactor.seconds()
        log.info("connected to terminal %s (%s)", self.advert.instance, self.advert.terminal_id)
        if self.connector.on_connected is not None:
            _guarded(self.connector.on_connected, self.advert)

    def _lost(self, proto: IProtocol, reason: Failure) -> None:
        if self.connected_at is None:  # ended before it was handed over
            return
        lasted = self.connector.reactor.seconds() - self.connected_at
        self.connected_at = None
        self._why = f"disconnected after {lasted:.1f} s"
        log.info("terminal %s %s", self.advert.instance, self._why)
        if lasted >= self.connector.stable_after:
            self.retries = 0
        if self.connector.on_disconnected is not None:
            _guarded(self.connector.on_disconnected, self.advert)
        self.connector.ended(self)

    def _retry_in(self, _failures: int) -> float:
        """ClientService counts failures since the last connection; the link
        counts delays since the last stable connection (see the module).
        A terminal another node dials is asked about again soon, quietly."""
        if self.connector.gate is not None and not self.may_dial:
            return self.connector.refused_delay
        self.retries += 1
        delay = self.connector.delays(self.retries)
        log.info("terminal %s %s; retrying in %.1f s", self.advert.instance, self._why, delay)
        return delay


@implementer(IStreamClientEndpoint)
class _Dial:
    """A link's terminal as an endpoint: the first of its addresses that answers."""

    def __init__(self, link: TerminalLink) -> None:
        self.link = link

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return defer.ensureDeferred(self.link.dial(factory))


def _key(advert: TerminalAdvert) -> str:
    return advert.service_name.lower()


def _guarded(callback: AdvertCallback, advert: TerminalAdvert) -> None:
    try:
        callback(advert)
    except Exception:
        log.exception("reverse connection callback %r failed", callback)
