"""The peer: a TigerVNC Xvnc on loopback, and putting a frame on its screen.

Xvnc is started on a free display and a free TCP port, listening on
loopback only, with no authentication, and killed by :meth:`Xvnc.stop`.
Frames are drawn on the root window with PutImage in chunks small enough
for the core protocol's request size, then XSync; the pointer is made
invisible, because Xvnc paints the cursor into the framebuffer of a client
that did not ask for cursor shapes.  Xvnc also keeps that composite of the
cursor and the pixels under it until the pointer moves, so after drawing
the pointer is moved, or the pixel under it would show the previous frame.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from Xlib import X
from Xlib import display as xdisplay

INSTALL_HINT = "apt-get install tigervnc-standalone-server"
START_TIMEOUT = 10.0
PUT_IMAGE_OVERHEAD = 64  # bytes of a PutImage request besides the pixels


class XvncError(RuntimeError):
    pass


def xvnc_path() -> str | None:
    return shutil.which("Xvnc")


def free_display(start: int = 40) -> int:
    """A display number with neither a lock file nor a socket."""
    for number in range(start, start + 400):
        if not (
            Path(f"/tmp/.X{number}-lock").exists() or Path(f"/tmp/.X11-unix/X{number}").exists()
        ):
            return number
    raise XvncError(f"no free X display number between :{start} and :{start + 399}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


class Xvnc:
    """One Xvnc process of a given size, and an X connection to draw on it."""

    def __init__(
        self, width: int, height: int, name: str = "bench", extra_args: tuple[str, ...] = ()
    ) -> None:
        self.width = width
        self.height = height
        self.name = name  # the desktop name Xvnc announces in ServerInit
        self.extra_args = extra_args  # more Xvnc options (e.g. -rfbunixpath PATH)
        self.display_number = 0
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.x: xdisplay.Display | None = None
        self.version = ""
        self._draws = 0

    def start(self, attempts: int = 3, display: int | None = None, port: int | None = None) -> None:
        """Start Xvnc; ``display`` and ``port`` when the caller has reserved them."""
        path = xvnc_path()
        if path is None:
            raise XvncError(f"Xvnc is not installed: {INSTALL_HINT}")
        self.version = xvnc_version(path)
        for attempt in range(attempts):
            if attempt or display is None or port is None:
                display, port = free_display(), free_port()
            if self._try_start(path, display, port):
                atexit.register(self.stop)  # also when the run is interrupted
                self.x = xdisplay.Display(f":{self.display_number}")
                self._hide_pointer()
                return
        raise XvncError(f"Xvnc did not start after {attempts} attempts")

    def _try_start(self, path: str, display: int, port: int) -> bool:
        self.display_number, self.port = display, port
        args = [
            path, f":{self.display_number}",
            "-localhost", "-rfbport", str(self.port),
            "-SecurityTypes", "None",
            "-geometry", f"{self.width}x{self.height}", "-depth", "24",
            "-nolisten", "tcp", "-s", "0", "-AlwaysShared", "-desktop", self.name,
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        socket_path = Path(f"/tmp/.X11-unix/X{self.display_number}")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if socket_path.exists() and _port_open(self.port):
                return True
            time.sleep(0.05)
        self._kill()
        return False

    def _hide_pointer(self) -> None:
        assert self.x is not None
        root = self.x.screen().root
        empty = root.create_pixmap(1, 1, 1)
        clear = empty.create_gc(foreground=0)
        empty.fill_rectangle(clear, 0, 0, 1, 1)  # a new pixmap's content is undefined
        clear.free()
        cursor = empty.create_cursor(empty, (0, 0, 0), (0, 0, 0), 0, 0)
        root.change_attributes(cursor=cursor)
        self.x.sync()

    def draw(self, frame: np.ndarray) -> None:
        """Put ``frame`` (0x00RRGGBB, the screen's size) on the root window."""
        assert self.x is not None
        height, width = frame.shape
        if (width, height) != (self.width, self.height):
            screen = f"{self.width}x{self.height}"
            raise XvncError(f"frame {width}x{height} does not fit the {screen} screen")
        root = self.x.screen().root
        gc = root.create_gc()
        self.put(gc, 0, 0, frame)
        gc.free()
        self._draws += 1
        root.warp_pointer(self._draws % 2, 0)  # renews Xvnc's cursor composite
        self.x.sync()

    def put(self, gc: object, x: int, y: int, pixels: np.ndarray) -> None:
        """PutImage ``pixels`` at (x, y) on the root window, in request-sized chunks."""
        assert self.x is not None
        info = self.x.display.info
        order = "<" if info.image_byte_order == X.LSBFirst else ">"
        words = pixels.astype(f"{order}u4")
        height, width = pixels.shape
        max_bytes = info.max_request_length * 4 - PUT_IMAGE_OVERHEAD
        rows = max(1, max_bytes // (width * 4))
        root = self.x.screen().root
        for top in range(0, height, rows):
            chunk = words[top : top + rows]
            data = chunk.tobytes()
            root.put_image(gc, x, y + top, width, chunk.shape[0], X.ZPixmap, 24, 0, data)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.x is not None:
            with contextlib.suppress(Exception):
                self.x.close()
            self.x = None
        self._kill()

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def start_many(servers: list[Xvnc]) -> None:
    """Start several Xvnc at once, on distinct displays and ports."""
    displays: list[int] = []
    ports: set[int] = set()
    plan = []
    for _server in servers:
        display = free_display(displays[-1] + 1 if displays else 40)
        displays.append(display)
        port = free_port()
        while port in ports:
            port = free_port()
        ports.add(port)
        plan.append((display, port))
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = [pool.submit(s.start, 3, d, p) for s, (d, p) in zip(servers, plan, strict=True)]
        for job in jobs:
            job.result()


def xvnc_version(path: str | None = None) -> str:
    """The first line of ``Xvnc -version``, e.g. "Xvnc TigerVNC 1.12.0 - built ..."."""
    path = path or xvnc_path()
    if path is None:
        return "Xvnc not installed"
    try:
        out = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "Xvnc (version unknown)"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return next((line.strip() for line in lines if line.startswith("Xvnc")), "Xvnc")
