"""The real-program fixtures work: exact pixels through Xvnc, QEMU and TigerVNC's viewer."""

from __future__ import annotations

import gzip
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted

from tests.support.need import need
from tests.support.pixels import diff_summary
from tests.support.ports import display_free, free_display, free_tcp_port, rfb_banner
from tests.support.qemu import QemuVM
from tests.support.tinylinux import PROMPT_MARK, TinyLinux
from tests.support.viewer import TigerViewer, tigervnc_viewer_capture
from tests.support.vncdo import vncdo, vncdo_capture
from tests.support.waiting import wait_until_blocking
from tests.support.xvnc import XvncServer

pytestmark = pytest.mark.integration

CURSOR_CELL = 9 * 16  # one VGA text cell: the blinking cursor may differ between grabs


def pattern(width: int, height: int, seed: int) -> np.ndarray:
    """Random pixels with solid blocks: every channel value, plus runs encoders like."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 1 << 24, size=(height, width), dtype=np.uint32)
    frame[: height // 4, : width // 3] = 0x00FF8000
    frame[height // 2 :, width // 2 :] = 0x000080FF
    return frame


def test_need_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setenv("CI", "true")
    with pytest.raises(
        pytest.fail.Exception, match="apt-get install -y tigervnc-standalone-server"
    ):
        need("Xvnc", "for this check")
    with pytest.raises(pytest.fail.Exception, match="busybox-static"):
        need(False, "no static busybox: apt-get install -y busybox-static")
    need(True, "a condition that holds")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="Xvnc is not on PATH"):
        need("Xvnc", "for this check")


def test_free_port_and_display_are_free() -> None:
    port = free_tcp_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    number = free_display()
    assert display_free(number)
    assert not Path(f"/tmp/.X{number}-lock").exists()


def test_xvnc_stop_ends_server_and_its_programs(xvnc: Callable[..., XvncServer]) -> None:
    need("xterm", "to put a real X client window on the screen")
    server = xvnc(size=(160, 120))
    child = server.run(["xterm"])
    assert rfb_banner(server.host, server.port) == b"RFB 003.008\n"

    server.stop()

    assert not server.proc.alive() and not child.alive()
    assert rfb_banner(server.host, server.port) is None


def test_tiny_initramfs_is_a_cpio_archive_real_cpio_reads(tiny_linux: TinyLinux) -> None:
    need("cpio", "to list the initramfs")
    archive = gzip.decompress(tiny_linux.initrd.read_bytes())
    listing = subprocess.run(
        ["cpio", "-itv"], input=archive, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    entries = {line.split()[-1]: line[0] for line in listing.splitlines()}
    assert entries["init"] == "-" and entries["bin/busybox"] == "-"
    assert entries["dev/console"] == "c" and entries["proc"] == "d"
    assert len(tiny_linux.initrd.read_bytes()) < 2_000_000


def test_vncdo_captures_exactly_what_xvnc_shows(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    server = xvnc(size=(256, 192))
    frame = pattern(256, 192, seed=1)
    server.paint(frame)

    assert np.array_equal(server.grab(), frame), diff_summary(server.grab(), frame)
    got = vncdo_capture(server.host, server.port, tmp_path / "shot.png")
    assert np.array_equal(got, frame), diff_summary(got, frame)


def test_xvnc_with_vnc_password(xvnc: Callable[..., XvncServer], tmp_path: Path) -> None:
    server = xvnc(size=(160, 120), password="s3cret")
    frame = pattern(160, 120, seed=2)
    server.paint(frame)

    got = vncdo_capture(server.host, server.port, tmp_path / "ok.png", password="s3cret")
    assert np.array_equal(got, frame), diff_summary(got, frame)
    with pytest.raises(RuntimeError, match="exited"):
        vncdo_capture(server.host, server.port, tmp_path / "bad.png", password="wrong")
    assert not (tmp_path / "bad.png").exists()


def test_x_programs_draw_inside_xvnc(xvnc: Callable[..., XvncServer], tmp_path: Path) -> None:
    need("xsetroot", "to paint the X root window")
    need("xterm", "to put a real X client window on the screen")
    server = xvnc(size=(320, 240))
    server.call(["xsetroot", "-solid", "#123456"])
    solid = vncdo_capture(server.host, server.port, tmp_path / "solid.png")
    assert np.all(solid == 0x123456), diff_summary(solid, np.full_like(solid, 0x123456))

    server.run(["xterm", "-geometry", "20x5+10+10", "-bg", "white", "-fg", "black"])

    def white_window() -> np.ndarray | None:
        shot = vncdo_capture(server.host, server.port, tmp_path / "xterm.png")
        return shot if np.count_nonzero(shot == 0xFFFFFF) > 1000 else None

    shot = wait_until_blocking(white_window, 20.0, "xterm's white window in the capture")
    assert np.any(shot == 0x000000)  # its black text (the prompt) is drawn too
    assert np.all(shot[:5, :] == 0x123456)  # the window starts 10 px down


def _settled_capture(vm: QemuVM, path: Path, timeout: float) -> tuple[np.ndarray, np.ndarray]:
    """A vncdo capture and QEMU's own screendump taken once the screen stops changing."""
    deadline = time.monotonic() + timeout
    while True:
        got = vncdo_capture(vm.host, vm.port, path)
        want = vm.screendump()
        close = got.shape == want.shape and np.count_nonzero(got != want) <= CURSOR_CELL
        if (close and np.unique(got).size > 1) or time.monotonic() > deadline:
            return got, want
        time.sleep(0.5)


