"""Remmina as a terminal: it shows a desktop through thinserve, exactly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import threads

from tests.integration.test_relay import desktop, live
from tests.integration.test_rfb_interop import office_frame
from tests.support.need import need
from tests.support.procs import spawn
from tests.support.server import first_free, start_thinserve
from tests.support.viewer import start_xvfb
from tests.support.xscreen import grab_root

pytestmark = pytest.mark.integration


def find(shot: np.ndarray, picture: np.ndarray) -> tuple[int, int] | None:
    """Where ``picture`` appears exactly inside ``shot``, if it does."""
    h, w = picture.shape
    ys, xs = np.nonzero(shot[: shot.shape[0] - h + 1, : shot.shape[1] - w + 1] == picture[0, 0])
    for y, x in zip(ys[:5000], xs[:5000], strict=True):
        if np.array_equal(shot[y : y + h, x : x + w], picture):
            return int(x), int(y)
    return None


def remmina_shows(port: int, picture: np.ndarray, workdir: Path, timeout: float = 40) -> bool:
    xvfb, display = start_xvfb(workdir, (1280, 1024))
    home = workdir / "home"
    home.mkdir()
    env = {**os.environ, "DISPLAY": f":{display}", "HOME": str(home)}
    remmina = spawn(["remmina", "-c", f"vnc://127.0.0.1:{port}"], workdir / "remmina.log", env)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if find(grab_root(f":{display}"), picture) is not None:
                return True
            time.sleep(0.5)
        return False
    finally:
        remmina.stop()
        xvfb.stop()


@pytest_twisted.ensureDeferred
async def test_remmina_shows_the_desktop_through_thinserve(xvnc, tmp_path: Path) -> None:
    need("remmina", "to check Remmina as a terminal")
    server = xvnc(size=(640, 480))
    frame = office_frame(640, 480)
    server.paint(frame)
    desktops = [desktop("d1", server)]
    ts = await start_thinserve(desktops, broker=first_free(desktops))
    try:
        await live(ts)
        shown = await threads.deferToThread(remmina_shows, ts.port_numbers[0], frame, tmp_path)
        assert shown, f"Remmina never showed the desktop exactly; see {tmp_path / 'remmina.log'}"
    finally:
        await ts.stopService()
