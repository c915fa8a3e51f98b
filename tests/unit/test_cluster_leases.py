"""Leases on a real PostgreSQL: one holder at a time, even when nodes race on
their own connections; expiry judged by the database's clock; renewals that
tell what was lost."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import execute, with_schema
from tests.support.waiting import wait_until_blocking
from thinserve.cluster.leases import Leases

ROUNDS = 40
RACERS = 4
SHORT = 0.5  # seconds: a lease that expires within the test
LONG = 30.0


@pytest.fixture
def url(postgres_url: str) -> str:
    return with_schema(postgres_url)


@pytest.fixture
def node(url: str) -> Iterator[Callable[[str], Leases]]:
    made: list[Leases] = []

    def make(name: str) -> Leases:
        leases = Leases(url, name)
        made.append(leases)
        return leases

    yield make
    for leases in made:
        leases.close()


def expires_in(url: str, kind: str, subject: str) -> float:
    rows = execute(
        url,
        "SELECT expires - extract(epoch from clock_timestamp())::double precision"
        " FROM leases WHERE kind = %s AND subject = %s",
        kind,
        subject,
    )
    left = rows[0][0]
    assert isinstance(left, float)
    return left


def test_a_free_lease_is_taken_once_renewed_by_its_holder_and_released(
    url: str, node: Callable[[str], Leases]
) -> None:
    a, b = node("node-a"), node("node-b")
    assert a.holder("desktop", "d1") is None
    assert a.acquire("desktop", "d1", LONG)
    assert not b.acquire("desktop", "d1", LONG)
    assert b.holder("desktop", "d1") == "node-a"
    assert a.acquire("desktop", "d1", LONG)  # its own: renewed
    assert a.acquire("terminal", "t1", LONG)
    assert b.held_by("node-a") == [("desktop", "d1"), ("terminal", "t1")]
    assert b.held_by("node-b") == []
    a.release("desktop", "d1")
    b.release("terminal", "t1")  # not b's: nothing happens
    assert a.holder("terminal", "t1") == "node-a"
    assert b.acquire("desktop", "d1", LONG)
    assert a.held == {("terminal", "t1")} and b.held == {("desktop", "d1")}
    a.release_all()
    assert a.held_by("node-a") == [] and a.holder("desktop", "d1") == "node-b"


def test_exactly_one_of_racing_nodes_wins_each_lease(
    url: str, node: Callable[[str], Leases]
) -> None:
    """RACERS threads, each a node with its own connection, start each round together."""
    racers = [node(f"racer-{i}") for i in range(RACERS)]
    start = threading.Barrier(RACERS)
    won: dict[int, list[str]] = {r: [] for r in range(ROUNDS)}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def race(leases: Leases) -> None:
        try:
            for r in range(ROUNDS):
                start.wait(timeout=30)
                if leases.acquire("desktop", f"round-{r}", LONG):
                    with lock:
                        won[r].append(leases.node)
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=race, args=(leases,)) for leases in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert all(len(winners) == 1 for winners in won.values()), won
    holders = execute(url, "SELECT subject, node FROM leases")
    assert dict(holders) == {f"round-{r}": won[r][0] for r in range(ROUNDS)}
    assert len({w[0] for w in won.values()}) > 1 or RACERS == 1  # a real race, not a queue


def test_an_expired_lease_goes_to_another_node_and_its_old_holder_learns_it_lost_it(
    url: str, node: Callable[[str], Leases]
) -> None:
    a, b = node("node-a"), node("node-b")
    assert a.acquire("desktop", "d1", SHORT)
    assert a.acquire("desktop", "d2", LONG)
    assert not b.acquire("desktop", "d1", LONG)  # not expired yet
    taken = wait_until_blocking(
        lambda: b.acquire("desktop", "d1", LONG), 10.0, "the expired lease to be taken"
    )
    assert taken and b.holder("desktop", "d1") == "node-b"
    assert a.renew_all(LONG) == [("desktop", "d1")]
    assert a.held == {("desktop", "d2")}
    assert a.renew_all(LONG) == []  # told once
    assert not a.acquire("desktop", "d1", LONG)


def test_renewal_pushes_the_expiry_on_by_the_database_clock(
    url: str, node: Callable[[str], Leases]
) -> None:
    a = node("node-a")
    assert a.acquire("desktop", "d1", SHORT)
    assert expires_in(url, "desktop", "d1") <= SHORT
    assert a.renew_all(LONG) == []
    assert LONG - 5 < expires_in(url, "desktop", "d1") <= LONG
    acquired = execute(url, "SELECT acquired FROM leases")
    assert a.acquire("desktop", "d1", LONG)  # a renewal keeps the time it was first taken
    assert execute(url, "SELECT acquired FROM leases") == acquired


def test_an_expired_lease_nobody_took_is_still_renewed(
    url: str, node: Callable[[str], Leases]
) -> None:
    a = node("node-a")
    assert a.acquire("desktop", "d1", SHORT)
    wait_until_blocking(lambda: a.holder("desktop", "d1") is None, 10.0, "the lease to expire")
    assert a.renew_all(LONG) == []
    assert a.holder("desktop", "d1") == "node-a"


def test_leases_another_run_left_are_not_renewed(url: str, node: Callable[[str], Leases]) -> None:
    """A lease this node's earlier run held is not silently kept alive."""
    execute(
        url,
        "INSERT INTO leases (kind, subject, node, acquired, expires)"
        " VALUES ('desktop', 'old', 'node-a', 0, 1e12)",
    )
    a = node("node-a")
    assert a.acquire("desktop", "d1", SHORT)
    assert a.renew_all(LONG) == []
    assert execute(url, "SELECT expires FROM leases WHERE subject = 'old'") == [(1e12,)]


@pytest.mark.parametrize(
    ("kind", "subject", "ttl", "complaint"),
    [
        ("", "d1", 1.0, "lease kind"),
        ("Desktop", "d1", 1.0, "lease kind"),
        ("desktop", "", 1.0, "lease subject"),
        ("desktop", "x" * 256, 1.0, "lease subject"),
        ("desktop", "d1", 0.0, "lease time"),
        ("desktop", "d1", 3601.0, "lease time"),
    ],
)
def test_bad_leases_are_refused(
    url: str, node: Callable[[str], Leases], kind: str, subject: str, ttl: float, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        node("node-a").acquire(kind, subject, ttl)
