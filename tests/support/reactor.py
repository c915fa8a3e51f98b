"""The running reactor and the Twisted objects the helpers use, typed.

mypy reads Twisted's zope interfaces (IReactorTCP, IListeningPort,
ITransport, ...) as classes whose methods lack ``self``, so every call
through them is an error.  These Protocols state the few methods the tests
call, as the reactor and its objects really provide them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class ListeningPort(Protocol):
    def getHost(self) -> IPv4Address: ...

    def stopListening(self) -> Deferred[None]: ...


class Transport(Protocol):
    """A connection's transport (TCP, TLS, or a process's pipes)."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


class ProcessTransport(Protocol):
    pid: int | None


class Reactor(Protocol):
    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, call: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall: ...

    def listenTCP(
        self, port: int, factory: protocol.Factory[Any], *, interface: str = ""
    ) -> ListeningPort: ...

    def spawnProcess(
        self,
        proto: protocol.ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> ProcessTransport: ...


def running_reactor() -> Reactor:
    """The installed reactor.

    Imported when asked for: importing the reactor installs one, and
    pytest-twisted must install the asyncio reactor first (the fixtures
    plugin imports these helpers before it runs).
    """
    from twisted.internet import reactor

    return cast(Reactor, reactor)


def transport_of(proto: protocol.Protocol | protocol.ProcessProtocol) -> Transport:
    """A connected protocol's transport."""
    if proto.transport is None:
        raise RuntimeError(f"{proto!r} is not connected")
    return cast(Transport, proto.transport)
