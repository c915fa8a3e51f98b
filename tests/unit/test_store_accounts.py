"""The store's admin accounts, API tokens and disabled users, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from thinserve.secrets import SecretHasher
from thinserve.store import ConflictError, NotFoundError, User
from thinserve.store.base import Admin, ApiToken
from thinserve.store.migrations import MIGRATIONS, SCHEMA_VERSION
from thinserve.store.sql import SqlStore

CHEAP = SecretHasher(time_cost=1, memory_cost=8, parallelism=1)
Opener = Callable[..., SqlStore]


def test_a_schema_1_database_upgrades_and_its_users_keep_working(open_test_store: Opener) -> None:
    old = open_test_store(MIGRATIONS[:1])
    assert old.schema_version == 1
    old.add_user(User("alice", None, 10.0), CHEAP.hash("correct horse"))
    old.close()

    store = open_test_store()
    assert store.schema_version == SCHEMA_VERSION >= 2
    assert store.get_user("alice") == User("alice", None, 10.0, disabled=False)
    assert CHEAP.verify(store.user_secret_hash("alice"), "correct horse")
    store.set_user_disabled("alice", True)
    assert store.list_users() == [User("alice", None, 10.0, disabled=True)]
    with pytest.raises(NotFoundError):
        store.set_user_disabled("bob", True)
    store.add_admin(Admin("ann", "admin", 1.0), "h")  # the new tables are there
    store.add_token(ApiToken("t1", "ann", "ci", 2.0), "hash-1")
    assert store.list_tokens("ann") == [ApiToken("t1", "ann", "ci", 2.0)]


def test_admins_are_added_listed_changed_and_names_are_unique(store: SqlStore) -> None:
    store.add_admin(Admin("zoe", "helpdesk", 2.0), "hash-z")
    store.add_admin(Admin("ann", "admin", 1.0), "hash-a")
    with pytest.raises(ConflictError):
        store.add_admin(Admin("ann", "helpdesk", 3.0), "other")
    assert [a.name for a in store.list_admins()] == ["ann", "zoe"]
    assert store.get_admin("ann") == Admin("ann", "admin", 1.0)
    assert store.get_admin("nobody") is None
    assert store.admin_secret_hash("ann") == "hash-a"
    assert store.admin_secret_hash("nobody") is None

    store.set_admin_secret_hash("ann", "hash-a2")
    store.set_admin_disabled("ann", True)
    store.set_admin_role("zoe", "admin")
    assert store.admin_secret_hash("ann") == "hash-a2"
    assert store.get_admin("ann") == Admin("ann", "admin", 1.0, disabled=True)
    assert store.get_admin("zoe") == Admin("zoe", "admin", 2.0)
    for change in (
        lambda: store.set_admin_secret_hash("nobody", "h"),
        lambda: store.set_admin_disabled("nobody", True),
        lambda: store.set_admin_role("nobody", "admin"),
    ):
        with pytest.raises(NotFoundError):
            change()


def test_failures_count_on_and_a_lock_persists_until_it_expires(open_test_store: Opener) -> None:
    store = open_test_store()
    store.add_admin(Admin("ann", "admin", 1.0), "h")
    assert store.record_admin_failure("ann", 100.0, 0.0) == 1
    assert store.record_admin_failure("ann", 101.0, 1000.0) == 2
    assert store.record_admin_failure("ann", 102.0, 500.0) == 3  # never shortens a lock
    assert store.record_admin_failure("nobody", 102.0, 500.0) == 0
    store.close()

    store = open_test_store()  # a restart keeps the lock
    assert store.get_admin("ann") == Admin("ann", "admin", 1.0, locked_until=1000.0, failures=3)
    assert store.record_admin_failure("ann", 1000.0, 0.0) == 4  # the lock had expired
    assert store.get_admin("ann") == Admin("ann", "admin", 1.0, failures=4)
    store.record_admin_failure("ann", 1001.0, 2000.0)
    store.clear_admin_failures("ann")
    assert store.get_admin("ann") == Admin("ann", "admin", 1.0)


def test_tokens_belong_to_an_admin_and_go_with_it(store: SqlStore) -> None:
    store.add_admin(Admin("ann", "admin", 1.0), "h")
    store.add_admin(Admin("bob", "helpdesk", 1.0), "h")
    store.add_token(ApiToken("t2", "bob", "ci", 5.0), "hash-2")
    store.add_token(ApiToken("t1", "ann", "grafana", 4.0), "hash-1")
    with pytest.raises(ConflictError):
        store.add_token(ApiToken("t3", "ann", "grafana", 6.0), "hash-3")  # same label
    with pytest.raises(ConflictError):
        store.add_token(ApiToken("t1", "bob", "other", 6.0), "hash-3")  # same id
    with pytest.raises(ConflictError):
        store.add_token(ApiToken("t4", "nobody", "x", 6.0), "hash-4")  # no such admin
    assert [t.id for t in store.list_tokens()] == ["t1", "t2"]
    assert store.list_tokens("bob") == [ApiToken("t2", "bob", "ci", 5.0, None)]
    assert store.token_hash("t1") == "hash-1" and store.token_hash("nope") is None
    store.touch_token("t1", 9.0)
    store.touch_token("nope", 9.0)
    assert store.get_token("t1") == ApiToken("t1", "ann", "grafana", 4.0, 9.0)
    assert store.get_token("nope") is None

    assert store.delete_token("t2") and not store.delete_token("t2")
    assert store.delete_admin("ann") and not store.delete_admin("ann")
    assert store.list_tokens() == [] and store.token_hash("t1") is None
