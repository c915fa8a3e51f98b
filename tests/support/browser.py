"""Headless Chromium (Debian's) driven by Playwright, and the pixels noVNC draws.

Playwright's asyncio API runs on the same event loop as the Twisted asyncio
reactor: a test runs its browser steps in an asyncio task with
``aio.as_deferred``.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from thinserve.web import NoVNCMissing, WebOptions, find_novnc

from .need import need

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_browser() -> None:
    """Chromium, Playwright and noVNC must be there (see ``need``)."""
    missing = []
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        missing.append("Chromium (apt-get install -y chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (pip install playwright; no browser download)")
    try:
        find_novnc(WebOptions())
    except NoVNCMissing as exc:
        missing.append(str(exc))
    need(not missing, "browser terminal tests need: " + "; ".join(missing))


def chromium_path() -> str:
    return str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))


@asynccontextmanager
async def browser_page(user_data_dir: Path) -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium profile; console errors are collected."""
    from playwright.async_api import ConsoleMessage, async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 700},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            errors: list[str] = []

            def note(message: ConsoleMessage) -> None:
                if message.type == "error":
                    errors.append(message.text)

            page.on("console", note)
            setattr(page, "console_errors", errors)  # noqa: B010  (tests read page.console_errors)
            yield page
        finally:
            await context.close()


CANVAS_RGBA_JS = """
() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || canvas.width === 0) { return null; }
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let text = '';
  for (let i = 0; i < data.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  return {width: canvas.width, height: canvas.height, rgba: btoa(text)};
}
"""


async def canvas_pixels(page: Any) -> np.ndarray | None:
    """noVNC's visible canvas as 0x00RRGGBB words (alpha must be opaque)."""
    shot = await page.evaluate(CANVAS_RGBA_JS)
    if shot is None:
        return None
    rgba = np.frombuffer(base64.b64decode(shot["rgba"]), dtype=np.uint8)
    rgba = rgba.reshape(shot["height"], shot["width"], 4).astype(np.uint32)
    if not (rgba[..., 3] == 255).all():
        return None
    return (rgba[..., 0] << 16) | (rgba[..., 1] << 8) | rgba[..., 2]
