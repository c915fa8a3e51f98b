"""``thinserve desktops`` and its actions, end to end: the real CLI as its own
process, an in-process thinserve with real Xvnc desktops and real terminals.

A desktop that cannot start is shown failed, with its reason, as soon as
thinserve runs, and a terminal given it is told why.  Desktops thinserve runs
can be started, stopped and reset; a desktop removed from the configuration
can be forgotten.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.integration.test_admin import ACTOR, cli, cli_json, cli_ok, desktop, terminal_row
from tests.integration.test_backend_xvnc import processes_of
from tests.integration.test_desktops import alive, need_xvnc_session, runtime_dir  # noqa: F401
from tests.integration.test_desktops_outlive import desktop_user  # noqa: F401
from tests.integration.test_rfb_interop import office_frame
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from thinserve.backends.accounts import Account
from thinserve.backends.qemu import QemuDesktopConfig
from thinserve.backends.xvnc import XvncDesktopConfig
from thinserve.broker import BrokerConfig
from thinserve.config import Config, LocalDesktopConfig
from thinserve.desktop_config import DesktopSetup
from thinserve.relay import screens
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration


async def start(
    tmp_path: Path, runtime: Path, broker: BrokerConfig | None = None, **settings: Any
) -> tuple[ThinServe, Path]:
    sock = tmp_path / "admin" / "admin.sock"
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        broker=broker or BrokerConfig(),
        database=str(tmp_path / "ts.db"),
        admin_socket=str(sock),
        discovery=False,
        address_pairing=("127.0.0.0/8",),
        state_dir=tmp_path / "state",
        runtime_dir=runtime,
        stop_desktops=True,
        source="test",
        **({"local_desktops": ()} | settings),
    )
    ts = ThinServe(config, reactor)
    await ts.startService()
    return ts, sock


def row_of(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["name"] == name)


@pytest_twisted.ensureDeferred
async def test_a_desktop_that_cannot_start_is_failed_at_once_and_its_terminal_says_why(
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    template = tmp_path / "images" / "office.qcow2"
    vm = QemuDesktopConfig("vm-1", state_dir=tmp_path / "vms", template=template)
    lab = QemuDesktopConfig("lab-1", state_dir=tmp_path / "vms", kernel=tmp_path / "vmlinuz")
    pooled = BrokerConfig(unknown_terminal="pool", pools={"lab": ("lab-1",)}, default_pool="lab")
    ts, sock = await start(
        tmp_path,
        runtime_dir,
        pooled,
        setup=DesktopSetup(qemu_desktops=((vm, None), (lab, None))),
    )
    term, waiting = Terminal(), Terminal()
    try:
        why = (
            f"template {template} does not exist: put the file there, "
            "or fix template in [[qemu_desktop]] vm-1"
        )
        # Right after start, before any terminal asked for it.
        row = row_of(await cli_json(sock, "desktops"), "vm-1")
        assert (row["state"], row["detail"], row["backend"]) == ("failed", why, "qemu")
        table = (await cli_ok(sock, "desktops")).splitlines()
        assert table[0].split()[-1] == "WHY" and "STATE" in table[0]
        line = next(x for x in table if x.startswith("vm-1"))
        assert line[table[0].index("STATE") :].startswith("failed ")
        assert line.endswith(why)

        await cli_ok(sock, "pair", "--new", "--by-address", "viewer-127.0.0.2", "vm-1")
        await term.connect(ts.port_numbers[0], source="127.0.0.2")
        row = await terminal_row(sock, "viewer-127.0.0.2")
        assert row["shows"]["kind"] == "failed"
        assert (row["shows"]["desktop"], row["shows"]["message"]) == ("vm-1", why)
        size = (row["session"]["width"], row["session"]["height"])
        failure = screens.render(screens.could_not_start("vm-1", why), *size)
        await term.wait_screen(failure)  # what the API says it shows is what it shows
        assert not np.array_equal(failure, screens.render(screens.no_desktop_free(), *size))
        assert not np.array_equal(failure, screens.render(screens.unavailable("vm-1", 0), *size))

        done = await cli(sock, "desktops", "start", "vm-1")
        assert done.returncode == 1
        assert f"desktop 'vm-1' cannot start: {why}" in done.stderr

        # A terminal waiting for a pool whose only desktop failed is told why too.
        await waiting.connect(ts.port_numbers[0], source="127.0.0.3")
        row = await terminal_row(sock, "viewer-127.0.0.3")
        lab_why = (
            f"kernel {tmp_path / 'vmlinuz'} does not exist: put the file there, "
            "or fix kernel in [[qemu_desktop]] lab-1"
        )
        assert row["shows"]["kind"] == "no-desktop-free"
        assert (row["shows"]["desktop"], row["shows"]["message"]) == ("lab-1", lab_why)
        size = (row["session"]["width"], row["session"]["height"])
        told = screens.render(screens.could_not_start("lab-1", lab_why), *size)
        await waiting.wait_screen(told)
        assert not np.array_equal(told, screens.render(screens.no_desktop_free(), *size))
    finally:
        waiting.close()
        term.close()
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_start_stop_reset_and_forget(
    xvnc,
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    need_xvnc_session()
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    session = XvncDesktopConfig("s1", geometry="320x240", command="sleep 600")
    ts, sock = await start(
        tmp_path,
        runtime_dir,
        desktops=(desktop("A", server),),
        setup=DesktopSetup(xvnc_desktops=((session, None),)),
    )
    term = Terminal()
    try:
        assert ts.desktops is not None
        assert row_of(await cli_json(sock, "desktops"), "s1")["state"] == "stopped"

        said = await cli_ok(sock, "desktops", "start", "s1")
        assert said.strip() == "desktop s1 started; now running"
        assert ts.desktops.running() == ["s1"]
        said = await cli_ok(sock, "desktops", "stop", "s1")
        assert said.strip() == "desktop s1 stopped; now stopped"
        assert ts.desktops.running() == []
        answer = await cli_json(sock, "desktops", "reset", "s1")
        assert answer["ok"] and answer["desktop"]["state"] == "stopped"

        done = await cli(sock, "desktops", "stop", "A")
        assert done.returncode == 1
        assert "desktop 'A' is a VNC server thinserve does not run" in done.stderr
        done = await cli(sock, "desktops", "forget", "A")
        assert done.returncode == 1
        assert "desktop 'A' is configured" in done.stderr
        assert "remove it from the config file and reload" in done.stderr
        done = await cli(sock, "desktops", "forget", "nope")
        assert done.returncode == 1 and "no desktop 'nope'" in done.stderr

        await cli_ok(sock, "pair", "--new", "--by-address", "viewer-127.0.0.2", "A")
        await term.connect(ts.port_numbers[0], source="127.0.0.2")
        await term.wait_screen(frame)

        # A is removed from the configuration: listed as not configured, then forgotten.
        lines = await ts.reload(dataclasses.replace(ts.config, desktops=()))
        assert lines == ["desktop A removed: its link is closed"]
        await wait_until(
            lambda: (
                ts.hub is not None
                and ts.hub.broker.assignment("viewer-127.0.0.2").kind.value == "pairing"
            ),
            10,
            "the terminal to fall back to its pairing screen",
        )
        row = row_of(await cli_json(sock, "desktops"), "A")
        assert (row["configured"], row["state"], row["paired_terminal"]) == (
            False,
            None,
            "viewer-127.0.0.2",
        )
        line = next(x for x in (await cli_ok(sock, "desktops")).splitlines() if x.startswith("A "))
        assert "not configured" in line
        said = await cli_ok(sock, "desktops", "forget", "A")
        assert said.strip() == "desktop A forgotten, with its pairings"
        assert "A" not in [r["name"] for r in await cli_json(sock, "desktops")]
        assert (await terminal_row(sock, "viewer-127.0.0.2"))["paired_desktop"] is None
        audit = await cli_json(sock, "audit", "--subject", "A")
        assert [(e["actor"], e["action"]) for e in audit][-2:] == [
            ("thinserve", "desktop-removed"),
            (ACTOR, "desktop-forget"),
        ]
        assert audit[-1]["detail"] == "paired with viewer-127.0.0.2"
        assert not term.closed
    finally:
        term.close()
        await ts.stopService()


def local_xvnc_pid(ts: ThinServe, name: str) -> int | None:
    """The Xvnc pid of the local desktop ``name``, None while it is stopped."""
    assert ts.local is not None
    desktop = ts.local._named(name).desktop
    return desktop.session.processes()[0] if desktop is not None else None


@pytest_twisted.ensureDeferred
async def test_an_admin_stops_starts_and_resets_a_local_desktop(
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
    desktop_user: Account,  # noqa: F811
) -> None:
    need_xvnc_session()
    os.chmod(runtime_dir, 0o711)  # the desktop's user passes through to its socket
    local = LocalDesktopConfig(
        "here", user=desktop_user.name, geometry="320x240", command="sleep 600"
    )
    ts, sock = await start(tmp_path, runtime_dir, local_desktops=(local,))
    try:
        first = local_xvnc_pid(ts, "here")
        assert alive(first)
        said = await cli_ok(sock, "desktops", "stop", "here")
        assert said.strip().startswith("desktop here stopped")
        assert local_xvnc_pid(ts, "here") is None and not alive(first)
        await wait_until(lambda: not processes_of(desktop_user.uid), 10, "its session to end")

        said = await cli_ok(sock, "desktops", "start", "here")
        assert said.strip().startswith("desktop here started")
        second = local_xvnc_pid(ts, "here")
        assert alive(second) and second != first

        await cli_ok(sock, "desktops", "reset", "here")
        third = local_xvnc_pid(ts, "here")
        assert alive(third) and third != second and not alive(second)
        audit = await cli_json(sock, "audit", "--subject", "here")
        assert [e["action"] for e in audit][-3:] == [
            "desktop-stop",
            "desktop-start",
            "desktop-reset",
        ]
    finally:
        await ts.stopService()
