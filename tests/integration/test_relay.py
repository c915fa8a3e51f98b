"""The relay end to end: real desktops (Xvnc, QEMU) seen through thinserve.

What vncdotool and TigerVNC's viewer see through thinserve equals what they
see connecting to the desktop directly; input, pointer and clipboard reach
the desktop; terminals sharing a desktop, desktop restarts and vanishing
terminals behave as users expect.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import threads

from protocols.rfb.constants import Encoding
from tests.integration.test_rfb_interop import (
    assert_same,
    assert_same_but_blink,
    blink_mask,
    office_frame,
)
from tests.support.aio import as_deferred
from tests.support.browser import browser_page, canvas_pixels, require_browser
from tests.support.qemu import QemuVM
from tests.support.server import start_thinserve
from tests.support.terminal import Terminal
from tests.support.viewer import tigervnc_viewer_capture
from tests.support.vncdo import vncdo, vncdo_capture
from tests.support.waiting import sleep, wait_until
from tests.support.xvnc import XvncServer
from tests.unit.content import desktop_frame, noise_frame
from thinserve.config import DesktopConfig
from thinserve.hub import Hub
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration


class Reachable(Protocol):
    """A desktop's VNC server (Xvnc, QEMU) at host:port."""

    host: str
    port: int


def desktop(name: str, server: Reachable) -> DesktopConfig:
    return DesktopConfig(name, f"{server.host}:{server.port}")


def hub(ts: ThinServe) -> Hub:
    assert ts.hub is not None, "thinserve has not started"
    return ts.hub


async def live(ts: ThinServe, count: int = 1) -> None:
    await wait_until(
        lambda: sum(u.live for u in ts.upstreams) >= count,
        30,
        "thinserve to reach its desktops",
    )


