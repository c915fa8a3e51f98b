"""Wait for a condition, never for a fixed time.

``wait_until`` is the one wait of the test suite: it polls ``check`` until
it gives something true, and fails with a message naming what it waited
for.  It sleeps on whichever loop drives the caller: a coroutine run by
Twisted (``pytest_twisted.ensureDeferred``) or an asyncio task (Playwright,
the backends' API, under ``as_deferred``).  ``wait_until_blocking`` is the
same wait for code that must block: helpers that start real programs
before the reactor has work, or that run in a thread.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, overload

import numpy as np
from twisted.internet.defer import Deferred

from .reactor import running_reactor

T = TypeVar("T")
INTERVAL = 0.05  # seconds between two looks at the condition
BLOCKING_INTERVAL = 0.1  # ... when each look may start a program or open a connection

Description = str | Callable[[], str]


class WaitTimeout(AssertionError):
    """What a test waited for did not happen in time."""


class Watched(Protocol):
    """A program a wait gives up on as soon as it ends (procs.Spawned, children.Child)."""

    name: str

    def alive(self) -> bool: ...

    def describe_exit(self) -> str: ...

    def log_tail(self, chars: int = 3000) -> str: ...


@overload
async def wait_until(
    check: Callable[[], Awaitable[T | None]],
    timeout: float,
    what: Description,
    proc: Watched | None = None,
    interval: float = INTERVAL,
) -> T: ...


@overload
async def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: Description,
    proc: Watched | None = None,
    interval: float = INTERVAL,
) -> T: ...


async def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: Description,
    proc: Watched | None = None,
    interval: float = INTERVAL,
) -> object:
    """Until ``check()`` gives something true; return that.

    ``check`` may be a coroutine function.  ``what`` says what is awaited; a
    function instead of a string describes it when the time is up (with the
    state reached so far, say).  Raises ``WaitTimeout`` after ``timeout``
    seconds, RuntimeError as soon as ``proc`` has ended.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if _found(result):
            return result
        _give_up_if_over(deadline, timeout, what, proc)
        await sleep(interval)


def wait_until_blocking(
    check: Callable[[], T | None],
    timeout: float,
    what: Description,
    proc: Watched | None = None,
    interval: float = BLOCKING_INTERVAL,
) -> T:
    """``wait_until`` for code that may block: the thread sleeps between looks."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and _found(result):
            return result
        _give_up_if_over(deadline, timeout, what, proc)
        time.sleep(interval)


def _found(result: object) -> bool:
    """A true result ends the wait; so does any array (its truth is ambiguous)."""
    return isinstance(result, np.ndarray) or bool(result)


def _give_up_if_over(
    deadline: float, timeout: float, what: Description, proc: Watched | None
) -> None:
    if proc is not None and not proc.alive():
        raise RuntimeError(f"while waiting for {_describe(what)}: {proc.describe_exit()}")
    if time.monotonic() >= deadline:
        tail = f"\n{proc.name} log ends with:\n{proc.log_tail()}" if proc is not None else ""
        raise WaitTimeout(f"timed out after {timeout:g} s waiting for {_describe(what)}{tail}")


def _describe(what: Description) -> str:
    return what if isinstance(what, str) else what()


def sleep(seconds: float) -> Awaitable[None]:
    """Let ``seconds`` pass on the caller's loop (see the module's docstring).

    Only for pacing input, or for showing that something does NOT happen
    within a time; to let something happen, wait until it has.
    """
    delay: Deferred[None] = Deferred()
    running_reactor().callLater(seconds, delay.callback, None)
    if _in_asyncio_task():
        return delay.asFuture(asyncio.get_running_loop())
    return delay


def _in_asyncio_task() -> bool:
    """Whether the running code is an asyncio task's step (it cannot await a Deferred)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no running loop
        return False
