"""thinserve's admin interface: a local JSON API and the CLI commands using it.

The running server answers HTTP on a Unix socket (``thinserve.admin.api``
starts it: ``handlers`` say what each call does, ``http`` is the HTTP/JSON
layer, ``socket`` the socket and its peer check); the ``thinserve`` admin
commands (``thinserve.admin.commands``) talk to it through a small blocking
client (``thinserve.admin.client``).  Who may use the socket is decided by
the file system: the socket is mode 0600 inside a 0700 directory.  See
docs/admin.md.

This module stays free of Twisted imports so the CLI starts quickly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

API_PREFIX = "/api/v1"
SOCKET_NAME = "admin.sock"
SOCKET_ENV = "THINSERVE_ADMIN_SOCKET"
SYSTEM_SOCKET = Path("/run/thinserve") / SOCKET_NAME


def runtime_socket_path(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """The socket in thinserve's runtime directory for this user.

    The same directory as ``thinserve.backends.xvnc.runtime_dir()``, computed
    without creating it: $XDG_RUNTIME_DIR/thinserve, /run/thinserve for root,
    else /tmp/thinserve-UID.
    """
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if uid is None else uid
    real_uid = os.getuid() if uid is None else uid
    base = environ.get("XDG_RUNTIME_DIR") or ("/run" if euid == 0 else "/tmp")
    name = "thinserve" if base != "/tmp" else f"thinserve-{real_uid}"
    return Path(base) / name / SOCKET_NAME


def client_socket_path(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """Where the CLI looks for the server when not told (--socket).

    $THINSERVE_ADMIN_SOCKET if set; else this user's runtime socket; else the
    system service's /run/thinserve/admin.sock when only that one exists (so
    a user who may not use it is told so, rather than that nothing runs).
    """
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
