"""Backend calls as Deferreds: backends are asyncio, the manager is Twisted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

T = TypeVar("T")


def bridge(result: Awaitable[T] | defer.Deferred[T]) -> defer.Deferred[T]:
    """A Deferred for a backend call: asyncio coroutines run as asyncio tasks."""
    if isinstance(result, defer.Deferred):
        return result
    return defer.Deferred.fromFuture(asyncio.ensure_future(result))


def follow(d: defer.Deferred[T]) -> defer.Deferred[T]:
    """A new Deferred with ``d``'s result, leaving ``d``'s own chain alone."""
    follower: defer.Deferred[T] = defer.Deferred()

    def pass_on(result: Any) -> Any:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(result)
        return result

    d.addBoth(pass_on)
    return follower
