"""Drive a VNC server with vncdotool's `vncdo` command line: capture, type, press keys."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .pixels import read_image

DEFAULT_TIMEOUT = 60.0


def vncdo_path() -> str:
    """The `vncdo` installed beside this Python (the venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "vncdo"
    if beside.exists():
        return str(beside)
    found = shutil.which("vncdo")
    if found is None:
        raise FileNotFoundError("vncdo not found: pip install vncdotool (in the test extras)")
    return found


def vncdo(
    host: str,
    port: int,
    actions: Sequence[str],
    password: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    options: Sequence[str] = (),
) -> None:
    """Run `vncdo -s host::port ACTIONS...` against a server; raise with its output on failure.

    ``--force-caps`` sends Shift with upper-case letters and shifted symbols, so
    `type` works on servers that map keys to scancodes (QEMU) as well as on Xvnc.
    """
    argv = [vncdo_path(), "-s", f"{host}::{port}", "--force-caps", "-t", str(int(timeout))]
    if password is not None:
        argv += ["-p", password]
    argv += options
    result = subprocess.run(
        [*argv, *actions],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout + 10,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")[-2000:]
        raise RuntimeError(f"vncdo {list(actions)} exited {result.returncode}: {output}")


def vncdo_capture(host: str, port: int, path: Path, password: str | None = None) -> np.ndarray:
    """Capture the server's framebuffer with `vncdo capture` into a PNG at ``path``.

    Returns the image as a uint32 0x00RRGGBB array.  The pointer is left out
    (``--nocursor``), so the result is the framebuffer's own pixels.

    vncdotool 1.4.2 anchors its canvas at the first rectangle it receives, so a
    first update whose first rectangle is not at (0, 0) (TigerVNC sends solid
    areas first) comes out shifted.  The first update still sizes the canvas to
    the whole screen, so a second capture in the same session is exact: the first
    one goes to a scratch file beside ``path``.
    """
    scratch = path.with_name(f".{path.stem}-warmup.png")
    try:
        actions = ["capture", str(scratch), "capture", str(path)]
        vncdo(host, port, actions, password, options=["--nocursor"])
    finally:
        scratch.unlink(missing_ok=True)
    return read_image(path)
