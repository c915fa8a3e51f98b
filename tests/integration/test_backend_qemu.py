"""The QEMU backend with real QEMU processes booting the tiny demo Linux.

The guest's console is read through thinserve's own RFB client over the
backend's Unix socket; what is typed there is checked exactly through the
guest's serial port, which QEMU writes to a file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted

from tests.support.aio import as_deferred
from tests.support.backendvm import require_qemu, tiny_linux, vm_accel, wait_for_text
from tests.support.console import Console, lit_pixels
from tests.support.need import need
from tests.support.statuslog import StatusLog
from thinserve.backends.base import BackendError, ConsoleAddress
from thinserve.backends.images import READY_MARKER, backing_file, kernel_release, tiny_vm_modules
from thinserve.backends.qemu import QemuBackend, QemuDesktopConfig, pool
from thinserve.desktop_state import DesktopState

pytestmark = pytest.mark.integration

BOOT_SECONDS = 90.0  # a TCG boot takes 8-25 s on a busy 2-core machine
BLOCK = 65536


def make_template(path: Path, fill: int) -> Path:
    """A 16 MiB qcow2 template whose first 64 KiB hold ``fill`` bytes."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    write_pattern(path, fill)
    return path


def write_pattern(image: Path, fill: int) -> None:
    command = f"write -P {fill:#x} 0 {BLOCK}"
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, stdout=-3)


def first_block(image: Path, scratch: Path) -> bytes:
    """The first 64 KiB the guest would see in ``image`` (through its backing chain)."""
    raw = scratch / "first-block.raw"
    raw.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"bs={BLOCK}", "count=1",
         f"if={image}", f"of={raw}"],
        check=True,
    )  # fmt: skip
    return raw.read_bytes()


@pytest.fixture
def config(tmp_path: Path) -> QemuDesktopConfig:
    require_qemu()
    linux = tiny_linux()
    return QemuDesktopConfig(
        name="tiny",
        state_dir=tmp_path / "state",
        template=make_template(tmp_path / "template.qcow2", 0x11),
        template_format="qcow2",
        kernel=linux.kernel,
        initrd=linux.initrd,
        append=linux.append,
        memory_mib=128,
        cpus=1,
        accel=vm_accel(),
        nic=None,
        serial_log=tmp_path / "serial.log",
        boot_timeout=BOOT_SECONDS,
        shutdown_timeout=30.0,
    )


async def force_stop_all(backend: QemuBackend) -> None:
    await asyncio.gather(*(vm.stop(force=True) for vm in backend.vms.values()))


def process_gone(pid: int) -> bool:
    """True once ``pid`` was reaped (no zombie left either)."""
    return not Path(f"/proc/{pid}").exists()


@pytest_twisted.ensureDeferred
async def test_two_guests_boot_take_typing_panic_and_power_down(
    config: QemuDesktopConfig, tmp_path: Path
) -> None:
    """Two desktops boot side by side (one TCG boot of wall time on two cores).

    "tiny" shows its console, runs a typed command and then panics;
    "other" is powered down through its ACPI power button.
    """
    need(
        len(tiny_vm_modules(kernel_release(config.kernel))) == 4,  # type: ignore[arg-type]
        "the kernel's evdev/button/pvpanic modules: apt-get install linux-image-amd64",
    )
    other = replace(config, name="other", serial_log=tmp_path / "other-serial.log")
    log = StatusLog()
    backend = QemuBackend([config, other], on_status=log)
    console = None
    try:
        address = await as_deferred(backend.ensure_running("tiny"))
        await as_deferred(backend.ensure_running("other"))
        await check_running_console(backend, config, address, log)
        await as_deferred(wait_for_text(config.serial_log, READY_MARKER, BOOT_SECONDS))
        console = await Console.open(address)
        await check_typing(console, config)
        await check_power_down(backend, other, log)

        await console.type_text("echo c > /proc/sysrq-trigger")
        detail = await as_deferred(log.wait_for("tiny", DesktopState.CRASHED, 60))
        assert detail == "the guest operating system panicked"
        assert backend.vms["tiny"].run is None
    finally:
        if console is not None:
            console.close()
        await as_deferred(force_stop_all(backend))


