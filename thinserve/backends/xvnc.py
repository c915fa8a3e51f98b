"""Local desktops: a TigerVNC Xvnc session per desktop, started by thinserve.

``XvncBackend`` implements the desktop ``Backend`` protocol: the shared-PC
mode.  Each configured desktop is one ``XvncSession`` (xvnc_session.py),
started on demand, and may name the Unix user it runs as (thinserve must
then be root).  Xvnc and the session both run as that user, so one user's
session cannot read another's: each session has its own 0700 directories,
its own X cookie and its own XDG_RUNTIME_DIR.  ``LocalXvncDesktop``
(local_xvnc.py) is one always-on session as thinserve's own user, for the
service's ``[[local_desktop]]`` entries.

Directories (``XvncOptions.runtime_dir``, default ``/run/thinserve-sessions``
as root, else ``sessions/`` in thinserve's runtime directory)::

    <base>/                 0711 (root) or 0700: thinserve's
    <base>/sockets/<name>/  0700, owned by whoever runs Xvnc: vnc.sock (0600)
    <base>/sessions/<name>/ 0700, owned by the session's user:
        Xauthority          the display's MIT-MAGIC-COOKIE-1 (0600)
        runtime/            the session's XDG_RUNTIME_DIR
        exit-status         the session program's exit status, once it ended
    <base>/logs/<name>/     0700, thinserve's: xvnc.log, session.log (0600)

Both per-desktop directories are removed and made afresh, as root and before
they are handed to the user, at every start (rundirs.py); so a session never
inherits its predecessor's files and thinserve never follows a link a user
planted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .accounts import Account, account_for
from .base import BackendError, StatusListener, UnitBackend
from .local_xvnc import LocalXvncDesktop
from .processes import ProcessReactor, global_reactor
from .records import RecordStore
from .rundirs import runtime_dir, xauthority_entry
from .xvnc_config import XvncDesktopConfig, XvncOptions
from .xvnc_session import XvncSession

__all__ = [
    "Account",
    "LocalXvncDesktop",
    "XvncBackend",
    "XvncDesktopConfig",
    "XvncOptions",
    "XvncSession",
    "runtime_dir",
    "xauthority_entry",
]


class XvncBackend(UnitBackend[XvncSession]):
    """The desktops of one or more XvncDesktopConfig, each its own Xvnc session."""

    name = "xvnc"
    kind = "xvnc"

    def __init__(
        self,
        desktops: Iterable[XvncDesktopConfig],
        on_status: StatusListener | None = None,
        options: XvncOptions | None = None,
        reactor: Any = None,  # provides IReactorProcess: a zope interface mypy cannot check
        records: RecordStore | None = None,
    ) -> None:
        super().__init__(on_status, records)
        self.options = options or XvncOptions()
        self.reactor: ProcessReactor = reactor or global_reactor()
        for config in desktops:
            if config.name in self.sessions:
                raise BackendError(f"two xvnc desktops are named {config.name!r}")
            account_for(config.name, config.user)  # a missing user or root is a start-up error
            self.sessions[config.name] = XvncSession(
                config, self.options, self._report, self.reactor, records
            )

    def use_runtime_dir(self, directory: Path) -> None:
        """Sessions' directories under ``directory`` (thinserve's runtime directory)
        unless ``runtime_dir`` is set, or thinserve is root (sessions_dir())."""
        if self.options.runtime_dir is not None or os.geteuid() == 0:
            return
        self.options = replace(self.options, runtime_dir=directory)
        for session in self.sessions.values():
            session.options = self.options

    @property
    def sessions(self) -> dict[str, XvncSession]:
        return self.units

    def session(self, desktop: str) -> XvncSession:
        return self.unit(desktop)

    def stop_on_release(self, desktop: str) -> bool:
        """True when the desktop ends once nobody uses it (keep_after_logout off)."""
        return not self.session(desktop).config.keep_after_logout
