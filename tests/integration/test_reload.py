"""Reloading a running thinserve's configuration, with real Xvnc desktops.

thinserve links to Xvnc servers as [[desktop]] endpoints; terminals are the
project's RFB test client connecting from loopback addresses (each its own
"PC", known by address).  A reload must not touch the terminals of the
desktops it keeps: the same connection keeps receiving the desktop's new
pixels.
"""

from __future__ import annotations

import logging
import pwd
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.integration.test_desktops import (  # noqa: F401
    alive,
    need_xvnc_session,
    runtime_dir,
    xvnc_pid,
)
from tests.integration.test_rfb_interop import office_frame
from tests.support.need import need
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from thinserve.backends.accounts import DESKTOP_ACCOUNT, MAKE_DESKTOP_ACCOUNT
from thinserve.backends.qemu import QemuDesktopConfig
from thinserve.backends.xvnc import XvncBackend, XvncDesktopConfig
from thinserve.broker import BrokerConfig, ScreenKind, ShowScreen
from thinserve.config import Config, DesktopConfig, LocalDesktopConfig
from thinserve.desktop_config import DesktopSetup
from thinserve.desktop_state import DesktopState
from thinserve.relay import screens
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

SIZE = (320, 240)
LISTEN = ("tcp:port=0:interface=127.0.0.1",)


def desktop(name: str, server: Any) -> DesktopConfig:
    return DesktopConfig(name, f"{server.host}:{server.port}")


def configured(
    tmp_path: Path,
    desktops: list[DesktopConfig],
    broker: BrokerConfig | None = None,
    qemu: tuple[QemuDesktopConfig, ...] = (),
    listen: tuple[str, ...] = LISTEN,
    sessions: tuple[XvncDesktopConfig, ...] = (),
    runtime: Path | None = None,
    local: tuple[LocalDesktopConfig, ...] = (),
) -> Config:
    return Config(
        listen=listen,
        web_listen=(),
        dashboard_listen=(),
        broker=broker or BrokerConfig(),
        database=str(tmp_path / "ts.db"),
        admin_socket="",
        discovery=False,
        address_pairing=("127.0.0.0/8",),  # keyless viewers here are viewer-127.0.0.N
        desktops=tuple(desktops),
        local_desktops=local,
        setup=DesktopSetup(
            qemu_desktops=tuple((c, None) for c in qemu),
            xvnc_desktops=tuple((c, None) for c in sessions),
        ),
        state_dir=tmp_path / "state",
        runtime_dir=runtime or tmp_path / "run",
        stop_desktops=True,
        source="test",
    )


def missing_template_vm(tmp_path: Path) -> QemuDesktopConfig:
    return QemuDesktopConfig(
        "vm-1", state_dir=tmp_path / "vms", template=tmp_path / "images" / "office.qcow2"
    )


def has_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def shown(ts: ThinServe, terminal_id: str) -> Any:
    assert ts.hub is not None
    return ts.hub.broker.assignment(terminal_id)


def drawn_for(ts: ThinServe, terminal_id: str, text: screens.ScreenText) -> np.ndarray:
    """``text`` drawn at the size thinserve draws screens for this terminal."""
    assert ts.hub is not None
    session = ts.hub.terminals[terminal_id].session
    return screens.render(text, session.width, session.height)