async def check_running_console(
    backend: QemuBackend, config: QemuDesktopConfig, address: ConsoleAddress, log: StatusLog
) -> None:
    assert address.endpoint == f"unix:path={config.directory / 'vnc.sock'}"
    assert address.password is None
    assert stat.S_IMODE(config.directory.stat().st_mode) == 0o700
    assert log.statuses("tiny") == [DesktopState.STARTING, DesktopState.RUNNING]
    infos = await as_deferred(backend.list_desktops())
    assert [(i.name, i.backend, i.status) for i in infos] == [
        ("tiny", "qemu", DesktopState.RUNNING),
        ("other", "qemu", DesktopState.RUNNING),
    ]
    assert infos[0].detail == f"{config.accel.upper()}, 1 CPUs, 128 MiB"
    mice = await as_deferred(backend.execute("tiny", "query-mice"))
    # an absolute pointer (taken over once the guest's USB HID driver runs)
    assert [m["name"] for m in mice if m["absolute"]] == ["QEMU HID Tablet"]  # type: ignore[attr-defined]


async def check_typing(console: Console, config: QemuDesktopConfig) -> None:
    assert config.serial_log is not None
    before = await console.wait_for_frame(lambda f: lit_pixels(f) > 500, 30, "any text")
    await console.type_text("echo typed-ok > /dev/ttyS0")
    serial = await as_deferred(wait_for_text(config.serial_log, "typed-ok", 60))
    assert serial.splitlines() == [READY_MARKER, "typed-ok"]
    after = await console.wait_for_frame(lambda f: (f != before).any(), 10, "the typed line")
    assert int((after != before).sum()) > 100  # a whole command line of glyphs


async def check_power_down(backend: QemuBackend, config: QemuDesktopConfig, log: StatusLog) -> None:
    assert config.serial_log is not None
    pid = backend.vms[config.name].run.process.pid  # type: ignore[union-attr]
    await as_deferred(wait_for_text(config.serial_log, READY_MARKER, BOOT_SECONDS))
    started = time.monotonic()
    mark = len(log.entries)
    await as_deferred(backend.stop(config.name))
    assert time.monotonic() - started < config.shutdown_timeout  # no fallback to quit
    assert log.entries[mark:] == [
        (config.name, DesktopState.STOPPING, "powering off"),
        (config.name, DesktopState.STOPPED, "the guest powered off"),
    ]
    assert backend.vms[config.name].info().status is DesktopState.STOPPED
    assert process_gone(pid)


@pytest_twisted.ensureDeferred
async def test_killed_qemu_is_reported_crashed(config: QemuDesktopConfig) -> None:
    log = StatusLog()
    backend = QemuBackend([config], on_status=log)

    async def start_twice() -> list[object]:
        return list(
            await asyncio.gather(backend.ensure_running("tiny"), backend.ensure_running("tiny"))
        )

    try:
        first, second = await as_deferred(start_twice())
        assert first == second
        assert log.statuses("tiny") == [DesktopState.STARTING, DesktopState.RUNNING]  # one QEMU
        pid = backend.vms["tiny"].run.process.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        detail = await as_deferred(log.wait_for("tiny", DesktopState.CRASHED, 30))
        assert detail == "QEMU ended unexpectedly (killed by SIGKILL)"
        assert process_gone(pid)

        mark = len(log.entries)
        await as_deferred(backend.ensure_running("tiny"))  # a crashed desktop starts again
        await as_deferred(backend.stop("tiny", force=True))
        assert [s for _, s, _ in log.entries[mark:]] == [
            DesktopState.STARTING,
            DesktopState.RUNNING,
            DesktopState.STOPPING,
            DesktopState.STOPPED,
        ]
        assert log.entries[-1] == ("tiny", DesktopState.STOPPED, "stopped")
    finally:
        await as_deferred(force_stop_all(backend))


@pytest_twisted.ensureDeferred
async def test_overlay_persists_and_reset_restores_the_template(
    config: QemuDesktopConfig, tmp_path: Path
) -> None:
    assert config.template is not None
    backend = QemuBackend([config])
    try:
        await as_deferred(backend.ensure_running("tiny"))
        assert await as_deferred(backing_file(config.overlay)) == str(config.template)
        blocks = await as_deferred(backend.execute("tiny", "query-block"))
        inserted = blocks[0]["inserted"]  # type: ignore[index]
        assert inserted["file"] == str(config.overlay)
        assert inserted["backing_file"] == str(config.template)
        await as_deferred(backend.stop("tiny", force=True))

        write_pattern(config.overlay, 0x5A)  # what the desktop's user changed
        assert first_block(config.overlay, tmp_path) == b"\x5a" * BLOCK
        await as_deferred(backend.ensure_running("tiny"))  # a persistent desktop keeps it
        await as_deferred(backend.stop("tiny", force=True))
        assert first_block(config.overlay, tmp_path) == b"\x5a" * BLOCK

        await as_deferred(backend.reset("tiny"))
        assert first_block(config.overlay, tmp_path) == b"\x11" * BLOCK
        assert first_block(config.template, tmp_path) == b"\x11" * BLOCK
        assert await as_deferred(backing_file(config.overlay)) == str(config.template)
    finally:
        await as_deferred(force_stop_all(backend))


