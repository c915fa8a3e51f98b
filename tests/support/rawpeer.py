"""A raw TCP (or TLS) peer: sends what the test writes, keeps everything it receives."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.interfaces import IReactorTime

from .reactor import running_reactor

T = TypeVar("T")
TIMEOUT = 5.0


class RawPeer(protocol.Protocol):
    """Collects everything received; lets a test wait for bytes or the close."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[tuple[Callable[[bytes], bool], defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for item in list(self._waiters):
            if item[0](bytes(self.received)):
                self._waiters.remove(item)
                item[1].callback(None)

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)

    async def wait_for(self, ready: Callable[[bytes], bool], timeout: float = TIMEOUT) -> bytes:
        """Everything received, once ``ready(everything)`` holds."""
        if not ready(bytes(self.received)):
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append((ready, waiter))
            await with_timeout(waiter, timeout)
        return bytes(self.received)

    async def wait_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Everything received, once the connection has closed."""
        await with_timeout(self.closed, timeout)
        return bytes(self.received)


async def connect_raw(port: int, tls: bool = False) -> RawPeer:
    """A raw peer connected to 127.0.0.1:``port`` (over TLS without verification:
    the servers are the tests' own, with self-signed certificates)."""
    reactor = running_reactor()
    endpoint: endpoints.SSL4ClientEndpoint | endpoints.TCP4ClientEndpoint
    if tls:
        options = ssl.CertificateOptions()
        endpoint = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    else:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    peer: RawPeer = await endpoints.connectProtocol(endpoint, RawPeer())
    return peer


async def with_timeout(d: defer.Deferred[T], seconds: float) -> T:
    """``d``'s result, or ``defer.TimeoutError`` after ``seconds``."""
    d.addTimeout(seconds, cast(IReactorTime, running_reactor()))
    return await d
