"""Desktops outlive thinserve: a restart finds the same Xvnc session and the same VM.

Each test runs a whole thinserve in the test's process, stops it without
--stop-desktops, checks the desktop's processes still run (with their output
going to files, not to pipes a gone thinserve would leave unread), starts a
new thinserve on the same state directory and finds the very same desktop:
the same Xvnc pid and the same pixels, or the same QEMU pid and a guest whose
uptime kept counting.  The last thinserve runs with stop_desktops, which
ends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests.integration.test_backend_xvnc import processes_with, remove_user
from tests.integration.test_desktops import (
    GEOMETRY,
    alive,
    need_xvnc_session,
    runtime_dir,
    xterm_writing,
)
from tests.support.aio import as_deferred
from tests.support.need import need
from tests.support.pixels import diff_summary
from tests.support.statuslog import StatusLog
from tests.support.terminal import Terminal
from tests.support.tinylinux import PROMPT_MARK, TinyLinux
from tests.support.vncdo import vncdo, vncdo_capture, vncdo_path
from tests.support.waiting import wait_until
from thinserve.backends.accounts import Account
from thinserve.backends.pidwatch import same_process
from thinserve.backends.qemu import QemuBackend, QemuDesktopConfig
from thinserve.backends.records import RecordStore
from thinserve.backends.xvnc import XvncBackend, XvncDesktopConfig, XvncOptions
from thinserve.broker import BrokerConfig
from thinserve.config import Config, LocalDesktopConfig, from_dict
from thinserve.desktop_state import DesktopState
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

__all__ = ["runtime_dir"]  # a fixture, shared with test_desktops

XTERM_AREA = (slice(0, 150), slice(0, 500))  # an 80x10 xterm at +0+0, in pixels
UPTIME = re.compile(r"^(\d+\.\d+) \d+\.\d+$", re.MULTILINE)  # /proc/uptime
USER = "tsoutlive"  # a user of this file's own: other tests remove theirs at will


@pytest.fixture
def desktop_user() -> Iterator[Account]:
    """A Unix user for the local desktop (thinserve as root never runs one as root)."""
    need(os.geteuid() == 0, "root, to create the desktop's Unix user (CI runs as root)")
    need("useradd", "to create the test's Unix user")
    remove_user(USER)
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True, capture_output=True
    )
    try:
        yield Account.of(USER)
    finally:
        remove_user(USER)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """thinserve's state directory; whatever its records name is ended at the end."""
    path = tmp_path / "state"
    yield path
    store = RecordStore(path / "desktops")
    for name in store.names():
        record = store.load(name)
        for process in record.processes if record is not None else ():
            if same_process(process.pid, process.start):
                os.killpg(process.pid, signal.SIGKILL)


def recorded_pid(state_dir: Path, desktop: str, role: str) -> int:
    data = json.loads((state_dir / "desktops" / f"{desktop}.json").read_text())
    [pid] = [p["pid"] for p in data["processes"] if p["role"] == role]
    return int(pid)


def writes_to_files(pid: int) -> bool:
    """stdout and stderr of ``pid`` are files (a pipe to a gone thinserve would kill it)."""
    targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (1, 2)]
    return all(t.startswith("/") and t.endswith(".log") for t in targets)


async def capture(port: int, path: Path) -> np.ndarray:
    """The screen as vncdotool sees it through thinserve (in a thread: the reactor serves)."""
    return await threads.deferToThread(vncdo_capture, "127.0.0.1", port, path)


async def type_with_vncdo(port: int, text: str) -> None:
    actions = ["move", "60", "40", "pause", "0.3", "type", text, "key", "enter"]
    await threads.deferToThread(vncdo, "127.0.0.1", port, actions)


def local_config(
    state_dir: Path, runtime_dir: Path, tmp_path: Path, typed: Path, user: str
) -> Config:
    local = LocalDesktopConfig("here", user=user, geometry=GEOMETRY, command=xterm_writing(typed))
    return Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        broker=BrokerConfig(unknown_terminal="pool", pools={"all": ("here",)}, default_pool="all"),
        database=str(tmp_path / "ts.db"),
        admin_socket="",
        discovery=False,
        address_pairing=("127.0.0.0/8",),
        local_desktops=(local,),
        state_dir=state_dir,
        runtime_dir=runtime_dir,
        source="test",
    )