@pytest_twisted.ensureDeferred
async def test_reload_adds_and_removes_desktops_and_the_other_terminals_see_nothing(
    xvnc, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="thinserve.service")
    a_server, b_server = xvnc(size=SIZE), xvnc(size=SIZE)
    a_frame, b_frame = office_frame(*SIZE), office_frame(*SIZE)[::-1].copy()
    a_server.paint(a_frame)
    b_server.paint(b_frame)
    first = configured(tmp_path, [desktop("A", a_server)])
    ts = ThinServe(first, reactor)
    await ts.startService()
    term_a, term_b = Terminal(), Terminal()
    try:
        assert ts.hub is not None and ts.desktops is not None
        hub, manager = ts.hub, ts.desktops
        hub.pair("viewer-127.0.0.2", "A")
        await term_a.connect(ts.port_numbers[0], source="127.0.0.2")
        await term_a.wait_screen(a_frame)
        connection, upstream = term_a.proto, manager.desktops["A"].upstream
        await term_b.connect(ts.port_numbers[0], source="127.0.0.3")
        assert shown(ts, "viewer-127.0.0.3").kind is ScreenKind.PAIRING

        # Add B, and a QEMU desktop that cannot start; give the broker a new policy.
        policy = BrokerConfig(code_lifetime=1200.0, pools={"spare": ("vm-1",)})
        second = configured(
            tmp_path,
            [desktop("A", a_server), desktop("B", b_server)],
            policy,
            (missing_template_vm(tmp_path),),
        )
        lines = await ts.reload(second)
        template = tmp_path / "images" / "office.qcow2"
        assert lines == [
            "desktop B added",
            f"desktop vm-1 added, but it cannot start: template {template} does not exist: "
            "put the file there, or fix template in [[qemu_desktop]] vm-1",
            "applied: the broker's policy ([broker])",
        ]
        assert hub.broker.config == policy
        store = hub.broker.store
        assert store.get_desktop("vm-1") is not None and store.get_desktop("vm-1").pool == "spare"
        assert manager.desktops["vm-1"].state is DesktopState.CRASHED  # failed at once

        # A's terminal kept its connection and its link, and still gets A's pixels.
        newer = a_frame.copy()
        newer[40:120, 60:200] = 0x00FF8000
        a_server.paint(newer)
        await term_a.wait_screen(newer)
        assert term_a.proto is connection and not term_a.closed
        assert manager.desktops["A"].upstream is upstream and upstream is not None and upstream.live

        # B is pairable now: the second terminal pairs by its code and shows it.
        code = shown(ts, "viewer-127.0.0.3").code
        hub.pair_code(code, "B")
        await term_b.wait_screen(b_frame)

        # Remove B again (and ask for a new port, which needs a restart).
        third = configured(
            tmp_path,
            [desktop("A", a_server)],
            policy,
            (missing_template_vm(tmp_path),),
            listen=("tcp:port=0:interface=127.0.0.5",),
        )
        lines = await ts.reload(third)
        assert lines == [
            "restart to apply: [server] listen changed",
            "desktop B removed: its link is closed",
        ]
        back = shown(ts, "viewer-127.0.0.3")
        assert isinstance(back, ShowScreen) and back.kind is ScreenKind.PAIRING
        assert back.message == "Its desktop B is no longer configured."
        pairing = screens.pairing("viewer-127.0.0.3", back.code or "", back.message)
        await term_b.wait_screen(drawn_for(ts, "viewer-127.0.0.3", pairing))
        assert "B" not in manager.desktops and "B" not in hub.mirrors
        assert [d.name for d in store.list_desktops()] == ["A", "B", "vm-1"]  # until forgotten

        latest = newer.copy()
        latest[150:200, 10:100] = 0x000080FF
        a_server.paint(latest)
        await term_a.wait_screen(latest)
        assert term_a.proto is connection and not term_a.closed
        assert manager.desktops["A"].upstream is upstream
        assert ts.port_numbers == [ts.ports[0].getHost().port]  # still the one port
        assert not term_b.closed  # sent back to its pairing screen, not disconnected

        # Configured again, B comes back to the terminal still paired with it.
        lines = await ts.reload(second)
        assert lines == ["desktop B added"]
        await term_b.wait_screen(b_frame)
        said = [r.getMessage() for r in caplog.records]
        assert "reload: desktop B removed: its link is closed" in said
    finally:
        term_a.close()
        term_b.close()
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_reload_swaps_pools_live_and_a_removed_pool_desktop_is_given_up(
    xvnc, tmp_path: Path
) -> None:
    servers = [xvnc(size=SIZE) for _ in range(2)]
    frames = [office_frame(*SIZE), office_frame(*SIZE)[:, ::-1].copy()]
    for server, frame in zip(servers, frames, strict=True):
        server.paint(frame)
    both = [desktop("p1", servers[0]), desktop("p2", servers[1])]
    pooled = BrokerConfig(unknown_terminal="pool", pools={"lab": ("p1",)}, default_pool="lab")
    ts = ThinServe(configured(tmp_path, both, pooled), reactor)
    await ts.startService()
    first, second = Terminal(), Terminal()
    try:
        await first.connect(ts.port_numbers[0], source="127.0.0.2")
        await first.wait_screen(frames[0])
        await second.connect(ts.port_numbers[0], source="127.0.0.3")
        waiting = shown(ts, "viewer-127.0.0.3")
        assert isinstance(waiting, ShowScreen) and waiting.kind is ScreenKind.NO_DESKTOP_FREE

        bigger = BrokerConfig(
            unknown_terminal="pool", pools={"lab": ("p1", "p2")}, default_pool="lab"
        )
        assert await ts.reload(configured(tmp_path, both, bigger)) == [
            "applied: the broker's policy ([broker])"
        ]
        await second.wait_screen(frames[1])  # the pool grew: the waiting terminal gets p2
        connection = first.proto

        only_p2 = BrokerConfig(unknown_terminal="pool", pools={"lab": ("p2",)}, default_pool="lab")
        lines = await ts.reload(configured(tmp_path, both[1:], only_p2))
        assert lines == [
            "applied: the broker's policy ([broker])",
            "desktop p1 removed: its link is closed",
        ]
        await second.wait_screen(frames[1])
        assert ts.hub is not None
        now = shown(ts, "viewer-127.0.0.2")
        assert isinstance(now, ShowScreen) and now.kind is ScreenKind.NO_DESKTOP_FREE
        await first.wait_screen(drawn_for(ts, "viewer-127.0.0.2", screens.no_desktop_free()))
        assert first.proto is connection and not first.closed
    finally:
        first.close()
        second.close()
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_a_session_added_by_reload_starts_for_its_terminal_and_stops_once_removed(
    xvnc,
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    need_xvnc_session()
    a_server = xvnc(size=SIZE)
    a_server.paint(office_frame(*SIZE))
    before = configured(tmp_path, [desktop("A", a_server)], runtime=runtime_dir)
    ts = ThinServe(before, reactor)
    await ts.startService()
    term = Terminal()
    try:
        assert ts.hub is not None and ts.desktops is not None
        session = XvncDesktopConfig("s1", geometry="320x240", command="sleep 600")
        after = configured(
            tmp_path, [desktop("A", a_server)], sessions=(session,), runtime=runtime_dir
        )
        assert await ts.reload(after) == ["desktop s1 added"]
        backend = ts.desktops.desktops["s1"].backend
        ts.hub.pair("viewer-127.0.0.2", "s1")
        await term.connect(ts.port_numbers[0], source="127.0.0.2")
        await wait_until(
            lambda: ts.desktops is not None and ts.desktops.desktops["s1"].live,
            30,
            "the session to start for its terminal",
        )
        await wait_until(lambda: term.framebuffer.shape == (240, 320), 20, "the session's screen")
        assert isinstance(backend, XvncBackend)
        pid = xvnc_pid(backend, "s1")
        assert alive(pid)

        assert await ts.reload(before) == ["desktop s1 removed: it is stopped"]
        assert not alive(pid)  # thinserve ran it and nobody can be given it: stopped
        back = shown(ts, "viewer-127.0.0.2")
        assert isinstance(back, ShowScreen) and back.kind is ScreenKind.PAIRING
        assert not term.closed
    finally:
        term.close()
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_a_local_desktop_added_by_reload_is_served_and_stopped_once_removed(
    xvnc,
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    need_xvnc_session()
    need(has_account(DESKTOP_ACCOUNT), f"the user {DESKTOP_ACCOUNT}: {MAKE_DESKTOP_ACCOUNT}")
    runtime_dir.chmod(0o755)  # as /run/thinserve: the desktop's user reaches its own socket
    a_server = xvnc(size=SIZE)
    a_server.paint(office_frame(*SIZE))
    before = configured(tmp_path, [desktop("A", a_server)], runtime=runtime_dir)
    ts = ThinServe(before, reactor)
    await ts.startService()
    term = Terminal()
    try:
        assert ts.hub is not None and ts.desktops is not None and ts.local is not None
        here = LocalDesktopConfig("here", "320x240", "sleep 600", user=DESKTOP_ACCOUNT)
        after = configured(tmp_path, [desktop("A", a_server)], runtime=runtime_dir, local=(here,))
        assert await ts.reload(after) == ["desktop here added"]
        ts.hub.pair("viewer-127.0.0.2", "here")
        await term.connect(ts.port_numbers[0], source="127.0.0.2")
        await wait_until(lambda: term.framebuffer.shape == (240, 320), 20, "the local desktop")
        [part] = ts.local.desktops
        assert part.desktop is not None
        assert part.desktop.session.status is DesktopState.RUNNING

        assert await ts.reload(before) == ["desktop here removed: its Xvnc is stopped"]
        assert part.desktop.session.status is DesktopState.STOPPED
        assert ts.local.desktops == [] and part not in list(ts.local)
        back = shown(ts, "viewer-127.0.0.2")
        assert isinstance(back, ShowScreen) and back.kind is ScreenKind.PAIRING
    finally:
        term.close()
        await ts.stopService()
