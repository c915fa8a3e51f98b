"""Where thinserve keeps its files when the configuration does not say.

Two directories: the state directory (the database, the generated TLS
certificate, the records of running desktops, the state lock) survives a
restart; the runtime directory (the admin socket, local desktops' sockets,
session directories) does not.  Both follow systemd's StateDirectory= and
RuntimeDirectory= when the service sets them, the system places as root, and
the XDG base directories for anyone else.  See docs/configuration.md.

This module reads only the environment, so the admin commands can find the
socket without importing the server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSTEM_CONFIG = Path("/etc/thinserve/thinserve.toml")
SYSTEM_STATE_DIR = Path("/var/lib/thinserve")
SYSTEM_RUNTIME_DIR = Path("/run/thinserve")
DATABASE_NAME = "thinserve.db"
ADMIN_SOCKET_NAME = "admin.sock"
RUN_SUBDIR = "run"  # the runtime directory inside a state directory given with --state-dir


def default_state_dir(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """$STATE_DIRECTORY, else /var/lib/thinserve as root, else
    $XDG_DATA_HOME/thinserve (~/.local/share/thinserve)."""
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    systemd = _systemd_dir(environ, "STATE_DIRECTORY")
    if systemd is not None:
        return systemd
    if euid == 0:
        return SYSTEM_STATE_DIR
    base = environ.get("XDG_DATA_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path(environ.get("HOME", "~")) / ".local/share"
    return root.expanduser() / "thinserve"


def default_runtime_dir(
    environ: Mapping[str, str] | None = None, euid: int | None = None, uid: int | None = None
) -> Path:
    """$RUNTIME_DIRECTORY, else /run/thinserve as root, else
    $XDG_RUNTIME_DIR/thinserve, else /tmp/thinserve-UID."""
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    uid = os.getuid() if uid is None else uid
    systemd = _systemd_dir(environ, "RUNTIME_DIRECTORY")
    if systemd is not None:
        return systemd
    if euid == 0:
        return SYSTEM_RUNTIME_DIR
    base = environ.get("XDG_RUNTIME_DIR") or ""
    if os.path.isabs(base):
        return Path(base) / "thinserve"
    return Path(f"/tmp/thinserve-{uid}")


def runtime_dir_in(state_dir: Path) -> Path:
    """The runtime directory that goes with a state directory given on the command line."""
    return state_dir / RUN_SUBDIR


def _systemd_dir(environ: Mapping[str, str], name: str) -> Path | None:
    """The first of the directories systemd lists in ``name`` (colon-separated)."""
    first = (environ.get(name) or "").split(":")[0]
    return Path(first) if os.path.isabs(first) else None