@pytest_twisted.ensureDeferred
async def test_a_local_desktop_keeps_its_windows_across_a_restart(
    desktop_user: Account,
    state_dir: Path,
    runtime_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    need_xvnc_session()
    need(vncdo_path(), "vncdotool, to type and capture")
    caplog.set_level(logging.INFO, logger="thinserve.backends")
    os.chmod(runtime_dir, 0o711)  # as /run/thinserve: the user's Xvnc reaches its own directory
    uid = desktop_user.uid
    typed = Path(desktop_user.home) / "typed"
    config = local_config(state_dir, runtime_dir, tmp_path, typed, USER)
    socket = runtime_dir / "local" / "sockets" / "here" / "vnc.sock"

    first = ThinServe(config, reactor)
    await first.startService()
    try:
        port = first.port_numbers[0]
        await wait_until(typed.exists, 30, "the session's xterm")
        await type_with_vncdo(port, "typed-before-the-restart")
        await wait_until(
            lambda: "typed-before-the-restart" in typed.read_text(), 20, "the typed line"
        )
        before = await capture(port, tmp_path / "before.png")
    finally:
        await first.stopService()
    xvnc = recorded_pid(state_dir, "here", "xvnc")
    session = recorded_pid(state_dir, "here", "session")
    assert alive(xvnc) and alive(session)
    assert processes_with("cmdline", str(socket), uid) == [xvnc]
    assert writes_to_files(xvnc) and writes_to_files(session)
    assert "desktop here: left running; the next start takes it over" in caplog.text

    second = ThinServe(replace(config, stop_desktops=True), reactor)
    await second.startService()
    try:
        port = second.port_numbers[0]
        after = await capture(port, tmp_path / "after.png")
        area_before, area_after = before[XTERM_AREA], after[XTERM_AREA]
        assert np.array_equal(area_after, area_before), diff_summary(area_after, area_before)
        assert (area_before == 0xFFFFFF).mean() > 0.5  # the xterm is there, white
        assert processes_with("cmdline", str(socket), uid) == [xvnc]
        assert f"desktop here: took over the running desktop (xvnc pid {xvnc}" in caplog.text
        await type_with_vncdo(port, "typed-after-the-restart")
        await wait_until(
            lambda: "typed-after-the-restart" in typed.read_text(), 20, "the second typed line"
        )
    finally:
        await second.stopService()
    await wait_until(lambda: not alive(xvnc) and not alive(session), 20, "the desktop to end")
    assert not (state_dir / "desktops" / "here.json").exists()


@pytest_twisted.ensureDeferred
async def test_a_session_found_broken_is_ended_and_started_afresh(
    state_dir: Path, runtime_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Xvnc still runs but its session program died while nobody watched: the record
    does not check out, what is left is ended, and the desktop starts anew."""
    need_xvnc_session()
    records = RecordStore(state_dir / "desktops")
    configs = [XvncDesktopConfig("d", geometry=GEOMETRY, command=xterm_writing(tmp_path / "t"))]
    options = XvncOptions(runtime_dir)
    first = XvncBackend(configs, options=options, records=records)
    await as_deferred(first.ensure_running("d"))
    xvnc, session = first.session("d").processes()
    assert xvnc is not None and session is not None
    await as_deferred(first.release())
    assert alive(xvnc)
    os.killpg(session, signal.SIGKILL)
    await wait_until(lambda: not alive(session), 10, "the session program to die")

    log = StatusLog()
    second = XvncBackend(configs, on_status=log, options=options, records=records)
    try:
        assert await as_deferred(second.adopt()) == []
        assert f"session pid {session} ended or is another process now" in caplog.text
        assert "ending what is left of it and starting it afresh" in caplog.text
        await wait_until(lambda: not alive(xvnc), 10, "the old Xvnc to be gone")
        assert records.load("d") is None
        await as_deferred(second.ensure_running("d"))
        again, _ = second.session("d").processes()
        assert again is not None and again != xvnc
        assert records.load("d") is not None
        assert log.statuses("d") == [DesktopState.STARTING, DesktopState.RUNNING]
    finally:
        await as_deferred(second.close())
    assert records.load("d") is None


@pytest_twisted.ensureDeferred
async def test_a_taken_over_session_ending_is_heard_at_once(
    state_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    """After a take-over, Xvnc and the session are no children of this thinserve:
    their ends still come through at once (pidfds), Xvnc's as a crash and the
    session's logout (read from the status its shell wrote) as a stop."""
    need_xvnc_session()
    records = RecordStore(state_dir / "desktops")
    logout = tmp_path / "logout"
    configs = [
        XvncDesktopConfig("crash", geometry=GEOMETRY, command="sleep 600"),
        XvncDesktopConfig(
            "out", geometry=GEOMETRY, command=f"while [ ! -e {logout} ]; do sleep 0.05; done"
        ),
    ]
    options = XvncOptions(runtime_dir)
    first = XvncBackend(configs, options=options, records=records)
    await as_deferred(_both(first))
    await as_deferred(first.release())
    log = StatusLog()
    second = XvncBackend(configs, on_status=log, options=options, records=records)
    try:
        assert sorted(await as_deferred(second.adopt())) == ["crash", "out"]
        assert log.statuses("crash") == log.statuses("out") == [DesktopState.RUNNING]
        xvnc, _ = second.session("crash").processes()
        assert xvnc is not None
        os.kill(xvnc, signal.SIGKILL)
        detail = await as_deferred(log.wait_for("crash", DesktopState.CRASHED, 10))
        assert detail.startswith("Xvnc ended unexpectedly (exit status unknown)")
        logout.touch()
        detail = await as_deferred(log.wait_for("out", DesktopState.STOPPED, 10))
        assert detail == "the session ended (logged out)"
        assert records.names() == []
    finally:
        await as_deferred(second.close())


@pytest_twisted.ensureDeferred
async def test_a_desktop_left_running_but_no_longer_configured_is_ended(
    state_dir: Path, runtime_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    need_xvnc_session()
    records = RecordStore(state_dir / "desktops")
    configs = [XvncDesktopConfig("gone", geometry=GEOMETRY, command="sleep 600")]
    backend = XvncBackend(configs, options=XvncOptions(runtime_dir), records=records)
    await as_deferred(backend.ensure_running("gone"))
    xvnc, session = backend.session("gone").processes()
    await as_deferred(backend.release())
    assert alive(xvnc) and alive(session)
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        database=str(tmp_path / "ts.db"),
        admin_socket="",
        discovery=False,
        local_desktops=(),
        state_dir=state_dir,
        runtime_dir=tmp_path / "run",
        source="test",
    )
    server = ThinServe(config, reactor)
    await server.startService()
    try:
        assert "desktop gone was left running but is no longer configured: ending it" in (
            caplog.text
        )
        await wait_until(lambda: not alive(xvnc) and not alive(session), 10, "its end")
        assert records.names() == []
    finally:
        await server.stopService()


async def _both(backend: XvncBackend) -> None:
    await asyncio.gather(backend.ensure_running("crash"), backend.ensure_running("out"))


def qemu_config(
    state_dir: Path, tmp_path: Path, tiny_linux: TinyLinux, accel: str, serial: Path
) -> Config:
    return from_dict(
        {
            "server": {
                "listen": ["tcp:port=0:interface=127.0.0.1"],
                "web_listen": [],
                "database": str(tmp_path / "ts.db"),
                "admin_socket": "",
                "address_pairing": ["127.0.0.0/8"],
                "state_dir": str(state_dir),
                "runtime_dir": str(tmp_path / "run"),
            },
            "discovery": {"enabled": False},
            "broker": {
                "unknown_terminal": "pool",
                "default_pool": "vms",
                "pools": {"vms": ["vm-1"]},
            },
            "qemu_desktop": [
                {
                    "name": "vm-1",
                    "state_dir": str(tmp_path / "vms"),
                    "kernel": str(tiny_linux.kernel),
                    "initrd": str(tiny_linux.initrd),
                    "append": tiny_linux.append,
                    "memory_mib": 128,
                    "cpus": 1,
                    "accel": "kvm" if accel.startswith("kvm") else "tcg",
                    "serial_log": str(serial),
                    "nic": None,
                    "shutdown_timeout": 30,
                }
            ],
        },
        "test",
    )


async def guest_uptime(terminal: Terminal, serial: Path) -> float:
    """The guest's /proc/uptime, printed to its serial port by a typed command."""
    seen = len(UPTIME.findall(serial.read_text()))
    terminal.type_text("cp /proc/uptime /dev/ttyS0\n")  # no shifted keys: QEMU maps scancodes

    def found() -> list[str] | None:
        values = UPTIME.findall(serial.read_text())
        return values if len(values) > seen else None

    values = await wait_until(
        found, 30, lambda: f"the uptime (serial: {serial.read_text()[-300:]!r})"
    )
    return float(values[-1])


@pytest_twisted.ensureDeferred
async def test_a_vm_keeps_running_across_a_restart(
    tiny_linux: TinyLinux, qemu_accel: str, state_dir: Path, tmp_path: Path
) -> None:
    serial = tmp_path / "serial.log"
    config = qemu_config(state_dir, tmp_path, tiny_linux, qemu_accel, serial)
    first = ThinServe(config, reactor)
    await first.startService()
    try:
        terminal = await Terminal().connect(first.port_numbers[0])
        await wait_until(
            lambda: serial.exists() and PROMPT_MARK in serial.read_text(), 120, "the guest's shell"
        )
        await wait_until(lambda: terminal.framebuffer.shape == (400, 720), 60, "the VM console")
        before = await guest_uptime(terminal, serial)
        terminal.close()
    finally:
        await first.stopService()
    qemu = recorded_pid(state_dir, "vm-1", "qemu")
    assert alive(qemu) and writes_to_files(qemu)

    second = ThinServe(replace(config, stop_desktops=True), reactor)
    await second.startService()
    try:
        assert second.desktops is not None
        assert second.desktops.desktops["vm-1"].state is DesktopState.RUNNING  # before anyone asks
        terminal = await Terminal().connect(second.port_numbers[0])
        await wait_until(lambda: terminal.framebuffer.shape == (400, 720), 60, "the VM console")
        after = await guest_uptime(terminal, serial)
        assert after > before
        assert recorded_pid(state_dir, "vm-1", "qemu") == qemu and alive(qemu)
        assert serial.read_text().count("thinserve-tiny-vm: ready") <= 1  # never booted again
        terminal.close()
    finally:
        await second.stopService()
    await wait_until(lambda: not alive(qemu), 60, "QEMU to end with --stop-desktops")
    assert not (state_dir / "desktops" / "vm-1.json").exists()


@pytest_twisted.ensureDeferred
async def test_a_taken_over_vm_answers_qmp_and_its_end_is_heard_at_once(
    tiny_linux: TinyLinux, qemu_accel: str, state_dir: Path, tmp_path: Path
) -> None:
    """QEMU after a take-over is no child of this thinserve: QMP still works (its
    own monitor socket) and a SIGKILL is heard at once, as a crash."""
    records = RecordStore(state_dir / "desktops")
    vm = QemuDesktopConfig(
        "vm",
        state_dir=tmp_path / "vms",
        kernel=tiny_linux.kernel,
        initrd=tiny_linux.initrd,
        append=tiny_linux.append,
        memory_mib=128,
        cpus=1,
        accel="kvm" if qemu_accel.startswith("kvm") else "tcg",
        nic=None,
    )
    first = QemuBackend([vm], records=records)
    await as_deferred(first.ensure_running("vm"))
    run = first.vm("vm").run
    assert run is not None
    pid = run.pid
    await as_deferred(first.release())
    log = StatusLog()
    second = QemuBackend([vm], on_status=log, records=records)
    try:
        assert await as_deferred(second.adopt()) == ["vm"]
        status = await as_deferred(second.execute("vm", "query-status"))
        assert isinstance(status, dict) and status["status"] == "running"
        os.kill(pid, signal.SIGKILL)
        detail = await as_deferred(log.wait_for("vm", DesktopState.CRASHED, 10))
        assert detail.startswith("QEMU ended unexpectedly (exit status unknown)")
        assert records.names() == []
    finally:
        await as_deferred(second.close())
    await wait_until(lambda: not alive(pid), 10, "QEMU reaped")
