"""Control leases on a real PostgreSQL: one node in control of a desktop at a
time, even when nodes race on their own connections; a notice to every node
when control is taken or given up; renewals, expiry by the database's clock,
and never a grant in doubt when the database cannot be reached."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.support.cluster import execute, with_schema
from tests.support.ports import free_tcp_port
from tests.support.waiting import wait_until_blocking
from thinserve.cluster.claims import CONTROL, ControlClaims
from thinserve.store.changes import CHANNEL

LONG = 30.0
SHORT = 1.0  # seconds: a lease that expires within the test
RACERS = 4
ROUNDS = 25


@pytest.fixture
def url(postgres_url: str) -> str:
    return with_schema(postgres_url)


@pytest.fixture
def node(url: str) -> Iterator[Callable[..., ControlClaims]]:
    made: list[ControlClaims] = []

    def make(name: str, ttl: float = LONG, margin: float = 5.0) -> ControlClaims:
        made.append(ControlClaims(url, name, ttl, margin=margin))
        return made[-1]

    yield make
    for claims in made:
        claims.close()


def rows(url: str) -> list[tuple[object, ...]]:
    return execute(
        url, "SELECT subject, node, holder FROM leases WHERE kind = %s ORDER BY subject", CONTROL
    )


def test_one_node_controls_a_desktop_moves_it_between_its_terminals_and_gives_it_up(
    url: str, node: Callable[..., ControlClaims]
) -> None:
    a, b = node("node-a"), node("node-b")
    assert a.acquire("d1", "t1")
    assert not b.acquire("d1", "t9")
    assert b.elsewhere("d1") and not a.elsewhere("d1")
    assert a.acquire("d1", "t2")  # another terminal of the same node: the lease moves
    assert a.held() == {"d1": "t2"} and b.held() == {}
    assert rows(url) == [("d1", "node-a", "t2")]
    b.release("d1")  # not b's: nothing happens
    assert rows(url) == [("d1", "node-a", "t2")]
    a.release("d1")
    assert rows(url) == [] and a.held() == {}
    assert b.elsewhere("d1")  # what b knew is kept until it is told of a change
    b.stale()
    assert not b.elsewhere("d1")
    assert b.acquire("d1", "t9") and b.held() == {"d1": "t9"}


def test_taking_and_giving_up_control_tells_every_node(
    url: str, node: Callable[..., ControlClaims]
) -> None:
    a, b = node("node-a"), node("node-b")
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        a.acquire("d1", "t1")
        b.acquire("d1", "t2")  # lost: no notice
        b.release("d1")  # not held: no notice
        a.release("d1")
        b.acquire("d2", "t2")
        got = []
        for notice in listener.notifies(timeout=10.0):
            got.append(notice.payload)
            if notice.payload == "lease:d2":
                break
    assert got == ["lease:d1", "lease:d1", "lease:d2"]


def test_exactly_one_of_racing_nodes_gets_control(
    url: str, node: Callable[..., ControlClaims]
) -> None:
    racers = [node(f"racer-{i}") for i in range(RACERS)]
    start = threading.Barrier(RACERS)
    won: list[list[str]] = [[] for _ in range(ROUNDS)]

    def race(claims: ControlClaims) -> None:
        for round_ in range(ROUNDS):
            start.wait(timeout=30)
            if claims.acquire(f"d{round_}", f"t-{claims.node}"):
                won[round_].append(claims.node)

    threads = [threading.Thread(target=race, args=(r,)) for r in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(len(winners) == 1 for winners in won), won
    holders = {str(s): str(n) for s, n, _ in rows(url)}
    assert holders == {f"d{r}": won[r][0] for r in range(ROUNDS)}


def test_renewals_keep_control_and_an_expired_lease_goes_to_another_node(
    url: str, node: Callable[..., ControlClaims]
) -> None:
    a = node("node-a", ttl=SHORT, margin=0.25)
    b = node("node-b")
    assert a.acquire("d1", "t1")
    began = time.monotonic()
    # renewed, it stays a's well past its first expiry
    while time.monotonic() - began < 2.5 * SHORT:
        assert a.renew_all(SHORT) == []
        assert a.held() == {"d1": "t1"}
        assert not b.acquire("d1", "t2")
        time.sleep(SHORT / 5)
    # a's heartbeat stops: a stops counting it as held before it can expire ...
    wait_until_blocking(lambda: a.held() == {}, 5, "a to give up a lease it did not renew")
    # ... and once it has expired, b takes it; a renewal then reports it lost
    wait_until_blocking(lambda: b.acquire("d1", "t2"), 5, "b to take the expired lease")
    a.acquire("d1", "t1")  # fails: b's now
    assert a.held() == {} and rows(url) == [("d1", "node-b", "t2")]


def test_a_renewal_reports_leases_another_node_took(
    url: str, node: Callable[..., ControlClaims]
) -> None:
    a = node("node-a", ttl=SHORT, margin=0.0)
    b = node("node-b")
    assert a.acquire("d1", "t1") and a.acquire("d2", "t1")
    wait_until_blocking(lambda: b.acquire("d1", "t2"), 5, "a's lease to expire")
    # d2 expired too but nobody took it: still a's row, renewed
    assert a.renew_all(LONG) == [(CONTROL, "d1")]
    assert a.held() == {"d2": "t1"}
    assert a.forget_all() == [(CONTROL, "d2")] and a.held() == {}


def test_a_database_out_of_reach_grants_nothing() -> None:
    claims = ControlClaims(f"postgresql://nobody@127.0.0.1:{free_tcp_port()}/none", "node-a", LONG)
    try:
        assert not claims.acquire("d1", "t1")
        assert claims.elsewhere("d1")  # in doubt, another node may hold it
        assert claims.held() == {}
        claims.release("d1")  # logged, not raised: the lease expires by itself
    finally:
        claims.close()


def test_a_node_that_may_not_claim_gets_nothing(url: str) -> None:
    claims = ControlClaims(url, "node-a", LONG, allowed=lambda: False)
    try:
        assert not claims.acquire("d1", "t1")
        assert rows(url) == []
    finally:
        claims.close()