@pytest_twisted.ensureDeferred
async def test_settings_change_at_next_start_and_kiosk_mode(
    config: QemuDesktopConfig, tmp_path: Path
) -> None:
    log = StatusLog()
    backend = QemuBackend([config], on_status=log)
    try:
        await as_deferred(backend.ensure_running("tiny"))
        backend.configure(replace(config, memory_mib=160, cpus=2, ephemeral=True))
        [info] = await as_deferred(backend.list_desktops())
        assert info.detail.endswith("1 CPUs, 128 MiB")  # still the running VM's
        await as_deferred(backend.stop("tiny", force=True))
        write_pattern(config.overlay, 0x5A)

        await as_deferred(backend.ensure_running("tiny"))
        [info] = await as_deferred(backend.list_desktops())
        assert info.detail.endswith("2 CPUs, 160 MiB")
        memory = await as_deferred(backend.execute("tiny", "query-memory-size-summary"))
        assert memory["base-memory"] == 160 * 2**20  # type: ignore[index]
        cpus = await as_deferred(backend.execute("tiny", "query-cpus-fast"))
        assert len(cpus) == 2  # type: ignore[arg-type]
        await as_deferred(backend.stop("tiny", force=True))
        assert first_block(config.overlay, tmp_path) == b"\x11" * BLOCK  # fresh at start
    finally:
        await as_deferred(force_stop_all(backend))


@pytest_twisted.ensureDeferred
async def test_a_pool_shares_one_template(config: QemuDesktopConfig) -> None:
    desktops = pool(replace(config, name="desk"), 2)
    assert [d.name for d in desktops] == ["desk-1", "desk-2"]
    backend = QemuBackend(desktops)
    try:
        for desktop in desktops:
            await as_deferred(backend.ensure_running(desktop.name))
        infos = await as_deferred(backend.list_desktops())
        assert [i.status for i in infos] == [DesktopState.RUNNING] * 2
        overlays = {d.overlay for d in desktops}
        assert len(overlays) == 2
        for overlay in overlays:
            assert await as_deferred(backing_file(overlay)) == str(config.template)
    finally:
        await as_deferred(force_stop_all(backend))


@pytest_twisted.ensureDeferred
async def test_close_quits_a_guest_that_ignores_the_power_button(
    config: QemuDesktopConfig,
) -> None:
    log = StatusLog()
    backend = QemuBackend([replace(config, shutdown_timeout=1.0)], on_status=log)
    await as_deferred(backend.ensure_running("tiny"))  # firmware or early boot: no ACPI yet
    pid = backend.vms["tiny"].run.process.pid  # type: ignore[union-attr]
    started = time.monotonic()
    await as_deferred(backend.close())
    assert time.monotonic() - started >= 1.0
    assert log.entries[-2:] == [
        ("tiny", DesktopState.STOPPING, "powering off"),
        ("tiny", DesktopState.STOPPED, "stopped"),
    ]
    assert process_gone(pid)


@pytest_twisted.ensureDeferred
async def test_a_broken_desktop_is_crashed_with_qemus_reason(config: QemuDesktopConfig) -> None:
    log = StatusLog()
    broken = replace(config, extra_args=("-no-such-option",))
    backend = QemuBackend([broken], on_status=log)
    with pytest.raises(BackendError, match="no-such-option"):
        await as_deferred(backend.ensure_running("tiny"))
    assert log.statuses("tiny") == [DesktopState.STARTING, DesktopState.CRASHED]
    with pytest.raises(BackendError, match="no QEMU desktop named 'other'"):
        await as_deferred(backend.ensure_running("other"))


def test_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="template disk image or a kernel"):
        QemuDesktopConfig(name="a", state_dir=tmp_path)
    with pytest.raises(ValueError, match="desktop name"):
        QemuDesktopConfig(name="../a", state_dir=tmp_path, kernel=tmp_path)
    with pytest.raises(ValueError, match="accel"):
        QemuDesktopConfig(name="a", state_dir=tmp_path, kernel=tmp_path, accel="hvf")
