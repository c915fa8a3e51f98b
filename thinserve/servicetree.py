"""A Twisted service tree that starts in order.

``InOrder`` is a MultiService whose children start one after another, each
once the one before it has finished starting, and stop in reverse, each once
the one after it has finished stopping.  MultiService starts and stops them
all at once, which is too early for a part that needs the one before it (the
hub needs the open store; the advertisers need the listening ports) and too
early for one that must outlive the ones after it (the store closes last).
A child's ``startService`` or ``stopService`` may return a Deferred: the
next child waits for it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from twisted.application import service
from twisted.internet import defer

log = logging.getLogger(__name__)


class Child(Protocol):
    """What a parent needs of a child service (IService, a zope interface)."""

    @property
    def running(self) -> int: ...

    def startService(self) -> object: ...

    def stopService(self) -> object: ...


class InOrder(service.MultiService):
    """Children start in the order added, each after the one before; stop in reverse."""

    def startService(self) -> defer.Deferred[None]:
        service.Service.startService(self)  # not MultiService's: that starts all at once
        return defer.ensureDeferred(start_in_order(list(self)))

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.ensureDeferred(stop_in_reverse(list(self)))


async def start_in_order(children: list[Child]) -> None:
    """Start each child that is not running, waiting for each; a failure stops the rest."""
    for child in children:
        if not child.running:
            await settled(child.startService())


async def stop_in_reverse(children: list[Child]) -> None:
    """Stop each running child, last first, waiting for each.  A child that fails
    to stop is logged and the others still stop (the store must still close)."""
    for child in reversed(children):
        if not child.running:
            continue
        try:
            await settled(child.stopService())
        except Exception:
            log.exception("stopping %r failed", child)


async def settled(result: object) -> None:
    """Wait for what startService or stopService returned, if it is a Deferred."""
    if isinstance(result, defer.Deferred):
        await result
