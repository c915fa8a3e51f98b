"""One desktop's Xvnc and session program, started, watched and ended together.

Xvnc listens only on a Unix socket in a private directory, so nothing but
thinserve reaches the desktop.  The session program (a desktop environment
or one application) starts once Xvnc has reported its display and answers
RFB.  Both run as the desktop's account, each in its own process group.

A run ends as a whole: the session program ending is a logout (or, with an
error status, a crash) and ends Xvnc; Xvnc ending is a crash and ends the
session.  When Xvnc dies its session program loses the display and dies
too, and thinserve may hear of the two ends in either order; so a session
program's end counts only while Xvnc is alive.  Once Xvnc is in its exit,
its own end, due at once, says what happened.

Both outlive thinserve (lifecycle.py): their output goes to files in the
desktop's private log directory (outputlog.py), nothing ties them to
thinserve's life, and the desktop's record says how to find them again.
A session taken over this way is watched through pidfds (pidwatch.py);
its exit status, which only a parent would hear, is the one the session's
shell wrapper writes to ``exit-status`` in the session directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ..desktop_state import DesktopState
from . import default_session
from .accounts import Account, account_for
from .base import BackendError, StatusListener
from .lifecycle import DesktopLifecycle, describe_exit, rfb_greets
from .outputlog import devnull, last_line, open_for_output
from .pidwatch import PidWatch, end_recorded, start_time, watch
from .processes import (
    ProcessReactor,
    ProcessTransport,
    ending,
    returncode,
    signal_group,
    sweep,
    until_execed,
    wrapper,
)
from .records import DesktopRecord, RecordedProcess, RecordStore
from .rundirs import (
    describe_modes,
    fresh_dir,
    give,
    make_base,
    sessions_dir,
    write_private,
    xauthority_entry,
)
from .xvnc_config import XvncDesktopConfig, XvncOptions

log = logging.getLogger(__name__)

SESSION_PROGRAMS = ("x-session-manager", "startxfce4", "xterm")
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
PROBE_INTERVAL = 0.1
KILL_TIMEOUT = 5.0
KEPT_VARIABLES = ("LANG", "LC_ALL", "TZ")
STATUS_FILE = "exit-status"
# The session's program runs under a shell that writes its exit status to
# STATUS_FILE and then ends the same way (the same status, or the same signal),
# so a later thinserve, which is not its parent, still tells a logout from a crash.
SESSION_SHELL = (
    '/bin/sh -c "$1"; status=$?; echo "$status" > "$2"; '
    'if [ "$status" -gt 128 ] && [ "$status" -lt 160 ]; then kill -$((status - 128)) $$; fi; '
    'exit "$status"'
)
MAX_STATUS_BYTES = 16


def default_session_command() -> str | None:
    """thinserve's default session (IceWM and a terminal), else the first program found."""
    if (session := default_session.command()) is not None:
        return session
    for program in SESSION_PROGRAMS:
        if shutil.which(program):
            return program
    return None


def read_status(path: Path) -> int | None:
    """The exit status the session's shell wrote; None when it wrote none (a signal)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        text = file.read(MAX_STATUS_BYTES).strip()
    return int(text) if text.isdigit() else None


class _Watched(ProcessProtocol):
    """Reads Xvnc's display number and tells its owner when the process ends."""

    def __init__(self, on_end: Callable[[Failure], None]) -> None:
        self.on_end = on_end
        self.display: asyncio.Future[int] | None = None
        self._displayfd = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            self._display_data(data)

    def _display_data(self, data: bytes) -> None:
        self._displayfd = (self._displayfd + data)[-32:]
        if b"\n" in self._displayfd and self.display is not None and not self.display.done():
            text = self._displayfd.split(b"\n", 1)[0].strip()
            if text.isdigit():
                self.display.set_result(int(text))

    def processExited(self, reason: Failure) -> None:
        # Not processEnded: that waits until every copy of the displayfd pipe is
        # closed, which a program the session left running may hold for ever.
        self.on_end(reason)


