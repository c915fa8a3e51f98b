"""When the database cannot be used: SQLite's faults become clear StoreFaults,
nothing stored is lost, the store carries on once the cause is gone, and
``thinserve serve`` refuses a damaged or locked database in one line."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from thinserve.broker import Broker, BrokerConfig, TerminalInfo
from thinserve.desktop_state import DesktopState
from thinserve.hub import STORE_FAULT_REPORT_EVERY, TICK_SECONDS, Hub
from thinserve.store import (
    CannotOpenError,
    CorruptError,
    Desktop,
    DiskFullError,
    LockedError,
    Pairing,
    ReadOnlyError,
    SqliteStore,
    StoreFault,
    StoreIOError,
    Terminal,
)
from thinserve.store.sqlite import _fault

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "thinserve"
THINSERVE = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "thinserve.cli"]
)
CORRUPT_HINT = (
    "restore it from a backup, or move it aside to start with an empty database "
    "(its pairings and users are then lost), while thinserve is stopped"
)
LOCKED_HINT = (
    "stop the other thinserve (or other program) using it, "
    "or give each thinserve its own [server] database"
)


def filled(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    store.upsert_desktop(Desktop("d1", "xvnc"))
    store.upsert_terminal(Terminal("t1", "Desk 1", "tb-1", "10.0.0.5", 1280, 1024, 100.0))
    store.pair(Pairing("t1", "d1", 101.0, "admin:ann"))
    store.append_audit(102.0, "admin:ann", "pair", "t1", "desktop d1")
    return store


def contents(store: SqliteStore) -> tuple[object, ...]:
    return (store.list_terminals(), store.list_pairings(), store.list_audit())


def set_read_only(store: SqliteStore, read_only: bool) -> None:
    """SQLite's own read-only switch: every write is refused with SQLITE_READONLY."""
    store._db.execute(f"PRAGMA query_only = {'ON' if read_only else 'OFF'}")


# -- the store ----------------------------------------------------------------------------------
def test_a_full_database_says_disk_full_rolls_back_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "thinserve.db"
    store = filled(path)
    before = contents(store)
    pages = store._one("PRAGMA page_count")
    assert pages is not None
    store._db.execute(f"PRAGMA max_page_count = {pages[0]}")  # SQLITE_FULL at the next page
    with pytest.raises(DiskFullError) as caught, store.atomic():
        store.upsert_terminal(Terminal("t2", last_seen=200.0))  # fits: rolled back too
        store.append_audit(201.0, "thinserve", "note", "t2", "x" * 100_000)
    fault = caught.value
    assert str(fault) == (
        f"disk full at {tmp_path}: cannot write the database {path}; "
        "free space there; a running thinserve recovers by itself, no restart needed"
    )
    assert fault.problem == f"disk full at {tmp_path}: cannot write the database {path}"
    assert fault.path == str(path) and fault.cause == "database or disk is full"
    assert fault.reason == "its disk is full"
    assert not store._db.in_transaction  # the connection is ready for the next one
    assert contents(store) == before  # nothing half-written, nothing lost
    with pytest.raises(DiskFullError):
        store.append_audit(202.0, "thinserve", "note", "t2", "x" * 100_000)
    store._db.execute("PRAGMA max_page_count = 1073741823")  # room again: no reopening
    store.append_audit(203.0, "thinserve", "note", "t2", "x" * 100_000)
    assert len(store.list_audit()) == len(before[2]) + 1
    store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    check.close()


