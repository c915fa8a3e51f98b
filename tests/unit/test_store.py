"""The store on SQLite and on PostgreSQL: schema migrations, persistence, and what it keeps.

Tests taking ``store`` or ``open_test_store`` (tests/support/stores.py) run
once on each database; those about SQLite's file take a path.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from thinserve.secrets import MAX_SECRET_BYTES, SecretHasher
from thinserve.store import (
    ConflictError,
    Desktop,
    NotFoundError,
    Pairing,
    PairingCode,
    SchemaTooNewError,
    SqliteStore,
    Store,
    Terminal,
    User,
    default_path,
)
from thinserve.store.base import Admin
from thinserve.store.migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from thinserve.store.sql import SqlStore

Opener = Callable[..., SqlStore]

CHEAP = SecretHasher(time_cost=1, memory_cost=8, parallelism=1)


def _filled(store: SqlStore) -> None:
    store.upsert_desktop(Desktop("d1", "xvnc"))
    store.upsert_desktop(Desktop("p1", "qemu", "lab"))
    store.upsert_terminal(Terminal("t1", "Desk 1", "tb-1", "10.0.0.5", 1280, 1024, 100.0))
    store.pair(Pairing("t1", "d1", 101.0, "admin:ann"))
    store.add_user(User("alice", None, 102.0), CHEAP.hash("correct horse"))
    store.append_audit(103.0, "admin:ann", "pair", "t1", "desktop d1")


def test_each_store_fills_the_store_protocol(store: SqlStore) -> None:
    assert isinstance(store, Store)
    members = {n for n in vars(Store) if not n.startswith("_")}
    assert members <= set(dir(store))


def test_new_file_gets_every_migration_and_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "thinserve.db"
    store = SqliteStore(path)
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    raw = sqlite3.connect(path)
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"terminals", "desktops", "pairings", "pairing_codes", "users", "sessions", "audit"} <= (
        tables
    )
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_state_survives_closing_and_reopening(open_test_store: Opener) -> None:
    store = open_test_store()
    _filled(store)
    before = (
        store.list_terminals(),
        store.list_desktops(),
        store.list_pairings(),
        store.list_users(),
        store.user_secret_hash("alice"),
        store.list_audit(),
    )
    store.close()
    again = open_test_store()
    after = (
        again.list_terminals(),
        again.list_desktops(),
        again.list_pairings(),
        again.list_users(),
        again.user_secret_hash("alice"),
        again.list_audit(),
    )
    assert after == before
    assert again.get_terminal("t1") == Terminal(
        "t1", "Desk 1", "tb-1", "10.0.0.5", 1280, 1024, 100.0
    )
    assert again.pairing_for("t1") == Pairing("t1", "d1", 101.0, "admin:ann")
    again.close()


def test_opening_an_older_database_runs_only_the_new_migrations(open_test_store: Opener) -> None:
    store = open_test_store()
    _filled(store)
    store.close()
    extra = Migration(
        "terminal notes", ("ALTER TABLE terminals ADD COLUMN note TEXT NOT NULL DEFAULT ''",)
    )
    upgraded = open_test_store((*MIGRATIONS, extra))
    assert upgraded.schema_version == SCHEMA_VERSION + 1
    assert upgraded.pairing_for("t1") is not None  # data kept
    assert upgraded._all("SELECT note FROM terminals WHERE id = 't1'") == [("",)]


def test_a_failing_migration_leaves_the_database_at_its_old_version(
    open_test_store: Opener,
) -> None:
    open_test_store().close()
    broken = Migration("broken", ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"))
    with pytest.raises((sqlite3.OperationalError, psycopg.errors.SyntaxError)):
        open_test_store((*MIGRATIONS, broken))
    store = open_test_store()
    assert store.schema_version == SCHEMA_VERSION
    store.upsert_desktop(Desktop("d1", "xvnc"))  # the table is not there: it can be made
    again = open_test_store((*MIGRATIONS, Migration("extra", ("CREATE TABLE extra (x INTEGER)",))))
    assert again.schema_version == SCHEMA_VERSION + 1  # the half-done one was rolled back


def test_a_newer_database_is_refused_with_a_clear_error(open_test_store: Opener) -> None:
    later = [Migration(f"later {n}", (f"CREATE TABLE later{n} (x INTEGER)",)) for n in range(3)]
    open_test_store((*MIGRATIONS, *later)).close()
    with pytest.raises(SchemaTooNewError) as caught:
        open_test_store()
    message = str(caught.value)
    assert str(SCHEMA_VERSION + 3) in message and str(SCHEMA_VERSION) in message
    assert "newer" in message


def test_secrets_are_stored_hashed_never_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "thinserve.db"
    store = SqliteStore(path)
    secret = "correct horse battery staple"
    store.add_user(User("alice", None, 1.0), CHEAP.hash(secret))
    store.close()
    raw = sqlite3.connect(path)
    rows = raw.execute("SELECT * FROM users").fetchall()
    raw.close()
    dump = repr(rows)
    assert secret not in dump
    assert "$argon2id$" in dump
    for file in tmp_path.iterdir():  # the database, and any journal left beside it
        assert secret.encode() not in file.read_bytes()


def test_secret_hashing_verifies_and_rehashes() -> None:
    encoded = CHEAP.hash("1234")
    assert encoded.startswith("$argon2id$")
    assert CHEAP.verify(encoded, "1234")
    assert not CHEAP.verify(encoded, "1235")
    assert not CHEAP.verify(None, "1234")  # no such user
    assert not CHEAP.verify("not a hash", "1234")
    assert not CHEAP.verify(encoded, "x" * (MAX_SECRET_BYTES + 1))
    assert CHEAP.hash("1234") != encoded  # salted
    assert not CHEAP.needs_rehash(encoded)
    assert SecretHasher(time_cost=2, memory_cost=8, parallelism=1).needs_rehash(encoded)
    with pytest.raises(ValueError):
        CHEAP.hash("")


def test_audit_entries_come_back_in_the_order_written(store: SqlStore) -> None:
    written = [store.append_audit(50.0 - i, "a", f"act{i}", f"s{i % 3}") for i in range(20)]
    assert [e.id for e in written] == sorted(e.id for e in written)
    assert store.list_audit() == written  # by id, not by time
    assert store.list_audit(after_id=written[4].id, limit=3) == written[5:8]
    assert store.list_audit(subject="s1") == [e for e in written if e.subject == "s1"]


def test_pairing_is_one_to_one_and_needs_a_known_desktop(store: SqlStore) -> None:
    for name in ("d1", "d2"):
        store.upsert_desktop(Desktop(name, "xvnc"))
    store.pair(Pairing("t1", "d1", 1.0, "a"))
    store.pair(Pairing("t2", "d1", 2.0, "a"))  # the desktop moves to t2
    assert store.pairing_for("t1") is None
    assert store.pairing_for_desktop("d1") == Pairing("t2", "d1", 2.0, "a")
    store.pair(Pairing("t2", "d2", 3.0, "a"))  # t2 changes desktop
    assert store.list_pairings() == [Pairing("t2", "d2", 3.0, "a")]
    with pytest.raises(ConflictError):
        store.pair(Pairing("t3", "nope", 4.0, "a"))
    assert store.list_pairings() == [Pairing("t2", "d2", 3.0, "a")]  # rolled back
    assert store.unpair("t2") == Pairing("t2", "d2", 3.0, "a")
    assert store.unpair("t2") is None


def test_pairing_codes_are_single_use_and_expire(store: SqlStore) -> None:
    store.put_pairing_code(PairingCode("ABCDEF", "t1", 0.0, 100.0))
    store.put_pairing_code(PairingCode("GHJKLM", "t1", 1.0, 101.0))  # replaces t1's code
    assert store.get_pairing_code("ABCDEF") is None
    with pytest.raises(ConflictError):
        store.put_pairing_code(PairingCode("GHJKLM", "t2", 1.0, 101.0))
    assert store.record_code_failure("GHJKLM") == 1
    assert store.record_code_failure("GHJKLM") == 2
    assert store.record_code_failure("NOSUCH") == 0
    assert store.consume_pairing_code("GHJKLM", now=101.0) is None  # expired
    code = store.consume_pairing_code("GHJKLM", now=50.0)
    assert code == PairingCode("GHJKLM", "t1", 1.0, 101.0, failures=2)
    assert store.consume_pairing_code("GHJKLM", now=50.0) is None  # used
    store.put_pairing_code(PairingCode("NPQRST", "t2", 0.0, 10.0))
    store.put_pairing_code(PairingCode("UVWXYZ", "t3", 0.0, 20.0))
    assert store.delete_expired_pairing_codes(10.0) == 1
    assert store.pairing_code_for("t2") is None and store.pairing_code_for("t3") is not None


def test_every_pairing_code_in_one_read(store: SqlStore) -> None:
    assert store.list_pairing_codes() == []
    store.put_pairing_code(PairingCode("ABCDEF", "t1", 0.0, 100.0))
    store.put_pairing_code(PairingCode("GHJKLM", "t2", 1.0, 5.0))  # expired ones too
    store.record_code_failure("GHJKLM")
    assert sorted(store.list_pairing_codes(), key=lambda c: c.code) == [
        PairingCode("ABCDEF", "t1", 0.0, 100.0),
        PairingCode("GHJKLM", "t2", 1.0, 5.0, failures=1),
    ]


def test_users_and_their_desktops(store: SqlStore) -> None:
    store.upsert_desktop(Desktop("d1", "xvnc"))
    store.add_user(User("alice", "d1", 5.0), "hash-a")
    with pytest.raises(ConflictError):
        store.add_user(User("alice", None, 6.0), "hash-b")
    with pytest.raises(ConflictError):
        store.add_user(User("bob", "nope", 6.0), "hash-b")
    assert store.get_user("bob") is None
    assert store.users_with_desktop("d1") == [User("alice", "d1", 5.0)]
    store.set_user_desktop("alice", None)
    store.set_user_secret_hash("alice", "hash-c")
    assert store.get_user("alice") == User("alice", None, 5.0)
    assert store.user_secret_hash("alice") == "hash-c"
    with pytest.raises(NotFoundError):
        store.set_user_desktop("carol", None)
    with pytest.raises(NotFoundError):
        store.set_user_secret_hash("carol", "x")
    assert store.delete_user("alice") and not store.delete_user("alice")
    assert store.list_users() == []


def test_sessions_start_end_and_are_closed_after_a_restart(open_test_store: Opener) -> None:
    store = open_test_store()
    first = store.start_session("t1", "d1", "alice", 10.0)
    second = store.start_session("t2", "d2", None, 11.0)
    store.end_session(first, 12.0)
    store.end_session(first, 99.0)  # ending twice keeps the first end
    store.close()
    store = open_test_store()
    assert store.end_open_sessions(20.0) == 1
    records = store.list_sessions()
    assert [(r.id, r.ended) for r in records] == [(second, 20.0), (first, 12.0)]
    assert store.list_sessions(terminal_id="t1")[0].user == "alice"


def test_atomic_groups_writes_and_rolls_back_on_error(store: SqlStore) -> None:
    with pytest.raises(RuntimeError), store.atomic():
        store.append_audit(1.0, "a", "x", "s")
        with store.atomic():
            store.append_audit(2.0, "a", "y", "s")
        raise RuntimeError("boom")
    assert store.list_audit() == []
    with store.atomic():
        store.append_audit(1.0, "a", "x", "s")
    assert len(store.list_audit()) == 1


def test_default_path_follows_xdg_and_root() -> None:
    assert default_path({}, euid=0) == Path("/var/lib/thinserve/thinserve.db")
    xdg = default_path({"XDG_DATA_HOME": "/data", "HOME": "/home/u"}, euid=1000)
    assert xdg == Path("/data/thinserve/thinserve.db")
    home = default_path({"HOME": "/home/u"}, euid=1000)
    assert home == Path("/home/u/.local/share/thinserve/thinserve.db")
    relative = default_path({"XDG_DATA_HOME": "rel", "HOME": "/home/u"}, euid=1000)
    assert relative == home  # the XDG spec says to ignore relative paths


def test_session_pages_go_back_by_id(store: SqlStore) -> None:
    store.upsert_desktop(Desktop("d1", "xvnc"))
    ids = [store.start_session(f"t{n % 2}", "d1", None, float(n)) for n in range(7)]
    first = store.list_sessions(limit=3)
    assert [s.id for s in first] == ids[::-1][:3]
    second = store.list_sessions(limit=3, before_id=first[-1].id)
    assert [s.id for s in second] == ids[::-1][3:6]
    t0 = store.list_sessions(limit=10, terminal_id="t0", before_id=ids[4])
    assert [s.id for s in t0] == [ids[2], ids[0]]


def test_a_conflict_inside_a_transaction_undoes_only_that_write(store: SqlStore) -> None:
    store.add_user(User("alice", None, 1.0), "hash-a")
    with store.atomic():
        store.append_audit(1.0, "a", "before", "s")
        with pytest.raises(ConflictError):
            store.add_user(User("alice", None, 2.0), "hash-b")
        store.append_audit(2.0, "a", "after", "s")
    assert [e.action for e in store.list_audit()] == ["before", "after"]
    assert store.user_secret_hash("alice") == "hash-a"


def test_admin_lockouts_keep_the_later_lock_unless_it_expired(store: SqlStore) -> None:
    def lock() -> float:
        admin = store.get_admin("ann")
        assert admin is not None
        return admin.locked_until

    store.add_admin(Admin("ann", "admin", 1.0), "h")
    assert store.record_admin_failure("ann", 10.0, 100.0) == 1
    assert lock() == 100.0
    store.record_admin_failure("ann", 20.0, 50.0)  # earlier: the stored lock stays
    assert lock() == 100.0
    store.record_admin_failure("ann", 100.0, 0.0)  # the stored lock expired at 100
    assert lock() == 0.0
