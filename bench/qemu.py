"""The QEMU peer: a tiny Linux VM whose VGA console echoes what the terminal types.

The VM boots the host's kernel with thinserve's tiny busybox initramfs
(``thinserve.backends.images``): a shell on the VGA text console.  Its VNC
server listens on loopback.  The terminal (the same measuring client as
for Xvnc) types keys and times each one from sending the key to having
decoded the echo: a change of the console's glyph pixels.  The rows of
each text line where the blinking cursor is drawn are ignored, so the
blink is never taken for an echo.

Typed this way the latency covers the whole round trip of a key press:
the key through the path to QEMU, the guest echoing it, and the update
back.  Each path gets the same keys: letters, then as many backspaces.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thinserve.backends.images import READY_MARKER, ImageError, TinyLinux, build_tiny_linux

from . import processes
from .keyecho import echo_once
from .replay import sleep
from .terminal import TIGHT, MeasuringTerminal, connect
from .xvnc import XvncError, _port_open, free_display

BOOT_TIMEOUT = 90.0
KVM_BOOT_TIMEOUT = 15.0
TEXT = "thinservebenchmarkwhmbqd"  # letters with many glyph pixels
BACKSPACE = 0xFF08
CELL_HEIGHT = 16  # VGA text mode rows
CURSOR_ROWS = 4  # the bottom rows of a cell, where the cursor blinks
KEY_GAP = 0.08  # seconds between one echo and the next key


def qemu_path() -> str | None:
    return shutil.which("qemu-system-x86_64")


class Qemu:
    """One tiny Linux VM with its VGA console on VNC at 127.0.0.1:port."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="thinserve-bench-qemu-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.version = ""
        self.accel = ""

    def start(self) -> None:
        path = qemu_path()
        if path is None:
            raise XvncError("QEMU is not installed: apt-get install qemu-system-x86")
        try:
            linux = build_tiny_linux(self.workdir)
        except ImageError as exc:
            raise XvncError(f"no tiny Linux for QEMU: {exc}") from None
        self.version = _version(path)
        # KVM first, briefly: nested set-ups may hang a KVM guest; then TCG.
        for accel, timeout in (("kvm", KVM_BOOT_TIMEOUT), ("tcg", BOOT_TIMEOUT)):
            if self._boot(path, linux, accel, timeout):
                return
        raise XvncError("the QEMU tiny Linux did not boot")

    def _boot(self, path: str, linux: TinyLinux, accel: str, timeout: float) -> bool:
        display = free_display(60)
        while _port_open(5900 + display):
            display += 1
        serial = self.workdir / "serial.log"
        serial.unlink(missing_ok=True)
        args = [
            path, "-display", "none", "-vnc", f"127.0.0.1:{display}",
            "-nodefaults", "-vga", "std", "-m", "128", "-machine", f"accel={accel}",
            "-no-reboot", "-serial", f"file:{serial}",
            "-kernel", str(linux.kernel), "-initrd", str(linux.initrd),
            "-append", linux.append,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if serial.exists() and READY_MARKER in serial.read_text(errors="replace"):
                self.port, self.accel = 5900 + display, accel
                time.sleep(1.0)  # the shell's prompt after the marker
                return True
            time.sleep(0.2)
        self.stop()
        return False

    def stop(self) -> None:
        processes.end(self.process)
        self.process = None


def _version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "QEMU"
    return out.stdout.splitlines()[0].strip() if out.stdout else "QEMU"


def glyphs(fb: np.ndarray) -> np.ndarray:
    """The console's pixels without the rows where the cursor blinks."""
    rows = np.arange(fb.shape[0]) % CELL_HEIGHT < CELL_HEIGHT - CURSOR_ROWS
    return fb[rows]


@dataclass(frozen=True)
class EchoRun:
    path: str
    latencies: tuple[float, ...]  # seconds
    missed: int
    keys: int
    bytes: int
    server_cpu: float | None

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))] * 1000.0


async def type_and_time(terminal: MeasuringTerminal) -> tuple[list[float], int]:
    keys = [ord(c) for c in TEXT] + [BACKSPACE] * len(TEXT)
    latencies, missed = [], 0
    for keysym in keys:
        seconds = await echo_once(terminal, keysym, glyphs)
        if seconds is None:
            missed += 1
        else:
            latencies.append(seconds)
        await sleep(KEY_GAP)
    return latencies, missed


async def measure_path(path: str, port: int, server: processes.ServerProcess | None) -> EchoRun:
    terminal = await connect(port, TIGHT, "127.0.0.3")
    try:
        await sleep(1.0)  # let the first updates settle
        terminal.reset_counters()
        meter = processes.Meter(server.pid).start() if server else None
        latencies, missed = await type_and_time(terminal)
        cpu = meter.read()[0] if meter else None
    finally:
        terminal.close()
    keys = 2 * len(TEXT)
    return EchoRun(path, tuple(latencies), missed, keys, terminal.bytes, cpu)


async def run(progress: Callable[[str], None]) -> tuple[str, list[EchoRun]]:
    qemu = Qemu()
    progress("[qemu] building the tiny Linux and booting it")
    qemu.start()
    relay = processes.byte_relay(qemu.port)
    thinserve = processes.thinserve([("qemu", qemu.port)])
    runs = []
    try:
        relay.start()
        thinserve.start()
        for path, port, server in (
            ("direct", qemu.port, None),
            ("relay", relay.port, relay),
            ("thinserve", thinserve.port, thinserve),
        ):
            progress(f"[qemu] typing {2 * len(TEXT)} keys, {path}")
            runs.append(await measure_path(path, port, server))
    finally:
        thinserve.stop()
        relay.stop()
        qemu.stop()
        shutil.rmtree(qemu.workdir, ignore_errors=True)
    return f"{qemu.version}, accel={qemu.accel}, tiny Linux on the VGA text console", runs
