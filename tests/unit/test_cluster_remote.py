"""Which desktops a node shows over node links, and what its broker is told about them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet import task

from thinserve.broker import Broker, ScreenKind, ShowDesktop, ShowScreen, TerminalInfo
from thinserve.cluster.link import NodeSecret
from thinserve.cluster.remote import (
    Owner,
    Placement,
    RemoteDesktops,
    address_for,
    judge,
    split_address,
)
from thinserve.desktop_state import DesktopState
from thinserve.hub import Hub
from thinserve.relay.upstream import REMOTE_ENCODINGS, Mirror
from thinserve.store.base import Desktop
from thinserve.store.sqlite import SqliteStore

FINGERPRINT = "k" * 52
SECRET = NodeSecret(b"\x01" * 32)


def placed(
    desktop: str,
    owner: str | None,
    alive: bool = True,
    address: str = "10.0.0.1:5999",
    fingerprint: str = FINGERPRINT,
) -> Placement:
    return Placement(desktop, owner, alive, address, fingerprint)


def test_only_desktops_run_elsewhere_are_remote() -> None:
    judged = judge(
        [placed("mine", "node-b"), placed("configured", None), placed("theirs", "node-a")],
        "node-b",
        local={"configured"},
    )
    assert judged == {"theirs": Owner("node-a", "10.0.0.1", 5999, FINGERPRINT)}


@pytest.mark.parametrize(
    ("placement", "reason"),
    [
        (placed("d1", None), "no node runs it now"),
        (placed("d1", "node-a", alive=False), "node node-a, which runs it, is gone"),
        (placed("d1", "node-a", address="10.0.0.1"), "node-a runs it but takes no node links"),
        (placed("d1", "node-a", fingerprint=""), "no [cluster] node_listen there"),
    ],
)
def test_a_desktop_that_cannot_be_linked_says_why(placement: Placement, reason: str) -> None:
    judged = judge([placement], "node-b", local=())
    assert isinstance(judged["d1"], str) and reason in judged["d1"]


def test_addresses_are_host_and_port() -> None:
    assert split_address("10.0.0.1:5999") == ("10.0.0.1", 5999)
    assert split_address("[fd00::1]:5999") == ("fd00::1", 5999)
    assert split_address("node-a.example:1") == ("node-a.example", 1)
    for wrong in ("10.0.0.1", "fd00::1", ":5999", "h:0", "h:70000", "h:x", ""):
        assert split_address(wrong) is None, wrong


def test_the_link_logs_in_as_this_node_pinned_to_the_owner_s_key() -> None:
    address = address_for("d1", Owner("node-a", "fd00::1", 5999, FINGERPRINT), "node-b", SECRET)
    assert address.endpoint == "tcp:host=fd00\\:\\:1:port=5999"
    assert (address.username, address.password) == ("node:node-b/d1", SECRET.password)
    assert address.fingerprint == FINGERPRINT
    assert address.encodings == REMOTE_ENCODINGS  # lossless and compressed, even on loopback


@pytest.fixture
def site() -> Iterator[tuple[RemoteDesktops, Hub]]:
    clock = task.Clock()
    broker = Broker(SqliteStore())
    hub = Hub(broker, {}, clock)
    remote = RemoteDesktops("postgresql://nowhere/x", "node-b", SECRET, hub, lambda: (), 1.0, clock)
    yield remote, hub
    hub.stop()


def test_a_remote_desktop_is_registered_then_unavailable_then_withdrawn(
    site: tuple[RemoteDesktops, Hub],
) -> None:
    remote, hub = site
    broker = hub.broker
    owner = Owner("node-a", "10.0.0.1", 5999, FINGERPRINT)
    broker.store.upsert_desktop(Desktop("d1", "xvnc", None))  # node-a registered it
    remote.apply({"d1": owner, "d2": "no node runs it now"})
    assert broker.is_registered("d1") and not broker.is_registered("d2")
    record = broker.store.get_desktop("d1")
    assert record is not None and record.backend == "xvnc"  # the owner's word stays
    assert set(hub.remote_mirrors) == {"d1"}

    broker.terminal_connected("t1", TerminalInfo())
    broker.pair("t1", "d1", "admin")
    assert isinstance(broker.assignment("t1"), ShowDesktop)

    remote.apply({"d1": "node node-a, which runs it, is gone"})
    shown = broker.assignment("t1")
    assert isinstance(shown, ShowScreen) and "node node-a, which runs it, is gone" in shown.message
    assert broker.snapshot().desktops["d1"] is DesktopState.CRASHED

    remote.apply({"d1": owner})  # it runs again
    assert isinstance(broker.assignment("t1"), ShowDesktop)

    remote.apply({})  # forgotten by the site
    assert not broker.is_registered("d1") and not hub.remote_mirrors


def test_a_remote_desktop_this_node_takes_over_is_its_own_from_then_on(
    site: tuple[RemoteDesktops, Hub],
) -> None:
    remote, hub = site
    local: set[str] = set()
    remote.local = lambda: local
    remote.apply({"d1": Owner("node-a", "10.0.0.1", 5999, FINGERPRINT)})
    remote_mirror = hub.remote_mirrors["d1"]
    local.add("d1")  # this node runs it now (its own registration, its own mirror)
    hub.mirrors["d1"] = Mirror("d1")
    remote.apply({})
    assert hub.broker.is_registered("d1") and "d1" not in hub.remote_mirrors
    assert remote_mirror is not hub.mirrors["d1"]


def test_a_remote_desktop_follows_the_state_its_node_tells(
    site: tuple[RemoteDesktops, Hub],
) -> None:
    remote, hub = site
    broker = hub.broker
    remote.apply({"d1": Owner("node-a", "10.0.0.1", 5999, FINGERPRINT)})
    broker.terminal_connected("t1", TerminalInfo())
    broker.pair("t1", "d1", "admin")

    remote.owner_state("d1", DesktopState.STARTING)
    shown = broker.assignment("t1")
    assert isinstance(shown, ShowScreen) and shown.kind is ScreenKind.STARTING
    remote.owner_state("d1", DesktopState.CRASHED)
    shown = broker.assignment("t1")
    assert isinstance(shown, ShowScreen) and "at the node that runs it" in shown.message
    remote.owner_state("d1", DesktopState.RUNNING)
    assert isinstance(broker.assignment("t1"), ShowDesktop)

    remote.owner_state("d9", DesktopState.CRASHED)  # not shown here: nothing to follow
    assert not broker.is_registered("d9")


def test_the_hub_tells_each_change_of_a_desktop_s_state_once() -> None:
    clock = task.Clock()
    hub = Hub(Broker(SqliteStore()), {}, clock)
    hub.broker.register_desktop("d1", "xvnc", DesktopState.STOPPED)
    told: list[tuple[str, DesktopState]] = []
    hub.on_state_change = lambda name, state: told.append((name, state))
    hub.desktop_state("d1", DesktopState.STARTING, progress=0.1)
    hub.desktop_state("d1", DesktopState.STARTING, progress=0.6)  # progress only
    hub.desktop_state("d1", DesktopState.RUNNING)
    assert told == [("d1", DesktopState.STARTING), ("d1", DesktopState.RUNNING)]
    hub.stop()
