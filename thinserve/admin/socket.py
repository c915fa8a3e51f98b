"""Where the admin API listens: a Unix socket only thinserve's user can open.

Whoever can open the socket is an administrator: the socket is mode 0600
in a directory only thinserve's user may write, so only that user and root
get in; the
API also checks the peer's uid (SO_PEERCRED), and that user is the actor
the audit log names, e.g. "admin:root".
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import stat
import struct
from pathlib import Path
from typing import Protocol, runtime_checkable

from twisted.internet.interfaces import IListeningPort
from twisted.web import server

from . import SOCKET_NAME
from .errors import ApiError
from .principal import Principal, socket_principal

log = logging.getLogger("thinserve.admin.api")  # one name for all the admin API's lines

PERMISSION_HINT = "run as the user running thinserve, or as root"


class AdminSocketError(RuntimeError):
    """The admin socket cannot be created; the message says why."""


class UnixReactor(Protocol):
    """The reactor's IReactorUNIX, as mypy can read it."""

    def listenUNIX(
        self, _address: str, _factory: server.Site, /, *, mode: int = ...
    ) -> IListeningPort: ...


@runtime_checkable
class _SocketTransport(Protocol):
    def getHandle(self) -> socket.socket: ...


def peer_principal(request: server.Request) -> Principal:
    """The Unix user at the other end of the socket, as an administrator."""
    return socket_principal(peer_actor(request))


def peer_actor(request: server.Request) -> str:
    """ "admin:USER" for the Unix user at the other end of the socket.

    Only thinserve's own user and root are let in (the socket's mode says the
    same; this holds even if someone loosens it).
    """
    uid = _peer_uid(request.channel.transport)
    if uid is None:
        raise ApiError(403, "the admin API answers only on its Unix socket", "")
    if uid not in (0, os.geteuid()):
        raise ApiError(403, f"uid {uid} may not administer thinserve", PERMISSION_HINT)
    try:
        return "admin:" + pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"admin:uid-{uid}"


def _peer_uid(transport: object) -> int | None:
    """The uid of the process at the other end of a Unix socket; None elsewhere."""
    if not isinstance(transport, _SocketTransport):
        return None
    size = struct.calcsize("3i")
    try:
        creds = transport.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def socket_path(configured: str | None) -> Path | None:
    """Where to listen: the configured path, "" for nowhere, None for the default."""
    if configured == "":
        return None
    if configured is not None:
        return Path(configured)
    from ..paths import default_runtime_dir

    return default_runtime_dir() / SOCKET_NAME


def listen(reactor: UnixReactor, path: Path, site: server.Site) -> IListeningPort:
    """Listen on ``path``: mode 0600, in a directory made 0700 if missing (the
    runtime directory may be 0711 or 0755, for desktops' sockets beside it:
    the socket's own mode keeps others out).

    A socket file left by a thinserve that died is replaced; a live one is
    not (AdminSocketError).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.parent.stat().st_mode)
    if mode & 0o022:
        log.warning(
            "admin socket directory %s is mode %o; make it 0755 or stricter so only "
            "thinserve's user can replace the socket",
            path.parent,
            mode,
        )
    _clear_stale(path)
    try:
        return reactor.listenUNIX(str(path), site, mode=0o600)
    except Exception as exc:
        raise AdminSocketError(f"cannot listen on {path}: {exc}") from None


def _clear_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AdminSocketError(f"{path} exists and is not a socket; move it away")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left by a thinserve that is gone
        return
    except OSError as exc:
        raise AdminSocketError(f"cannot check {path}: {exc}") from None
    finally:
        probe.close()
    raise AdminSocketError(f"another thinserve answers at {path}; stop it or set admin_socket")