@dataclass
class _Proc:
    """Xvnc or the session program: started here (a transport) or taken over (a pidfd).

    Each leads its own process group, so signals go to the whole group.
    """

    pid: int | None = None
    start: int | None = None
    transport: ProcessTransport | None = None
    watch: PidWatch | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def present(self) -> bool:
        return self.transport is not None or self.watch is not None

    def signal_group(self, signum: int) -> None:
        if self.transport is not None:
            signal_group(self.transport, signum)
        elif self.pid is not None and not self.exited.is_set():
            try:
                os.killpg(self.pid, signum)  # not ended, so the pid is still its own
            except (ProcessLookupError, PermissionError):
                if self.watch is not None:
                    self.watch.signal(signum)

    def recorded(self, role: str) -> RecordedProcess:
        if self.pid is None or self.start is None:
            raise ValueError(f"{role} has no pid")
        return RecordedProcess(role, self.pid, self.start)


@dataclass
class _Run:
    """One start of a session: Xvnc, the session program, and how they ended."""

    account: Account
    socket: Path
    session_dir: Path
    log_dir: Path
    xvnc: _Proc = field(default_factory=_Proc)
    session: _Proc = field(default_factory=_Proc)
    display: int | None = None
    ready: bool = False
    stop_requested: bool = False

    @property
    def xvnc_pid(self) -> int | None:
        return self.xvnc.pid

    @property
    def session_pgid(self) -> int | None:
        """The session's process group, kept after it ends."""
        return self.session.pid

    @property
    def xvnc_log(self) -> Path:
        return self.log_dir / "xvnc.log"

    @property
    def session_log(self) -> Path:
        return self.log_dir / "session.log"

    @property
    def status_file(self) -> Path:
        return self.session_dir / STATUS_FILE


