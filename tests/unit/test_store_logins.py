"""Login rows in the store: who is logged in at which terminal of which node.

The tests of the rows run on SQLite and on PostgreSQL (``store`` from
tests/support/stores.py); on PostgreSQL every change of a row also tells the
other nodes (``user:<name>``), and a write that changed nothing tells nobody.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from thinserve.store import Login
from thinserve.store.changes import CHANNEL
from thinserve.store.postgres import PostgresStore
from thinserve.store.sql import SqlStore


def test_a_login_row_is_set_moved_listed_and_deleted_only_where_it_is(store: SqlStore) -> None:
    assert store.get_login("alice") is None and store.list_logins() == []
    at_a = Login("alice", "t1", "node-a", 10.0)
    assert store.set_login(at_a) is None
    assert store.get_login("alice") == at_a

    at_b = Login("alice", "t7", "node-b", 11.0)
    assert store.set_login(at_b) == at_a  # the move says where the user was
    store.set_login(Login("bob", "t2", "node-a", 12.0))
    assert store.list_logins() == [at_b, Login("bob", "t2", "node-a", 12.0)]
    assert store.list_logins("node-a") == [Login("bob", "t2", "node-a", 12.0)]
    assert store.list_logins("node-c") == []

    # node-a ending its own (old) login of alice does not touch node-b's
    assert not store.delete_login("alice", "t1", "node-a")
    assert not store.delete_login("alice", "t7", "node-a")
    assert store.get_login("alice") == at_b
    assert store.delete_login("alice", "t7", "node-b")
    assert store.get_login("alice") is None
    assert store.delete_login("bob")  # wherever it is (a user deleted or disabled)
    assert not store.delete_login("bob")
    assert store.list_logins() == []


def test_login_rows_survive_a_reopen(open_test_store: Callable[..., SqlStore]) -> None:
    first = open_test_store()
    first.set_login(Login("alice", "t1", "node-a", 10.0))
    first.close()
    assert open_test_store().list_logins() == [Login("alice", "t1", "node-a", 10.0)]


def test_login_changes_notify_other_nodes(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        store.set_login(Login("alice", "t1", "node-a", 1.0))
        store.delete_login("alice", "t9", "node-a")  # not there: no notice
        store.set_login(Login("alice", "t2", "node-b", 2.0))
        store.delete_login("alice", "t2", "node-b")
        store.set_login(Login("marker", "t3", "node-a", 3.0))
        got = []
        for notice in listener.notifies(timeout=10.0):
            got.append(notice.payload)
            if notice.payload == "user:marker":
                break
    store.close()
    assert got == ["user:alice", "user:alice", "user:alice", "user:marker"]
