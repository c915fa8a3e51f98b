"""Await asyncio work (Playwright, the backends' API) from a test Twisted drives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from twisted.internet import defer

T = TypeVar("T")


def as_deferred(work: Awaitable[T]) -> defer.Deferred[T]:
    """Run a coroutine as an asyncio task; the Deferred fires with its result.

    Inside the task only asyncio awaitables work (a Deferred there is a "bad
    yield"): the helpers the task calls must sleep and wait the asyncio way,
    as ``waiting.wait_until`` does on its own.
    """
    return defer.Deferred.fromFuture(asyncio.ensure_future(work))
