"""The admin dashboard under test: thinserve with its dashboard listener and
admin socket, admin accounts, a logged-in Chromium, and the pictures it shows.

Chromium runs through Playwright on the Twisted asyncio loop (see
tests/support/browser.py): a test runs its browser steps in an asyncio task
with ``aio.as_deferred``, and waits with ``waiting.wait_until``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from twisted.internet import reactor

from thinserve.broker import BrokerConfig
from thinserve.config import Config, DesktopConfig
from thinserve.dashboard.site import PICO, PICO_INSTALL
from thinserve.desktop_config import DesktopSetup
from thinserve.service import ThinServe

from .browser import CHROMIUM_ARGS, chromium_path, require_browser
from .need import need
from .pixels import rgb_to_u32, u32_to_rgb
from .ports import free_tcp_port
from .waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "clients" / "dashboard"
CONSOLE_SCRIPT = Path(sys.executable).parent / "thinserve"
THINSERVE = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "thinserve.cli"]
)
WIDTH, HEIGHT = 1280, 860  # the window: wide enough for the tables, as in the docs
THUMBNAIL_SIDE = 320  # the longest side of a thumbnail (thinserve.dashboard.thumbnails)
# Where a run also keeps its screenshots (the docs' pictures: docs/dashboard/).
SCREENSHOTS_ENV = "THINSERVE_DASHBOARD_SCREENSHOTS"


def require_dashboard() -> None:
    """Chromium, Playwright, noVNC and the dashboard's Pico CSS must be there."""
    require_browser()
    need(
        (DASHBOARD_DIR / PICO).is_file(),
        f"the dashboard's Pico CSS ({DASHBOARD_DIR / PICO}): run `{PICO_INSTALL}`",
    )


@dataclass
class Dashboard:
    """thinserve in this process: its terminal port, admin socket and dashboard."""

    server: ThinServe
    socket: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def terminal_port(self) -> int:
        return self.server.port_numbers[0]


async def start_dashboard(
    tmp_path: Path,
    desktops: list[DesktopConfig],
    broker: BrokerConfig | None = None,
    setup: DesktopSetup | None = None,
) -> Dashboard:
    """thinserve with real desktops (and those ``setup`` runs), once every one
    of ``desktops`` is live.

    Keyless terminals on loopback are known by address (``viewer-127.0.0.N``),
    as an admin may choose for a trusted subnet."""
    sock = tmp_path / "admin" / "admin.sock"
    port = free_tcp_port()
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        dashboard_listen=(f"tcp:port={port}:interface=127.0.0.1",),
        broker=broker or BrokerConfig(),
        database=str(tmp_path / "thinserve.db"),
        admin_socket=str(sock),
        discovery=False,
        address_pairing=("127.0.0.0/8",),
        desktops=tuple(desktops),
        local_desktops=(),
        state_dir=tmp_path / "state",
        setup=setup or DesktopSetup(),
        source="test",
    )
    server = ThinServe(config, reactor)
    await server.startService()
    names = [d.name for d in desktops]
    await wait_until(lambda: all(live(server, name) for name in names), 30, "live desktops")
    return Dashboard(server, sock, port)


def live(server: ThinServe, desktop: str) -> bool:
    """thinserve shows ``desktop``: its mirror's link is live."""
    mirror = server.hub.mirrors.get(desktop) if server.hub is not None else None
    return mirror is not None and mirror.feed is not None and mirror.feed.live


