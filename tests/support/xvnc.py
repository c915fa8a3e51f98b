"""A real TigerVNC Xvnc server on loopback, with X programs and exact pixels inside it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .need import need
from .ports import LOOPBACK, free_tcp_port, rfb_banner
from .procs import Spawned, spawn, start_x_server
from .vncauth import make_password_file
from .waiting import wait_until_blocking
from .xscreen import grab_root, paint_root

START_ATTEMPTS = 3  # a port picked free can be taken before Xvnc binds it


@dataclass
class XvncServer:
    """A running Xvnc: X display ``display``, RFB on ``host``:``port``."""

    display: int
    port: int
    size: tuple[int, int]
    password: str | None
    workdir: Path
    proc: Spawned
    host: str = LOOPBACK
    children: list[Spawned] = field(default_factory=list)

    @property
    def display_name(self) -> str:
        return f":{self.display}"

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with DISPLAY pointing at the server."""
        return {**os.environ, "DISPLAY": self.display_name}

    def run(self, argv: Sequence[str]) -> Spawned:
        """Start an X program inside the server; it is stopped with the server."""
        log = self.workdir / f"{Path(argv[0]).name}-{len(self.children)}.log"
        child = spawn(argv, log, self.env)
        self.children.append(child)
        return child

    def call(self, argv: Sequence[str], timeout: float = 30.0) -> str:
        """Run an X program inside the server to completion; its output, or an error."""
        result = subprocess.run(
            list(argv),
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv} exited {result.returncode}: {result.stderr.decode()}")
        return result.stdout.decode()

    def paint(self, frame: np.ndarray) -> None:
        """Show exactly ``frame`` (uint32 0x00RRGGBB) on the screen, from the top left."""
        paint_root(self.display_name, frame)

    def grab(self) -> np.ndarray:
        """The screen as the X server holds it."""
        return grab_root(self.display_name)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        self.proc.stop()


def need_xvnc() -> None:
    """Xvnc and vncpasswd must be there (see ``need``)."""
    need("Xvnc", "to run a real VNC server")
    need("vncpasswd", "to make VNC password files")


def start_xvnc(
    workdir: Path,
    size: tuple[int, int] = (640, 480),
    password: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 20.0,
) -> XvncServer:
    """Start Xvnc on a display it picks and a free loopback port; wait for RFB."""
    workdir.mkdir(parents=True, exist_ok=True)
    security = ["-SecurityTypes", "None"]
    if password is not None:
        passwd = make_password_file(workdir, password)
        security = ["-SecurityTypes", "VncAuth", "-PasswordFile", str(passwd)]
    options = [*security, "-geometry", f"{size[0]}x{size[1]}", "-depth", "24", *extra_args]
    for attempt in range(1, START_ATTEMPTS + 1):
        log = workdir / f"Xvnc-{attempt}.log"
        try:
            return _start_once(workdir, log, size, password, options, timeout)
        except PortTaken:
            if attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """Xvnc could not bind the port picked for it."""


def _start_once(
    workdir: Path,
    log: Path,
    size: tuple[int, int],
    password: str | None,
    options: list[str],
    timeout: float,
) -> XvncServer:
    port = free_tcp_port()
    argv = ["Xvnc", "-localhost", "-noreset", "-rfbport", str(port), *options]
    try:
        proc, display = start_x_server(argv, log, timeout)
    except RuntimeError as error:
        if "already in use" in log.read_text(errors="replace"):
            raise PortTaken(str(error)) from error
        raise
    try:
        wait_until_blocking(
            lambda: rfb_banner(LOOPBACK, port), timeout, f"Xvnc RFB on {port}", proc
        )
    except BaseException:
        proc.stop()
        raise
    return XvncServer(display, port, size, password, workdir, proc)
