"""Listening ports as services: one StreamServerEndpointService per Twisted
endpoint description, with a listen backlog that takes a burst of
connections, and the port each listens on (for the logs, the admin API's
status and the zeroconf advertisers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

from twisted.application import strports
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IAddress, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

from .servicetree import InOrder

AnyFactory = protocol.Factory[Any]  # the RFB server factory, the browser terminal's site


class Port(Protocol):
    """A listening port (IListeningPort, which mypy cannot check: a zope interface)."""

    def getHost(self) -> IAddress: ...

    def stopListening(self) -> defer.Deferred[None] | None: ...


class _ServerEndpoint(Protocol):
    def listen(self, factory: IProtocolFactory) -> defer.Deferred[Port]: ...


@implementer(IStreamServerEndpoint)
class _KeepsPort:
    """A server endpoint that keeps the port it listens on, for the logs and the
    advertisers (StreamServerEndpointService does not say)."""

    def __init__(self, endpoint: _ServerEndpoint) -> None:
        self.endpoint = endpoint
        self.port: Port | None = None

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[Port]:
        return self.endpoint.listen(factory).addCallback(self._keep)

    def _keep(self, port: Port) -> Port:
        self.port = port
        return port


class Listeners(InOrder):
    """One factory's listening ports: a StreamServerEndpointService per Twisted
    endpoint description.  Each fails to start at once if it cannot listen."""

    def __init__(
        self, reactor: Any, descriptions: Sequence[str], factory: AnyFactory, kind: str = ""
    ) -> None:
        super().__init__()
        self.kind = kind  # who connects, for the logs and systemd's status: "terminals", ...
        self.kept: list[_KeepsPort] = []
        for description in descriptions:
            listener = strports.service(with_backlog(description), _factory(factory), reactor)
            kept = _KeepsPort(listener.endpoint)
            listener.endpoint = kept
            self.kept.append(kept)
            self.addService(listener)

    def ports(self) -> list[Port]:
        return [kept.port for kept in self.kept if kept.port is not None]


LISTEN_BACKLOG = 1024  # Twisted's 50 overflows in a burst of connections, which then hang


def with_backlog(description: str) -> str:
    """A TCP or TLS listening endpoint with room for a burst of connections,
    unless the description sets its own ``backlog``."""
    if description.split(":", 1)[0] in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def _factory(factory: AnyFactory) -> IProtocolFactory:
    """A Factory as the IProtocolFactory it implements (zope: mypy cannot tell)."""
    return cast(IProtocolFactory, factory)
