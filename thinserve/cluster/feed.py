"""The change feed: notifications the store sends, delivered to this node.

``ChangeFeed`` keeps one psycopg AsyncConnection on the running asyncio loop
(Twisted runs on it), LISTENs on the store's channel and calls ``on_change``
with each valid notification.  A payload that is not a change this version
knows is logged and dropped.

When the connection drops (the database restarted, the network failed),
notifications sent meanwhile are lost; the feed connects again with growing
pauses (up to ``max_delay``) and then delivers ``Change("resync", "")``: the
node must re-read everything rather than trust what it heard.  A link that
is quiet for ``idle`` seconds is checked with a query, and TCP keepalives
notice a peer that vanished, so a dead link is found within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..store.changes import CHANNEL, Change, parse_change
from .db import connect_options, where

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

RESYNC = Change("resync", "")
FIRST_DELAY = 0.1  # seconds before the first reconnection attempt
MAX_DELAY = 5.0  # the longest pause between attempts
IDLE = 10.0  # seconds of silence before the link is checked
MAX_LOGGED = 10  # bad payloads logged per connection; later ones are only counted
SHOWN = 80  # characters of a bad payload quoted in the log


class ChangeFeed:
    """LISTEN on the store's channel; ``on_change`` for each change, ``resync`` after a gap."""

    def __init__(
        self,
        url: str,
        on_change: Callable[[Change], None],
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        idle: float = IDLE,
    ) -> None:
        self.url = url
        self.on_change = on_change
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.idle = idle
        self.conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self.dropped = 0  # bad payloads since the start
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None
        self._bad_here = 0  # bad payloads on the current connection

    @property
    def backend_pid(self) -> int | None:
        """The database server process listening for us (None while disconnected)."""
        return self.conn.info.backend_pid if self.conn is not None else None

    async def start(self) -> None:
        """Connect and LISTEN; from when this returns, no committed change is missed.

        Raises psycopg.Error when the database cannot be reached now.
        """
        if self._task is not None:
            raise RuntimeError("the change feed is already running")
        self.conn = await self._listen()
        self._task = asyncio.ensure_future(self._run())
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close()

    @staticmethod
    def _ended(task: asyncio.Task[None]) -> None:
        """The feed only ends when stopped; anything else is a bug to log."""
        if not task.cancelled() and task.exception() is not None:
            log.error("change feed stopped", exc_info=task.exception())

    async def _listen(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        import psycopg
        from psycopg import sql

        conn = await psycopg.AsyncConnection.connect(self.url, **connect_options())
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except BaseException:
            await conn.close()
            raise
        self._bad_here = 0
        return conn

    async def _run(self) -> None:
        """Receive until the link fails, then connect again and ask for a resync; forever."""
        import psycopg

        while True:
            try:
                await self._receive()
            except psycopg.Error as exc:
                log.warning(
                    "change feed: lost the database at %s (%s); connecting again",
                    where(self.url),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )
            await self._close()
            self.conn = await self._reconnect()
            self.reconnects += 1
            log.info("change feed: listening again at %s; re-reading everything", where(self.url))
            self._deliver(RESYNC)

    async def _receive(self) -> None:
        while True:
            assert self.conn is not None
            async for note in self.conn.notifies(timeout=self.idle):
                self._handle(note.payload)
            await self.conn.execute("SELECT 1")  # quiet for a while: is the link alive?

    async def _reconnect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        """A listening connection, after pauses doubling from first_delay up to max_delay."""
        import psycopg

        delay = self.first_delay
        while True:
            await asyncio.sleep(delay)
            try:
                return await self._listen()
            except psycopg.Error as exc:
                log.debug("change feed: still cannot connect: %s", exc)
            delay = min(delay * 2, self.max_delay)

    def _handle(self, payload: str) -> None:
        change = parse_change(payload)
        if change is None:
            self._drop(payload)
            return
        self._deliver(change)

    def _drop(self, payload: str) -> None:
        self.dropped += 1
        self._bad_here += 1
        if self._bad_here <= MAX_LOGGED:
            shown = payload[:SHOWN] + ("..." if len(payload) > SHOWN else "")
            log.warning(
                "change feed: dropped a notification this version does not know (%d characters):"
                " %r",
                len(payload),
                shown,
            )
            if self._bad_here == MAX_LOGGED:
                log.warning("change feed: further unknown notifications are dropped unlogged")

    def _deliver(self, change: Change) -> None:
        try:
            self.on_change(change)
        except Exception:
            log.exception("change feed: handling %s:%s failed", change.kind, change.subject)

    async def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
