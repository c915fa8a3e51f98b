"""What every process-backed desktop shares: its status, starting once, stopping.

Concurrent ``ensure_running`` calls share one start; cancelling one waiter
does not cancel the start the others wait for.  A start runs under the
desktop's lock, and so does a stop: a stop first cancels a start under way,
so the two never overlap.  Subclasses say how to launch (``_launch``), how
to end a run (``_kill``) and what the program said last (``_last_words``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..desktop_state import DesktopState
from .base import BackendError, ConsoleAddress, DesktopInfo, StatusListener

T = TypeVar("T")


def describe_exit(returncode: int) -> str:
    """A process's end in words; ``returncode`` as asyncio's: negative for a signal."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class DesktopLifecycle:
    """Status, start-once and stop for a desktop served on a VNC Unix socket."""

    backend = "process"  # the backend's name, in DesktopInfo
    program = "the desktop's process"  # what runs it, in error messages ("QEMU", "Xvnc")
    start_errors: ClassVar[tuple[type[Exception], ...]] = (OSError,)  # "could not start"
    step_errors: ClassVar[tuple[type[Exception], ...]] = ()  # a start step "could not"
    config: Any  # has .name
    run: Any  # has .ready and .stop_requested

    def __init__(self, report: StatusListener) -> None:
        self.report = report
        self.status = DesktopState.STOPPED
        self.detail = ""
        self.run = None
        self._lock = asyncio.Lock()
        self._start_task: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Task[None]] = set()

    @property
    def vnc_socket(self) -> Path:
        raise NotImplementedError

    @property
    def start_timeout(self) -> float:
        raise NotImplementedError

    @property
    def console(self) -> ConsoleAddress:
        return ConsoleAddress(endpoint=f"unix:path={self.vnc_socket}")

    def info(self) -> DesktopInfo:
        return DesktopInfo(self.config.name, self.backend, self.status, self.detail)

    def _set(self, status: DesktopState, detail: str) -> None:
        changed = (status, detail) != (self.status, self.detail)
        self.status, self.detail = status, detail
        if changed:
            self.report(self.config.name, status, detail)

    # --- what subclasses provide ------------------------------------------------------

    async def _launch(self) -> str:
        """Start a run (``self.run``) and wait until it serves; the RUNNING detail."""
        raise NotImplementedError

    async def _kill(self, run: Any, force: bool) -> None:
        """End ``run`` (gracefully unless ``force``) and wait until it is gone."""
        raise NotImplementedError

    async def _last_words(self, run: Any) -> str:
        """The program's last error line, once it said all it had to say."""
        raise NotImplementedError

    # --- starting ---------------------------------------------------------------------

    async def ensure_running(self) -> ConsoleAddress:
        if self.status is DesktopState.RUNNING and self.run is not None:
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

    async def _start(self) -> None:
        async with self._lock:
            if self.run is not None and self.status is DesktopState.RUNNING:
                return
            await self.wait_ended()
            try:
                summary = await self._launch()
            except (asyncio.CancelledError, BackendError) as exc:
                await self._abort_start(exc)
                raise
            except self.start_errors as exc:
                error = BackendError(
                    f"desktop {self.config.name}: could not start {self.program}: {exc}"
                )
                await self._abort_start(error)
                raise error from exc
            self.run.ready = True
            self._set(DesktopState.RUNNING, summary)

    async def _abort_start(self, exc: BaseException) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.stop_requested = True
            await self._kill(run, force=True)
        if isinstance(exc, BackendError):
            self._set(DesktopState.CRASHED, str(exc))
        else:
            self._set(DesktopState.STOPPED, "start cancelled")

    async def _race_exit(self, run: Any, exited: asyncio.Event, step: Awaitable[T], what: str) -> T:
        """Await ``step`` unless the program exits first or the start times out."""
        step_task = asyncio.ensure_future(step)
        exit_task = asyncio.ensure_future(exited.wait())
        try:
            await asyncio.wait(
                {step_task, exit_task},
                timeout=self.start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            exit_task.cancel()
        if not step_task.done():
            step_task.cancel()
            if exited.is_set():
                words = await self._last_words(run)
                raise BackendError(f"{self.program} exited before it could {what}: {words}")
            raise BackendError(f"{self.program} did not {what} within {self.start_timeout:.0f} s")
        try:
            return step_task.result()
        except self.step_errors as exc:
            raise BackendError(f"{self.program} could not {what}: {exc}") from exc

    # --- ending -----------------------------------------------------------------------

    def _end_later(self, ending: Coroutine[Any, Any, None]) -> None:
        """Finish a run that ended by itself in the background; see ``wait_ended``."""
        task = asyncio.ensure_future(ending)
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def wait_ended(self) -> None:
        """Until the ending of a run that ended by itself is complete."""
        if self._endings:
            await asyncio.gather(*self._endings, return_exceptions=True)

    async def stop(self, force: bool = False) -> None:
        task = self._start_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        async with self._lock:
            await self.wait_ended()
            run = self.run
            if run is None:
                return
            run.stop_requested = True
            self._set(DesktopState.STOPPING, self._stopping_detail(force))
            await self._kill(run, force)
            if self.run is run:  # nothing reported the end on the way
                self.run = None
                self._set(DesktopState.STOPPED, "stopped")

    def _stopping_detail(self, force: bool) -> str:
        return "quitting" if force else "stopping"


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
