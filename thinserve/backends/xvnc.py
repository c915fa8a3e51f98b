"""Local desktops: a TigerVNC Xvnc session per desktop, started by thinserve.

Xvnc listens only on a Unix socket in a directory only thinserve's user can
enter, so nothing but thinserve reaches the desktop.  The session program
(a desktop environment or one application) starts once the X server is up.
If Xvnc dies it is started again after a short delay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from twisted.internet import protocol
from twisted.internet import reactor as default_reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.python.failure import Failure

from ..config import LocalDesktopConfig

log = logging.getLogger(__name__)

SESSION_PROGRAMS = ("x-session-manager", "startxfce4", "xterm")
RESTART_DELAY = 2.0


class XvncMissing(RuntimeError):
    pass


def runtime_dir() -> Path:
    """A private directory for sockets: $XDG_RUNTIME_DIR/thinserve or similar."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0 else "/tmp")
    path = Path(base) / ("thinserve" if base != "/tmp" else f"thinserve-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


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


class _Watched(protocol.ProcessProtocol):
    def __init__(self, name: str, on_exit: callable) -> None:  # type: ignore[valid-type]
        self.name = name
        self.on_exit = on_exit

    def errReceived(self, data: bytes) -> None:
        for line in data.decode(errors="replace").splitlines():
            if line.strip():
                log.debug("%s: %s", self.name, line)

    def processEnded(self, reason: Failure) -> None:
        self.on_exit(reason)


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
