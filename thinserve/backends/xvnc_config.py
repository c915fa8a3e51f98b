"""The settings of Xvnc desktops, checked when they are made."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
USER_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\$?")
GEOMETRY_PATTERN = re.compile(r"(\d{2,5})x(\d{2,5})")
DEPTHS = (16, 24, 32)


@dataclass(frozen=True)
class XvncDesktopConfig:
    """One Xvnc desktop session.

    ``user``: the Unix user the session (and, with ``xvnc_as_user``, Xvnc
    itself) runs as; None runs it as thinserve's own user.  ``command`` is
    run with ``/bin/sh -c`` once the X server is up (None: the first of
    x-session-manager, startxfce4, xterm found).  When the command ends the
    session is over and the desktop stops.  ``keep_after_logout``: False
    stops the session as soon as nobody uses the desktop any more (the
    desktop manager asks ``stop_on_release``).
    """

    name: str
    user: str | None = None
    geometry: str = "1280x800"
    depth: int = 24
    command: str | None = None
    keep_after_logout: bool = True
    xvnc_as_user: bool = True
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"desktop name {self.name!r}: use letters, digits, '.', '_', '-'")
        if self.user is not None and not USER_PATTERN.fullmatch(self.user):
            raise ValueError(f"desktop {self.name}: {self.user!r} is not a Unix user name")
        if not GEOMETRY_PATTERN.fullmatch(self.geometry):
            raise ValueError(f"desktop {self.name}: geometry {self.geometry!r}: write 1280x800")
        if self.depth not in DEPTHS:
            raise ValueError(f"desktop {self.name}: depth must be one of {DEPTHS}")
        if self.command is not None and not self.command.strip():
            raise ValueError(f"desktop {self.name}: command must not be empty")


@dataclass(frozen=True)
class XvncOptions:
    """Settings shared by every session of one XvncBackend."""

    runtime_dir: Path | None = None  # None: sessions_dir()
    xvnc_binary: str = "Xvnc"
    start_timeout: float = 20.0  # Xvnc up and answering RFB
    stop_timeout: float = 10.0  # the session's grace after SIGTERM on a graceful stop

    def __post_init__(self) -> None:
        if self.start_timeout <= 0 or self.stop_timeout < 0:
            raise ValueError("xvnc: start_timeout > 0 and stop_timeout >= 0")
