"""What a configured desktop needs before it can start, checked before trying.

A QEMU desktop's template, kernel and initrd must be readable files and its
QEMU program installed; an Xvnc desktop's Unix user must exist (and
thinserve must be able to switch to it).  Each check returns "" when all is
well, else one sentence naming the problem and its fix.  The desktop
manager runs them at start (one warning each, the desktop shown failed at
once) and again before each retry, so a fixed problem needs no restart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..backends.base import BackendError, ConsoleAddress, DesktopInfo, StatusListener
from ..backends.qemu import QemuDesktopConfig
from ..backends.xvnc import XvncDesktopConfig

Check = Callable[[], str]


def qemu_problem(config: QemuDesktopConfig) -> str:
    """Why ``config``'s desktop cannot start, or ""."""
    table = f"[[qemu_desktop]] {config.name}"
    for key, path in (
        ("template", config.template),
        ("kernel", config.kernel),
        ("initrd", config.initrd),
    ):
        if path is not None:
            problem = _file_problem(Path(path))
            if problem:
                return f"{key} {path} {problem}: put the file there, or fix {key} in {table}"
    if shutil.which(config.qemu_binary) is None:
        return (
            f"{config.qemu_binary} is not installed: apt-get install qemu-system-x86, "
            f"or set qemu_binary in {table}"
        )
    return ""


def xvnc_problem(config: XvncDesktopConfig) -> str:
    """Why ``config``'s session cannot start, or "": its user must exist, and
    thinserve must be able to run a session as that user."""
    from ..backends.accounts import account_for

    try:
        account_for(config.name, config.user)
    except BackendError as exc:
        return f"{exc} ([[xvnc_desktop]] {config.name})"
    return ""


def _file_problem(path: Path) -> str:
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if not os.access(path, os.R_OK):
        return "cannot be read by thinserve's user"
    return ""


class Unstartable:
    """The backend of desktops whose backend could not even be made (an Xvnc
    desktop whose user does not exist): every start fails with the reason."""

    def __init__(self, name: str, reasons: dict[str, str]) -> None:
        self.name = name
        self.reasons = reasons
        self.on_status: StatusListener | None = None

    async def list_desktops(self) -> list[DesktopInfo]:
        return []

    async def ensure_running(self, desktop: str) -> ConsoleAddress:
        raise BackendError(self.reasons.get(desktop, f"desktop {desktop} cannot start"))

    async def stop(self, desktop: str, force: bool = False) -> None:
        return None

    async def reset(self, desktop: str) -> None:
        return None

    def stop_on_release(self, desktop: str) -> bool:
        return False

    async def close(self) -> None:
        return None
