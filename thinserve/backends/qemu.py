"""Desktops that are QEMU virtual machines started by thinserve itself.

Every desktop gets a private directory (mode 0700) holding its copy-on-write
overlay over a shared read-only template and two Unix sockets: the VNC
console (``-vnc unix:...``, reachable only by thinserve's user) and QMP,
QEMU's control channel.  QEMU runs as a child process with ``-display none
-nodefaults -vga std`` and a USB tablet so that absolute pointer positions
map one to one.

asyncio and Twisted.  Everything here is asyncio: the QEMU process is an
asyncio subprocess and QMP is spoken with ``qemu.qmp.QMPClient``.  thinserve
runs Twisted on the asyncio reactor, so both share one event loop.  The
backend's coroutines must run as asyncio tasks (they await asyncio futures,
which Twisted's coroutine driver cannot); from Twisted code call them as::

    Deferred.fromFuture(asyncio.ensure_future(backend.ensure_running(name)))

``as_deferred`` below does exactly that.  The reverse direction (awaiting a
Deferred inside an asyncio coroutine) is ``await d.asFuture(loop)``.

Lifecycle.  QEMU starts paused (``-S``) and connects to a QMP server socket
the backend is already listening on, so no early event is missed and no
polling for a socket file is needed.  The backend then resumes the guest and
reports STARTING until QMP says "running" and the VNC socket answers with
an RFB greeting; then RUNNING.  ``stop`` presses the ACPI power button
(``system_powerdown``), waits ``shutdown_timeout`` seconds, then sends
``quit`` and finally SIGKILL.  The guest powering itself off or a signal
ending QEMU is STOPPED; QEMU dying any other way, or the guest panicking
(``pvpanic``), is CRASHED.  Each change goes to ``on_status``.

Acceleration: KVM when /dev/kvm opens read-write (``accel="auto"``), else
TCG; ``accel`` forces either.  DesktopInfo.detail says which was used.

Outliving thinserve.  QEMU runs in its own session, its output goes to
``qemu.log`` in the desktop's directory (never a pipe, whose reader would
go with thinserve), and nothing ends it with thinserve.  Besides the QMP
socket it connects to, QEMU listens on a second QMP socket (``monitor.sock``),
so the next thinserve can reach a VM it finds in the desktop's record
(lifecycle.py): it watches QEMU through a pidfd (pidwatch.py) and reads the
same QMP events.  QEMU's exit status only reaches its parent, so a VM taken
over is judged by those events alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient, Runstate
from qemu.qmp.error import QMPError
from twisted.internet.defer import Deferred

from ..desktop_state import DesktopState
from .base import (
    BackendError,
    StatusListener,
    UnitBackend,
)
from .images import ImageError, create_overlay, image_format
from .lifecycle import DesktopLifecycle, describe_exit, rfb_greets
from .outputlog import devnull, last_line, open_for_output
from .pidwatch import PidWatch, end_recorded, start_time, watch
from .records import DesktopRecord, RecordedProcess, RecordStore

log = logging.getLogger(__name__)

T = TypeVar("T")

ACCELERATORS = ("auto", "kvm", "tcg")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; keep a margin
QUIT_TIMEOUT = 10.0
PROBE_INTERVAL = 0.2
QMP_TIMEOUT = 5.0  # a VM taken over must answer QMP within this


def as_deferred(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run an asyncio coroutine as a task and return a Deferred of its result."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


@dataclass(frozen=True)
class QemuDesktopConfig:
    """One QEMU desktop.  Changing memory or CPUs takes effect at the next start.

    Boot either a disk ``template`` (qcow2 or raw; the desktop writes to its
    own overlay) or a ``kernel`` with optional ``initrd`` and ``append``
    (the tiny demo Linux), or both (direct kernel boot with a disk).
    """

    name: str
    state_dir: Path
    template: Path | None = None
    template_format: str | None = None  # None: ask qemu-img
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    memory_mib: int = 2048
    cpus: int = 2
    accel: str = "auto"
    cpu_model: str | None = None  # None: "host" with KVM, QEMU's default with TCG
    machine: str = "pc"
    disk_interface: str = "virtio"
    nic: str | None = "user,model=virtio-net-pci"  # value of -nic; None for no network
    serial_log: Path | None = None
    extra_args: tuple[str, ...] = ()
    ephemeral: bool = False  # a fresh overlay at every start (kiosk)
    boot_timeout: float = 120.0
    shutdown_timeout: float = 60.0
    qemu_binary: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"desktop name {self.name!r}: use letters, digits, '.', '_', '-'")
        if self.template is None and self.kernel is None:
            raise ValueError(f"desktop {self.name}: set a template disk image or a kernel")
        if self.accel not in ACCELERATORS:
            raise ValueError(f"desktop {self.name}: accel must be one of {ACCELERATORS}")
        if self.memory_mib < 16 or self.cpus < 1:
            raise ValueError(f"desktop {self.name}: needs at least 16 MiB and 1 CPU")

    @property
    def directory(self) -> Path:
        return self.state_dir / self.name

    @property
    def overlay(self) -> Path:
        return self.directory / "overlay.qcow2"


def pool(template: QemuDesktopConfig, count: int) -> list[QemuDesktopConfig]:
    """``count`` desktops ``<name>-1`` .. ``<name>-<count>`` sharing one template."""
    return [replace(template, name=f"{template.name}-{n}") for n in range(1, count + 1)]


def kvm_usable(device: str = "/dev/kvm") -> bool:
    """True when ``device`` exists and this process may open it read-write."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_accelerator(requested: str) -> str:
    if requested == "auto":
        return "kvm" if kvm_usable() else "tcg"
    return requested