def add_admin(dashboard: Dashboard, name: str, password: str, role: str = "admin") -> None:
    """Make an admin account with the real CLI over the admin socket (blocking:
    run it in a thread, so the reactor keeps serving the socket)."""
    argv = [*THINSERVE, "admins", "add", name, "--role", role, "--password-stdin"]
    done = subprocess.run(
        [*argv, "--socket", str(dashboard.socket)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, f"thinserve admins add {name}: {done.stderr}"


async def add_admin_async(
    dashboard: Dashboard, name: str, password: str, role: str = "admin"
) -> None:
    await asyncio.to_thread(add_admin, dashboard, name, password, role)


# -- the browser -------------------------------------------------------------------------------
@asynccontextmanager
async def dashboard_browser(profile: Path) -> AsyncIterator[Any]:
    """A Chromium context (fresh profile) at the docs' size; every page of it
    collects its console errors in ``page.console_errors``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": WIDTH, "height": HEIGHT},
        )
        context.on("page", watch_console)
        for page in context.pages:
            watch_console(page)
        try:
            yield context
        finally:
            await context.close()


def watch_console(page: Any) -> None:
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    setattr(page, "console_errors", errors)  # noqa: B010  (tests read page.console_errors)


def unexpected_errors(page: Any) -> list[str]:
    """Console errors other than the failed requests a test caused on purpose
    (a wrong password, the first look for a session, a refused action)."""
    return [e for e in page.console_errors if not e.startswith("Failed to load resource")]


async def first_page(context: Any) -> Any:
    return context.pages[0] if context.pages else await context.new_page()


async def log_in(page: Any, dashboard: Dashboard, name: str, password: str) -> None:
    """Log in through the login form; returns once the wall shows."""
    await page.goto(dashboard.url)
    await page.fill("#login-name", name)
    await page.fill("#login-password", password)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#who-name", state="visible")
    await page.wait_for_selector("#live[data-state=live]")


async def log_out(page: Any) -> None:
    await page.click("#logout")
    await page.wait_for_selector("#login-name")


async def open_page(page: Any, name: str) -> None:
    """Follow the menu link to a page, and wait until it is the one shown."""
    await page.click(f"#menu a[data-page={name}]")
    await page.wait_for_selector(f"main[data-page={name}]")


async def api_get(page: Any, dashboard: Dashboard, route: str) -> Any:
    """GET /api/v1/ROUTE with the page's login (its cookie)."""
    answer = await page.request.get(f"{dashboard.url}api/v1/{route}")
    assert answer.ok, f"GET {route}: {answer.status} {await answer.text()}"
    return await answer.json()


async def screenshot(page: Any, directory: Path, name: str, whole: bool = False) -> Path:
    """A screenshot of the page (``whole``: all of it, not only the window)
    into ``directory``, and into $THINSERVE_DASHBOARD_SCREENSHOTS when set."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    await page.mouse.move(0, 0)  # no hover effect where the last click was
    await page.screenshot(path=str(path), full_page=whole)
    keep = os.environ.get(SCREENSHOTS_ENV)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / path.name)
    return path


# -- pictures ----------------------------------------------------------------------------------
IMAGE_RGBA_JS = """
(selector) => {
  const img = document.querySelector(selector);
  if (!img || !img.complete || img.naturalWidth === 0) { return null; }
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let text = '';
  for (let i = 0; i < data.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  return {width: canvas.width, height: canvas.height, rgba: btoa(text), src: img.currentSrc};
}
"""


async def image_pixels(page: Any, selector: str) -> np.ndarray | None:
    """The picture an <img> shows, as the browser decoded it (0x00RRGGBB words)."""
    shot = await page.evaluate(IMAGE_RGBA_JS, selector)
    if shot is None:
        return None
    rgba = np.frombuffer(base64.b64decode(shot["rgba"]), dtype=np.uint8)
    rgb = rgba.reshape(shot["height"], shot["width"], 4)[..., :3]
    return rgb_to_u32(rgb)


def thumbnail_of(frame: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``frame`` scaled down as a thumbnail is: longest side ``side``, area average."""
    height, width = frame.shape
    scale = min(1.0, side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(u32_to_rgb(frame), "RGB").resize(size, Image.Resampling.BOX)
    return rgb_to_u32(np.asarray(image))


def unlike(got: np.ndarray | None, want: np.ndarray, mean: float = 4.0, far: int = 48) -> str:
    """How ``got`` differs from ``want`` beyond JPEG's loss; "" when alike.

    Alike: the same size, a mean channel difference under ``mean``, and at most
    1 % of the pixels with a channel off by more than ``far``."""
    if got is None:
        return "no picture"
    if got.shape != want.shape:
        return f"size {got.shape[1]}x{got.shape[0]}, want {want.shape[1]}x{want.shape[0]}"
    difference = np.abs(u32_to_rgb(got).astype(np.int16) - u32_to_rgb(want).astype(np.int16))
    average = float(difference.mean())
    outliers = float((difference.max(axis=2) > far).mean())
    if average < mean and outliers <= 0.01:
        return ""
    return f"mean channel difference {average:.1f}, {outliers:.1%} of pixels off by more than {far}"


def blocks(width: int, height: int, colours: list[int], side: int = 160) -> np.ndarray:
    """A known pattern: ``side``-pixel squares in ``colours``, row by row."""
    frame = np.zeros((height, width), dtype=np.uint32)
    per_row = -(-width // side)
    for top in range(0, height, side):
        for left in range(0, width, side):
            index = (top // side) * per_row + left // side
            frame[top : top + side, left : left + side] = colours[index % len(colours)]
    return frame
