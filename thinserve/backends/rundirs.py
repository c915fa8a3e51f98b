"""Private runtime directories and files: where sessions keep sockets and cookies.

Directories are made by thinserve and only then handed to a session's user,
so thinserve never follows a link a user planted; a session's directories
are emptied and made afresh at every start.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import struct
from pathlib import Path

from ..paths import default_runtime_dir
from .accounts import Account, can_switch_users
from .base import BackendError

XAUTH_FAMILY_WILD = 0xFFFF
PASS = stat.S_IXGRP | stat.S_IXOTH  # others may pass through, not list
COOKIE = "MIT-MAGIC-COOKIE-1"


def runtime_dir() -> Path:
    """thinserve's default runtime directory (thinserve.paths), made private."""
    path = default_runtime_dir()
    mode = passable_mode()  # local desktops' users pass through to their sessions
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def make_passable(path: Path) -> Path:
    """``path`` (made if missing), passable for sessions' users when sessions
    run as other users: search bits a mode like 0700 lacks are added, none
    taken away.  A directory thinserve does not own is left as it is (a
    session refused its socket there names each directory's mode)."""
    path.mkdir(mode=passable_mode(), parents=True, exist_ok=True)
    if can_switch_users():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & PASS != PASS:
            with contextlib.suppress(PermissionError):
                os.chmod(path, mode | PASS)
    return path


def passable_mode() -> int:
    """thinserve's directories: others may pass through (not list them) when
    sessions run as other users; else only thinserve's user enters."""
    return 0o711 if can_switch_users() else 0o700


def sessions_dir() -> Path:
    """Where XvncBackend keeps its sessions' directories (not created here)."""
    if os.geteuid() == 0:
        return Path("/run/thinserve-sessions")
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        return Path(base) / "thinserve-sessions"
    return Path(f"/tmp/thinserve-sessions-{os.getuid()}")


def make_base(base: Path) -> None:
    """thinserve's directory: others may pass through (when switching users) but not list it."""
    mode = passable_mode()
    for path in (base, base / "sockets", base / "sessions"):
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        st = path.lstat()
        if st.st_uid != os.geteuid() or not os.path.isdir(path) or path.is_symlink():
            raise BackendError(f"{path} must be a directory owned by thinserve's user")
        os.chmod(path, mode)


def fresh_dir(path: Path, owner: Account | None) -> None:
    """``path`` emptied and made again: 0700, owned by ``owner`` (None: thinserve)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    if owner is not None:
        give(path, owner)


def describe_modes(path: Path, levels: int = 4) -> str:
    """The mode and owner of ``path`` and the directories above it (``levels``
    in all), for a refused socket or file: which of them said no."""
    parts = []
    for step in [path, *path.parents][:levels]:
        try:
            st = step.lstat()
        except OSError as exc:
            parts.append(f"{step} {exc.strerror}")
            continue
        parts.append(f"{step} {st.st_mode & 0o7777:04o} {_name(st.st_uid)}:{st.st_gid}")
    return ", ".join(reversed(parts))


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def write_private(path: Path, data: bytes) -> None:
    """A new file only thinserve's user reads (0600); never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def give(path: Path, account: Account) -> None:
    if not account.is_me:
        os.chown(path, account.uid, account.gid, follow_symlinks=False)


def xauthority_entry(cookie: bytes) -> bytes:
    """One Xauthority record: any address, any display, MIT-MAGIC-COOKIE-1."""

    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    return struct.pack(">H", XAUTH_FAMILY_WILD) + b"".join(
        counted(part) for part in (b"", b"", COOKIE.encode(), cookie)
    )