def test_qemu_seabios_screen_over_vnc(qemu_vm: Callable[..., QemuVM], tmp_path: Path) -> None:
    vm = qemu_vm()
    got, want = _settled_capture(vm, tmp_path / "bios.png", timeout=30.0)

    assert got.shape == want.shape, diff_summary(got, want)
    assert np.unique(got).size > 1, "the SeaBIOS screen is blank"
    assert np.count_nonzero(got != want) <= CURSOR_CELL, diff_summary(got, want)
    assert np.count_nonzero(got != got[-1, -1]) > 500  # a few lines of text, not a dot


def test_busybox_vm_runs_a_command_typed_over_vnc(
    qemu_vm: Callable[..., QemuVM], tmp_path: Path
) -> None:
    vm = qemu_vm(linux=True)
    vm.wait_serial(PROMPT_MARK, timeout=60.0)
    before = vncdo_capture(vm.host, vm.port, tmp_path / "before.png")
    a, b = np.random.default_rng().integers(100, 999, size=2)

    vncdo(vm.host, vm.port, ["type", f"echo $(({a}*{b})) >/dev/ttyS0", "key", "enter"])

    vm.wait_serial(f"\n{a * b}\n", timeout=20.0)  # the shell computed it: keys arrived
    vm.wait_serial(PROMPT_MARK, count=2, timeout=20.0)
    after = vncdo_capture(vm.host, vm.port, tmp_path / "after.png")
    assert after.shape == before.shape
    changed_rows = np.nonzero(np.any(after != before, axis=1))[0]
    assert changed_rows.size >= 16, "the typed command line did not appear on the screen"


def test_tigervnc_viewer_shows_the_xvnc_image(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    server = xvnc(size=(200, 150), password="viewpw")
    frame = pattern(200, 150, seed=3)
    server.paint(frame)

    def shows_frame(pixels: np.ndarray) -> bool:
        return pixels.shape == frame.shape and np.array_equal(pixels, frame)

    got = tigervnc_viewer_capture(
        server.host, server.port, "viewpw", until=shows_frame, workdir=tmp_path
    )
    assert np.array_equal(got, frame), diff_summary(got, frame)


def test_tigervnc_viewer_listen_mode_takes_a_reverse_connection(
    xvnc: Callable[..., XvncServer], tigervnc_viewer: Callable[..., TigerViewer]
) -> None:
    need("vncconfig", "to make Xvnc connect out to a listening viewer")
    port = free_tcp_port()
    viewer = tigervnc_viewer(listen_port=port)
    server = xvnc(size=(128, 96))
    frame = pattern(128, 96, seed=4)
    server.paint(frame)

    server.call(["vncconfig", "-display", server.display_name, "-connect", f"127.0.0.1::{port}"])

    def shows_frame(pixels: np.ndarray) -> bool:
        return pixels.shape == frame.shape and np.array_equal(pixels, frame)

    got = viewer.wait_for_frame(until=shows_frame, timeout=30.0)
    assert np.array_equal(got, frame), diff_summary(got, frame)


@pytest_twisted.ensureDeferred
async def test_reactor_test_awaits_a_real_capture(
    xvnc: Callable[..., XvncServer], tmp_path: Path
) -> None:
    """The pattern docs/testing.md shows: blocking helpers run in a thread, awaited."""
    from twisted.internet import reactor, threads

    assert type(reactor).__name__ == "AsyncioSelectorReactor"
    server = xvnc(size=(96, 64))
    frame = pattern(96, 64, seed=5)
    server.paint(frame)

    got = await threads.deferToThread(
        vncdo_capture, server.host, server.port, tmp_path / "async.png"
    )
    assert np.array_equal(got, frame), diff_summary(got, frame)
