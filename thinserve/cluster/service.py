"""ClusterService: this server as one node of a site sharing a PostgreSQL database.

On start it joins the nodes table (refused if a live node has its name),
gives up leases left by an earlier run under its name and starts the change
feed.  Every ``heartbeat`` seconds it reports its load (``load()``: terminals,
desktops), which keeps it alive for ``lease`` more seconds, and renews the
leases it holds; the ones it lost go to ``on_lost``.  While the database
cannot be reached, the leases count as lost once ``lease`` seconds have
passed since the last renewal: by then another node may hold them.  On stop
it releases its leases and leaves the table.

The database calls are short blocking statements (see .db); they run in the
reactor's thread pool, one heartbeat at a time, so a slow database never
stalls the reactor.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.python.failure import Failure

from ..store.changes import CHANNEL, MAX_PAYLOAD, Change
from .db import ClusterDatabaseError
from .leases import Key, Leases
from .nodes import DEFAULT_EXPIRY, DEFAULT_HEARTBEAT, NodeInfo, NodeNameInUse, NodeRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")
ANNOUNCE_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")


class Renewing(Protocol):
    """Leases kept apart from ``leases``, renewed and forgotten with them."""

    def renew_all(self, ttl: float) -> list[Key]: ...

    def forget_all(self) -> list[Key]: ...

    def close(self) -> None: ...


def check_timing(heartbeat: float, lease: float) -> None:
    """ValueError unless a node can miss a heartbeat without expiring."""
    if not 0.05 <= heartbeat <= 60:
        raise ValueError(f"heartbeat {heartbeat} s: give 0.05 to 60 seconds")
    if lease < 2 * heartbeat or lease > 3600:
        raise ValueError(
            f"lease {lease} s: give at least twice the heartbeat ({2 * heartbeat:g} s) "
            "and at most 3600 s"
        )


class ClusterService(service.Service):
    """Join, heartbeat, renew leases, follow changes, leave: see the module's docstring."""

    def __init__(
        self,
        url: str,
        name: str,
        address: str = "",
        heartbeat: float = DEFAULT_HEARTBEAT,
        lease: float = DEFAULT_EXPIRY,
        load: Callable[[], tuple[int, int]] = lambda: (0, 0),
        on_change: Callable[[Change], None] = lambda change: None,
        on_lost: Callable[[list[Key]], None] = lambda lost: None,
        version: str | None = None,
        reactor: Any = None,
    ) -> None:
        from .feed import ChangeFeed

        check_timing(heartbeat, lease)
        self.node_name = name
        self.heartbeat = heartbeat
        self.lease = lease
        self.load = load
        self.on_lost = on_lost
        self.registry = NodeRegistry(
            url,
            name,
            address,
            expiry=lease,
            version=_installed_version() if version is None else version,
        )
        self.leases = Leases(url, name)
        # More leases renewed with every heartbeat, and closed on leaving: the
        # broker's control claims (claims.py).
        self.renewing: list[Renewing] = []
        self.on_change = on_change
        self.feed = ChangeFeed(url, lambda change: self.on_change(change))
        self.reactor = reactor or _global_reactor()
        self._beats: task.LoopingCall | None = None
        self._beating: defer.Deferred[object] | None = None
        self._renewed_at = 0.0  # time.monotonic() when the last renewal began
        # Why the last heartbeat failed ("database", "name" taken, "bug"); None: it worked.
        self.problem: str | None = None

    # -- life -------------------------------------------------------------------------------
    def startService(self) -> defer.Deferred[None]:
        super().startService()
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        await self._join_or_wait()
        try:
            await _from_asyncio(self.feed.start())
        except BaseException:
            await self._in_thread(self._leave)
            raise
        self._renewed_at = time.monotonic()
        self._beats = task.LoopingCall(self._beat)
        self._beats.clock = self.reactor
        self._beats.start(self.heartbeat, now=False)
        log.info("cluster: joined as node %r", self.node_name)

    async def _join_or_wait(self) -> None:
        """Join; when our name's row is a silent one (this node's own run that
        crashed, most likely: it stopped heartbeating), wait for it to expire and
        join then, rather than fail and be restarted again and again.  A row that
        still heartbeats is another live node: refused at once."""
        try:
            await self._in_thread(self._join)
            return
        except NodeNameInUse as exc:
            if exc.silent < 2 * self.heartbeat or exc.left > self.lease:
                raise
            log.warning(
                "cluster: node name %r is held by a run that stopped %.1f s ago (a crash?); "
                "joining once it expires, in %.1f s",
                self.node_name,
                exc.silent,
                exc.left,
            )
            await task.deferLater(self.reactor, exc.left + 0.2, lambda: None)
        await self._in_thread(self._join)

    def _join(self) -> None:
        self.registry.join()
        self.leases.release_all()  # what an earlier run under this name left

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._beats is not None and self._beats.running:
            self._beats.stop()
        if self._beating is not None:
            await self._beating
        await _from_asyncio(self.feed.stop())
        await self._in_thread(self._leave)
        log.info("cluster: node %r left", self.node_name)

    def _leave(self) -> None:
        """Release our leases and remove our row; only if we joined (else they are
        another live node's, under the same name)."""
        try:
            if self.registry.started is not None:
                self.leases.release_all()
                self.registry.leave()
        except ClusterDatabaseError as exc:
            log.warning("cluster: could not leave cleanly (%s); the node expires by itself", exc)
        finally:
            self.leases.close()
            self.registry.close()
            for more in self.renewing:
                more.close()

    # -- heartbeats -------------------------------------------------------------------------
    def _beat(self) -> None:
        if self._beating is not None:
            return  # the last one is still waiting for the database
        try:
            terminals, desktops = self.load()
        except Exception:
            log.exception("cluster: counting terminals and desktops failed; reporting 0")
            terminals, desktops = 0, 0
        began = time.monotonic()
        beat = self._in_thread(self._beat_in_thread, terminals, desktops)
        self._beating = beat.addCallbacks(
            lambda lost: self._beaten(began, lost), self._beat_failed
        ).addBoth(self._beat_over)

    def _beat_in_thread(self, terminals: int, desktops: int) -> list[Key]:
        self.registry.heartbeat(terminals, desktops)  # raises before any lease is renewed
        lost = self.leases.renew_all(self.lease)
        for more in self.renewing:
            lost += more.renew_all(self.lease)
        return lost

    def _beaten(self, began: float, lost: list[Key]) -> None:
        self._renewed_at = began
        if self.problem is not None:
            self.problem = None
            log.info("cluster: node %r is alive again", self.node_name)
        if lost:
            log.warning("cluster: lost %d lease(s) to other nodes: %s", len(lost), lost)
            self.on_lost(lost)

    def _beat_failed(self, failure: Failure) -> None:
        """Log a new problem once; count the leases lost when they may be another's now."""
        message = failure.getErrorMessage()
        if failure.check(NodeNameInUse):
            problem = "name"  # another live process has our name: nothing is ours
        elif failure.check(ClusterDatabaseError):
            problem = "database"
        else:
            problem = "bug"
            log.error("cluster: heartbeat failed", exc_info=failure.value)
        if problem != self.problem and problem != "bug":
            log.error("cluster: heartbeat failed: %s", message)
        self.problem = problem
        if problem == "name" or time.monotonic() - self._renewed_at >= self.lease:
            lost = self.leases.forget_all()
            for more in self.renewing:
                lost += more.forget_all()
            if lost:
                log.warning("cluster: %d lease(s) lost while this node was not alive", len(lost))
                self.on_lost(lost)

    def _beat_over(self, _: object) -> object:
        self._beating = None
        return None

    # -- what the server asks ---------------------------------------------------------------
    def acquire(self, kind: str, subject: str) -> defer.Deferred[bool]:
        """Take the lease (kind, subject) for this node, renewed by the heartbeats.

        Never while another live process has our name: its leases look like ours.
        """
        if self.problem == "name":
            return defer.succeed(False)
        return self._in_thread(self.leases.acquire, kind, subject, self.lease)

    def release(self, kind: str, subject: str) -> defer.Deferred[None]:
        return self._in_thread(self.leases.release, kind, subject)

    def holder(self, kind: str, subject: str) -> defer.Deferred[str | None]:
        return self._in_thread(self.leases.holder, kind, subject)

    def nodes(self) -> defer.Deferred[list[NodeInfo]]:
        return self._in_thread(self.registry.list_nodes)

    def announce(self, kind: str, subject: str) -> defer.Deferred[None]:
        """Tell every node (this one too) that ``subject`` of ``kind`` changed."""
        if not ANNOUNCE_KIND.fullmatch(kind):
            raise ValueError(f"announce kind {kind!r}: 1 to 32 of a-z, 0-9 and '-'")
        payload = f"{kind}:{subject}"
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"announcement of {len(payload)} characters; at most {MAX_PAYLOAD}")
        return self._in_thread(self._notify, payload)

    def _notify(self, payload: str) -> None:
        self.registry.db.fetch("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def _in_thread(self, work: Callable[..., T], *args: object) -> defer.Deferred[T]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work, *args)


def _from_asyncio(work: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
    """A coroutine of asyncio (psycopg's) run on the loop Twisted runs on."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(work))


def _installed_version() -> str:
    """thinserve's version, shown by ``thinserve nodes --json`` (mixed versions during upgrades)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thinserve")
    except PackageNotFoundError:
        return ""


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor
