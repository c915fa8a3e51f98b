"""Failover on a real PostgreSQL: a node takes over a reachable desktop once its
owner's lease expires, reports a node-bound one lost (once), and exactly one node
dials a listening terminal, another taking over when that node dies.

The owner that dies is a node row and a lease that are simply no longer
renewed, as after a SIGKILL; the node that survives is a real ClusterService
with a real DesktopManager, Broker and Hub (thinserve/cluster/takeover.py), or
a real ReverseConnector dialling a real TCP listener (thinserve/reverse.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor

from protocols.terminal import TerminalAdvert
from tests.support.cluster import execute, with_schema
from tests.support.waiting import sleep, wait_until
from thinserve.broker import Broker, BrokerConfig
from thinserve.cluster.dialing import DIAL, DialLeases
from thinserve.cluster.leases import Leases
from thinserve.cluster.nodes import NodeRegistry
from thinserve.cluster.ownership import DESKTOP
from thinserve.cluster.service import ClusterService
from thinserve.cluster.takeover import Takeover
from thinserve.desktops import DesktopManager
from thinserve.hub import Hub
from thinserve.relay.upstream import DesktopAddress
from thinserve.reverse import ReverseConnector
from thinserve.store import open_store

TIMEOUT = 15.0
HEARTBEAT = 0.1
LEASE = 0.5
REACTOR: Any = reactor  # IReactorTCP: a zope interface, which mypy cannot check
UNREACHABLE = "tcp:host=127.0.0.1:port=1"  # an address nothing listens on


def holder(url: str, kind: str, subject: str) -> str | None:
    rows = execute(
        url,
        "SELECT node FROM leases WHERE kind = %s AND subject = %s "
        "AND expires > extract(epoch from clock_timestamp())",
        kind,
        subject,
    )
    return str(rows[0][0]) if rows else None


def dying_owner(url: str, name: str, kind: str, subjects: list[str]) -> None:
    """A node that holds these leases and then falls silent (killed)."""
    registry = NodeRegistry(url, name, expiry=LEASE)
    registry.join()
    leases = Leases(url, name)
    for subject in subjects:
        assert leases.acquire(kind, subject, LEASE)
    registry.close()
    leases.close()


class Survivor:
    """A node: its cluster service, desktop manager, broker and hub."""

    def __init__(self, url: str, name: str) -> None:
        self.cluster = ClusterService(url, name, heartbeat=HEARTBEAT, lease=LEASE)
        self.manager = DesktopManager(reactor=reactor)
        self.store = open_store(url)
        self.hub = Hub(Broker(self.store, BrokerConfig()), self.manager.mirrors, reactor)
        self.takeover = Takeover(self.cluster, self.manager, reactor, HEARTBEAT)

    async def start(self, desktops: dict[str, bool]) -> None:
        """Configure ``desktops`` (name -> reachable) as a node started second would."""
        await self.cluster.startService()
        for name in desktops:
            self.manager.add_static(DesktopAddress(name, UNREACHABLE))
        self.takeover.static = frozenset(n for n, is_reachable in desktops.items() if is_reachable)
        for name in desktops:
            assert not await self.cluster.acquire(DESKTOP, name)  # the owner still runs it
            owner = await self.cluster.holder(DESKTOP, name)
            assert owner is not None
            await self.takeover.let_go(name, owner)
        self.manager.start(self.hub, dict)
        self.takeover.hub = self.hub
        self.takeover.startService()

    async def stop(self) -> None:
        await self.takeover.stopService()
        await self.manager.close()
        await self.cluster.stopService()
        self.store.close()


@pytest_twisted.async_yield_fixture
async def survivor(postgres_url: str) -> AsyncIterator[Survivor]:
    node = Survivor(with_schema(postgres_url), "node-b")
    yield node
    await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_reachable_desktop_is_taken_over_once_its_owner_lease_expires(
    postgres_url: str, survivor: Survivor
) -> None:
    dying_owner(postgres_url, "node-a", DESKTOP, ["d1"])
    await survivor.start({"d1": True})
    assert "d1" not in survivor.manager.desktops and "d1" in survivor.takeover.dormant
    assert not survivor.hub.broker.is_registered("d1")

    await wait_until(lambda: "d1" in survivor.manager.desktops, TIMEOUT, "node-b to adopt d1")
    assert survivor.takeover.adopted == ["d1"] and not survivor.takeover.dormant
    assert survivor.hub.broker.is_registered("d1")
    assert holder(postgres_url, DESKTOP, "d1") == "node-b"
    assert survivor.manager.desktops["d1"].upstream is not None  # linked to its console


@pytest_twisted.ensureDeferred
async def test_a_node_bound_desktop_is_reported_lost_once_and_never_taken_over(
    postgres_url: str, survivor: Survivor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="thinserve.cluster.takeover")
    dying_owner(postgres_url, "node-a", DESKTOP, ["l1"])
    await survivor.start({"l1": False})

    why = "lost: node node-a, which ran it, is gone"
    await wait_until(
        lambda: survivor.hub.desktop_details.get("l1") == why, TIMEOUT, "l1 reported lost"
    )
    rounds = survivor.takeover.rounds
    await wait_until(lambda: survivor.takeover.rounds >= rounds + 5, TIMEOUT, "more rounds")
    said = [r.getMessage() for r in caplog.records if "desktop l1 is lost" in r.getMessage()]
    assert said == [
        "desktop l1 is lost: node node-a, which ran it, is gone; it cannot be taken over "
        "(its console was on that machine): start that node again"
    ]
    assert "l1" not in survivor.manager.desktops
    assert holder(postgres_url, DESKTOP, "l1") is None

    registry = NodeRegistry(postgres_url, "node-a", expiry=60)
    registry.join()  # node-a is back and runs it again
    Leases(postgres_url, "node-a").acquire(DESKTOP, "l1", 60)
    await wait_until(lambda: "l1" not in survivor.hub.desktop_details, TIMEOUT, "l1 back")
    registry.leave()
    registry.close()


class Listener(protocol.Factory):
    """A listening terminal: counts the connections each node opens to it."""

    def __init__(self) -> None:
        self.open: list[protocol.Protocol] = []

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        proto = protocol.Protocol()
        self.open.append(proto)
        return proto


class Dialler(protocol.Factory):
    """One node's side: its connections to the terminal, while they last."""

    def __init__(self) -> None:
        self.connected = 0

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        dialler = self

        class Counted(protocol.Protocol):
            def connectionMade(self) -> None:
                dialler.connected += 1

            def connectionLost(self, reason: object = None) -> None:
                dialler.connected -= 1

        return Counted()


