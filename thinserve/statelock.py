"""One thinserve per state directory: an exclusive lock on STATE_DIR/lock.

Two servers on one state directory would fight over its database, its
desktops' records and the admin socket, and the second's start would clear
what the first still uses.  So ``serve`` takes this lock before anything
else and holds it until it exits; the kernel lets it go when the process
ends, however it ends, so a crash never leaves a stale lock.  The lock
file holds the pid of the server holding it, for the message that names
it and for ``holder`` (restore refuses while a server runs).

The lock is flock(2): held by the open file, not by the process, so the
desktops thinserve starts (which do not inherit the descriptor) never keep
it, and asking ``holder`` from the holding process sees it held.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "lock"
PID_WIDTH = 20  # the pid, space-padded and newline-ended: one fixed-size write
MAX_LOCK_FILE = 64  # bytes read from the lock file
PID_WAIT = 1.0  # seconds holder() waits for a new holder to write its pid


class StateLocked(Exception):
    """Another thinserve holds the state directory."""

    def __init__(self, state_dir: Path, pid: int) -> None:
        self.state_dir = state_dir
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(
            f"another thinserve ({who}) is running on {state_dir}; "
            "stop it (systemctl stop thinserve) or use --state-dir"
        )


class StateLock:
    """The held lock; ``release`` (or the process ending) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def lock_path(state_dir: Path) -> Path:
    return state_dir / LOCK_NAME


def acquire(state_dir: Path) -> StateLock:
    """Take the lock, making ``state_dir`` if missing; StateLocked if held.

    A new state directory is 0700, or 0711 as root: desktops running as
    other accounts pass through it to their sockets in the runtime
    directory inside it (``serve --state-dir``); its files stay private.
    """
    state_dir.mkdir(mode=0o711 if os.geteuid() == 0 else 0o700, parents=True, exist_ok=True)
    path = lock_path(state_dir)
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateLocked(state_dir, holder(state_dir) or 0) from None
    except BaseException:
        os.close(fd)
        raise
    os.pwrite(fd, f"{os.getpid():<{PID_WIDTH - 1}}\n".encode(), 0)
    os.ftruncate(fd, PID_WIDTH)  # a longer leftover from elsewhere goes
    return StateLock(path, fd)


def holder(state_dir: Path) -> int | None:
    """The pid of the thinserve holding ``state_dir``, None when none does.

    0 when it is held but its pid cannot be read (a lock file written by
    something else).
    """
    path = lock_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_in(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    """The lock file, opened for writing; never through a symbolic link."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot open the state lock {path}: {exc.strerror}; check the "
            "state directory's owner and mode, or use --state-dir",
        ) from None


def _pid_in(fd: int) -> int:
    """The pid the holder wrote; it writes it just after taking the lock, so wait a moment."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        text = os.pread(fd, MAX_LOCK_FILE, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return 0
        time.sleep(0.01)
