"""thinserve's admin interface: a local JSON API and the CLI commands using it.

The running server answers HTTP on a Unix socket (``thinserve.admin.api``
starts it: ``handlers`` say what each call does, ``http`` is the HTTP/JSON
layer, ``socket`` the socket and its peer check); the ``thinserve`` admin
commands (``thinserve.admin.commands``) talk to it through a small blocking
client (``thinserve.admin.client``).  Who may use the socket is decided by
the file system: the socket is mode 0600, in a directory only thinserve's
user may write.  See docs/admin.md.

This module stays free of Twisted imports so the CLI starts quickly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..paths import ADMIN_SOCKET_NAME, SYSTEM_RUNTIME_DIR, default_runtime_dir, runtime_dir_in

API_PREFIX = "/api/v1"
SOCKET_NAME = ADMIN_SOCKET_NAME
SOCKET_ENV = "THINSERVE_ADMIN_SOCKET"
SYSTEM_SOCKET = SYSTEM_RUNTIME_DIR / SOCKET_NAME


def runtime_socket_path(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """The socket in thinserve's default runtime directory for this user
    (thinserve.paths): $RUNTIME_DIRECTORY, /run/thinserve for root,
    $XDG_RUNTIME_DIR/thinserve, else /tmp/thinserve-UID."""
    return default_runtime_dir(environ, uid, uid) / SOCKET_NAME


def client_socket_path(
    environ: Mapping[str, str] | None = None,
    uid: int | None = None,
    state_dir: str | Path | None = None,
) -> Path:
    """Where the CLI looks for the server when not told (--socket).

    STATE_DIR/run/admin.sock for --state-dir; else $THINSERVE_ADMIN_SOCKET if
    set; else this user's runtime socket; else the system service's
    /run/thinserve/admin.sock when only that one exists (so a user who may
    not use it is told so, rather than that nothing runs).
    """
    if state_dir is not None:
        return runtime_dir_in(Path(state_dir).absolute()) / SOCKET_NAME
    environ = os.environ if environ is None else environ
    if environ.get(SOCKET_ENV):
        return Path(environ[SOCKET_ENV])
    own = runtime_socket_path(environ, uid)
    if not _may_exist(own) and _may_exist(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return own


def _may_exist(path: Path) -> bool:
    """False only when ``path`` surely does not exist (a closed directory may hide it)."""
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True
