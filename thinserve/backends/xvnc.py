"""Local desktops: a TigerVNC Xvnc session per desktop, started by thinserve.

Xvnc listens only on a Unix socket in a private directory, so nothing but
thinserve reaches the desktop.  The session program (a desktop environment
or one application) starts once the X server is up.

Two classes live here:

- ``XvncBackend`` implements the desktop ``Backend`` protocol: the shared-PC
  mode.  Each configured desktop is one Xvnc session, started on demand, and
  may name the Unix user it runs as (thinserve must then be root).  Xvnc and
  the session both run as that user, so one user's session cannot read
  another's: each session has its own 0700 directories, its own X cookie
  and its own XDG_RUNTIME_DIR.
- ``LocalXvncDesktop``: one always-on Xvnc as thinserve's own user, restarted
  after a short delay if it dies (the service's built-in default desktop).

Directories (``XvncOptions.runtime_dir``, default ``/run/thinserve-sessions``
as root)::

    <base>/                 0711 (root) or 0700: thinserve's
    <base>/sockets/<name>/  0700, owned by whoever runs Xvnc: vnc.sock (0600)
    <base>/sessions/<name>/ 0700, owned by the session's user:
        Xauthority          the display's MIT-MAGIC-COOKIE-1 (0600)
        runtime/            the session's XDG_RUNTIME_DIR

Both per-desktop directories are removed and made afresh, as root and before
they are handed to the user, at every start; so a session never inherits
its predecessor's files and thinserve never follows a link a user planted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet import reactor as default_reactor
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.python.failure import Failure

from .base import (
    BackendError,
    DesktopStatus,
    StatusListener,
    UnitBackend,
)
from .lifecycle import DesktopLifecycle, rfb_greets

if TYPE_CHECKING:
    from ..config import LocalDesktopConfig

log = logging.getLogger(__name__)

SESSION_PROGRAMS = ("x-session-manager", "startxfce4", "xterm")
RESTART_DELAY = 2.0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
USER_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\$?")
GEOMETRY_PATTERN = re.compile(r"(\d{2,5})x(\d{2,5})")
DEPTHS = (16, 24, 32)
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
PROBE_INTERVAL = 0.1
KILL_TIMEOUT = 5.0
X_LOG_MARK = re.compile(r"^\s*\([A-Z!+*-]{2}\)")  # the X server's (EE), (II), (WW), (**)
XAUTH_FAMILY_WILD = 0xFFFF
COOKIE = "MIT-MAGIC-COOKIE-1"


class XvncMissing(RuntimeError):
    pass


def runtime_dir() -> Path:
    """A private directory for sockets: $XDG_RUNTIME_DIR/thinserve or similar."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0 else "/tmp")
    path = Path(base) / ("thinserve" if base != "/tmp" else f"thinserve-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def sessions_dir() -> Path:
    """Where XvncBackend keeps its sessions' directories (not created here)."""
    if os.geteuid() == 0:
        return Path("/run/thinserve-sessions")
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        return Path(base) / "thinserve-sessions"
    return Path(f"/tmp/thinserve-sessions-{os.getuid()}")


def free_display(start: int = 20) -> int:
    for number in range(start, start + 200):
        if not (
            Path(f"/tmp/.X{number}-lock").exists() or Path(f"/tmp/.X11-unix/X{number}").exists()
        ):
            return number
    raise RuntimeError("no free X display number between :20 and :219")


def default_session_command() -> str | None:
    for program in SESSION_PROGRAMS:
        if shutil.which(program):
            return program
    return None


# --- the shared-PC backend -------------------------------------------------------------


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


@dataclass(frozen=True)
class Account:
    """Who a session runs as, from the password database."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @classmethod
    def of(cls, user: str | None) -> Account:
        try:
            entry = pwd.getpwuid(os.geteuid()) if user is None else pwd.getpwnam(user)
        except KeyError:
            raise BackendError(
                f"there is no Unix user {user!r}: create it (useradd --create-home {user}) "
                "or change the desktop's user"
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()


def account_for(config: XvncDesktopConfig) -> Account:
    """The desktop's account; a clear error if thinserve cannot switch to it."""
    account = Account.of(config.user)
    if not account.is_me and os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise BackendError(
            f"desktop {config.name} runs as user {account.name}, but thinserve runs as {me}: "
            "only root can start sessions for other users (run thinserve as root, or drop "
            "the desktop's user setting to run it as yourself)"
        )
    return account


def xauthority_entry(cookie: bytes) -> bytes:
    """One Xauthority record: any address, any display, MIT-MAGIC-COOKIE-1."""

    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    return struct.pack(">H", XAUTH_FAMILY_WILD) + b"".join(
        counted(part) for part in (b"", b"", COOKIE.encode(), cookie)
    )


def describe_end(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(value.signal).name}"
            return f"killed by signal {value.signal}"
        return f"exit status {value.exitCode}"
    return "exit status 0"


def _ended_cleanly(reason: Failure) -> bool:
    return not isinstance(reason.value, ProcessTerminated)


def _failed_by_itself(reason: Failure) -> bool:
    """Exited with an error status (not killed by a signal)."""
    return isinstance(reason.value, ProcessTerminated) and reason.value.signal is None


def _wrapper() -> list[str]:
    """setsid (its own process group) and a parent-death signal, when available."""
    if shutil.which("setsid") and shutil.which("setpriv"):
        return ["setsid", "setpriv", "--pdeathsig", "TERM", "--"]
    return []


class _Watched(protocol.ProcessProtocol):
    """Collects a process's output lines and tells its owner when it ends."""

    def __init__(self, label: str, on_end: Callable[[Failure], None]) -> None:
        self.label = label
        self.on_end = on_end
        self.lines: deque[str] = deque(maxlen=20)
        self.display: asyncio.Future[int] | None = None
        self.closed = asyncio.Event()
        self._displayfd = b""

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 3:
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
    xvnc: Any = None  # IProcessTransport
    xvnc_watch: _Watched | None = None
    session: Any = None
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

    def __init__(
        self,
        config: XvncDesktopConfig,
        options: XvncOptions,
        report: StatusListener,
        reactor: Any,
    ) -> None:
        super().__init__(report)
        self.config = config
        self.options = options
        self.reactor = reactor
        self.run: _Run | None = None
        self._endings: set[asyncio.Task[None]] = set()

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

    def _summary(self, run: _Run) -> str:
        cfg = self.config
        return f"user {run.account.name}, display :{run.display}, {cfg.geometry}x{cfg.depth}"

    # --- starting -----------------------------------------------------------------------

    async def _start(self) -> None:
        async with self._lock:
            if self.run is not None and self.status is DesktopStatus.RUNNING:
                return
            await self.wait_ended()
            try:
                account, binary = account_for(self.config), self._binary()
            except BackendError as exc:
                self._set(DesktopStatus.CRASHED, str(exc))
                raise
            self._set(DesktopStatus.STARTING, f"user {account.name}")
            try:
                run = self._prepare(account)
                await self._launch(run, binary)
            except (asyncio.CancelledError, BackendError) as exc:
                await self._abort_start(exc)
                raise
            except OSError as exc:
                error = BackendError(f"desktop {self.config.name}: could not start Xvnc: {exc}")
                await self._abort_start(error)
                raise error from exc
            run.ready = True
            self._set(DesktopStatus.RUNNING, self._summary(run))

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
        _make_base(self.base)
        xvnc_owner = account if self.config.xvnc_as_user else Account.of(None)
        _fresh_dir(self.socket_dir, xvnc_owner)
        session_dir = self.session_dir
        _fresh_dir(session_dir, None)  # thinserve's until filled, then the user's
        (session_dir / "runtime").mkdir(mode=0o700)
        _write_private(session_dir / "Xauthority", xauthority_entry(secrets.token_bytes(16)))
        for path in (session_dir / "runtime", session_dir / "Xauthority", session_dir):
            _give(path, account)
        self.run = _Run(account, self.vnc_socket, session_dir)
        return self.run

    async def _launch(self, run: _Run, binary: str) -> None:
        loop = asyncio.get_running_loop()
        watch = _Watched(f"Xvnc {self.config.name}", lambda r: self._xvnc_ended(run, r))
        watch.display = loop.create_future()
        run.xvnc_watch = watch
        xvnc_account = run.account if self.config.xvnc_as_user else Account.of(None)
        argv = [*_wrapper(), binary, *self.xvnc_args(run)]
        env = self._xvnc_env(xvnc_account)
        run.xvnc = self._spawn(watch, argv, xvnc_account, env, "/", displayfd=True)
        run.xvnc_pid = run.xvnc.pid
        name = self.config.name
        log.info("desktop %s: Xvnc started as %s, pid %d", name, xvnc_account.name, run.xvnc_pid)
        run.display = await self._race_exit(run, watch.display, "report its display")
        await self._race_exit(run, self._until_rfb(run.socket), "answer on its RFB socket")
        self._start_session(run)
        await _until_execed(run.session_pgid)  # signals before exec would reach only Python

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
        run.session = self._spawn(
            watch, [*_wrapper(), "/bin/sh", "-c", command], run.account, self.session_env(run), home
        )
        run.session_pgid = run.session.pid
        log.info(
            "desktop %s: session %r started as %s on :%s, pid %d",
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
    ) -> Any:
        reactor: IReactorProcess = self.reactor
        fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r"}
        if displayfd:
            fds[3] = "r"
        switch = not account.is_me
        return reactor.spawnProcess(
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
        return env | {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ")}

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
        return env | {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ")}

    async def _race_exit(self, run: _Run, step: Any, what: str) -> Any:
        """Await ``step`` unless Xvnc exits first or the start times out."""
        step_task = asyncio.ensure_future(step)
        exit_task = asyncio.ensure_future(run.xvnc_exited.wait())
        try:
            await asyncio.wait(
                {step_task, exit_task},
                timeout=self.options.start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            exit_task.cancel()
        if not step_task.done():
            step_task.cancel()
            if run.xvnc_exited.is_set() and run.xvnc_watch is not None:
                await run.xvnc_watch.all_said()
                words = run.xvnc_watch.last_words()
                raise BackendError(f"Xvnc exited before it could {what}: {words}")
            raise BackendError(f"Xvnc did not {what} within {self.options.start_timeout:.0f} s")
        return step_task.result()

    @staticmethod
    async def _until_rfb(path: Path) -> None:
        while not await rfb_greets(path):
            await asyncio.sleep(PROBE_INTERVAL)

    async def _abort_start(self, exc: BaseException) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.stop_requested = True
            await self._kill(run, force=True)
        if isinstance(exc, BackendError):
            self._set(DesktopStatus.CRASHED, str(exc))
        else:
            self._set(DesktopStatus.STOPPED, "start cancelled")

    # --- watching --------------------------------------------------------------------

    def _xvnc_ended(self, run: _Run, reason: Failure) -> None:
        run.xvnc_exited.set()
        _remove_stale_display(run.display, run.xvnc_pid)
        if not run.ready or run.stop_requested or self.run is not run:
            return

        def detail() -> str:
            text = f"Xvnc ended unexpectedly ({describe_end(reason)})"
            if _failed_by_itself(reason) and run.xvnc_watch is not None:
                text += f": {run.xvnc_watch.last_words()}"  # a fatal error is its last line
            return text

        self._ended(run, DesktopStatus.CRASHED, detail, run.xvnc_watch)

    def _session_ended(self, run: _Run, reason: Failure) -> None:
        run.session_exited.set()
        if not run.ready or run.stop_requested or self.run is not run:
            return
        if _ended_cleanly(reason):
            self._ended(run, DesktopStatus.STOPPED, lambda: "the session ended (logged out)")
            return

        def detail() -> str:
            text = f"the session program failed ({describe_end(reason)})"
            words = run.session_watch.last_words() if run.session_watch else ""
            return f"{text}: {words}" if words else text

        self._ended(run, DesktopStatus.CRASHED, detail, run.session_watch)

    def _ended(
        self,
        run: _Run,
        status: DesktopStatus,
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
            crashed = status is DesktopStatus.CRASHED
            log.log(
                logging.WARNING if crashed else logging.INFO,
                "desktop %s: %s",
                self.config.name,
                why,
            )
            await self._kill(run, force=True)
            self._set(status, why)

        task = asyncio.ensure_future(finish())
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    # --- stopping ---------------------------------------------------------------------

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
            self._set(DesktopStatus.STOPPING, "ending the session" if not force else "quitting")
            await self._kill(run, force)
            self.run = None
            self._set(DesktopStatus.STOPPED, "stopped")

    async def _kill(self, run: _Run, force: bool) -> None:
        """End the session (gracefully unless ``force``), then Xvnc; wait for both."""
        _signal(run.session, signal.SIGTERM)
        if run.session is not None and not force:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.session_exited.wait(), self.options.stop_timeout)
        _signal(run.xvnc, signal.SIGTERM)
        for proc, exited in ((run.xvnc, run.xvnc_exited), (run.session, run.session_exited)):
            if proc is None:
                continue
            try:
                await asyncio.wait_for(exited.wait(), KILL_TIMEOUT)
            except TimeoutError:
                _signal(proc, signal.SIGKILL)
                try:
                    await asyncio.wait_for(exited.wait(), KILL_TIMEOUT)
                except TimeoutError:
                    log.error("desktop %s: pid %s survives SIGKILL", self.config.name, _pid(proc))
        if run.session_pgid is not None:  # what the session left behind in its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.session_pgid, signal.SIGKILL)
        await _sweep(run.account.uid, f"XDG_RUNTIME_DIR={run.session_dir / 'runtime'}")

    async def reset(self) -> None:
        """A fresh session next time: stop now (the next start makes new directories)."""
        await self.stop(force=True)

    def processes(self) -> tuple[int | None, int | None]:
        """(Xvnc's pid, the session program's pid) while running."""
        run = self.run
        if run is None:
            return None, None
        return _pid(run.xvnc), _pid(run.session)

    async def wait_ended(self) -> None:
        """Until the ending of a session that ended by itself is complete."""
        if self._endings:
            await asyncio.gather(*self._endings, return_exceptions=True)


class XvncBackend(UnitBackend[XvncSession]):
    """The desktops of one or more XvncDesktopConfig, each its own Xvnc session."""

    name = "xvnc"
    kind = "xvnc"

    def __init__(
        self,
        desktops: Iterable[XvncDesktopConfig],
        on_status: StatusListener | None = None,
        options: XvncOptions | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__(on_status)
        self.options = options or XvncOptions()
        self.reactor = reactor or default_reactor
        for config in desktops:
            if config.name in self.sessions:
                raise BackendError(f"two xvnc desktops are named {config.name!r}")
            account_for(config)  # a missing user or a missing root is a start-up error
            self.sessions[config.name] = XvncSession(
                config, self.options, self._report, self.reactor
            )

    @property
    def sessions(self) -> dict[str, XvncSession]:
        return self.units

    def session(self, desktop: str) -> XvncSession:
        return self.unit(desktop)

    def stop_on_release(self, desktop: str) -> bool:
        """True when the desktop ends once nobody uses it (keep_after_logout off)."""
        return not self.session(desktop).config.keep_after_logout


# --- files and processes ----------------------------------------------------------------


def _make_base(base: Path) -> None:
    """thinserve's directory: others may pass through (as root) but not list it."""
    mode = 0o711 if os.geteuid() == 0 else 0o700
    for path in (base, base / "sockets", base / "sessions"):
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        st = path.lstat()
        if st.st_uid != os.geteuid() or not os.path.isdir(path) or path.is_symlink():
            raise BackendError(f"{path} must be a directory owned by thinserve's user")
        os.chmod(path, mode)


def _fresh_dir(path: Path, owner: Account | None) -> None:
    """``path`` emptied and made again: 0700, owned by ``owner`` (None: thinserve)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    if owner is not None:
        _give(path, owner)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _give(path: Path, account: Account) -> None:
    if not account.is_me:
        os.chown(path, account.uid, account.gid, follow_symlinks=False)


def _pid(transport: Any) -> int | None:
    return None if transport is None else transport.pid


def _signal(transport: Any, signum: int) -> None:
    """Signal a process's whole group (it is a group leader), else just the process."""
    pid = _pid(transport)
    if pid is None:
        return
    try:
        os.killpg(pid, signum)
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessExitedAlready, OSError):
        transport.signalProcess(signum)


def session_processes(uid: int, marker: str) -> list[int]:
    """Processes of ``uid`` whose environment holds ``marker`` (``NAME=value``).

    A session's programs inherit its private XDG_RUNTIME_DIR, so this finds
    what escaped its process group (a terminal's shell, a forked daemon).
    """
    wanted = marker.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry.path).st_uid != uid:
                continue
            with open(os.path.join(entry.path, "environ"), "rb") as file:
                environ = file.read(1 << 20).split(b"\0")
        except OSError:
            continue
        if wanted in environ:
            found.append(int(entry.name))
    return found


async def _sweep(uid: int, marker: str) -> None:
    """End what is left of a session: SIGTERM, then SIGKILL after a second."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        pids = session_processes(uid, marker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        for _ in range(20):
            if not pids:
                return
            await asyncio.sleep(0.05)
            pids = session_processes(uid, marker)


async def _until_execed(pid: int | None, timeout: float = 2.0) -> None:
    """Until the forked child ``pid`` has become its program (or is gone)."""
    if pid is None:
        return
    me = os.path.realpath(f"/proc/{os.getpid()}/exe")
    for _ in range(int(timeout / 0.005)):
        try:
            if os.path.realpath(f"/proc/{pid}/exe") != me:
                return
        except OSError:
            return
        await asyncio.sleep(0.005)


def _remove_stale_display(display: int | None, pid: int | None) -> None:
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


# --- the always-on local desktop ------------------------------------------------------------


class LocalXvncDesktop:
    """One Xvnc desktop with its session program."""

    def __init__(self, config: LocalDesktopConfig, reactor: object | None = None) -> None:
        self.config = config
        self.reactor = reactor or default_reactor
        self.display: int | None = None
        self.socket = runtime_dir() / f"{config.name}.sock"
        self.xvnc: object | None = None
        self.session: object | None = None
        self.running = False

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        if shutil.which("Xvnc") is None:
            raise XvncMissing(
                "Xvnc is not installed: apt-get install tigervnc-standalone-server "
                "(or configure [[desktop]] entries instead of local desktops)"
            )
        self.running = True
        self._start_xvnc()

    def stop(self) -> None:
        self.running = False
        for proc in (self.session, self.xvnc):
            if proc is not None:
                with contextlib.suppress(ProcessExitedAlready):
                    proc.signalProcess("TERM")  # type: ignore[attr-defined]

    def _start_xvnc(self) -> None:
        self.display = free_display()
        self.socket.unlink(missing_ok=True)
        args = [
            "Xvnc",
            f":{self.display}",
            "-rfbport", "-1",
            "-rfbunixpath", str(self.socket),
            "-rfbunixmode", "0600",
            "-SecurityTypes", "None",
            "-geometry", self.config.geometry,
            "-depth", "24",
            "-AlwaysShared",
            "-nolisten", "tcp",
            "-desktop", self.config.name,
        ]  # fmt: skip
        reactor: IReactorProcess = self.reactor  # type: ignore[assignment]
        self.xvnc = reactor.spawnProcess(
            _Watched(f"Xvnc {self.config.name}", self._xvnc_exited), "Xvnc", args, env=_env()
        )
        log.info(
            "local desktop %s: Xvnc on :%d, socket %s", self.config.name, self.display, self.socket
        )
        self._start_session_when_ready(tries=100)

    def _start_session_when_ready(self, tries: int) -> None:
        clock: IReactorTime = self.reactor  # type: ignore[assignment]
        if not self.running:
            return
        if not Path(f"/tmp/.X11-unix/X{self.display}").exists() and tries > 0:
            clock.callLater(0.1, self._start_session_when_ready, tries - 1)
            return
        command = self.config.command or default_session_command()
        if command is None:
            log.warning(
                "local desktop %s: no session program found (tried %s)",
                self.config.name,
                ", ".join(SESSION_PROGRAMS),
            )
            return
        env = _env() | {"DISPLAY": f":{self.display}"}
        reactor: IReactorProcess = self.reactor  # type: ignore[assignment]
        self.session = reactor.spawnProcess(
            _Watched(f"session {self.config.name}", lambda r: None),
            "/bin/sh",
            ["/bin/sh", "-c", command],
            env=env,
            path=env.get("HOME", "/"),
        )

    def _xvnc_exited(self, reason: Failure) -> None:
        self.xvnc = None
        if self.running:
            log.warning(
                "local desktop %s: Xvnc ended (%s); restarting",
                self.config.name,
                reason.getErrorMessage(),
            )
            clock: IReactorTime = self.reactor  # type: ignore[assignment]
            clock.callLater(RESTART_DELAY, self._restart)

    def _restart(self) -> None:
        if self.running:
            self._start_xvnc()


def _env() -> dict[str, str]:
    keep = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "XDG_RUNTIME_DIR")
    return {k: v for k, v in os.environ.items() if k in keep}
