"""Two brokers over one shared store, as two nodes of a site run them.

What one node's admin decides (a pairing, an unpairing, a user's desktop)
reaches a terminal connected to the other node when that node refreshes,
which it does on the store's change notification.  The stores here are real
databases: one SQLite file opened twice, and one PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from thinserve.broker import (
    Broker,
    BrokerConfig,
    DesktopState,
    ScreenKind,
    ShowDesktop,
    ShowScreen,
)
from thinserve.store import Store, open_store

CONFIG = BrokerConfig(unknown_terminal="pairing")
OpenStore = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens another store on one database each time it is called."""
    if request.param == "sqlite":
        location = f"sqlite:///{tmp_path / 'site.db'}"
    else:
        location = request.getfixturevalue("postgres_url")
    opened: list[Store] = []

    def another() -> Store:
        opened.append(open_store(location))
        return opened[-1]

    yield another
    for store in opened:
        store.close()


def node(store: Store, desktops: tuple[str, ...] = ()) -> Broker:
    broker = Broker(store, CONFIG)
    for name in desktops:
        broker.register_desktop(name, "vnc", DesktopState.RUNNING)
    return broker


def shows(assignment: object) -> tuple[str, bool] | None:
    """The desktop an assignment grants and whether with control; None for a screen."""
    if isinstance(assignment, ShowDesktop):
        return assignment.desktop, assignment.control
    return None


def test_a_pairing_made_on_one_node_reaches_a_terminal_on_the_other(shared: OpenStore) -> None:
    b = node(shared(), desktops=("d1",))
    a = node(shared())
    waiting = b.terminal_connected("key-aa11")
    assert isinstance(waiting, ShowScreen) and waiting.kind is ScreenKind.PAIRING

    a.pair("key-aa11", "d1", "admin")  # d1 runs on the other node: the store knows it
    assert b.assignment("key-aa11") == waiting  # nothing moves before the refresh

    (change,) = b.refresh()
    assert change.terminal_id == "key-aa11"
    assert shows(change.assignment) == ("d1", True)
    assert b.refresh() == []  # a second notification of the same change moves nothing


def test_an_unpairing_on_one_node_takes_the_desktop_away_on_the_other(shared: OpenStore) -> None:
    b = node(shared(), desktops=("d1",))
    a = node(shared())
    b.pair("key-aa11", "d1", "admin")
    assert shows(b.terminal_connected("key-aa11")) == ("d1", True)

    a.unpair("key-aa11", "admin")
    (change,) = b.refresh()
    assert change.terminal_id == "key-aa11"
    assert isinstance(change.assignment, ShowScreen)
    assert change.assignment.kind is ScreenKind.PAIRING


def test_a_refresh_keeps_the_pairing_code_on_screen(shared: OpenStore) -> None:
    b = node(shared(), desktops=("d1",))
    shown = b.terminal_connected("key-aa11")
    assert b.refresh() == []
    assert b.assignment("key-aa11") == shown
