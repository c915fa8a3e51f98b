"""``thinserve backup FILE`` and ``thinserve restore FILE``: the database, safely.

A backup is taken with SQLite's online backup API: one consistent copy,
even while the server runs and writes (the database is in WAL mode, so the
copy's read never blocks the server).  The copy is written beside FILE,
checked (``PRAGMA integrity_check`` and a schema version this thinserve
knows, thinserve.store.migrations), made a single self-contained file
(journal mode DELETE) and only then renamed to FILE.

A restore refuses while a server holds the state directory (the state lock,
thinserve.statelock) and holds that lock itself while it works, so no server
starts half-way.  It checks FILE first, keeps the database it replaces as
thinserve.db.before-restore, and swaps the new one in with one rename: at
every moment the database is either the old one or the new one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import statelock
from ..config import Config, ConfigError
from ..store.location import describe_location, is_postgres, sqlite_path
from ..store.migrations import SCHEMA_VERSION

BEFORE_RESTORE = ".before-restore"
PARTIAL = ".partial"
MAX_PROBLEMS = 5  # integrity_check lines quoted in an error


class BackupError(Exception):
    """A backup or restore that did not happen: why, and what to do."""


def run_backup(args: argparse.Namespace) -> int:
    """``thinserve backup FILE``."""
    return _run(lambda config: backup(config, Path(args.file)), args)


def run_restore(args: argparse.Namespace) -> int:
    """``thinserve restore FILE``."""
    return _run(lambda config: restore(config, Path(args.file)), args)


def _run(operation: Callable[[Config], str], args: argparse.Namespace) -> int:
    from ..cli import config_from

    try:
        print(operation(config_from(args)))
    except (BackupError, ConfigError, statelock.StateLocked) as exc:
        print(f"thinserve: {exc}", file=sys.stderr)
        return 1
    return 0


# -- backup -----------------------------------------------------------------------------------
def backup(config: Config, target: Path) -> str:
    """Copy the database to ``target`` (which must not exist); what was done."""
    database = database_of(config)
    if not database.exists():
        raise BackupError(f"there is no database at {database}: nothing to back up yet")
    if target.exists():
        raise BackupError(f"{target} exists; give a new file name (backups never overwrite)")
    with _staged(target.with_name(target.name + PARTIAL)) as partial:
        copy_database(database, partial)
        version = verify(partial)
        os.replace(partial, target)
    return f"backed up {database} to {target} (schema version {version})"


def copy_database(source: Path, target: Path) -> None:
    """One consistent copy of ``source`` in ``target`` (mode 0600: it holds password
    hashes and terminal keys), as a single file without a WAL."""
    fd = _create_private(target)
    os.close(fd)
    try:
        with _connect(source) as src, _connect(target) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        _fsync(target)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source}: {exc}") from None


def _create_private(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} exists (left by an interrupted run?); remove it") from None
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror}") from None


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection closed on leaving (sqlite3's own context manager only commits)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- checks -----------------------------------------------------------------------------------
def verify(path: Path) -> int:
    """Check that ``path`` is a sound thinserve database; its schema version."""
    if not path.is_file():
        raise BackupError(f"{path} is not a file")
    try:
        with _connect_read_only(path) as db:
            problems = [str(row[0]) for row in db.execute("PRAGMA integrity_check")]
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable SQLite database ({exc})") from None
    if problems != ["ok"]:
        shown = "; ".join(problems[:MAX_PROBLEMS])
        raise BackupError(f"{path} is damaged (integrity_check: {shown}); use another backup")
    if version < 1:
        raise BackupError(f"{path} is not a thinserve database (schema version {version})")
    if version > SCHEMA_VERSION:
        raise BackupError(
            f"{path} has schema version {version}, newer than the {SCHEMA_VERSION} this "
            "thinserve knows: restore it with the thinserve version that made it"
        )
    return version


@contextlib.contextmanager
def _connect_read_only(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def database_of(config: Config) -> Path:
    """The database file the configuration names; a PostgreSQL database is refused
    (its own tools back it up)."""
    database = config.database or str(config.state_dir / "thinserve.db")
    if is_postgres(database):
        raise BackupError(
            f"the configured database {describe_location(database)} is on PostgreSQL: "
            "back it up with pg_dump and restore it with pg_restore (docs/install.md); "
            "thinserve backup and restore copy an SQLite file"
        )
    database = sqlite_path(database)
    if database == ":memory:":
        raise BackupError("the configured database is in memory: there is nothing on disk")
    return Path(database)


# -- restore ----------------------------------------------------------------------------------
def restore(config: Config, source: Path) -> str:
    """Replace the database with ``source``; refuses while a server holds the state."""
    database = database_of(config)
    refuse_if_running(config.state_dir)
    version = verify(source)
    with _holding(config.state_dir):
        owner = _owner_of(database)
        incoming = database.with_name(database.name + ".restoring")
        incoming.unlink(missing_ok=True)
        with _staged(incoming):
            copy_database(source, incoming)
            verify(incoming)
            _match_owner(incoming, owner)
            kept = _keep_old(database)
            os.replace(incoming, database)
    _fsync(database.parent)
    before = f"; the previous one is {kept}" if kept else ""
    return f"restored {source} (schema version {version}) to {database}{before}"


def refuse_if_running(state_dir: Path) -> None:
    """BackupError naming the pid when a server holds ``state_dir``."""
    pid = statelock.holder(state_dir)
    if pid is not None:
        who = f"pid {pid}" if pid else "a process"
        raise BackupError(
            f"thinserve ({who}) is running on {state_dir}: stop it first "
            "(systemctl stop thinserve), restore, then start it again"
        )


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A copy is made at ``path`` and then renamed into place; if anything fails
    on the way, the half-made copy goes."""
    try:
        yield path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _holding(state_dir: Path) -> Iterator[None]:
    """The state lock for the restore's duration, so no server starts meanwhile.

    A lock file made here gets the state directory's owner, so the service's
    user can still take it afterwards when the restore ran as root."""
    fresh = not statelock.lock_path(state_dir).exists()
    with statelock.acquire(state_dir):
        owner = _owner_of(state_dir)
        if fresh and owner is not None:
            _match_owner(statelock.lock_path(state_dir), (owner[0], owner[1], 0o600))
        yield


def _owner_of(path: Path) -> tuple[int, int, int] | None:
    """uid, gid and mode of ``path`` (or of its directory when it does not exist)."""
    for candidate in (path, path.parent):
        with contextlib.suppress(FileNotFoundError):
            st = candidate.stat()
            mode = st.st_mode & 0o777 if candidate is path else 0o600
            return st.st_uid, st.st_gid, mode
    return None


def _match_owner(path: Path, owner: tuple[int, int, int] | None) -> None:
    if owner is None:
        return
    uid, gid, mode = owner
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    os.chmod(path, mode or 0o600)


def _keep_old(database: Path) -> Path | None:
    """Fold the old database's WAL into it and keep it as thinserve.db.before-restore.

    Its -wal and -shm files go: left beside the new database, SQLite could
    replay the old database's pages into it."""
    if not database.exists():
        return None
    try:
        with _connect(database) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise BackupError(
            f"cannot close the old database {database} cleanly ({exc}); move it away "
            "yourself, then restore again"
        ) from None
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    kept = database.with_name(database.name + BEFORE_RESTORE)
    kept.unlink(missing_ok=True)
    os.link(database, kept)
    return kept
