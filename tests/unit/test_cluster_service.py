"""ClusterService on a real PostgreSQL: two nodes join and report their load,
hear each other's announcements, learn of leases they lost, and leave
cleanly; a second node under a live name does not start."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.support.cluster import execute, with_schema
from tests.support.waiting import wait_until
from thinserve.cluster.feed import RESYNC
from thinserve.cluster.leases import Key
from thinserve.cluster.nodes import NodeInfo, NodeNameInUse, NodeRegistry
from thinserve.cluster.service import ClusterService, check_timing
from thinserve.store.changes import Change

TIMEOUT = 10.0
HEARTBEAT = 0.1
LEASE = 0.5


class Node:
    """A ClusterService and what it was told."""

    def __init__(self, url: str, name: str, load: tuple[int, int] = (0, 0)) -> None:
        self.load = load
        self.changes: list[Change] = []
        self.lost: list[Key] = []
        self.service = ClusterService(
            url,
            name,
            f"10.0.0.{len(name)}",
            heartbeat=HEARTBEAT,
            lease=LEASE,
            load=lambda: self.load,
            on_change=self.changes.append,
            on_lost=self.lost.extend,
        )


def rows(url: str) -> dict[str, NodeInfo]:
    from thinserve.cluster.db import Database
    from thinserve.cluster.nodes import list_nodes

    db = Database(url)
    try:
        return {n.name: n for n in list_nodes(db)}
    finally:
        db.close()


def expiry(url: str, subject: str) -> float:
    expires = execute(url, "SELECT expires FROM leases WHERE subject = %s", subject)[0][0]
    assert isinstance(expires, float)
    return expires


async def started(url: str, name: str, load: tuple[int, int] = (0, 0)) -> Node:
    node = Node(url, name, load)
    await node.service.startService()
    return node


@pytest_twisted.ensureDeferred
async def test_two_nodes_see_each_other_and_their_load(postgres_url: str) -> None:
    url = with_schema(postgres_url)
    a = await started(url, "node-a", (3, 1))
    b = await started(url, "node-b", (5, 2))
    try:
        await wait_until(
            lambda: (
                {(n.name, n.terminals, n.desktops) for n in rows(url).values()}
                == {("node-a", 3, 1), ("node-b", 5, 2)}
            ),
            TIMEOUT,
            "both nodes' load in the table",
        )
        a.load = (4, 1)
        await wait_until(lambda: rows(url)["node-a"].terminals == 4, TIMEOUT, "the new load")
        listed = await a.service.nodes()
        assert [n.name for n in listed] == ["node-a", "node-b"] and all(n.alive for n in listed)
        await a.service.announce("reboot", "term-7")
        await a.service.announce("user", "alice")
        await wait_until(lambda: Change("user", "alice") in b.changes, TIMEOUT, "b hears it")
        await wait_until(lambda: Change("user", "alice") in a.changes, TIMEOUT, "a hears it")
        assert b.changes == [Change("user", "alice")]  # "reboot" is not a kind this version knows
    finally:
        await a.service.stopService()
    assert set(rows(url)) == {"node-b"}
    await b.service.stopService()
    assert rows(url) == {}


@pytest_twisted.ensureDeferred
async def test_a_node_learns_of_the_leases_it_lost_and_releases_the_rest_when_it_stops(
    postgres_url: str,
) -> None:
    url = with_schema(postgres_url)
    execute(
        url,
        "INSERT INTO leases (kind, subject, node, acquired, expires)"
        " VALUES ('desktop', 'stale', 'node-a', 0, 1e12)",
    )
    a = await started(url, "node-a")
    try:
        assert execute(url, "SELECT subject FROM leases") == []  # an earlier run's: released
        assert await a.service.acquire("desktop", "d1")
        assert await a.service.acquire("desktop", "d2")
        assert await a.service.holder("desktop", "d1") == "node-a"
        # Another node takes d1 as if it had expired.
        execute(url, "UPDATE leases SET node = 'node-b' WHERE subject = 'd1'")
        await wait_until(lambda: a.lost, TIMEOUT, "the lost lease to be reported")
        assert a.lost == [("desktop", "d1")]
        # d2 stays: renewed by the heartbeats well past its first lease time.
        first = expiry(url, "d2")
        await wait_until(lambda: expiry(url, "d2") > first + LEASE, TIMEOUT, "d2 to be renewed")
        assert a.lost == [("desktop", "d1")]
    finally:
        await a.service.stopService()
    assert execute(url, "SELECT subject, node FROM leases") == [("d1", "node-b")]


@pytest_twisted.ensureDeferred
async def test_a_second_node_under_a_live_name_does_not_start_nor_harm_the_first(
    postgres_url: str,
) -> None:
    url = with_schema(postgres_url)
    a = await started(url, "same")
    try:
        assert await a.service.acquire("desktop", "d1")
        second = Node(url, "same")
        with pytest.raises(NodeNameInUse, match=r"'same' is in use by a live node at 10\.0\.0\.4"):
            await second.service.startService()
        await second.service.stopService()
        assert rows(url)["same"].address == "10.0.0.4"
        assert execute(url, "SELECT subject, node FROM leases") == [("d1", "same")]
    finally:
        await a.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_node_restarted_after_a_crash_waits_for_its_old_row_then_joins(
    postgres_url: str,
) -> None:
    """The crashed run's row stopped heartbeating: the new run waits for it to
    expire (by the database clock) instead of failing, then joins."""
    url = with_schema(postgres_url)
    crashed = NodeRegistry(url, "node-a", "10.0.0.9", expiry=LEASE)
    crashed.join()  # and never heartbeats again, like a process killed
    crashed.close()
    await wait_until(
        lambda: rows(url)["node-a"].age >= 2 * HEARTBEAT, TIMEOUT, "the row to go silent"
    )
    a = await started(url, "node-a")  # waits until the old row expires, then joins
    try:
        row = rows(url)["node-a"]
        assert row.alive and row.address == "10.0.0.6"  # the new run's row
    finally:
        await a.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_node_whose_name_was_taken_over_holds_nothing_until_it_is_free(
    postgres_url: str,
) -> None:
    """Another process joined under our name while we were thought gone: our
    leases are lost at once and none can be taken; once the name is free we
    are back."""
    url = with_schema(postgres_url)
    a = await started(url, "node-a")
    try:
        assert await a.service.acquire("desktop", "d1")
        execute(url, "UPDATE nodes SET started = started + 1")  # as a newer join would
        await wait_until(lambda: a.lost, TIMEOUT, "the leases to count as lost")
        assert a.lost == [("desktop", "d1")] and a.service.problem == "name"
        assert not await a.service.acquire("desktop", "d2")
        execute(url, "DELETE FROM nodes")  # the other process left
        await wait_until(lambda: a.service.problem is None, TIMEOUT, "the node to be back")
        assert rows(url)["node-a"].alive
        assert await a.service.acquire("desktop", "d2")
    finally:
        await a.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_node_that_loses_the_database_counts_its_leases_lost_then_resyncs(
    postgres_url: str,
) -> None:
    """The feed's connection and the heartbeats' are cut; the database refuses
    new ones for longer than a lease: everything held is lost, and once the
    database is back the node is alive again and told to re-read everything."""
    url = with_schema(postgres_url)
    server, database = url.rsplit("/", 1)
    admin = f"{server}/postgres"
    a = await started(url, "node-a")
    try:
        assert await a.service.acquire("desktop", "d1")
        execute(admin, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        execute(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            database,
        )
        await wait_until(lambda: a.lost, TIMEOUT, "the leases to count as lost")
        assert a.lost == [("desktop", "d1")] and a.service.leases.held == set()
        execute(admin, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await wait_until(lambda: RESYNC in a.changes, TIMEOUT, "a resync")
        await wait_until(
            lambda: rows(url).get("node-a") and rows(url)["node-a"].alive,
            TIMEOUT,
            "the node alive again",
        )
    finally:
        execute(admin, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await a.service.stopService()


def test_a_heartbeat_slower_than_half_the_lease_is_refused() -> None:
    check_timing(2.0, 10.0)
    with pytest.raises(ValueError, match="at least twice the heartbeat"):
        check_timing(2.0, 3.0)
    with pytest.raises(ValueError, match="heartbeat"):
        check_timing(0.0, 10.0)
