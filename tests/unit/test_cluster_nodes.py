"""The nodes table on a real PostgreSQL: join, heartbeat, leave, who is alive
(by the database's clock), and names two live processes may never share."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.cluster import execute, with_schema
from tests.support.ports import free_tcp_port
from tests.support.waiting import wait_until_blocking
from thinserve.cluster.db import ClusterDatabaseError
from thinserve.cluster.nodes import (
    NodeInfo,
    NodeNameInUse,
    NodeRegistry,
    check_name,
    default_name,
)

SHORT = 0.5  # seconds a test node stays alive after a heartbeat


@pytest.fixture
def url(postgres_url: str) -> str:
    return with_schema(postgres_url)


@pytest.fixture
def registries(url: str) -> Iterator[list[NodeRegistry]]:
    made: list[NodeRegistry] = []
    yield made
    for registry in made:
        registry.close()


def node(
    made: list[NodeRegistry], url: str, name: str, address: str = "", expiry: float = 10.0
) -> NodeRegistry:
    registry = NodeRegistry(url, name, address, expiry=expiry, version="test")
    made.append(registry)
    return registry


def by_name(registry: NodeRegistry) -> dict[str, NodeInfo]:
    return {n.name: n for n in registry.list_nodes()}


def test_a_node_joins_heartbeats_and_leaves(url: str, registries: list[NodeRegistry]) -> None:
    a = node(registries, url, "node-a", "10.0.0.1")
    a.join()
    joined = by_name(a)["node-a"]
    assert (joined.address, joined.alive, joined.terminals, joined.desktops) == (
        "10.0.0.1",
        True,
        0,
        0,
    )
    assert joined.version == "test" and joined.leases == 0
    assert 9.0 < joined.expires - joined.heartbeat <= 10.0
    a.heartbeat(terminals=7, desktops=3)
    beaten = by_name(a)["node-a"]
    assert (beaten.terminals, beaten.desktops) == (7, 3)
    assert beaten.heartbeat >= joined.heartbeat and beaten.started == joined.started
    a.leave()
    assert a.list_nodes() == []


def test_a_silent_node_is_gone_by_the_database_clock_and_its_name_free(
    url: str, registries: list[NodeRegistry]
) -> None:
    old = node(registries, url, "desk-1", "10.0.0.1", expiry=SHORT)
    old.join()
    assert by_name(old)["desk-1"].alive
    gone = wait_until_blocking(
        lambda: not by_name(old)["desk-1"].alive, 10.0, "the silent node to be gone"
    )
    assert gone
    assert by_name(old)["desk-1"].age >= SHORT
    new = node(registries, url, "desk-1", "10.0.0.2")
    new.join()
    assert by_name(new)["desk-1"].address == "10.0.0.2" and by_name(new)["desk-1"].alive
    # The old process wakes up: it may neither take the name back nor remove its successor.
    with pytest.raises(NodeNameInUse, match=r"in use by a live node at 10\.0\.0\.2"):
        old.heartbeat(1, 1)
    old.leave()
    assert by_name(new)["desk-1"].address == "10.0.0.2"


def test_a_second_live_process_under_the_same_name_is_refused(
    url: str, registries: list[NodeRegistry]
) -> None:
    first = node(registries, url, "same", "10.0.0.1")
    first.join()
    second = node(registries, url, "same", "10.0.0.2")
    with pytest.raises(NodeNameInUse) as refused:
        second.join()
    message = str(refused.value)
    assert "'same' is in use by a live node at 10.0.0.1" in message
    assert "another [cluster] node_name" in message and "until it expires" in message
    assert by_name(first)["same"].address == "10.0.0.1"
    second.leave()  # never joined: removes nothing
    assert [n.name for n in first.list_nodes()] == ["same"]


def test_a_removed_row_is_made_again_by_the_next_heartbeat(
    url: str, registries: list[NodeRegistry]
) -> None:
    a = node(registries, url, "node-a")
    a.join()
    execute(url, "DELETE FROM nodes")
    a.heartbeat(2, 1)
    again = by_name(a)["node-a"]
    assert (again.alive, again.terminals, again.desktops) == (True, 2, 1)


def test_expiry_does_not_follow_the_node_s_clock(
    url: str, registries: list[NodeRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clock is a day off is still alive: only the database's clock counts."""
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real - 86400)
    a = node(registries, url, "skewed")
    a.join()
    info = by_name(a)["skewed"]
    assert info.alive and abs(info.heartbeat - real) < 60


def test_the_leases_a_node_holds_are_counted(url: str, registries: list[NodeRegistry]) -> None:
    a = node(registries, url, "node-a")
    a.join()
    execute(
        url,
        "INSERT INTO leases (kind, subject, node, acquired, expires)"
        " VALUES ('desktop', 'd1', 'node-a', 0, 1e12),"
        " ('desktop', 'd2', 'node-a', 0, 1e12), ('desktop', 'd3', 'node-a', 0, 1)",
    )
    assert by_name(a)["node-a"].leases == 2  # the expired one does not count


@pytest.mark.parametrize("name", ["", "-a", "a-", "Upper", "a.b", "a_b", "x" * 64, "é"])
def test_bad_node_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="not valid: use 1 to 63 of a-z"):
        check_name(name)
    with pytest.raises(ValueError):
        NodeRegistry("postgresql://127.0.0.1:1/x", name)


def test_host_names_become_node_names() -> None:
    assert check_name("a") == "a" and check_name("x" * 63) == "x" * 63
    assert default_name("Web_01.example.org") == "web-01"
    assert default_name("--") == "node"
    assert default_name("A" * 80) == "a" * 63
    assert check_name(default_name()) == default_name()


def test_an_unreachable_database_is_named_without_its_password(url: str) -> None:
    port = free_tcp_port()
    registry = NodeRegistry(f"postgresql://thinserve:s3cret@127.0.0.1:{port}/site", "a")
    with pytest.raises(ClusterDatabaseError) as failed:
        registry.join()
    message = str(failed.value)
    assert f"127.0.0.1:{port} (database site)" in message
    assert "check that PostgreSQL runs there" in message
    assert "s3cret" not in message
    registry.close()


def test_a_database_without_the_tables_says_how_to_make_them(postgres_url: str) -> None:
    registry = NodeRegistry(postgres_url, "a")
    with pytest.raises(ClusterDatabaseError, match=r"no cluster tables .* `thinserve serve`"):
        registry.join()
    registry.close()
