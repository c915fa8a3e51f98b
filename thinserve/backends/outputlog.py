"""A desktop program's output, in a file of its private directory instead of a pipe.

A program writing to a pipe dies (SIGPIPE) once nobody reads the other
end, so a desktop whose output went to thinserve would not outlive it.
Its output goes to a file opened by thinserve (never through a link) and
handed to it as stdout and stderr.  The file is kept bounded while
thinserve runs (``trim``: past MAX_BYTES its last KEEP_BYTES move to
``<name>.old`` and it starts again empty); the program's last words, for
error messages, are read from its end.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path

MAX_BYTES = 1 << 20
KEEP_BYTES = 64 << 10
TAIL_BYTES = 8 << 10  # enough for the last lines of any error
X_LOG_MARK = re.compile(r"^\s*\([A-Z!+*-]{2}\)")  # the X server's (EE), (II), (WW), (**)


def open_for_output(path: Path) -> int:
    """A descriptor appending to ``path`` (0600, made if missing, never a link)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o600)


def devnull() -> int:
    """A descriptor for a program's stdin: nothing to read, nothing tied to thinserve."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _tail(path: Path, size: int) -> bytes:
    """The last ``size`` bytes of the regular file ``path`` (b"" when there is none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b""
        file.seek(max(st.st_size - size, 0))
        return file.read(size)


def last_line(path: Path) -> str:
    """The program's last non-empty line (X log marks removed), or "no error message"."""
    for candidate in (path, path.with_name(path.name + ".old")):
        text = _tail(candidate, TAIL_BYTES).decode(errors="replace")
        for line in reversed(text.splitlines()):
            cleaned = X_LOG_MARK.sub("", line).strip()
            if cleaned:
                return cleaned
    return "no error message"


def trim(path: Path) -> None:
    """Past MAX_BYTES: keep the last KEEP_BYTES in ``<name>.old`` and empty the file.

    The program appends (O_APPEND), so its next line goes to the new end.
    """
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return
    if st.st_size <= MAX_BYTES:
        return
    kept = _tail(path, KEEP_BYTES)
    old = path.with_name(path.name + ".old")
    with contextlib.suppress(OSError):
        old.unlink(missing_ok=True)
        fd = os.open(old, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(kept)
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
