"""The always-on desktop of a ``[[local_desktop]]`` entry.

An ``XvncSession`` as thinserve's own user, started at once and started
again a moment after it ends (a crash, or the session program ending), for
as long as thinserve runs.  Its socket lives in thinserve's runtime
directory; the service connects to ``address`` and shows the desktop as soon
as it answers.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from ..desktop_state import DesktopState
from .accounts import local_desktop_account
from .base import BackendError
from .processes import global_reactor
from .records import RecordStore
from .rundirs import make_passable, runtime_dir
from .xvnc_config import XvncDesktopConfig, XvncOptions
from .xvnc_session import XvncSession

if TYPE_CHECKING:
    from ..config import LocalDesktopConfig

log = logging.getLogger(__name__)

RESTART_DELAY = 2.0
MAX_RESTART_DELAY = 60.0  # a desktop that keeps failing to start is tried less often


class XvncMissing(RuntimeError):
    pass


class LocalXvncDesktop:
    """One Xvnc desktop with its session program, kept running."""

    def __init__(
        self,
        config: LocalDesktopConfig,
        reactor: Any = None,
        runtime: Path | None = None,
        records: RecordStore | None = None,
    ) -> None:
        """``runtime``: thinserve's runtime directory (None: rundirs.runtime_dir());
        ``records``: where the running session is recorded, so that it outlives
        thinserve (None: it ends with thinserve)."""
        # ``reactor`` provides IReactorProcess: a zope interface mypy cannot check.
        self.config = config
        command = config.command or None  # empty: the first session program found
        desktop = XvncDesktopConfig(
            config.name, user=config.user, geometry=config.geometry, command=command
        )
        # The session's user passes through thinserve's runtime directory to its
        # socket: systemd or an earlier command may have made it 0700.
        base = make_passable(runtime) if runtime is not None else runtime_dir()
        options = XvncOptions(runtime_dir=base / "local")
        self.session = XvncSession(
            desktop, options, self._status, reactor or global_reactor(), records
        )
        self._down = asyncio.Event()
        self._tried = asyncio.Event()  # the first start is over, for better or worse
        self._keeper: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.session.vnc_socket}"

    def start(self) -> Deferred[None]:
        """Keep the desktop running.  The Deferred fires once the first start is
        over, whether it worked or not (a failure is logged and retried), so
        whoever links to the desktop next finds its socket there."""
        if shutil.which("Xvnc") is None:
            raise XvncMissing(
                "Xvnc is not installed: apt-get install tigervnc-standalone-server "
                "(or configure [[desktop]] entries instead of local desktops)"
            )
        local_desktop_account(self.config.name, self.config.user)  # never root; it must exist
        self._keeper = asyncio.ensure_future(self._keep_running())
        return Deferred.fromFuture(asyncio.ensure_future(self._first_start()))

    async def _first_start(self) -> None:
        await self._tried.wait()

    def stop(self) -> Deferred[None]:
        """End the desktop for good; the Deferred fires once its processes are gone."""
        if self._keeper is not None:
            self._keeper.cancel()
        return Deferred.fromFuture(asyncio.ensure_future(self.session.stop(force=True)))

    def release(self) -> Deferred[None]:
        """Let go of the desktop, leaving it running for the next thinserve to take
        over (lifecycle.py); without a record it is stopped instead."""
        if self._keeper is not None:
            self._keeper.cancel()
        return Deferred.fromFuture(asyncio.ensure_future(self.session.release()))

    async def _keep_running(self) -> None:
        delay = RESTART_DELAY
        while True:
            self._down.clear()
            try:
                await self.session.ensure_running()
                delay = RESTART_DELAY
            except BackendError:
                pass  # reported as CRASHED, which sets _down
            finally:
                self._tried.set()
            await self._down.wait()
            crashed = self.session.status is DesktopState.CRASHED
            log.log(
                logging.WARNING if crashed else logging.INFO,
                "local desktop %s: %s; starting it again in %.0f s",
                self.config.name,
                self.session.detail,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_RESTART_DELAY)

    def _status(self, desktop: str, status: DesktopState, detail: str) -> None:
        if status in (DesktopState.CRASHED, DesktopState.STOPPED):
            self._down.set()
