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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ..desktop_state import DesktopState
from .accounts import Account, account_for
from .base import BackendError, StatusListener
from .lifecycle import DesktopLifecycle, describe_exit, rfb_greets
from .processes import (
    ProcessReactor,
    ProcessTransport,
    ending,
    pid_of,
    returncode,
    signal_group,
    sweep,
    until_execed,
    wrapper,
)
from .rundirs import fresh_dir, give, make_base, sessions_dir, write_private, xauthority_entry
from .xvnc_config import XvncDesktopConfig, XvncOptions

log = logging.getLogger(__name__)

SESSION_PROGRAMS = ("x-session-manager", "startxfce4", "xterm")
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
PROBE_INTERVAL = 0.1
KILL_TIMEOUT = 5.0
X_LOG_MARK = re.compile(r"^\s*\([A-Z!+*-]{2}\)")  # the X server's (EE), (II), (WW), (**)
KEPT_VARIABLES = ("LANG", "LC_ALL", "TZ")


def default_session_command() -> str | None:
    for program in SESSION_PROGRAMS:
        if shutil.which(program):
            return program
    return None


class _Watched(ProcessProtocol):
    """Collects a process's output lines and tells its owner when it ends."""

    def __init__(self, label: str, on_end: Callable[[Failure], None]) -> None:
        self.label = label
        self.on_end = on_end
        self.lines: deque[str] = deque(maxlen=20)
        self.display: asyncio.Future[int] | None = None
        self.closed = asyncio.Event()
        self._displayfd = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            self._display_data(data)
            return
        for line in data.decode(errors="replace").splitlines():
            text = X_LOG_MARK.sub("", line).strip()  # "(EE) Fatal ..." -> "Fatal ..."
            if text:
                self.lines.append(text)
                log.debug("%s: %s", self.label, text)

    def _display_data(self, data: bytes) -> None:
        self._displayfd = (self._displayfd + data)[-32:]
        if b"\n" in self._displayfd and self.display is not None and not self.display.done():
            text = self._displayfd.split(b"\n", 1)[0].strip()
            if text.isdigit():
                self.display.set_result(int(text))

    def processExited(self, reason: Failure) -> None:
        # Not processEnded: that waits until every copy of the output pipes is
        # closed, which a program the session left running may hold for ever.
        self.on_end(reason)

    def processEnded(self, reason: Failure) -> None:
        self.closed.set()

    async def all_said(self, timeout: float = 1.0) -> None:
        """Until the output pipes are closed (so its last words arrived), or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)

    def last_words(self) -> str:
        return self.lines[-1] if self.lines else "no error message"


@dataclass
class _Run:
    """One start of a session: Xvnc, the session program, and how they ended."""

    account: Account
    socket: Path
    session_dir: Path
    xvnc: ProcessTransport | None = None
    xvnc_watch: _Watched | None = None
    session: ProcessTransport | None = None
    session_watch: _Watched | None = None
    display: int | None = None
    xvnc_pid: int | None = None
    session_pgid: int | None = None  # the session's process group, kept after it ends
    ready: bool = False
    stop_requested: bool = False
    xvnc_exited: asyncio.Event = field(default_factory=asyncio.Event)
    session_exited: asyncio.Event = field(default_factory=asyncio.Event)


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
    ) -> None:
        super().__init__(report)
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
        fresh_dir(self.socket_dir, self._xvnc_account(account))
        session_dir = self.session_dir
        fresh_dir(session_dir, None)  # thinserve's until filled, then the user's
        (session_dir / "runtime").mkdir(mode=0o700)
        write_private(session_dir / "Xauthority", xauthority_entry(secrets.token_bytes(16)))
        for path in (session_dir / "runtime", session_dir / "Xauthority", session_dir):
            give(path, account)
        self.run = _Run(account, self.vnc_socket, session_dir)
        return self.run

    def _xvnc_account(self, account: Account) -> Account:
        return account if self.config.xvnc_as_user else Account.of(None)

    async def _start_xvnc(self, run: _Run, binary: str) -> None:
        watch = _Watched(f"Xvnc {self.config.name}", lambda r: self._xvnc_ended(run, r))
        watch.display = asyncio.get_running_loop().create_future()
        run.xvnc_watch = watch
        account = self._xvnc_account(run.account)
        argv = [*wrapper(), binary, *self.xvnc_args(run)]
        run.xvnc = self._spawn(watch, argv, account, self._xvnc_env(account), "/", displayfd=True)
        run.xvnc_pid = run.xvnc.pid
        name = self.config.name
        log.info("desktop %s: Xvnc started as %s, pid %s", name, account.name, run.xvnc_pid)
        exited = run.xvnc_exited
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
        watch = _Watched(f"session {self.config.name}", lambda r: self._session_ended(run, r))
        run.session_watch = watch
        home = run.account.home if os.path.isdir(run.account.home) else "/"
        argv = [*wrapper(), "/bin/sh", "-c", command]
        run.session = self._spawn(watch, argv, run.account, self.session_env(run), home)
        run.session_pgid = run.session.pid
        log.info(
            "desktop %s: session %r started as %s on :%s, pid %s",
            self.config.name,
            command,
            run.account.name,
            run.display,
            run.session_pgid,
        )

    def _spawn(
        self,
        watch: _Watched,
        argv: list[str],
        account: Account,
        env: dict[str, str],
        cwd: str,
        displayfd: bool = False,
    ) -> ProcessTransport:
        fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r"}
        if displayfd:
            fds[3] = "r"
        switch = not account.is_me
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
        if run.xvnc_watch is None:
            return "no error message"
        await run.xvnc_watch.all_said()
        return run.xvnc_watch.last_words()

    # --- watching --------------------------------------------------------------------

    def _current(self, run: _Run) -> bool:
        """True while ``run`` is up and nobody is ending it: an end is news."""
        return run.ready and not run.stop_requested and self.run is run

    def _xvnc_ended(self, run: _Run, reason: Failure) -> None:
        run.xvnc_exited.set()
        remove_stale_display(run.display, run.xvnc_pid)
        if not self._current(run):
            return
        code = returncode(reason)

        def detail() -> str:
            text = f"Xvnc ended unexpectedly ({describe_exit(code)})"
            if code > 0 and run.xvnc_watch is not None:
                text += f": {run.xvnc_watch.last_words()}"  # a fatal error is its last line
            return text

        self._ended(run, DesktopState.CRASHED, detail, run.xvnc_watch)

    def _session_ended(self, run: _Run, reason: Failure) -> None:
        run.session_exited.set()
        if not self._current(run):
            return
        if run.xvnc_pid is not None and ending(run.xvnc_pid):
            log.debug("desktop %s: the session ended as Xvnc went", self.config.name)
            return  # Xvnc's own end follows and says why
        code = returncode(reason)
        if code == 0:
            self._ended(run, DesktopState.STOPPED, lambda: "the session ended (logged out)")
            return

        def detail() -> str:
            text = f"the session program failed ({describe_exit(code)})"
            words = run.session_watch.last_words() if run.session_watch else ""
            return f"{text}: {words}" if words else text

        self._ended(run, DesktopState.CRASHED, detail, run.session_watch)

    def _ended(
        self,
        run: _Run,
        status: DesktopState,
        detail: Callable[[], str],
        said_by: _Watched | None = None,
    ) -> None:
        """One half of the session ended by itself: end the other, then report.

        ``detail`` is read once the program's last output arrived (``said_by``).
        """
        run.stop_requested = True
        self.run = None

        async def finish() -> None:
            if said_by is not None:
                await said_by.all_said()
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
        signal_group(run.session, signal.SIGTERM)
        if run.session is not None and not force:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.session_exited.wait(), self.options.stop_timeout)
        signal_group(run.xvnc, signal.SIGTERM)
        for proc, exited in ((run.xvnc, run.xvnc_exited), (run.session, run.session_exited)):
            if proc is not None:
                await self._until_exited(proc, exited)
        if run.session_pgid is not None:  # what the session left behind in its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.session_pgid, signal.SIGKILL)
        await sweep(run.account.uid, f"XDG_RUNTIME_DIR={run.session_dir / 'runtime'}")

    async def _until_exited(self, proc: ProcessTransport, exited: asyncio.Event) -> None:
        """Until ``exited``; SIGKILL after KILL_TIMEOUT."""
        try:
            await asyncio.wait_for(exited.wait(), KILL_TIMEOUT)
        except TimeoutError:
            signal_group(proc, signal.SIGKILL)
            try:
                await asyncio.wait_for(exited.wait(), KILL_TIMEOUT)
            except TimeoutError:
                log.error("desktop %s: pid %s survives SIGKILL", self.config.name, pid_of(proc))

    async def reset(self) -> None:
        """A fresh session next time: stop now (the next start makes new directories)."""
        await self.stop(force=True)

    def processes(self) -> tuple[int | None, int | None]:
        """(Xvnc's pid, the session program's pid) while running."""
        run = self.run
        if run is None:
            return None, None
        return pid_of(run.xvnc), pid_of(run.session)


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
