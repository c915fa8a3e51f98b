"""A real QEMU virtual machine whose VGA console is served over VNC on loopback."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .pixels import read_image
from .ports import LOOPBACK, free_tcp_port, rfb_banner
from .procs import Spawned, spawn
from .qmp import QmpClient
from .tinylinux import PROMPT_MARK, TinyLinux
from .waiting import WaitTimeout, wait_until_blocking

QEMU = "qemu-system-x86_64"
VNC_BASE_PORT = 5900
VNC_DISPLAY_SPAN = 100  # QEMU's "to=": try this many displays if the first is taken
KVM_PROBE_SECONDS = 8.0
ACCEL_ENV = "THINSERVE_QEMU_ACCEL"  # force "tcg" or "kvm:tcg", skipping the probe


@dataclass
class QemuVM:
    """A running VM: VNC on ``host``:``port``, QMP in ``qmp``, serial port in a file."""

    port: int
    accel: str
    kvm_enabled: bool
    workdir: Path
    proc: Spawned
    qmp: QmpClient
    serial_path: Path
    host: str = LOOPBACK

    def serial_text(self) -> str:
        """What the guest wrote to its first serial port, line ends as "\\n"."""
        try:
            return self.serial_path.read_text(errors="replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    def wait_serial(self, text: str, count: int = 1, timeout: float = 60.0) -> None:
        """Wait until ``text`` has appeared ``count`` times on the first serial port."""
        wait_until_blocking(
            lambda: self.serial_text().count(text) >= count,
            timeout,
            lambda: f"{count}x {text!r} on the serial port (so far: {self.serial_text()[-300:]!r})",
            self.proc,
        )

    def prompts(self) -> int:
        """How many shell prompts the tiny Linux has printed so far."""
        return self.serial_text().count(PROMPT_MARK)

    def screendump(self) -> np.ndarray:
        """QEMU's own copy of the display, as uint32 0x00RRGGBB."""
        path = self.workdir / "screendump.ppm"
        self.qmp.execute("screendump", filename=str(path))
        return read_image(path)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.qmp.close()
        self.proc.stop()


def kvm_openable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _vnc_option() -> str:
    port = free_tcp_port()
    first = port - VNC_BASE_PORT if port >= VNC_BASE_PORT else 0
    last = min(first + VNC_DISPLAY_SPAN, 65535 - VNC_BASE_PORT)
    return f"{LOOPBACK}:{first},to={last}"


def qemu_argv(workdir: Path, accel: str, linux: TinyLinux | None, memory_mb: int) -> list[str]:
    argv = [QEMU, "-display", "none", "-vnc", _vnc_option(), "-nodefaults", "-vga", "std"]
    argv += ["-m", str(memory_mb), "-machine", f"accel={accel}", "-no-reboot"]
    argv += ["-qmp", f"unix:{workdir / 'qmp.sock'},server=on,wait=off"]
    argv += ["-serial", f"file:{workdir / 'serial.log'}"]
    if linux is not None:
        argv += ["-kernel", str(linux.kernel), "-initrd", str(linux.initrd)]
        argv += ["-append", linux.append]
    return argv


def start_qemu(
    workdir: Path,
    accel: str = "tcg",
    linux: TinyLinux | None = None,
    memory_mb: int = 128,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> QemuVM:
    """Start QEMU (SeaBIOS only, or booting ``linux``) and wait until its VNC answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [*qemu_argv(workdir, accel, linux, memory_mb), *extra_args]
    proc = spawn(argv, workdir / "qemu.log")
    try:
        qmp = _connect_qmp(workdir / "qmp.sock", timeout, proc)
        port = int(qmp.execute("query-vnc")["service"])
        kvm = bool(qmp.execute("query-kvm")["enabled"])
        vm = QemuVM(port, accel, kvm, workdir, proc, qmp, workdir / "serial.log")
        wait_until_blocking(
            lambda: rfb_banner(LOOPBACK, port), timeout, f"QEMU VNC on {port}", proc
        )
    except BaseException:
        proc.stop()
        raise
    return vm


def _connect_qmp(path: Path, timeout: float, proc: Spawned) -> QmpClient:
    def attempt() -> QmpClient | None:
        try:
            return QmpClient(path) if path.exists() else None
        except ConnectionRefusedError:
            return None

    return wait_until_blocking(attempt, timeout, f"QMP socket {path}", proc)


class Bootable(Protocol):
    """A kernel and initramfs to boot (this package's TinyLinux, or the backends' own)."""

    @property
    def kernel(self) -> Path: ...

    @property
    def initrd(self) -> Path: ...

    @property
    def append(self) -> str: ...


def kvm_boots_linux(workdir: Path, linux: Bootable, marker: str = PROMPT_MARK) -> bool:
    """Whether this machine's KVM really runs a Linux guest (nested set-ups may hang):
    the guest must write ``marker`` to its serial port within the probe's time."""
    workdir.mkdir(parents=True, exist_ok=True)
    serial = workdir / "serial.log"
    argv = [QEMU, "-display", "none", "-nodefaults", "-m", "128", "-machine", "accel=kvm"]
    argv += ["-no-reboot", "-serial", f"file:{serial}", "-kernel", str(linux.kernel)]
    argv += ["-initrd", str(linux.initrd), "-append", linux.append]
    proc = spawn(argv, workdir / "qemu.log")
    try:
        wait_until_blocking(
            lambda: serial.exists() and marker in serial.read_text(errors="replace"),
            KVM_PROBE_SECONDS,
            "a KVM guest",
            proc,
        )
    except (WaitTimeout, RuntimeError):
        return False
    finally:
        proc.stop()
    return True


def choose_accel(workdir: Path, linux: Bootable | None, marker: str = PROMPT_MARK) -> str:
    """'kvm:tcg' when KVM is there and boots ``linux`` (up to ``marker``), else 'tcg'.

    ``THINSERVE_QEMU_ACCEL`` forces the answer without a probe.
    """
    forced = os.environ.get(ACCEL_ENV)
    if forced:
        return forced
    if not kvm_openable() or linux is None:
        return "tcg"
    return "kvm:tcg" if kvm_boots_linux(workdir, linux, marker) else "tcg"