# -- what terminals see ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_vncdotool_through_thinserve_equals_direct(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    server = xvnc(size=(800, 600))
    server.paint(desktop_frame(800, 600))
    ts = await start_thinserve([desktop("d1", server)])
    try:
        await live(ts)
        direct = await threads.deferToThread(
            vncdo_capture, server.host, server.port, tmp_path / "d.png"
        )
        through = await threads.deferToThread(
            vncdo_capture, "127.0.0.1", ts.port_numbers[0], tmp_path / "t.png"
        )
        assert_same(through, direct)
        assert_same(direct, desktop_frame(800, 600))
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_tigervnc_viewer_through_thinserve_equals_direct(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    server = xvnc(size=(640, 480))
    frame = office_frame(640, 480)
    server.paint(frame)
    ts = await start_thinserve([desktop("d1", server)])
    try:
        await live(ts)

        def capture(port: int, where: str) -> np.ndarray:
            workdir = tmp_path / where
            workdir.mkdir()
            return tigervnc_viewer_capture(
                "127.0.0.1", port, None, lambda img: np.array_equal(img, frame), 60.0, workdir
            )

        direct = await threads.deferToThread(capture, server.port, "direct")
        through = await threads.deferToThread(capture, ts.port_numbers[0], "through")
        assert_same(through, direct)
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_qemu_vm_through_thinserve_equals_its_screen(
    qemu_vm: Callable[..., QemuVM], tmp_path: Path
) -> None:
    vm = qemu_vm(linux=True)
    await wait_until(lambda: vm.prompts() >= 1, 120, "the VM's shell prompt", vm.proc)
    ts = await start_thinserve([desktop("vm", vm)])
    try:
        await live(ts)
        screen, blinking = await threads.deferToThread(blink_mask, vm)
        through = await threads.deferToThread(
            vncdo_capture, "127.0.0.1", ts.port_numbers[0], tmp_path / "t.png"
        )
        assert_same_but_blink(through, screen, blinking)
        # Typing through thinserve reaches the VM's shell (once the capture's
        # session has ended, so the desktop is free for the next terminal).
        await wait_until(lambda: not hub(ts).terminals, 10, "the capture session to end")
        await threads.deferToThread(
            vncdo,
            "127.0.0.1",
            ts.port_numbers[0],
            ["type", "echo relay-ok > /dev/ttyS0", "key", "enter"],
        )
        await threads.deferToThread(vm.wait_serial, "relay-ok", 1, 30)
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_updates_keep_flowing(xvnc: Callable[..., XvncServer]) -> None:
    server = xvnc(size=(320, 240))
    server.paint(office_frame(320, 240))
    ts = await start_thinserve([desktop("d1", server)])
    try:
        term = await Terminal().connect(ts.port_numbers[0])
        await term.wait_screen(office_frame(320, 240))
        for seed in (1, 2, 3):
            changed = desktop_frame(320, 240, seed=seed)
            await threads.deferToThread(server.paint, changed)
            await term.wait_screen(changed)
        term.close()
    finally:
        await ts.stopService()


# -- input -------------------------------------------------------------------------------------
def _xterm_writing(server: XvncServer, out: Path) -> None:
    server.run(["xterm", "-geometry", "80x10+0+0", "-e", "sh", "-c", f"cat > {out}"])


async def pointer_reaches(server: XvncServer, x: int, y: int) -> None:
    """Wait until the desktop's X server has the pointer at (x, y)."""
    where = ""

    async def there() -> bool:
        nonlocal where
        argv = ["xdotool", "getmouselocation", "--shell"]
        where = await threads.deferToThread(server.call, argv)
        return f"X={x}\n" in where and f"Y={y}\n" in where

    await wait_until(there, 20, lambda: f"the pointer at {x},{y} (xdotool says {where!r})")


@pytest_twisted.ensureDeferred
async def test_keys_and_pointer_reach_the_desktop(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    server = xvnc(size=(640, 480))
    out = tmp_path / "typed.txt"
    _xterm_writing(server, out)
    await wait_until(out.exists, 20, "xterm to start")
    ts = await start_thinserve([desktop("d1", server)])
    try:
        term = await Terminal().connect(ts.port_numbers[0])
        term.pointer(60, 40)  # over the xterm: no window manager, focus follows the pointer
        await pointer_reaches(server, 60, 40)
        term.type_text("hello through thinserve\n")
        await wait_until(lambda: out.read_text() == "hello through thinserve\n", 20, "typed text")
        term.pointer(123, 234)
        await pointer_reaches(server, 123, 234)
        term.close()
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_clipboard_crosses_both_ways_in_utf8(xvnc: Callable[..., XvncServer]) -> None:
    server = xvnc(size=(320, 240))
    ts = await start_thinserve([desktop("d1", server)])
    try:
        term = await Terminal().connect(ts.port_numbers[0])
        await in_control(ts, "viewer-127.0.0.1")
        term.send_clipboard("from the terminal: Grüße ✓")

        async def desktop_clipboard_is(text: str) -> bool:
            argv = ["xclip", "-o", "-selection", "clipboard"]
            try:
                return await threads.deferToThread(server.call, argv, 5) == text
            except (RuntimeError, subprocess.TimeoutExpired):  # nothing there yet
                return False

        await wait_until(
            lambda: desktop_clipboard_is("from the terminal: Grüße ✓"),
            20,
            "the terminal's clipboard on the desktop",
        )
        text = "from the desktop: café ☕"
        subprocess.run(
            ["xclip", "-i", "-selection", "clipboard"],
            input=text.encode(),
            env=server.env,
            check=True,
            timeout=10,
        )
        await wait_until(
            lambda: text in term.clipboard, 20, "the desktop's clipboard on the terminal"
        )
        term.close()
    finally:
        await ts.stopService()


def pointer_box(server: XvncServer, reach: int = 32) -> tuple[slice, slice]:
    """Rows and columns around the desktop's pointer, where a cursor may be drawn."""
    where = server.call(["xdotool", "getmouselocation", "--shell"])
    values = dict(line.split("=", 1) for line in where.split())
    x, y = int(values["X"]), int(values["Y"])
    return slice(max(y - reach, 0), y + reach), slice(max(x - reach, 0), x + reach)


async def in_control(ts: ThinServe, terminal: str) -> None:
    """Wait until ``terminal``'s session controls the live desktop: its input goes there."""
    await live(ts)

    def controls() -> bool:
        entry = hub(ts).terminals.get(terminal)
        return entry is not None and entry.session.control and entry.session.view is not None

    await wait_until(controls, 20, f"{terminal} to control the desktop")


# -- several terminals ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_two_terminals_share_a_desktop_only_one_types(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    server = xvnc(size=(640, 480))
    out = tmp_path / "typed.txt"
    _xterm_writing(server, out)
    await wait_until(out.exists, 20, "xterm to start")
    ts = await start_thinserve([desktop("d1", server)])
    try:
        first = await Terminal().connect(ts.port_numbers[0], "127.0.0.2")
        second = await Terminal().connect(ts.port_numbers[0], "127.0.0.3")
        hub(ts).shadow("viewer-127.0.0.3", "d1", actor="admin")  # watch, view-only
        first.pointer(60, 40)
        await pointer_reaches(server, 60, 40)
        second.type_text("ignored\n")  # view-only: dropped
        first.type_text("typed by the first\n")
        await wait_until(lambda: out.read_text() == "typed by the first\n", 20, "typed text")
        await threads.deferToThread(server.paint, noise_frame(640, 480))
        shown = await threads.deferToThread(server.grab)  # the painted root under the xterm
        await first.wait_screen(shown)
        await second.wait_screen(shown)
        second.pointer(60, 40)
        second.type_text("still ignored\n")
        first.type_text("and again\n")
        await wait_until(lambda: out.read_text().endswith("and again\n"), 20, "more text")
        assert "ignored" not in out.read_text()
        first.close()
        second.close()
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_first_free_policy_gives_each_terminal_its_own_desktop(
    xvnc: Callable[..., XvncServer],
) -> None:
    one, two = xvnc(size=(320, 240)), xvnc(size=(320, 240))
    one.paint(desktop_frame(320, 240, seed=1))
    two.paint(desktop_frame(320, 240, seed=2))
    ts = await start_thinserve([desktop("one", one), desktop("two", two)])
    try:
        await live(ts, 2)
        a = await Terminal().connect(ts.port_numbers[0], "127.0.0.2")
        b = await Terminal().connect(ts.port_numbers[0], "127.0.0.3")
        await a.wait_screen(desktop_frame(320, 240, seed=1))
        await b.wait_screen(desktop_frame(320, 240, seed=2))
        c = await Terminal().connect(ts.port_numbers[0], "127.0.0.4")  # nothing free
        await wait_until(lambda: c.framebuffer.shape == (768, 1024), 10, "the no-desktop screen")
        assert not np.array_equal(c.framebuffer[:240, :320], one.grab())
        a.close()  # desktop one frees up and goes to the waiting terminal
        await c.wait_screen(desktop_frame(320, 240, seed=1))
        b.close()
        c.close()
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_vanishing_terminal_does_not_disturb_others(xvnc: Callable[..., XvncServer]) -> None:
    server = xvnc(size=(800, 600))
    ts = await start_thinserve([desktop("d1", server)])
    try:
        doomed = await Terminal().connect(ts.port_numbers[0], "127.0.0.2")
        survivor = await Terminal().connect(ts.port_numbers[0], "127.0.0.3")
        hub(ts).shadow("viewer-127.0.0.3", "d1", actor="admin")
        await threads.deferToThread(server.paint, noise_frame(800, 600, seed=5))
        await sleep(0.02)
        doomed.abort()  # mid-stream: a large update is on its way
        for seed in (6, 7):
            frame = noise_frame(800, 600, seed=seed)
            await threads.deferToThread(server.paint, frame)
            await survivor.wait_screen(frame)
        await wait_until(lambda: len(hub(ts).terminals) == 1, 10, "the vanished session to end")
        session = hub(ts).terminals["viewer-127.0.0.3"].session
        assert session.view is not None and session.view.listeners == [session]
        survivor.close()
    finally:
        await ts.stopService()


# -- faults and sizes ------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_desktop_restart_recovers_without_user_action(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    sock = tmp_path / "desk.sock"
    server = xvnc(size=(320, 240), extra_args=["-rfbunixpath", str(sock)])
    frame = office_frame(320, 240)
    server.paint(frame)
    ts = await start_thinserve([DesktopConfig("d1", f"unix:{sock}")])
    try:
        term = await Terminal().connect(ts.port_numbers[0])
        await term.wait_screen(frame)
        server.stop()
        upstream = ts.upstreams[0]
        await wait_until(lambda: not upstream.live, 20, "thinserve to notice the desktop went")
        await wait_until(
            lambda: not np.array_equal(term.framebuffer, frame), 20, "the unavailable screen"
        )
        again = xvnc(size=(320, 240), extra_args=["-rfbunixpath", str(sock)])
        changed = desktop_frame(320, 240, seed=9)
        again.paint(changed)
        await term.wait_screen(changed, timeout=40)
        assert not term.closed and ts.upstreams[0].connections == 2
        term.close()
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_terminal_size_resizes_a_resizable_desktop(xvnc: Callable[..., XvncServer]) -> None:
    server = xvnc(size=(640, 480))
    ts = await start_thinserve([desktop("d1", server)])
    try:
        term = await Terminal().connect(ts.port_numbers[0])
        await live(ts)
        await wait_until(lambda: ts.upstreams[0].can_set_size, 10, "the desktop to offer resizing")
        assert term.proto is not None
        term.proto.conn.set_desktop_size(800, 500)
        term.proto.flush()
        await wait_until(lambda: term.framebuffer.shape == (500, 800), 20, "the desktop resize")
        await wait_until(lambda: np.array_equal(term.framebuffer, server.grab()), 20, "new pixels")
        term.close()
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_terminal_size_scales_a_fixed_desktop(qemu_vm: Callable[..., QemuVM]) -> None:
    vm = qemu_vm(linux=False)
    ts = await start_thinserve([desktop("vm", vm)])
    try:
        await live(ts)
        term = await Terminal().connect(ts.port_numbers[0])
        await ask_size_and_see_it_scaled(term, vm, 360, 200)
        term.close()
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_a_desktop_that_forwards_size_requests_is_scaled_and_asked_again(
    qemu_vm: Callable[..., QemuVM],
) -> None:
    """QEMU passes a size request on to a display that takes hints (status 4,
    "forwarded"); a guest without a driver for them keeps its size, so the
    terminal is scaled, and its next request is passed on again."""
    vm = qemu_vm(linux=False, extra_args=["-vga", "virtio"])
    ts = await start_thinserve([desktop("vm", vm)])
    try:
        await live(ts)
        term = await Terminal().connect(ts.port_numbers[0])
        await wait_until(lambda: ts.upstreams[0].can_set_size, 10, "the desktop to offer resizing")
        await ask_size_and_see_it_scaled(term, vm, 360, 200)
        assert ts.upstreams[0].can_set_size
        await ask_size_and_see_it_scaled(term, vm, 400, 300)
        term.close()
    finally:
        await ts.stopService()


async def ask_size_and_see_it_scaled(term: Terminal, vm: QemuVM, width: int, height: int) -> None:
    assert term.proto is not None
    term.proto.conn.set_desktop_size(width, height)
    term.proto.flush()
    await wait_until(lambda: term.framebuffer.shape == (height, width), 20, "the scaled size")

    def scaled(dump: np.ndarray) -> np.ndarray:
        rows, cols = nearest(height, dump.shape[0]), nearest(width, dump.shape[1])
        return dump[np.ix_(rows, cols)]

    await wait_until(
        lambda: np.array_equal(term.framebuffer, scaled(vm.screendump())), 20, "scaled pixels"
    )


def nearest(out_size: int, in_size: int) -> np.ndarray:
    """Nearest-neighbour scaling: output pixel i shows the input pixel under its
    centre, floor((i + 1/2) * in / out), here in exact integer arithmetic."""
    centres_twice = 2 * np.arange(out_size) + 1
    return centres_twice * in_size // (2 * out_size)


@pytest_twisted.ensureDeferred
async def test_browser_terminal_shows_the_desktop_through_thinserve(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    require_browser()
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    ts = await start_thinserve([desktop("d1", server)], web=True)
    try:
        await live(ts)
        url = f"http://127.0.0.1:{ts.port_numbers[1]}/?resize=off"

        async def scenario() -> None:
            async with browser_page(tmp_path / "profile") as page:
                await page.goto(url)
                await page.wait_for_selector("body[data-state=connected]", timeout=15_000)

                async def shows_desktop() -> bool:
                    shown = await canvas_pixels(page)
                    return shown is not None and np.array_equal(shown, frame)

                await wait_until(shows_desktop, 20, "the browser canvas to show the desktop")

        await as_deferred(scenario())
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_scrolling_through_forwarded_copyrects_stays_exact(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    server = xvnc(size=(640, 480))
    ts = await start_thinserve([desktop("d1", server)])
    try:
        term = await Terminal().connect(ts.port_numbers[0])  # offers CopyRect
        direct = await Terminal().connect(server.port)  # the same client, straight to Xvnc
        done = tmp_path / "done"
        script = f"seq 1 3000; touch {done}; sleep 60"
        server.run(["xterm", "-geometry", "80x24+0+0", "-e", "sh", "-c", script])
        await wait_until(done.exists, 30, "the xterm to scroll")

        rows, cols = await threads.deferToThread(pointer_box, server)
        last = np.zeros((0, 0), dtype=np.uint32)

        async def direct_shows_the_last_picture() -> bool:
            """The X screen stopped changing and the direct view shows it (Xvnc
            draws the pointer into its picture: that box is left out)."""
            nonlocal last
            screen, previous = await threads.deferToThread(server.grab), last
            last = screen
            seen = direct.framebuffer.copy()
            screen[rows, cols] = seen[rows, cols] = 0
            return np.array_equal(screen, previous) and np.array_equal(seen, screen)

        await wait_until(direct_shows_the_last_picture, 30, "the scrolled xterm, seen directly")
        await term.wait_screen(direct.framebuffer.copy())
        inside = term.framebuffer[4:300, 4:470]  # the xterm: black text on white
        assert 1000 < int((inside == 0).sum()) < inside.size // 2
        term.close()
        direct.close()
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_terminals_watching_one_desktop_through_worker_threads_see_it_exactly(
    xvnc: Callable[..., XvncServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large updates prepared in worker threads and shared between the
    terminals watching: every terminal still gets the desktop pixel for
    pixel, in its own encoding, as the desktop changes under the updates."""
    from twisted.internet import reactor

    from thinserve.relay import encodepool

    workers = encodepool.EncodeWorkers(2, reactor.callFromThread)  # type: ignore[attr-defined]
    handed: list[object] = []
    submit = workers.submit
    monkeypatch.setattr(workers, "submit", lambda job: (handed.append(job), submit(job)))
    monkeypatch.setattr(encodepool, "_shared", workers)
    server = xvnc(size=(1280, 1024))
    server.paint(desktop_frame(1280, 1024, seed=21))
    ts = await start_thinserve([desktop("d1", server)])
    try:
        await live(ts)
        resizes = (Encoding.COPYRECT, Encoding.DESKTOP_SIZE, Encoding.EXTENDED_DESKTOP_SIZE)
        profiles = [
            (Encoding.TIGHT, *resizes),
            (Encoding.ZRLE, *resizes),
            (Encoding.TIGHT, *resizes),
        ]
        terms = []
        for number, encodings in enumerate(profiles, start=2):
            terms.append(await Terminal(encodings).connect(ts.port_numbers[0], f"127.0.0.{number}"))
            if number > 2:
                hub(ts).shadow(f"viewer-127.0.0.{number}", "d1", actor="admin")
        for seed in (22, 23, 24):  # whole-screen changes, one after the other
            frame = desktop_frame(1280, 1024, seed=seed)
            await threads.deferToThread(server.paint, frame)
            for term in terms:
                await term.wait_screen(frame)
        assert handed, "no rectangle went to a worker thread"
        for term in terms:
            term.close()
    finally:
        await ts.stopService()