@dataclass
class _Run:
    """What one QEMU process left behind: how it ended and why.

    ``process`` is set when this thinserve started QEMU (its parent, which
    hears its exit status); a VM taken over has only its pid and pidfd.
    """

    pid: int
    start: int
    qmp: QMPClient
    accel: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    watch: PidWatch | None = None
    shutdown_reason: str | None = None
    panicked: bool = False
    stop_requested: bool = False
    ready: bool = False  # started: from now on its exit is reported by the watcher
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the process is gone
    exited: asyncio.Event = field(default_factory=asyncio.Event)  # and its end is judged
    events_task: asyncio.Task[None] | None = None
    exit_task: asyncio.Task[None] | None = None

    def kill(self) -> None:
        """SIGKILL exactly this QEMU (through its pidfd)."""
        if self.watch is not None:
            self.watch.signal(signal.SIGKILL)


class QemuVM(DesktopLifecycle):
    """One desktop's VM: overlay, QEMU process, QMP session and status."""

    backend = "qemu"
    program = "QEMU"
    start_errors = (OSError, QMPError)
    step_errors = (QMPError,)
    config: QemuDesktopConfig
    run: _Run | None

    def __init__(
        self, config: QemuDesktopConfig, report: StatusListener, records: RecordStore | None = None
    ) -> None:
        super().__init__(report, records)
        self.config = config
        self._socket_dir: Path | None = None

    def reconfigure(self, config: QemuDesktopConfig) -> None:
        """New settings for the next start (a running VM keeps its own)."""
        self.config = config
        if self.run is None:
            self._socket_dir = None

    # --- paths -----------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """The directory of the sockets: the desktop's directory unless too long."""
        if self._socket_dir is None:
            directory = self.config.directory
            if len(str(directory / "vnc.sock")) > MAX_SOCKET_PATH:
                directory = Path(tempfile.mkdtemp(prefix=f"thinserve-{self.config.name}-"))
            self._socket_dir = directory
        return self._socket_dir

    @property
    def vnc_socket(self) -> Path:
        return self.socket_dir / "vnc.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.socket_dir / "qmp.sock"

    @property
    def monitor_socket(self) -> Path:
        """QMP served by QEMU itself, for a later thinserve to connect to."""
        return self.socket_dir / "monitor.sock"

    @property
    def log_file(self) -> Path:
        return self.config.directory / "qemu.log"

    @property
    def start_timeout(self) -> float:
        return self.config.boot_timeout

    def _summary(self, accel: str) -> str:
        cfg = self.config
        return f"{accel.upper()}, {cfg.cpus} CPUs, {cfg.memory_mib} MiB"

    # --- starting ----------------------------------------------------------------

    async def _launch(self) -> str:
        accel = choose_accelerator(self.config.accel)
        self._set(DesktopState.STARTING, self._summary(accel))
        await self._prepare_disk()
        run = await self._start_qemu(accel)
        await self._wait_until_ready(run)
        return self._summary(accel)

    async def _prepare_disk(self) -> None:
        cfg = self.config
        cfg.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(cfg.directory, 0o700)
        if cfg.template is not None and (cfg.ephemeral or not cfg.overlay.exists()):
            await self._new_overlay()

    async def _new_overlay(self) -> None:
        cfg = self.config
        assert cfg.template is not None
        try:
            fmt = cfg.template_format or await image_format(cfg.template, cfg.qemu_img)
            await create_overlay(cfg.template, fmt, cfg.overlay, cfg.qemu_img)
        except (ImageError, OSError) as exc:
            raise BackendError(f"desktop {cfg.name}: {exc}") from exc

    async def _start_qemu(self, accel: str) -> _Run:
        if shutil.which(self.config.qemu_binary) is None:
            raise BackendError(
                f"{self.config.qemu_binary} not found: apt-get install qemu-system-x86 qemu-utils"
            )
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in (self.vnc_socket, self.qmp_socket, self.monitor_socket):
            stale.unlink(missing_ok=True)
        self.log_file.unlink(missing_ok=True)
        qmp = QMPClient(self.config.name)
        await qmp.start_server(str(self.qmp_socket))
        try:
            process = self._spawn(accel)
        except BaseException:
            await qmp.disconnect()
            raise
        started = start_time(process.pid) or 0
        self.run = run = _Run(process.pid, started, qmp, accel, self.log_file, process=process)
        run.watch = watch(process.pid, started, run.ended.set)
        if run.watch is None:
            run.ended.set()  # gone already: its exit status says why
        run.exit_task = asyncio.ensure_future(self._watch_exit(run))
        log.info("desktop %s: QEMU started, pid %d, %s", self.config.name, process.pid, accel)
        await self._race_exit(run, run.exited, qmp.accept(), "connect to QMP")
        run.events_task = asyncio.ensure_future(self._read_events(run))
        await self._race_exit(run, run.exited, qmp.execute("cont"), "resume the guest")
        return run

    def _spawn(self, accel: str) -> subprocess.Popen[bytes]:
        """QEMU in its own session, its output in its log file: it outlives thinserve."""
        stdin, output = devnull(), open_for_output(self.log_file)
        try:
            return subprocess.Popen(
                self.command(accel),
                stdin=stdin,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        finally:
            os.close(stdin)
            os.close(output)

    def command(self, accel: str) -> list[str]:
        """The QEMU command line for this desktop with accelerator ``accel``."""
        cfg = self.config
        args = [
            cfg.qemu_binary,
            "-name", f"{cfg.name},process=qemu-{cfg.name}",
            "-machine", cfg.machine,
            "-accel", accel,
            "-m", str(cfg.memory_mib),
            "-smp", str(cfg.cpus),
            "-nodefaults", "-no-user-config",
            "-display", "none",
            "-vga", "std",
            "-vnc", f"unix:{self.vnc_socket}",
            "-usb", "-device", "usb-tablet",
            "-device", "pvpanic",
            "-action", "panic=shutdown",
            "-chardev", f"socket,id=qmp,path={self.qmp_socket}",
            "-mon", "chardev=qmp,mode=control",
            "-chardev", f"socket,id=monitor,path={self.monitor_socket},server=on,wait=off",
            "-mon", "chardev=monitor,mode=control",
            "-S",
        ]  # fmt: skip
        cpu = cfg.cpu_model or ("host" if accel == "kvm" else None)
        if cpu:
            args += ["-cpu", cpu]
        args += self._boot_args()
        if cfg.nic:
            args += ["-nic", cfg.nic]
        if cfg.serial_log is not None:
            args += ["-serial", f"file:{cfg.serial_log}"]
        return args + list(cfg.extra_args)

    def _boot_args(self) -> list[str]:
        cfg = self.config
        args: list[str] = []
        if cfg.template is not None:
            drive = f"file={cfg.overlay},format=qcow2,if={cfg.disk_interface},discard=unmap"
            args += ["-drive", drive]
        if cfg.kernel is not None:
            args += ["-kernel", str(cfg.kernel)]
            if cfg.initrd is not None:
                args += ["-initrd", str(cfg.initrd)]
            if cfg.append:
                args += ["-append", cfg.append]
        return args

    async def _wait_until_ready(self, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.boot_timeout
        while True:
            if run.exited.is_set():
                raise BackendError(f"QEMU exited while starting: {self._last_line(run)}")
            if await self._guest_running(run) and await rfb_greets(self.vnc_socket):
                return
            if loop.time() > deadline:
                raise BackendError(
                    f"desktop {self.config.name}: console not ready within "
                    f"{self.config.boot_timeout:.0f} s"
                )
            await asyncio.sleep(PROBE_INTERVAL)

    @staticmethod
    async def _guest_running(run: _Run) -> bool:
        try:
            status = await asyncio.wait_for(run.qmp.execute("query-status"), 5.0)
        except (QMPError, OSError, TimeoutError):
            return False
        return isinstance(status, dict) and status.get("status") == "running"

    # --- watching ------------------------------------------------------------------

    async def _read_events(self, run: _Run) -> None:
        async for event in run.qmp.events:
            self._note_event(run, event)

    def _note_event(self, run: _Run, event: Mapping[str, Any]) -> None:
        name = event.get("event")
        data = event.get("data", {})
        log.debug("desktop %s: QMP event %s %s", self.config.name, name, data)
        if name == "SHUTDOWN":
            run.shutdown_reason = str(data.get("reason", ""))
        elif name == "GUEST_PANICKED":
            run.panicked = True

    async def _last_events(self, run: _Run) -> None:
        """Read what QEMU said before it went (SHUTDOWN, GUEST_PANICKED), then hang up."""
        qmp = run.qmp
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while qmp.runstate is Runstate.RUNNING:
                    await qmp.runstate_changed()
        if run.events_task is not None:
            run.events_task.cancel()
        with contextlib.suppress(Exception):
            await qmp.disconnect()
        for event in qmp.events.clear():
            self._note_event(run, event)

    async def _watch_exit(self, run: _Run) -> None:
        await run.ended.wait()
        returncode = run.process.wait() if run.process is not None else None  # ended: no wait
        await self._last_events(run)
        status, detail = self._ending(run, returncode)
        log.log(
            logging.WARNING if status is DesktopState.CRASHED else logging.INFO,
            "desktop %s: QEMU ended (%s): %s",
            self.config.name,
            describe_exit(returncode),
            detail,
        )
        if self.run is run and run.ready:
            self.run = None
            self._set(status, detail)
        run.exited.set()

    def _ending(self, run: _Run, returncode: int | None) -> tuple[DesktopState, str]:
        reason = run.shutdown_reason
        if run.panicked or reason == "guest-panic":
            return DesktopState.CRASHED, "the guest operating system panicked"
        if reason == "guest-shutdown":
            return DesktopState.STOPPED, "the guest powered off"
        if run.stop_requested:
            return DesktopState.STOPPED, "stopped"
        if reason == "host-signal":
            return DesktopState.STOPPED, "QEMU was ended by a signal"
        if reason:
            return DesktopState.STOPPED, f"QEMU shut down ({reason})"
        why = f"QEMU ended unexpectedly ({describe_exit(returncode)})"
        words = self._last_line(run)
        return DesktopState.CRASHED, f"{why}: {words}" if words != "no error message" else why

    @staticmethod
    def _last_line(run: _Run) -> str:
        return last_line(run.log)

    def _output_files(self) -> list[Path]:
        return [self.log_file]

    async def _last_words(self, run: _Run) -> str:
        return self._last_line(run)  # read by _watch_exit before it sets ``exited``

    # --- stopping ---------------------------------------------------------------------

    def _stopping_detail(self, force: bool) -> str:
        return "quitting" if force else "powering off"

    async def _power_down(self, run: _Run) -> None:
        with contextlib.suppress(QMPError, OSError):
            await run.qmp.execute("system_powerdown")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.exited.wait(), self.config.shutdown_timeout)

    async def _kill(self, run: _Run, force: bool) -> None:
        """End QEMU: the power button unless ``force``, ``quit`` over QMP, then SIGKILL."""
        if not force:
            await self._power_down(run)
        if not run.exited.is_set():
            with contextlib.suppress(QMPError, OSError, TimeoutError):
                await asyncio.wait_for(run.qmp.execute("quit"), QUIT_TIMEOUT)
        try:
            await asyncio.wait_for(run.exited.wait(), QUIT_TIMEOUT)
        except TimeoutError:
            run.kill()
            await run.exited.wait()

    async def reset(self) -> None:
        """Stop the VM at once and give it a fresh overlay over its template."""
        await self.stop(force=True)
        async with self._lock:
            if self.config.template is not None:
                await self._new_overlay()

    # --- outliving thinserve ------------------------------------------------------------

    def _record(self, run: _Run) -> DesktopRecord:
        return DesktopRecord(
            name=self.config.name,
            backend=self.backend,
            processes=(RecordedProcess("qemu", run.pid, run.start),),
            vnc_socket=str(self.vnc_socket),
            summary=self._summary(run.accel),
            qmp_socket=str(self.monitor_socket),
            run_dirs=(str(self.config.directory), str(self.socket_dir)),
            overlay=str(self.config.overlay) if self.config.template is not None else None,
        )

    def _recorded_socket_dir(self, record: DesktopRecord) -> Path:
        """Where the record's sockets are: the desktop's directory or its own temporary one."""
        directory = Path(record.vnc_socket).parent
        own = directory == self.config.directory or (
            directory.parent == Path(tempfile.gettempdir())
            and directory.name.startswith(f"thinserve-{self.config.name}-")
        )
        if not own or record.qmp_socket != str(directory / "monitor.sock"):
            raise BackendError(f"its sockets {record.vnc_socket} are not the desktop's")
        return directory

    async def _adopt(self, record: DesktopRecord) -> str:
        recorded = record.process("qemu")
        if recorded is None:
            raise BackendError("it names no QEMU process")
        self._socket_dir = self._recorded_socket_dir(record)
        if not await rfb_greets(self.vnc_socket):
            raise BackendError(f"its console {self.vnc_socket} does not answer RFB")
        qmp = QMPClient(self.config.name)
        try:
            await asyncio.wait_for(qmp.connect(str(self.monitor_socket)), QMP_TIMEOUT)
            status = await asyncio.wait_for(qmp.execute("query-status"), QMP_TIMEOUT)
        except (QMPError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await qmp.disconnect()
            why = f"its QMP socket {self.monitor_socket} does not answer: {exc}"
            raise BackendError(why) from None
        accel = "kvm" if record.summary.startswith("KVM") else "tcg"
        run = _Run(recorded.pid, recorded.start, qmp, accel, self.log_file)
        run.watch = watch(recorded.pid, recorded.start, run.ended.set)
        if run.watch is None:
            await qmp.disconnect()
            raise BackendError(f"QEMU pid {recorded.pid} ended meanwhile")
        self.run = run
        run.events_task = asyncio.ensure_future(self._read_events(run))
        run.exit_task = asyncio.ensure_future(self._watch_exit(run))
        log.debug("desktop %s: QEMU says %s", self.config.name, status)
        return record.summary

    async def _clean_up(self, record: DesktopRecord) -> None:
        """SIGTERM is QEMU's own clean quit (reason host-signal); SIGKILL if it hangs."""
        for recorded in record.processes:
            await end_recorded(recorded.pid, recorded.start, QUIT_TIMEOUT)
        self._socket_dir = None

    def _let_go(self, run: _Run) -> None:
        for task in (run.events_task, run.exit_task):
            if task is not None:
                task.cancel()
        if run.watch is not None:
            run.watch.cancel()
        if run.process is not None:
            _reap_later(run.process)
        self._end_later(_hang_up(run.qmp))

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        run = self.run
        if run is None:
            raise BackendError(f"desktop {self.config.name} is not running")
        try:
            return await run.qmp.execute(command, arguments)
        except QMPError as exc:
            raise BackendError(f"desktop {self.config.name}: QMP {command}: {exc}") from exc


async def _hang_up(qmp: QMPClient) -> None:
    with contextlib.suppress(Exception):
        await qmp.disconnect()


_released: set[subprocess.Popen[bytes]] = set()


def _reap_later(process: subprocess.Popen[bytes]) -> None:
    """A QEMU left running is still this process's child: reap it when it ends,
    so it never lingers as a zombie (another thinserve may have taken it over)."""
    _released.add(process)

    def reaped() -> None:
        process.poll()
        _released.discard(process)

    started = start_time(process.pid)
    if started is None or watch(process.pid, started, reaped) is None:
        reaped()


class QemuBackend(UnitBackend[QemuVM]):
    """The desktops of one or more QemuDesktopConfig, each its own QEMU."""

    name = "qemu"
    kind = "QEMU"

    def __init__(
        self,
        desktops: Iterable[QemuDesktopConfig],
        on_status: StatusListener | None = None,
        records: RecordStore | None = None,
    ) -> None:
        super().__init__(on_status, records)
        for config in desktops:
            self.configure(config)

    def configure(self, config: QemuDesktopConfig) -> None:
        """Add a desktop or change its settings (they apply at its next start)."""
        vm = self.vms.get(config.name)
        if vm is None:
            self.vms[config.name] = QemuVM(config, self._report, self.records)
        else:
            vm.reconfigure(config)

    @property
    def vms(self) -> dict[str, QemuVM]:
        return self.units

    def vm(self, desktop: str) -> QemuVM:
        return self.unit(desktop)

    async def execute(
        self, desktop: str, command: str, arguments: dict[str, object] | None = None
    ) -> object:
        """Run a QMP command on a running desktop and return its result."""
        return await self.vm(desktop).execute(command, arguments)
