"""Desktops from the config file, through the whole server.

A [[qemu_desktop]] in a pool is started on demand when a terminal is given
it: the terminal sees the starting screen, then the VM's console, and its
keys reach the guest.  The QEMU runs under TCG here; see docs/backends.md.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.terminal import Terminal
from tests.support.tinylinux import PROMPT_MARK
from tests.support.waiting import wait_until
from thinserve.broker import ShowDesktop
from thinserve.config import from_dict
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration


def shown(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@pytest_twisted.ensureDeferred
async def test_pooled_qemu_desktop_starts_on_demand_and_takes_keys(
    tiny_linux, qemu_accel: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="thinserve.hub")
    serial = tmp_path / "serial.log"
    config = from_dict(
        {
            "server": {
                "listen": ["tcp:port=0:interface=127.0.0.1"],
                "web_listen": [],
                "database": str(tmp_path / "ts.db"),
                "admin_socket": "",
                "address_pairing": ["127.0.0.0/8"],  # the viewer here is viewer-127.0.0.1
                "state_dir": str(tmp_path / "state"),
            },
            "discovery": {"enabled": False},
            "broker": {
                "unknown_terminal": "pool",
                "default_pool": "vms",
                "pools": {"vms": ["vm-1"]},
            },
            "desktops": {"pools": {"vms": {"max_running": 1}}},
            "qemu_desktop": [
                {
                    "name": "vm-1",
                    "state_dir": str(tmp_path / "vms"),
                    "kernel": str(tiny_linux.kernel),
                    "initrd": str(tiny_linux.initrd),
                    "append": tiny_linux.append,
                    "memory_mib": 128,
                    "cpus": 1,
                    "accel": "kvm" if qemu_accel.startswith("kvm") else "tcg",
                    "serial_log": str(serial),
                    "nic": None,
                    "boot_estimate": 10,
                }
            ],
        },
        "test",
    )
    server = ThinServe(replace(config, stop_desktops=True), reactor)  # the VM ends with it
    await server.startService()
    try:
        terminal = await Terminal().connect(server.port_numbers[0])
        # The pool lends vm-1 at once and it reports starting a moment later;
        # a warm QEMU is on its console soon after, so the screen may be brief.
        starting = "terminal viewer-127.0.0.1 now shows the starting screen"
        await wait_until(lambda: starting in shown(caplog), 30, "the starting screen")
        await wait_until(
            lambda: serial.exists() and PROMPT_MARK in serial.read_text(),
            120,
            lambda: f"boot (serial: {serial.read_text()[-300:] if serial.exists() else ''!r})",
        )
        await wait_until(
            lambda: terminal.framebuffer.shape == (400, 720),
            60,
            lambda: f"the VM console (the terminal shows {terminal.framebuffer.shape})",
        )
        assert isinstance(server.hub.broker.assignment("viewer-127.0.0.1"), ShowDesktop)
        prompts = serial.read_text().count(PROMPT_MARK)
        terminal.type_text("true\n")  # each prompt writes a mark to the serial port
        await wait_until(
            lambda: serial.read_text().count(PROMPT_MARK) > prompts,
            30,
            lambda: f"the typed command (serial: {serial.read_text()[-300:]!r})",
        )
        assert server.desktops is not None and server.desktops.running() == ["vm-1"]
        terminal.close()
    finally:
        await server.stopService()
