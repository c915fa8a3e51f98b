"""What every process-backed desktop shares: its status, starting once, stopping.

Concurrent ``ensure_running`` calls share one start; cancelling one waiter
does not cancel the start the others wait for.  A start runs under the
desktop's lock, and so does a stop: a stop first cancels a start under way,
so the two never overlap.  Subclasses say how to launch (``_launch``), how
to end a run (``_kill``) and what the program said last (``_last_words``).

A desktop outlives thinserve.  With a ``RecordStore``, a running desktop
is recorded (``_record``); ``release`` lets go of it without ending it, and
the next thinserve's first start (or ``adopt``) takes it over
(``_adopt``) when its record checks out, or else ends what is left of it
(``_clean_up``) and starts it afresh.  A desktop without a record is
stopped by ``release``: nothing could ever find it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..desktop_state import DesktopState
from .base import BackendError, ConsoleAddress, DesktopInfo, StatusListener
from .outputlog import trim
from .pidwatch import boot_id
from .records import DesktopRecord, RecordStore

log = logging.getLogger(__name__)

T = TypeVar("T")

LOG_CHECK_INTERVAL = 60.0  # seconds between looks at the size of a desktop's output files


def describe_exit(returncode: int | None) -> str:
    """A process's end in words; ``returncode`` as asyncio's: negative for a signal,
    None when it is not known (a process thinserve took over is not its child)."""
    if returncode is None:
        return "exit status unknown"
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

    def __init__(self, report: StatusListener, records: RecordStore | None = None) -> None:
        self.report = report
        self.records = records
        self.status = DesktopState.STOPPED
        self.detail = ""
        self.run = None
        self._lock = asyncio.Lock()
        self._start_task: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Task[None]] = set()
        self._recorded: object = None  # the run whose record is saved
        self._log_keeper: asyncio.Task[None] | None = None

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
        if status is DesktopState.RUNNING:
            self._keep_logs_small()
        elif not status.active:
            self._forget()
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

    def _record(self, run: Any) -> DesktopRecord:
        """What the next thinserve needs to find ``run`` again."""
        raise NotImplementedError

    async def _adopt(self, record: DesktopRecord) -> str:
        """Take over the run ``record`` describes (``self.run``, watched); the RUNNING
        detail.  BackendError says why it cannot be, with nothing left watching."""
        raise NotImplementedError

    async def _clean_up(self, record: DesktopRecord) -> None:
        """End whatever is left of the run ``record`` describes."""
        raise NotImplementedError

    def _let_go(self, run: Any) -> None:
        """Stop watching ``run`` and drop thinserve's links to it; it keeps running."""
        raise NotImplementedError

    def _output_files(self) -> list[Path]:
        """The files the desktop's programs write their output to."""
        return []

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
            if await self._adopt_recorded():
                return
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
            self._save_record(self.run)
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

    # --- outliving thinserve ---------------------------------------------------------

    def _save_record(self, run: Any) -> None:
        if self.records is None:
            return
        try:
            self.records.save(self._record(run))
        except (OSError, ValueError) as exc:  # ValueError: a process of it has no pid
            log.warning(
                "desktop %s: cannot record it (%s); it will end when thinserve stops",
                self.config.name,
                exc,
            )
            return
        self._recorded = run

    async def adopt(self) -> bool:
        """Take over the desktop a previous thinserve left running, if its record checks out."""
        async with self._lock:
            if self.run is not None:
                return False
            return await self._adopt_recorded()

    async def _adopt_recorded(self) -> bool:
        name = self.config.name
        record = self.records.load(name) if self.records is not None else None
        if record is None:
            return False
        try:
            summary = await self._adopt_checked(record)
        except Exception as exc:  # never a reason not to start: the desktop starts afresh
            if not isinstance(exc, BackendError):
                log.exception("desktop %s: checking its record failed", name)
            log.warning(
                "desktop %s: not taking over the desktop recorded as running (%s); "
                "ending what is left of it and starting it afresh",
                name,
                exc,
            )
            await self._clean_up(record)
            self._forget()
            return False
        self.run.ready = True
        self._recorded = self.run
        pids = ", ".join(f"{p.role} pid {p.pid}" for p in record.processes)
        log.info("desktop %s: took over the running desktop (%s)", name, pids)
        self._set(DesktopState.RUNNING, summary)
        return True

    async def _adopt_checked(self, record: DesktopRecord) -> str:
        if record.backend != self.backend:
            raise BackendError(f"it was a {record.backend} desktop, now it is {self.backend}")
        if record.boot != boot_id():
            raise BackendError("it was recorded before the machine restarted")
        gone = [p for p in record.processes if not p.alive()]
        if gone:
            what = ", ".join(f"{p.role} pid {p.pid}" for p in gone)
            raise BackendError(f"{what} ended or is another process now")
        return await self._adopt(record)

    async def release(self) -> None:
        """Let go of the desktop, leaving it running for the next thinserve.

        A start under way is cancelled, and a desktop that could not be
        recorded is stopped: nothing could find it again.
        """
        task = self._start_task
        starting = task is not None and not task.done()
        if starting or (self.run is not None and self._recorded is not self.run):
            await self.stop()
            return
        async with self._lock:
            await self.wait_ended()  # a run that ended by itself is finished off first
            run, self.run = self.run, None
            if run is None:
                return
            run.stop_requested = True  # from now on its end is not news here
            self._stop_keeping_logs()
            self._let_go(run)
            log.info("desktop %s: left running; the next start takes it over", self.config.name)

    def _forget(self) -> None:
        """The desktop's run is over: no record, no output to watch."""
        self._stop_keeping_logs()
        self._recorded = None
        if self.records is not None:
            self.records.remove(self.config.name)

    def _keep_logs_small(self) -> None:
        if self._log_keeper is None or self._log_keeper.done():
            self._log_keeper = asyncio.ensure_future(self._trim_logs())

    def _stop_keeping_logs(self) -> None:
        keeper, self._log_keeper = self._log_keeper, None
        if keeper is not None:
            keeper.cancel()

    async def _trim_logs(self) -> None:
        while True:
            for path in self._output_files():
                trim(path)
            await asyncio.sleep(LOG_CHECK_INTERVAL)

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
