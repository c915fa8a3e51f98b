"""A store of each kind for the tests that hold for every store.

``store_kind`` is "sqlite" or "postgresql" (tests using it run once with
each); ``store_location`` is a fresh database of that kind (an SQLite file
in the test's directory, or an empty PostgreSQL database on the session's
server); ``open_test_store(migrations=MIGRATIONS)`` opens it, as often as a
test needs (a reopen is a restart), and closes what it opened at the end;
``store`` is one such store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from thinserve.store import open_store
from thinserve.store.migrations import MIGRATIONS, Migration
from thinserve.store.sql import SqlStore

STORE_KINDS = ("sqlite", "postgresql")


def location_for(kind: str, request: pytest.FixtureRequest, directory: Path) -> str:
    """A fresh, empty database of ``kind``; PostgreSQL's server starts on first use."""
    if kind == "sqlite":
        return str(directory / "thinserve.db")
    server = request.getfixturevalue("postgres_server")
    return str(server.new_database())


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_location(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return location_for(store_kind, request, tmp_path)


@pytest.fixture
def open_test_store(store_location: str) -> Iterator[Callable[..., SqlStore]]:
    opened: list[SqlStore] = []

    def open_(migrations: Sequence[Migration] = MIGRATIONS) -> SqlStore:
        store = open_store(store_location, migrations)
        assert isinstance(store, SqlStore)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_test_store: Callable[..., SqlStore]) -> SqlStore:
    return open_test_store()
