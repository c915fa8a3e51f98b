"""The change feed on a real PostgreSQL: notifications arrive, bad ones are
dropped and logged, a dropped connection comes back with a resync, and a
stopped feed leaves nothing listening."""

from __future__ import annotations

import logging

import psycopg
import pytest
import pytest_twisted

from tests.support.aio import as_deferred
from tests.support.cluster import execute
from tests.support.waiting import wait_until
from thinserve.cluster.feed import RESYNC, ChangeFeed
from thinserve.store.changes import CHANNEL, Change

TIMEOUT = 10.0


def notify(url: str, payload: str) -> None:
    execute(url, "SELECT pg_notify(%s, %s)", CHANNEL, payload)


def listening(url: str) -> int:
    rows = execute(
        url,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'thinserve-cluster' AND datname = current_database()",
    )
    count = rows[0][0]
    assert isinstance(count, int)
    return count


@pytest_twisted.ensureDeferred
async def test_each_committed_change_arrives_in_order(postgres_url: str) -> None:
    seen: list[Change] = []
    feed = ChangeFeed(postgres_url, seen.append)
    await as_deferred(feed.start())
    try:
        notify(postgres_url, "pairing:term-1")
        notify(postgres_url, "user:alice")
        notify(postgres_url, "desktop:")  # an empty subject is still a change
        execute(
            postgres_url,
            "BEGIN; SELECT pg_notify('thinserve', 'user:bob'); ROLLBACK",
        )
        await wait_until(lambda: len(seen) >= 3, TIMEOUT, "three changes")
        notify(postgres_url, "desktop:d9")
        await wait_until(lambda: len(seen) >= 4, TIMEOUT, "the fourth change")
        assert seen == [
            Change("pairing", "term-1"),
            Change("user", "alice"),
            Change("desktop", ""),
            Change("desktop", "d9"),
        ]
    finally:
        await as_deferred(feed.stop())


@pytest_twisted.ensureDeferred
async def test_bad_notifications_are_logged_and_dropped(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Change] = []

    def on_change(change: Change) -> None:
        if change.subject == "explode":
            raise RuntimeError("a handler's own bug")
        seen.append(change)

    feed = ChangeFeed(postgres_url, on_change)
    await as_deferred(feed.start())
    try:
        with caplog.at_level(logging.WARNING, logger="thinserve.cluster.feed"):
            for bad in ("no-colon", "reboot:t1", "pairing:" + "x" * 1000, ":x", "\x1b[2J:x"):
                notify(postgres_url, bad)
            notify(postgres_url, "user:explode")
            notify(postgres_url, "user:alice")
            await wait_until(lambda: seen, TIMEOUT, "the good change after the bad ones")
        assert seen == [Change("user", "alice")]
        assert feed.dropped == 5
        dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(dropped) == 5 and "'no-colon'" in dropped[0]
        assert all(len(message) < 300 for message in dropped)  # long payloads are cut
        assert any("handling user:explode failed" in r.getMessage() for r in caplog.records)
    finally:
        await as_deferred(feed.stop())


@pytest_twisted.ensureDeferred
async def test_a_killed_connection_comes_back_with_a_resync(postgres_url: str) -> None:
    seen: list[Change] = []
    feed = ChangeFeed(postgres_url, seen.append, first_delay=0.05, max_delay=0.5)
    await as_deferred(feed.start())
    try:
        old_pid = feed.backend_pid
        assert old_pid is not None
        notify(postgres_url, "user:before")
        await wait_until(lambda: seen, TIMEOUT, "the change before the cut")
        assert execute(postgres_url, "SELECT pg_terminate_backend(%s)", old_pid) == [(True,)]
        await wait_until(lambda: RESYNC in seen, TIMEOUT, "a resync after the reconnection")
        assert feed.backend_pid not in (None, old_pid) and feed.reconnects == 1
        notify(postgres_url, "user:after")
        await wait_until(
            lambda: Change("user", "after") in seen, TIMEOUT, "a change after the reconnection"
        )
        assert seen == [Change("user", "before"), RESYNC, Change("user", "after")]
    finally:
        await as_deferred(feed.stop())


@pytest_twisted.ensureDeferred
async def test_a_feed_keeps_trying_while_connections_are_refused(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While the database refuses connections the feed keeps trying, then gets back in."""
    seen: list[Change] = []
    feed = ChangeFeed(postgres_url, seen.append, first_delay=0.05, max_delay=0.2)
    await as_deferred(feed.start())
    server, database = postgres_url.rsplit("/", 1)
    admin = f"{server}/postgres"
    try:
        execute(admin, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        execute(admin, "SELECT pg_terminate_backend(%s)", feed.backend_pid)
        with caplog.at_level(logging.DEBUG, logger="thinserve.cluster.feed"):
            await wait_until(
                lambda: len([r for r in caplog.records if "still cannot" in r.getMessage()]) >= 3,
                TIMEOUT,
                "three refused attempts",
            )
        assert feed.conn is None and RESYNC not in seen
        execute(admin, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await wait_until(lambda: RESYNC in seen, TIMEOUT, "a resync once connections work")
        notify(postgres_url, "pairing:t1")
        await wait_until(lambda: Change("pairing", "t1") in seen, TIMEOUT, "the next change")
    finally:
        await as_deferred(feed.stop())


@pytest_twisted.ensureDeferred
async def test_a_stopped_feed_leaves_nothing_listening(postgres_url: str) -> None:
    seen: list[Change] = []
    feed = ChangeFeed(postgres_url, seen.append)
    await as_deferred(feed.start())
    assert listening(postgres_url) == 1
    await as_deferred(feed.stop())
    await wait_until(lambda: listening(postgres_url) == 0, TIMEOUT, "the feed's backend to end")
    notify(postgres_url, "user:late")
    assert feed.conn is None and seen == []
    with pytest.raises(psycopg.OperationalError):
        await as_deferred(ChangeFeed("postgresql://thinserve@127.0.0.1:1/x", seen.append).start())
