"""What every process-backed desktop shares: its status, and starting once.

Concurrent ``ensure_running`` calls share one start; cancelling one waiter
does not cancel the start the others wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from .base import BackendError, ConsoleAddress, DesktopInfo, DesktopStatus, StatusListener


class DesktopLifecycle:
    """Status and start-once for a desktop served on a VNC Unix socket."""

    backend = "process"  # the backend's name, in DesktopInfo
    config: Any  # has .name
    run: Any

    def __init__(self, report: StatusListener) -> None:
        self.report = report
        self.status = DesktopStatus.STOPPED
        self.detail = ""
        self.run = None
        self._lock = asyncio.Lock()
        self._start_task: asyncio.Task[None] | None = None

    @property
    def vnc_socket(self) -> Path:
        raise NotImplementedError

    @property
    def console(self) -> ConsoleAddress:
        return ConsoleAddress(endpoint=f"unix:path={self.vnc_socket}")

    def info(self) -> DesktopInfo:
        return DesktopInfo(self.config.name, self.backend, self.status, self.detail)

    async def _start(self) -> None:
        raise NotImplementedError

    def _set(self, status: DesktopStatus, detail: str) -> None:
        changed = (status, detail) != (self.status, self.detail)
        self.status, self.detail = status, detail
        if changed:
            self.report(self.config.name, status, detail)

    async def ensure_running(self) -> ConsoleAddress:
        if self.status is DesktopStatus.RUNNING and self.run is not None:
            return self.console
        if self._start_task is None or self._start_task.done():
            self._start_task = asyncio.ensure_future(self._start())
        task = self._start_task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise BackendError(
                    f"desktop {self.config.name} was stopped while starting"
                ) from None
            raise
        return self.console


async def rfb_greets(path: Path) -> bool:
    """True once the Unix socket at ``path`` accepts and sends an RFB version."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    try:
        greeting = await asyncio.wait_for(reader.readexactly(12), 5.0)
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return greeting.startswith(b"RFB ")
