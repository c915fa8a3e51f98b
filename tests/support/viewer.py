"""TigerVNC's vncviewer on a private Xvfb screen, and the pixels it shows."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from Xlib import X
from Xlib.display import Display
from Xlib.error import XError

from .need import need
from .ports import tcp_listening
from .procs import Spawned, spawn, start_x_server
from .vncauth import make_password_file
from .waiting import wait_until_blocking
from .xscreen import grab_root, open_display

SCREEN = (1920, 1200)  # the Xvfb screen; larger than any framebuffer it is to show
SETTLE_FRAMES = 3  # identical grabs in a row that count as "drawn"
POLL_SECONDS = 0.2

# Lossless, exact colours, no resizing of the server, no dialogs or banners, shared.
VIEWER_OPTIONS = (
    "-AutoSelect=0",
    "-PreferredEncoding=ZRLE",
    "-FullColor",
    "-NoJPEG",
    "-RemoteResize=0",
    "-Shared",
    "-ReconnectOnError=0",
    "-AlertOnFatalError=0",
    "-MenuKey=",  # no menu key: no "Press F8" banner over the first seconds of the picture
)

Box = tuple[int, int, int, int]  # x, y, width, height in root coordinates


@dataclass
class TigerViewer:
    """vncviewer running on its own Xvfb display."""

    xvfb: Spawned
    display: int
    viewer: Spawned
    workdir: Path
    listen_port: int | None = None

    @property
    def display_name(self) -> str:
        return f":{self.display}"

    def window_box(self) -> Box | None:
        """Where the viewer's mapped top-level window is, or None before it appears."""
        display = open_display(self.display_name)
        try:
            return _largest_mapped_child(display)
        finally:
            display.close()

    def grab_framebuffer(self) -> np.ndarray:
        """The pixels inside the viewer window (the remote framebuffer it shows)."""
        box = wait_until_blocking(self.window_box, 10.0, "the vncviewer window", self.viewer)
        return grab_root(self.display_name, box)

    def wait_for_frame(
        self,
        until: Callable[[np.ndarray], bool] | None = None,
        timeout: float = 30.0,
    ) -> np.ndarray:
        """The frame the window shows once it has settled and ``until(frame)`` holds.

        At ``timeout`` the last settled frame is returned instead, for the caller's
        assertion to describe; if the window never settled, TimeoutError is raised.
        """
        deadline = time.monotonic() + timeout
        recent: list[np.ndarray] = []
        last_settled: np.ndarray | None = None
        while time.monotonic() < deadline:
            if not self.viewer.alive():
                raise RuntimeError(f"vncviewer stopped: {self.viewer.describe_exit()}")
            box = self.window_box()
            if box is not None:
                recent = [*recent[-(SETTLE_FRAMES - 1) :], grab_root(self.display_name, box)]
                if _all_equal(recent, SETTLE_FRAMES):
                    last_settled = recent[-1]
                    if until is None or until(last_settled):
                        return last_settled
            time.sleep(POLL_SECONDS)
        if last_settled is None:
            raise TimeoutError(
                f"vncviewer showed no settled frame within {timeout} s; "
                f"its log ends with:\n{self.viewer.log_tail()}"
            )
        return last_settled

    def stop(self) -> None:
        self.viewer.stop()
        self.xvfb.stop()


def _all_equal(frames: list[np.ndarray], count: int) -> bool:
    last = frames[-1]
    return len(frames) == count and all(
        f.shape == last.shape and np.array_equal(f, last) for f in frames
    )


def _largest_mapped_child(display: Display) -> Box | None:
    best: Box | None = None
    try:
        for window in display.screen().root.query_tree().children:
            if window.get_attributes().map_state != X.IsViewable:
                continue
            geometry = window.get_geometry()
            box = (geometry.x, geometry.y, geometry.width, geometry.height)
            if best is None or box[2] * box[3] > best[2] * best[3]:
                best = box
    except XError:
        return None  # a window went away while we looked
    return best if best is not None and best[2] * best[3] > 1 else None


def need_viewer() -> None:
    """Xvfb, vncviewer and vncpasswd must be there (see ``need``)."""
    need("Xvfb", "to give vncviewer a screen")
    need("vncviewer", "to see what a real VNC viewer shows")
    need("vncpasswd", "to make VNC password files")


def start_xvfb(workdir: Path, screen: tuple[int, int] = SCREEN) -> tuple[Spawned, int]:
    argv = ["Xvfb", "-screen", "0", f"{screen[0]}x{screen[1]}x24", "-nolisten", "tcp", "-noreset"]
    return start_x_server(argv, workdir / "Xvfb.log")


def start_viewer(
    workdir: Path,
    server: str | None = None,
    listen_port: int | None = None,
    password_file: Path | None = None,
    screen: tuple[int, int] = SCREEN,
    options: tuple[str, ...] = (),
) -> TigerViewer:
    """Start Xvfb and vncviewer on it, connecting to ``server`` ("host::port") or
    listening for a server to connect in on ``listen_port`` (reverse connection);
    ``options``: more of vncviewer's options (``-PreferredEncoding=Tight``)."""
    if (server is None) == (listen_port is None):
        raise ValueError("give exactly one of server and listen_port")
    workdir.mkdir(parents=True, exist_ok=True)
    xvfb, display = start_xvfb(workdir, screen)
    env = {**os.environ, "DISPLAY": f":{display}", "HOME": str(workdir)}
    argv = ["vncviewer", *VIEWER_OPTIONS, *options]
    if password_file is not None:
        argv += ["-PasswordFile", str(password_file)]
    argv += [server] if server is not None else ["-listen", str(listen_port)]
    try:
        viewer = spawn(argv, workdir / "vncviewer.log", env)
    except BaseException:
        xvfb.stop()
        raise
    result = TigerViewer(xvfb, display, viewer, workdir, listen_port)
    if listen_port is not None:
        try:
            wait_until_blocking(
                lambda: tcp_listening(listen_port),
                10.0,
                f"vncviewer to listen on {listen_port}",
                viewer,
            )
        except BaseException:
            result.stop()
            raise
    return result


def tigervnc_viewer_capture(
    host: str,
    port: int,
    password: str | None = None,
    until: Callable[[np.ndarray], bool] | None = None,
    timeout: float = 30.0,
    workdir: Path | None = None,
    options: tuple[str, ...] = (),
) -> np.ndarray:
    """What TigerVNC's vncviewer shows of the server at host:port, as uint32 0x00RRGGBB.

    Returns the first settled frame for which ``until`` (if given) holds, or the last
    settled one after ``timeout`` seconds; everything started is stopped.  Logs are
    kept in a new folder under ``workdir`` when given, else thrown away.
    """
    need_viewer()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="viewer-") as tmp:
            return _capture_in(Path(tmp), f"{host}::{port}", password, until, timeout, options)
    directory = Path(tempfile.mkdtemp(prefix="viewer-", dir=workdir))
    return _capture_in(directory, f"{host}::{port}", password, until, timeout, options)


def _capture_in(
    directory: Path,
    server: str,
    password: str | None,
    until: Callable[[np.ndarray], bool] | None,
    timeout: float,
    options: tuple[str, ...] = (),
) -> np.ndarray:
    passwd = make_password_file(directory, password) if password is not None else None
    viewer = start_viewer(directory, server, password_file=passwd, options=options)
    try:
        return viewer.wait_for_frame(until, timeout)
    finally:
        viewer.stop()