def factory_for(side: Dialler) -> Callable[[TerminalAdvert], Dialler]:
    return lambda advert: side


@pytest_twisted.ensureDeferred
async def test_one_node_dials_a_terminal_and_another_takes_over_when_it_dies(
    postgres_url: str,
) -> None:
    url = with_schema(postgres_url)
    terminal = Listener()
    port = REACTOR.listenTCP(0, terminal, interface="127.0.0.1")
    advert = TerminalAdvert(
        "Lab 3", "t-lab-3", "test", 640, 480, port.getHost().port, ("127.0.0.1",)
    )
    nodes = [ClusterService(url, n, heartbeat=HEARTBEAT, lease=LEASE) for n in ("na", "nb")]
    sides = [Dialler(), Dialler()]
    connectors = [
        ReverseConnector(
            reactor,
            factory_for(side),
            gate=DialLeases(node),
            refused_delay=HEARTBEAT,
            initial_delay=0.1,
        )
        for node, side in zip(nodes, sides, strict=True)
    ]
    try:
        for node, connector in zip(nodes, connectors, strict=True):
            await node.startService()
            connector.startService()
            connector.terminal_added(advert)
        await wait_until(lambda: sum(s.connected for s in sides) == 1, TIMEOUT, "one dialler")
        first = next(i for i, s in enumerate(sides) if s.connected)
        other = 1 - first
        await sleep(10 * HEARTBEAT)  # some heartbeats later: still that one alone
        assert [s.connected for s in sides] == [int(i == first) for i in range(2)]
        assert holder(url, DIAL, "t-lab-3") == nodes[first].node_name

        beats = nodes[first]._beats  # the first node dies: no heartbeat, no clean leave
        assert beats is not None
        beats.stop()
        connectors[first].stopService()
        await wait_until(lambda: sides[other].connected == 1, TIMEOUT, "the other node dials")
        assert holder(url, DIAL, "t-lab-3") == nodes[other].node_name
    finally:
        for connector in connectors:
            if connector.running:
                connector.stopService()
        for node in nodes:
            await node.stopService()
        await port.stopListening()