class XvncSession(DesktopLifecycle):
    """One desktop's Xvnc and session program, and its status."""

    backend = "xvnc"
    program = "Xvnc"
    config: XvncDesktopConfig
    run: _Run | None

    def __init__(
        self,
        config: XvncDesktopConfig,
        options: XvncOptions,
        report: StatusListener,
        reactor: ProcessReactor,
        records: RecordStore | None = None,
    ) -> None:
        super().__init__(report, records)
        self.config = config
        self.options = options
        self.reactor = reactor

    # --- paths --------------------------------------------------------------------

    @property
    def base(self) -> Path:
        return self.options.runtime_dir or sessions_dir()

    @property
    def socket_dir(self) -> Path:
        return self.base / "sockets" / self.config.name

    @property
    def vnc_socket(self) -> Path:
        return self.socket_dir / "vnc.sock"

    @property
    def session_dir(self) -> Path:
        return self.base / "sessions" / self.config.name

    @property
    def log_dir(self) -> Path:
        """The programs' output: thinserve's own directory, 0700."""
        return self.base / "logs" / self.config.name

    @property
    def start_timeout(self) -> float:
        return self.options.start_timeout

    def _summary(self, run: _Run) -> str:
        cfg = self.config
        return f"user {run.account.name}, display :{run.display}, {cfg.geometry}x{cfg.depth}"

    # --- starting -----------------------------------------------------------------------

    async def _launch(self) -> str:
        account = account_for(self.config.name, self.config.user)
        binary = self._binary()
        self._set(DesktopState.STARTING, f"user {account.name}")
        run = self._prepare(account)
        await self._start_xvnc(run, binary)
        self._start_session(run)
        await until_execed(run.session_pgid)  # signals before exec would reach only Python
        return self._summary(run)

    def _binary(self) -> str:
        binary = shutil.which(self.options.xvnc_binary)
        if binary is None:
            raise BackendError(
                f"{self.options.xvnc_binary} is not installed: "
                "apt-get install tigervnc-standalone-server"
            )
        return binary

    def _prepare(self, account: Account) -> _Run:
        """Fresh private directories for this start, an X cookie in place."""
        if len(str(self.vnc_socket)) > MAX_SOCKET_PATH:
            raise BackendError(
                f"desktop {self.config.name}: socket path {self.vnc_socket} is too long; "
                "choose a shorter runtime_dir"
            )
        make_base(self.base)
        (self.base / "logs").mkdir(mode=0o700, exist_ok=True)
        fresh_dir(self.log_dir, None)
        fresh_dir(self.socket_dir, self._xvnc_account(account))
        session_dir = self.session_dir
        fresh_dir(session_dir, None)  # thinserve's until filled, then the user's
        (session_dir / "runtime").mkdir(mode=0o700)
        write_private(session_dir / "Xauthority", xauthority_entry(secrets.token_bytes(16)))
        for path in (session_dir / "runtime", session_dir / "Xauthority", session_dir):
            give(path, account)
        self.run = _Run(account, self.vnc_socket, session_dir, self.log_dir)
        return self.run

    def _xvnc_account(self, account: Account) -> Account:
        return account if self.config.xvnc_as_user else Account.of(None)

    async def _start_xvnc(self, run: _Run, binary: str) -> None:
        watch = _Watched(lambda r: self._xvnc_ended(run, returncode(r)))
        watch.display = asyncio.get_running_loop().create_future()
        account = self._xvnc_account(run.account)
        argv = [*wrapper(), binary, *self.xvnc_args(run)]
        env = self._xvnc_env(account)
        transport = self._spawn(watch, argv, account, env, "/", run.xvnc_log, displayfd=True)
        self._started(run.xvnc, transport)
        name = self.config.name
        log.info("desktop %s: Xvnc started as %s, pid %s", name, account.name, run.xvnc_pid)
        exited = run.xvnc.exited
        run.display = await self._race_exit(run, exited, watch.display, "report its display")
        await self._race_exit(run, exited, self._until_rfb(run.socket), "answer on its RFB socket")

    def xvnc_args(self, run: _Run) -> list[str]:
        cfg = self.config
        return [
            "-displayfd", "3",
            "-auth", str(run.session_dir / "Xauthority"),
            "-rfbport", "-1",
            "-rfbunixpath", str(run.socket),
            "-rfbunixmode", "0600",
            "-SecurityTypes", "None",
            "-geometry", cfg.geometry,
            "-depth", str(cfg.depth),
            "-nolisten", "tcp",
            "-noreset",
            "-AlwaysShared",
            "-desktop", cfg.name,
            *cfg.extra_args,
        ]  # fmt: skip

    def _start_session(self, run: _Run) -> None:
        command = self.config.command or default_session_command()
        if command is None:
            raise BackendError(
                f"desktop {self.config.name}: no session program found (tried "
                f"{', '.join(SESSION_PROGRAMS)}); install one or set command"
            )
        watch = _Watched(lambda r: self._session_ended(run, returncode(r)))
        home = run.account.home if os.path.isdir(run.account.home) else "/"
        shell = ["/bin/sh", "-c", SESSION_SHELL, "thinserve-session", command]
        argv = [*wrapper(), *shell, str(run.status_file)]
        env = self.session_env(run)
        transport = self._spawn(watch, argv, run.account, env, home, run.session_log)
        self._started(run.session, transport)
        log.info(
            "desktop %s: session %r started as %s on :%s, pid %s",
            self.config.name,
            command.splitlines()[0].lstrip("# "),  # a script's first line names it
            run.account.name,
            run.display,
            run.session_pgid,
        )

    @staticmethod
    def _started(proc: _Proc, transport: ProcessTransport) -> None:
        proc.transport = transport
        proc.pid = transport.pid
        proc.start = start_time(proc.pid) if proc.pid is not None else None

    def _spawn(
        self,
        watch: _Watched,
        argv: list[str],
        account: Account,
        env: dict[str, str],
        cwd: str,
        output: Path,
        displayfd: bool = False,
    ) -> ProcessTransport:
        """Start ``argv``; its output goes to the file ``output``, never to a pipe:
        a pipe nobody reads once thinserve has gone would kill it (SIGPIPE)."""
        stdin, out = devnull(), open_for_output(output)
        fds: dict[int, str | int] = {0: stdin, 1: out, 2: out}
        if displayfd:
            fds[3] = "r"  # written once at start, then closed by Xvnc
        switch = not account.is_me
        try:
            return self.reactor.spawnProcess(
                watch,
                shutil.which(argv[0]) or argv[0],
                argv,
                env=env,
                path=cwd,
                uid=account.uid if switch else None,
                gid=account.gid if switch else None,
                childFDs=fds,
            )
        finally:
            os.close(stdin)
            os.close(out)

    def _xvnc_env(self, account: Account) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "HOME": account.home}
        env |= {"USER": account.name, "LOGNAME": account.name}
        return env | {k: v for k, v in os.environ.items() if k in KEPT_VARIABLES}

    def session_env(self, run: _Run) -> dict[str, str]:
        """The session's environment: the user's own, never thinserve's."""
        account = run.account
        env = {
            "HOME": account.home,
            "USER": account.name,
            "LOGNAME": account.name,
            "SHELL": account.shell or "/bin/sh",
            "PATH": DEFAULT_PATH if not account.is_me else os.environ.get("PATH", DEFAULT_PATH),
            "DISPLAY": f":{run.display}",
            "XAUTHORITY": str(run.session_dir / "Xauthority"),
            "XDG_RUNTIME_DIR": str(run.session_dir / "runtime"),
            "XDG_SESSION_TYPE": "x11",
        }
        return env | {k: v for k, v in os.environ.items() if k in KEPT_VARIABLES}

    @staticmethod
    async def _until_rfb(path: Path) -> None:
        while not await rfb_greets(path):
            await asyncio.sleep(PROBE_INTERVAL)

    async def _last_words(self, run: _Run) -> str:
        words = last_line(run.xvnc_log)
        if "Permission denied" in words:  # its socket refused: say by which directory
            words += f" (modes: {describe_modes(run.socket.parent)})"
        return words

    def _output_files(self) -> list[Path]:
        return [self.log_dir / "xvnc.log", self.log_dir / "session.log"]

    # --- watching --------------------------------------------------------------------

    def _current(self, run: _Run) -> bool:
        """True while ``run`` is up and nobody is ending it: an end is news."""
        return run.ready and not run.stop_requested and self.run is run

    def _xvnc_ended(self, run: _Run, code: int | None) -> None:
        """Xvnc ended; ``code`` as asyncio's, None when it was not thinserve's child."""
        run.xvnc.exited.set()
        remove_stale_display(run.display, run.xvnc_pid)
        if not self._current(run):
            return

        def detail() -> str:
            text = f"Xvnc ended unexpectedly ({describe_exit(code)})"
            if code is None or code > 0:
                text += f": {last_line(run.xvnc_log)}"  # a fatal error is its last line
            return text

        self._ended(run, DesktopState.CRASHED, detail)

    def _session_ended(self, run: _Run, code: int | None) -> None:
        """The session program ended; ``code`` None: read what its shell wrote."""
        run.session.exited.set()
        if not self._current(run):
            return
        if run.xvnc_pid is not None and ending(run.xvnc_pid):
            log.debug("desktop %s: the session ended as Xvnc went", self.config.name)
            return  # Xvnc's own end follows and says why
        if code is None:
            code = read_status(run.status_file)
        if code == 0:
            self._ended(run, DesktopState.STOPPED, lambda: "the session ended (logged out)")
            return

        def detail() -> str:
            text = f"the session program failed ({describe_exit(code)})"
            words = last_line(run.session_log)
            return f"{text}: {words}" if words != "no error message" else text

        self._ended(run, DesktopState.CRASHED, detail)

    def _ended(self, run: _Run, status: DesktopState, detail: Callable[[], str]) -> None:
        """One half of the session ended by itself: end the other, then report.

        The programs wrote their output to files, so their last words are there.
        """
        run.stop_requested = True
        self.run = None

        async def finish() -> None:
            why = detail()
            crashed = status is DesktopState.CRASHED
            level = logging.WARNING if crashed else logging.INFO
            log.log(level, "desktop %s: %s", self.config.name, why)
            await self._kill(run, force=True)
            self._set(status, why)

        self._end_later(finish())

    # --- stopping ---------------------------------------------------------------------

    def _stopping_detail(self, force: bool) -> str:
        return "quitting" if force else "ending the session"

    async def _kill(self, run: _Run, force: bool) -> None:
        """End the session (gracefully unless ``force``), then Xvnc; wait for both."""
        run.session.signal_group(signal.SIGTERM)
        if run.session.present and not force:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.session.exited.wait(), self.options.stop_timeout)
        run.xvnc.signal_group(signal.SIGTERM)
        for proc in (run.xvnc, run.session):
            if proc.present:
                await self._until_exited(proc)
        if run.session_pgid is not None:  # what the session left behind in its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.session_pgid, signal.SIGKILL)
        await sweep(run.account.uid, f"XDG_RUNTIME_DIR={run.session_dir / 'runtime'}")

    async def _until_exited(self, proc: _Proc) -> None:
        """Until ``proc`` has exited; SIGKILL after KILL_TIMEOUT."""
        try:
            await asyncio.wait_for(proc.exited.wait(), KILL_TIMEOUT)
        except TimeoutError:
            proc.signal_group(signal.SIGKILL)
            try:
                await asyncio.wait_for(proc.exited.wait(), KILL_TIMEOUT)
            except TimeoutError:
                log.error("desktop %s: pid %s survives SIGKILL", self.config.name, proc.pid)

    async def reset(self) -> None:
        """A fresh session next time: stop now (the next start makes new directories)."""
        await self.stop(force=True)

    def processes(self) -> tuple[int | None, int | None]:
        """(Xvnc's pid, the session program's pid) while running."""
        run = self.run
        if run is None:
            return None, None
        return run.xvnc.pid, run.session.pid

    # --- outliving thinserve ------------------------------------------------------------

    def _record(self, run: _Run) -> DesktopRecord:
        return DesktopRecord(
            name=self.config.name,
            backend=self.backend,
            processes=(run.xvnc.recorded("xvnc"), run.session.recorded("session")),
            vnc_socket=str(run.socket),
            summary=self._summary(run),
            display=run.display,
            user=run.account.name,
            uid=run.account.uid,
            run_dirs=(str(self.socket_dir), str(run.session_dir), str(run.log_dir)),
        )

    async def _adopt(self, record: DesktopRecord) -> str:
        account = account_for(self.config.name, self.config.user)
        if (record.user, record.uid) != (account.name, account.uid):
            raise BackendError(f"it runs as {record.user}, the desktop is now {account.name}'s")
        if record.vnc_socket != str(self.vnc_socket) or record.display is None:
            raise BackendError(f"its socket {record.vnc_socket} is not {self.vnc_socket}")
        if not await rfb_greets(self.vnc_socket):
            raise BackendError(f"its socket {record.vnc_socket} does not answer RFB")
        run = _Run(account, self.vnc_socket, self.session_dir, self.log_dir)
        run.display = record.display
        for role, proc, on_end in (
            ("xvnc", run.xvnc, lambda: self._xvnc_ended(run, None)),
            ("session", run.session, lambda: self._session_ended(run, None)),
        ):
            recorded = record.process(role)
            assert recorded is not None  # alive, so recorded (lifecycle checked)
            proc.pid, proc.start = recorded.pid, recorded.start
            proc.watch = watch(recorded.pid, recorded.start, on_end)
            if proc.watch is None:
                self._let_go(run)
                raise BackendError(f"{role} pid {recorded.pid} ended meanwhile")
        self.run = run
        return record.summary or self._summary(run)

    async def _clean_up(self, record: DesktopRecord) -> None:
        for recorded in record.processes:
            await end_recorded(recorded.pid, recorded.start, KILL_TIMEOUT)
        if record.uid is not None:
            await sweep(record.uid, f"XDG_RUNTIME_DIR={self.session_dir / 'runtime'}")
        xvnc = record.process("xvnc")
        remove_stale_display(record.display, xvnc.pid if xvnc is not None else None)

    def _let_go(self, run: _Run) -> None:
        for proc in (run.xvnc, run.session):
            if proc.watch is not None:
                proc.watch.cancel()


def remove_stale_display(display: int | None, pid: int | None) -> None:
    """Remove the lock and socket an Xvnc killed outright left behind."""
    if display is None or pid is None:
        return
    lock = Path(f"/tmp/.X{display}-lock")
    try:
        owner = int(lock.read_text().strip())
    except (OSError, ValueError):
        return
    if owner == pid:
        lock.unlink(missing_ok=True)
        Path(f"/tmp/.X11-unix/X{display}").unlink(missing_ok=True)
