"""The admin dashboard in a real browser: headless Chromium (Debian's) through
Playwright, against an in-process thinserve with real Xvnc desktops and real
RFB terminals connecting from loopback addresses.

What the pages show is checked against what really is: the wall's
thumbnails against the Xvnc screens scaled down (with JPEG's tolerance), a
terminal's own screen against the desktop it was given, the viewer's canvas
against the desktop, keys against what an xterm on the desktop received.
Each page is also saved as a screenshot (the pictures of docs/dashboard.md).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted

from tests.support.aio import as_deferred
from tests.support.browser import canvas_pixels
from tests.support.dashboard import (
    Dashboard,
    add_admin_async,
    api_get,
    blocks,
    dashboard_browser,
    first_page,
    image_pixels,
    log_in,
    log_out,
    open_page,
    require_dashboard,
    screenshot,
    start_dashboard,
    thumbnail_of,
    unexpected_errors,
    unlike,
)
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from tests.support.xvnc import XvncServer
from thinserve.admin.client import AdminClient
from thinserve.backends.qemu import QemuDesktopConfig
from thinserve.broker import BrokerConfig
from thinserve.config import DesktopConfig
from thinserve.desktop_config import DesktopSetup
from thinserve.relay import screens

pytestmark = pytest.mark.integration

SIZE = (640, 480)
ADMIN, PASSWORD = "ada", "correct horse battery"
HELPDESK, HELPDESK_PASSWORD = "hal", "helpdesk staple 42"
RED, GREEN, BLUE, YELLOW, WHITE, PURPLE = (
    0xD03030,
    0x30A050,
    0x3050D0,
    0xE0C020,
    0xF0F0F0,
    0x8040A0,
)


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    require_dashboard()
    return tmp_path / "chromium-profile"


def desktop(name: str, server: XvncServer) -> DesktopConfig:
    return DesktopConfig(name, f"{server.host}:{server.port}")


def tile_image(key: str) -> str:
    return f'li[data-key="{key}"] img'


async def wait_for_thumbnail(page: Any, key: str, want: np.ndarray, text: bool = False) -> None:
    """The wall's tile ``key`` shows ``want`` (at thumbnail scale).  JPEG blurs
    small text more than flat colours: a picture of text gets more leeway."""
    shown: np.ndarray | None = None
    mean, far = (6.0, 96) if text else (4.0, 48)

    def differs() -> str:
        return unlike(shown, want, mean, far)

    async def alike() -> bool:
        nonlocal shown
        shown = await image_pixels(page, tile_image(key))
        return not differs()

    await wait_until(alike, 30, lambda: f"the wall's {key} to show it ({differs()})")


def pairing_screen(row: dict[str, Any]) -> np.ndarray:
    """What a terminal shows for the pairing screen the API reports."""
    text = screens.pairing(row["id"], row["pairing_code"], row["shows"]["message"])
    return screens.render(text, row["session"]["width"], row["session"]["height"])


# -- log in, the wall, pairing by code ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_wall_shows_real_thumbnails_and_pairing_by_code_switches_the_terminal(
    xvnc: Callable[..., XvncServer], tmp_path: Path, profile: Path
) -> None:
    office, lab = xvnc(size=SIZE), xvnc(size=SIZE)
    office_frame = blocks(*SIZE, [RED, GREEN, BLUE, YELLOW, WHITE, PURPLE])
    lab_frame = blocks(*SIZE, [PURPLE, WHITE, YELLOW, BLUE, GREEN, RED])
    office.paint(office_frame)
    lab.paint(lab_frame)
    # A VM that cannot start (its disk is missing), in a pool: failed, and why.
    template = tmp_path / "images" / "class.qcow2"
    vm = QemuDesktopConfig("class-1", state_dir=tmp_path / "vms", template=template)
    dash = await start_dashboard(
        tmp_path,
        [desktop("office-1", office), desktop("lab-1", lab)],
        BrokerConfig(pools={"class": ("class-1",)}),
        DesktopSetup(qemu_desktops=((vm, None),)),
    )
    term = Terminal()
    shots = tmp_path / "screenshots"

    tid = "viewer-127.0.0.2"

    async def scenario() -> None:
        await add_admin_async(dash, ADMIN, PASSWORD)
        async with dashboard_browser(profile) as context:
            page = await first_page(context)

            # A wrong password is refused, visibly; the right one opens the wall.
            await page.goto(dash.url)
            await page.fill("#login-name", ADMIN)
            await page.fill("#login-password", "not the password")
            await page.click("#login button[type=submit]")
            problem = page.locator("#login-problem")
            await problem.wait_for(state="visible")
            assert await problem.inner_text() == "Wrong name or password."
            await screenshot(page, shots, "login")
            await log_in(page, dash, ADMIN, PASSWORD)
            assert await page.inner_text("#who-name") == f"{ADMIN} (admin)"

            # The wall: each desktop's thumbnail is its Xvnc screen, scaled down.
            assert await page.get_attribute("main", "data-page") == "wall"
            want_office = thumbnail_of(office.grab())
            want_lab = thumbnail_of(lab.grab())
            assert unlike(want_office, want_lab)  # the two are told apart
            await wait_for_thumbnail(page, "desktop/office-1", want_office)
            await wait_for_thumbnail(page, "desktop/lab-1", want_lab)

            # The terminal shows its pairing screen, with the code the API reports.
            row = await api_get(page, dash, f"terminals/{tid}")
            assert row["shows"]["kind"] == "pairing"
            await term.wait_screen(pairing_screen(row))
            code = row["pairing_code"]
            pairing = thumbnail_of(term.framebuffer)
            assert unlike(pairing, want_office, mean=6.0, far=96)  # told apart from a desktop
            await wait_for_thumbnail(page, f"terminal/{tid}", pairing, text=True)
            await screenshot(page, shots, "wall")

            # A click opens a tile large, with what the admin may do about it.
            await page.click('li[data-key="desktop/office-1"] button')
            big = page.locator("dialog#big")
            await big.wait_for(state="visible")
            assert await big.locator("footer button").all_inner_texts() == [
                "Shadow (view only)",
                "Take over",
            ]
            await big.locator("button[rel=prev]").click()
            await big.wait_for(state="hidden")

            # Pair it by the code its screen shows, typed into the terminals page.
            await open_page(page, "terminals")
            listed = page.locator(f'tr[data-terminal="{tid}"]')
            await listed.wait_for()
            assert code in await listed.inner_text()
            await page.fill("#pair-code", code.lower().replace("-", " "))
            await page.select_option("#pair-desktop", "office-1")
            await screenshot(page, shots, "terminals")
            await page.click("#pair-by-code button[type=submit]")
            notice = page.locator("#notice")
            await notice.wait_for(state="visible")
            said = await notice.inner_text()
            assert f"Paired {tid} with office-1" in said, said

            # The terminal now shows the desktop, exactly; the wall says so too.
            await term.wait_screen(office_frame)
            row = await api_get(page, dash, f"terminals/{tid}")
            assert row["paired_desktop"] == "office-1"
            assert row["shows"] == {"kind": "desktop", "desktop": "office-1", "control": True}
            await wait_for_live_text(listed, "office-1 (control)")

            # Pairing by choice: a dialog with the desktops that can be paired.
            await listed.locator("button", has_text="Pair…").click()
            dialog = page.locator("dialog[open]")
            await dialog.wait_for()
            choices = await dialog.locator("select[name=desktop] option").all_inner_texts()
            assert choices == ["lab-1", "office-1"]  # not class-1: it belongs to a pool
            assert await dialog.locator("input[name=by_address]").count() == 1
            await dialog.locator("button", has_text="Cancel").click()
            await dialog.wait_for(state="detached")
            await open_page(page, "wall")
            await wait_for_thumbnail(page, f"terminal/{tid}", want_office)

            # Desktops: who holds office-1, live; why class-1 failed; its pool.
            await open_page(page, "desktops")
            held = page.locator('tr[data-desktop="office-1"]')
            await wait_for_live_text(held, tid)
            failed = page.locator('tr[data-desktop="class-1"]')
            why = f"template {template} does not exist"
            await wait_for_live_text(failed, why)
            assert "failed" in await failed.inner_text()
            assert await failed.locator("button").all_inner_texts() == ["Start", "Stop", "Reset"]
            assert "class-1" in await page.inner_text("#pools")
            await screenshot(page, shots, "desktops")

            # Users: add one with a desktop of their own.
            await open_page(page, "users")
            await page.fill("#user-name", "alice")
            await page.fill("#user-secret", "4711-pin")
            await page.fill("#user-again", "4711-pin")
            await page.select_option("#user-desktop", "lab-1")
            await page.click("#add-user button[type=submit]")
            await page.locator('tr[data-user="alice"]').wait_for()
            users = await api_get(page, dash, "users")
            assert [(u["name"], u["desktop"]) for u in users] == [("alice", "lab-1")]
            await screenshot(page, shots, "users")

            # Audit: the pairing, by this login.
            await open_page(page, "audit")
            await page.fill("#audit-action", "pair")
            await page.click("#audit-filter button[type=submit]")
            first = page.locator("#audit-table tbody tr").first
            await wait_for_live_text(first, tid)  # the filtered table, not the one before
            assert f"web:{ADMIN}" in await first.inner_text()
            await page.fill("#audit-action", "")
            await page.click("#audit-filter button[type=submit]")
            await wait_for_live_text(page.locator("#audit-table"), "user-add")
            await screenshot(page, shots, "audit")

            # Admins: an API token, shown once, that scripts can use.
            await open_page(page, "admins")
            await page.locator(f'tr[data-admin="{ADMIN}"]').wait_for()
            await page.fill("#token-label", "monitoring")
            await page.click("#add-token button[type=submit]")
            token = await page.locator("#token-value").input_value()
            state = await asyncio.to_thread(bearer_get, dash, "state", token)
            assert sorted(state["connected"]) == [tid]
            await page.locator("#tokens-table tbody tr").wait_for()
            await screenshot(page, shots, "admins", whole=True)

            # Narrow screens: the pages reflow; only tables scroll sideways.
            await page.set_viewport_size({"width": 390, "height": 844})
            for name in ("wall", "terminals", "desktops", "audit"):
                await open_page(page, name)
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"the {name} page is {width} px wide on a 390 px screen"
                if name == "wall":
                    await screenshot(page, shots, "wall-phone")

            assert unexpected_errors(page) == []

    try:
        await term.connect(dash.terminal_port, source="127.0.0.2")  # Twisted's side
        await as_deferred(scenario())
    finally:
        term.close()
        await dash.server.stopService()


async def wait_for_live_text(locator: Any, text: str, timeout: float = 15) -> None:
    """``locator``'s text comes to hold ``text`` (pages update by themselves)."""
    shown = ""

    async def holds() -> bool:
        nonlocal shown
        shown = await locator.inner_text() if await locator.count() else ""
        return text in shown

    await wait_until(holds, timeout, lambda: f"{text!r} on the page (it shows {shown!r})")


