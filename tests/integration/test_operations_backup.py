"""``thinserve backup`` and ``restore`` on real databases: an online backup
while a real server holds the database (with rows still in its WAL), a
restore that keeps the old database, and the refusals (server running,
damaged file, newer schema), each leaving the database untouched."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Spawned, spawn
from tests.support.waiting import wait_until_blocking
from thinserve import statelock
from thinserve.store import SqliteStore, Terminal
from thinserve.store.migrations import SCHEMA_VERSION

pytestmark = pytest.mark.integration

THINSERVE = str(Path(sys.executable).parent / "thinserve")
START_TIMEOUT = 60.0


def thinserve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [THINSERVE, *argv], capture_output=True, text=True, timeout=60, check=False
    )


def terminal(name: str) -> Terminal:
    return Terminal(id=f"key-{name}", name=name, last_seen=1.0)


def store_with(path: Path, *names: str) -> None:
    store = SqliteStore(path)
    try:
        for name in names:
            store.upsert_terminal(terminal(name))
    finally:
        store.close()


def names_in(path: Path) -> list[str]:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT name FROM terminals ORDER BY name")]
    finally:
        db.close()


def write_config(directory: Path) -> Path:
    path = directory / "thinserve.toml"
    path.write_text(
        '[server]\nlisten = ["tcp:port=0:interface=127.0.0.1"]\nweb_listen = []\n'
        "[discovery]\nenabled = false\n"
        '[[desktop]]\nname = "remote"\naddress = "127.0.0.1:5999"\n'
    )
    return path


def server_opened(database: Path) -> bool:
    """The server's database exists with its schema (the terminals table) in place."""
    try:
        return names_in(database) == []
    except sqlite3.Error:
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Spawned, Path, Path]]:
    """A real ``thinserve serve`` on its own state directory, holding the lock."""
    state = tmp_path / "state"
    config = write_config(tmp_path)
    proc = spawn(
        [THINSERVE, "serve", "--config", str(config), "--state-dir", str(state)],
        tmp_path / "serve.log",
    )
    try:
        database = state / "thinserve.db"
        wait_until_blocking(
            lambda: statelock.holder(state) == proc.pid and server_opened(database),
            START_TIMEOUT,
            "thinserve to hold its state directory and database",
            proc,
        )
        yield proc, state, config
    finally:
        proc.stop()


def test_an_online_backup_has_what_the_running_server_wrote(
    server: tuple[Spawned, Path, Path], tmp_path: Path
) -> None:
    proc, state, config = server
    database = state / "thinserve.db"
    # Rows written beside the server, still in the WAL (the server keeps it open).
    store_with(database, "alpha", "beta")
    assert Path(f"{database}-wal").exists()
    target = tmp_path / "backup.db"
    done = thinserve("backup", "--config", str(config), "--state-dir", str(state), str(target))
    assert done.returncode == 0, done.stderr
    assert f"to {target} (schema version {SCHEMA_VERSION})" in done.stdout
    assert names_in(target) == ["alpha", "beta"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not Path(f"{target}-wal").exists(), "a backup is one self-contained file"
    assert proc.alive()


def test_restore_refuses_while_the_server_runs(
    server: tuple[Spawned, Path, Path], tmp_path: Path
) -> None:
    proc, state, config = server
    backup = tmp_path / "other.db"
    store_with(backup, "gamma")
    done = thinserve("restore", "--config", str(config), "--state-dir", str(state), str(backup))
    assert done.returncode == 1
    assert f"thinserve (pid {proc.pid}) is running on {state}: stop it first" in done.stderr
    assert names_in(state / "thinserve.db") == []
    assert not (state / "thinserve.db.before-restore").exists()


def test_restore_keeps_the_old_database_and_swaps_in_the_new(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    database = state / "thinserve.db"
    store_with(database, "old")
    backup = tmp_path / "backup.db"
    store_with(backup, "new-1", "new-2")
    config = write_config(tmp_path)
    done = thinserve("restore", "--config", str(config), "--state-dir", str(state), str(backup))
    assert done.returncode == 0, done.stderr
    assert names_in(database) == ["new-1", "new-2"]
    assert names_in(state / "thinserve.db.before-restore") == ["old"]
    assert not Path(f"{database}-wal").exists()
    assert statelock.holder(state) is None, "the restore's lock is let go"
    reopened = SqliteStore(database)  # what the next start does
    assert reopened.get_terminal("key-new-1") == terminal("new-1")
    reopened.close()


def test_restore_refuses_a_damaged_file_and_touches_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    database = state / "thinserve.db"
    store_with(database, "kept")
    before = database.read_bytes()
    damaged = tmp_path / "damaged.db"
    store_with(damaged, *[f"t{i}" for i in range(200)])
    data = bytearray(damaged.read_bytes())
    page = 4096  # SQLite's default page size
    for start in range(page, len(data), page):  # every b-tree page header after the first
        data[start : start + 8] = b"\xff" * 8
    damaged.write_bytes(bytes(data))
    done = thinserve("restore", "--defaults", "--state-dir", str(state), str(damaged))
    assert done.returncode == 1
    assert f"{damaged} is " in done.stderr and ("damaged" in done.stderr or "SQLite" in done.stderr)
    assert database.read_bytes() == before
    assert not (state / "thinserve.db.before-restore").exists()


def test_restore_refuses_a_newer_schema(tmp_path: Path) -> None:
    state = tmp_path / "state"
    newer = tmp_path / "newer.db"
    store_with(newer, "x")
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    done = thinserve("restore", "--defaults", "--state-dir", str(state), str(newer))
    assert done.returncode == 1
    assert f"schema version {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION}" in done.stderr
    assert not (state / "thinserve.db").exists()


def test_backup_never_overwrites(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store_with(state / "thinserve.db", "a")
    target = tmp_path / "exists.db"
    target.write_bytes(b"keep me")
    done = thinserve("backup", "--defaults", "--state-dir", str(state), str(target))
    assert done.returncode == 1
    assert "exists; give a new file name" in done.stderr
    assert target.read_bytes() == b"keep me"