def test_a_locked_database_says_who_to_stop_and_works_once_released(tmp_path: Path) -> None:
    path = tmp_path / "thinserve.db"
    store = filled(path)
    store.close()
    store = SqliteStore(path, busy_timeout=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(LockedError) as caught:
        store.upsert_terminal(Terminal("t2", last_seen=200.0))
    assert str(caught.value) == (
        f"the database {path} is locked by another program (database is locked); {LOCKED_HINT}"
    )
    assert caught.value.reason == "its database is in use by another program"
    assert [t.id for t in store.list_terminals()] == ["t1"]  # reading still works (WAL)
    other.execute("ROLLBACK")
    other.close()
    store.upsert_terminal(Terminal("t2", last_seen=200.0))
    assert [t.id for t in store.list_terminals()] == ["t1", "t2"]
    store.close()


def test_a_read_only_database_says_so_and_works_once_writable(tmp_path: Path) -> None:
    path = tmp_path / "thinserve.db"
    store = filled(path)
    before = contents(store)
    set_read_only(store, True)
    with pytest.raises(ReadOnlyError) as caught:
        store.pair(Pairing("t2", "d1", 300.0, "admin:ann"))
    assert caught.value.problem == (
        f"the database {path} is read-only (attempt to write a readonly database)"
    )
    assert "writable for the user running thinserve" in caught.value.hint
    assert contents(store) == before and not store._db.in_transaction
    set_read_only(store, False)
    store.pair(Pairing("t2", "d1", 300.0, "admin:ann"))
    assert store.pairing_for_desktop("d1") == Pairing("t2", "d1", 300.0, "admin:ann")
    store.close()


def test_a_file_that_is_no_database_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "thinserve.db"
    path.write_bytes(b"these are not the pages you are looking for\n" * 100)
    with pytest.raises(CorruptError) as caught:
        SqliteStore(path)
    assert str(caught.value) == (
        f"{path} is not a thinserve database, or it is damaged (file is not a database); "
        f"{CORRUPT_HINT}"
    )


def test_a_damaged_database_is_refused_at_open(tmp_path: Path) -> None:
    path = damaged_database(tmp_path / "thinserve.db")
    with pytest.raises(CorruptError) as caught:
        SqliteStore(path)
    assert caught.value.problem.startswith(f"{path} is not a thinserve database, or it is damaged")
    assert caught.value.hint == CORRUPT_HINT
    assert caught.value.reason == "its database is damaged"


def test_a_database_that_cannot_be_created_says_where(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "thinserve.db"
    with pytest.raises(CannotOpenError) as caught:
        SqliteStore(path)
    assert caught.value.problem.startswith(f"cannot open the database {path} (")
    assert "may write there" in caught.value.hint


def test_io_errors_are_named_and_mistakes_in_sql_are_not_faults(tmp_path: Path) -> None:
    path = str(tmp_path / "thinserve.db")
    io_write = 10 | (3 << 8)  # SQLITE_IOERR_WRITE, with room on the file system
    fault = _fault(path, io_write, "disk I/O error")
    assert isinstance(fault, StoreIOError)
    assert fault.problem == f"disk I/O error on the database {path} (disk I/O error)"
    assert "dmesg" in fault.hint
    assert _fault(path, 1, "near 'THIS': syntax error") is None  # SQLITE_ERROR: a bug
    assert _fault(path, 19, "UNIQUE constraint failed") is None  # a conflict, not a fault
    store = SqliteStore(path)
    with pytest.raises(sqlite3.OperationalError):
        store._all("THIS IS NOT SQL")
    store.close()


# -- the broker and the hub --------------------------------------------------------------------
def test_a_terminal_the_store_cannot_save_is_not_connected_and_nothing_is_kept(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "thinserve.db")
    broker = Broker(store, BrokerConfig())
    broker.register_desktop("d1", "xvnc")
    broker.terminal_connected("t1", TerminalInfo(name="old"))
    broker.pair("t1", "d1", "admin:ann")
    before = (broker.snapshot(), contents(store))
    set_read_only(store, True)
    with pytest.raises(ReadOnlyError):
        broker.terminal_connected("t2", TerminalInfo(name="new"))
    assert (broker.snapshot(), contents(store)) == before
    with pytest.raises(ReadOnlyError):  # t1's session cannot be recorded as ended
        broker.desktop_state("d1", DesktopState.CRASHED)
    assert broker.snapshot().shown == before[0].shown  # so nothing was published
    set_read_only(store, False)
    assert broker.terminal_connected("t2", TerminalInfo(name="new")).kind.value == "pairing"
    assert broker.snapshot().connected == ("t1", "t2")
    (change,) = broker.tick()  # the change held back is published once the store works
    assert change.terminal_id == "t1" and change.assignment.kind.value == "unavailable"
    (session,) = store.list_sessions()
    assert session.terminal_id == "t1" and session.ended is not None


def test_the_hub_keeps_ticking_through_store_faults_and_logs_them_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "thinserve.db")
    clock = Clock()
    broker = Broker(store, BrokerConfig(), clock=clock.seconds)
    hub = Hub(broker, {}, clock)
    hub.start()
    set_read_only(store, True)
    for _ in range(int(STORE_FAULT_REPORT_EVERY // TICK_SECONDS) - 1):
        clock.advance(TICK_SECONDS)
    assert hub._ticker.running
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    problem = f"cannot tidy up the store: the database {store.path} is read-only"
    assert len(logged) == 1 and logged[0].startswith(problem)
    clock.advance(TICK_SECONDS)
    clock.advance(TICK_SECONDS)  # a minute on: the next line counts those held back
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 2 and logged[1].endswith(
        f"recovers by itself ({int(STORE_FAULT_REPORT_EVERY // TICK_SECONDS) - 1} more "
        "since the last report)"
    )
    set_read_only(store, False)
    clock.advance(TICK_SECONDS)
    assert hub._ticker.running
    hub.stop()
    store.close()


# -- starting thinserve --------------------------------------------------------------------------
def damaged_database(path: Path) -> Path:
    store = SqliteStore(path)
    for n in range(300):
        store.upsert_terminal(Terminal(f"t{n}", "a terminal with a long name " * 4, last_seen=1.0))
    store.close()
    with path.open("r+b") as file:  # overwrite a page in the middle of the terminals' table
        file.seek(4096 * 4)
        file.write(b"\xff" * 4096)
    return path


def serve(tmp_path: Path, database: Path) -> subprocess.CompletedProcess[str]:
    """``thinserve serve`` on ``database``, logging errors only; it must stop by itself."""
    config = tmp_path / "thinserve.toml"
    config.write_text(
        f'[server]\ndatabase = "{database}"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        'admin_socket = ""\n\n[[desktop]]\nname = "d1"\naddress = "127.0.0.1:1"\n'
    )
    own = ["--state-dir", str(tmp_path / "server")]  # its own state lock, not the machine's
    return subprocess.run(
        [*THINSERVE, "--log-level", "error", "serve", "--config", str(config), *own],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
    )


@pytest.mark.parametrize("kind", ["not a database", "damaged"])
def test_serve_refuses_a_corrupt_database_in_one_line(tmp_path: Path, kind: str) -> None:
    database = tmp_path / "state" / "thinserve.db"
    database.parent.mkdir()
    if kind == "damaged":
        damaged_database(database)
    else:
        database.write_bytes(b"SQLite format 2\x00" + bytes(4080))
    done = serve(tmp_path, database)
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"thinserve: could not start: {database} is not a thinserve database, or it is damaged ("
    )
    assert line.endswith(f"); {CORRUPT_HINT}")


def test_serve_refuses_a_locked_database_in_one_line(tmp_path: Path) -> None:
    database = tmp_path / "state" / "thinserve.db"
    SqliteStore(database).close()
    other = sqlite3.connect(database, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another program in the middle of writing
        done = serve(tmp_path, database)
    finally:
        other.close()
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"thinserve: could not start: the database {database} is locked by another program "
        f"(database is locked); {LOCKED_HINT}"
    ]


def test_every_fault_is_a_store_fault_with_a_reason() -> None:
    for kind in (DiskFullError, LockedError, ReadOnlyError, StoreIOError, CorruptError):
        assert issubclass(kind, StoreFault) and kind.reason != StoreFault.reason
