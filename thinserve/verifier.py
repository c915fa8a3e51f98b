"""Slow checks, such as Argon2 verifications of users' secrets, off the reactor thread.

Verifying a secret takes a noticeable fraction of a second of CPU; on the
reactor thread it would freeze every terminal for that long.  A Verifier
runs such work in at most ``workers`` threads (two by default: Argon2
already uses a thread per lane, so more workers would only queue for the
CPUs); further work waits its turn in order, so a flood of logins never
creates more threads.  The queue is bounded by its callers: the broker
lets each terminal have one login checked at a time.  Results come back
as Deferreds that fire on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

T = TypeVar("T")

WORKERS = 2


class Verifier:
    """Runs work in a few threads; hands each result back on the reactor thread."""

    def __init__(self, reactor: IReactorFromThreads, workers: int = WORKERS) -> None:
        self._reactor = reactor
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thinserve-verify")

    def run(self, work: Callable[[], T]) -> Deferred[T]:
        """Run ``work()`` in a worker thread; the Deferred fires with its result."""
        done: Deferred[T] = Deferred()
        future = self._pool.submit(work)
        future.add_done_callback(lambda ran: self._reactor.callFromThread(_fire, ran, done))
        return done

    def stop(self) -> None:
        """Start nothing more.  Work still queued fails with CancelledError;
        work already running finishes in its thread, unwaited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _fire(ran: Future[T], done: Deferred[T]) -> None:
    try:
        result = ran.result()
    except Exception as exc:  # the work's own error, or CancelledError after stop()
        done.errback(exc)
        return
    done.callback(result)