# -- sessions: shadow, take over, kick ---------------------------------------------------------
KEYS_LOG = "keys.log"


def start_key_logger(server: XvncServer, log: Path) -> None:
    """An xterm on the desktop, focused, writing every key it gets to ``log``."""
    command = f"stty raw -echo; exec cat > {log}"
    server.run(["xterm", "-geometry", "60x8+0+0", "-e", "sh", "-c", command])
    # --onlyvisible: a window that exists but is not mapped yet cannot take the focus
    # (BadMatch), and on a busy machine search may find it in that moment.
    search = ["xdotool", "search", "--sync", "--onlyvisible", "--class", "xterm"]
    server.call([*search, "windowfocus", "--sync"])


def keys(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def wait_for_keys(log: Path, want: str) -> None:
    await wait_until(lambda: keys(log) == want, 15, lambda: f"keys {want!r} (got {keys(log)!r})")


async def viewer_from(context: Any, button: Any) -> Any:
    """The viewer page a Shadow or Take over button opens, once it shows the desktop."""
    async with context.expect_page() as opened:
        await button.click()
    viewer = await opened.value
    await viewer.wait_for_selector("body[data-state=connected]", timeout=15_000)
    return viewer


async def close_viewer(viewer: Any) -> None:
    """Click the viewer's Close button; returns once its tab closed."""
    async with viewer.expect_event("close"):
        await viewer.click("#viewer-close")


async def wait_for_canvas(viewer: Any, want: np.ndarray) -> None:
    shown: np.ndarray | None = None

    async def alike() -> bool:
        nonlocal shown
        shown = await canvas_pixels(viewer)
        return not unlike(shown, want)

    await wait_until(alike, 20, lambda: f"the viewer to show the desktop ({unlike(shown, want)})")


@pytest_twisted.ensureDeferred
async def test_helpdesk_shadows_and_admin_takes_over_then_kicks(
    xvnc: Callable[..., XvncServer], tmp_path: Path, profile: Path
) -> None:
    server = xvnc(size=SIZE)
    server.paint(blocks(*SIZE, [BLUE, WHITE, GREEN, YELLOW, RED, PURPLE]))
    log = tmp_path / KEYS_LOG
    start_key_logger(server, log)
    dash = await start_dashboard(tmp_path, [desktop("office-1", server)])
    term = Terminal()
    tid = "viewer-127.0.0.3"
    shots = tmp_path / "screenshots"

    async def scenario() -> None:
        await add_admin_async(dash, ADMIN, PASSWORD)
        await add_admin_async(dash, HELPDESK, HELPDESK_PASSWORD, role="helpdesk")
        await pair(dash, tid, "office-1")
        await wait_until(lambda: np.array_equal(term.framebuffer, server.grab()), 20, "the desktop")
        term.type_text("m")
        await wait_for_keys(log, "m")  # the terminal is in control

        async with dashboard_browser(profile) as context:
            page = await first_page(context)

            # Helpdesk: may look, shadow and kick; nothing else is offered.
            await log_in(page, dash, HELPDESK, HELPDESK_PASSWORD)
            assert "Admins" not in await page.inner_text("#menu")
            await open_page(page, "sessions")
            live = page.locator(f'tr[data-terminal="{tid}"]')
            await live.wait_for()
            assert await live.locator("button").all_inner_texts() == ["Shadow", "Kick"]
            await open_page(page, "terminals")
            await page.locator(f'tr[data-terminal="{tid}"]').wait_for()
            assert await page.locator("#pair-by-code").count() == 0
            assert await page.locator(f'tr[data-terminal="{tid}"] button').all_inner_texts() == [
                "Kick"
            ]

            # Shadow: the viewer shows the desktop; its keys reach nothing.
            await open_page(page, "sessions")
            viewer = await viewer_from(context, live.locator("button", has_text="Shadow"))
            assert await viewer.inner_text("#banner") == "View only — helpdesk shadow of office-1"
            await wait_for_canvas(viewer, server.grab())
            await viewer.click("#screen canvas")
            await viewer.keyboard.type("x")
            term.type_text("n")  # the terminal keeps control meanwhile
            await wait_for_keys(log, "mn")
            await screenshot(viewer, shots, "viewer")
            await close_viewer(viewer)
            await log_out(page)

            # Admin: take over; the admin's keys reach the desktop, the terminal's do not.
            await log_in(page, dash, ADMIN, PASSWORD)
            await open_page(page, "sessions")
            await live.wait_for()
            assert await live.locator("button").all_inner_texts() == ["Shadow", "Take over", "Kick"]
            await screenshot(page, shots, "sessions")
            viewer = await viewer_from(context, live.locator("button", has_text="Take over"))
            banner = await viewer.inner_text("#banner")
            assert (
                banner == f"You control office-1; terminal {tid} is view-only until you close this"
            )
            await wait_for_canvas(viewer, server.grab())
            await viewer.click("#screen canvas")
            await viewer.keyboard.type("a")
            await wait_for_keys(log, "mna")
            shown = (await api_get(page, dash, f"terminals/{tid}"))["shows"]
            assert shown == {"kind": "desktop", "desktop": "office-1", "control": False}
            term.type_text("t")  # view-only now: dropped
            await viewer.keyboard.type("b")
            await wait_for_keys(log, "mnab")
            await screenshot(viewer, shots, "viewer-control")
            await close_viewer(viewer)

            # Closed: the terminal has control again (its dropped key never arrives).
            await wait_until(
                lambda: term_controls(dash, tid), 15, "the terminal to get control back"
            )
            term.type_text("u")
            await wait_for_keys(log, "mnabu")

            # Kick, from the sessions page: the terminal is disconnected.
            await live.locator("button", has_text="Kick").click()
            await wait_until(lambda: term.closed, 15, "the kicked terminal's connection to close")
            await live.wait_for(state="detached")
            assert unexpected_errors(page) == []
        assert "x" not in keys(log) and "t" not in keys(log)

    try:
        await term.connect(dash.terminal_port, source="127.0.0.3")  # Twisted's side
        await as_deferred(scenario())
    finally:
        term.close()
        await dash.server.stopService()


async def pair(dash: Dashboard, terminal: str, desktop_name: str) -> None:
    """Pair over the admin socket, as `thinserve pair` does."""
    client = AdminClient(dash.socket)
    body = {"terminal": terminal, "desktop": desktop_name, "by_address": True}
    await asyncio.to_thread(client.call, "POST", "/pair", body)


def bearer_get(dash: Dashboard, route: str, token: str) -> Any:
    """GET /api/v1/ROUTE with an API token instead of a login (blocking)."""
    request = urllib.request.Request(
        f"{dash.url}api/v1/{route}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def term_controls(dash: Dashboard, terminal: str) -> bool:
    hub = dash.server.hub
    assert hub is not None
    shown = hub.broker.snapshot().shown.get(terminal)
    return getattr(shown, "control", False) is True
