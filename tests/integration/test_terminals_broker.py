"""Who sees what, end to end: discovery, pairing codes, hot-desking.

Terminals here are real RFB clients on loopback; desktops are real Xvnc
servers; a discovered terminal is published over mDNS by another process.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import threads

from protocols.rfb.client import ClientEvent, UpdateDone
from protocols.terminal import SERVICE_TYPE
from tests.integration.test_relay import _xterm_writing, desktop
from tests.integration.test_rfb_interop import office_frame
from tests.support.adverts import ZeroconfPublisher
from tests.support.server import start_thinserve
from tests.support.terminal import Terminal
from tests.support.waiting import sleep, wait_until
from thinserve import rfbclient
from thinserve.broker import BrokerConfig, ScreenKind, ShowDesktop, ShowScreen
from thinserve.relay import screens
from thinserve.relay.login import CHECKING
from thinserve.secrets import SecretHasher
from thinserve.service import ThinServe
from thinserve.store import User

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_discovered_terminal_shows_its_code_is_paired_and_sees_its_desktop(xvnc) -> None:
    """A terminal of advert contract 1 has no key: its advertised id is only a
    claim, so it is a terminal of its own connection, paired by its code."""
    server = xvnc(size=(800, 600))
    frame = office_frame(800, 600)
    server.paint(frame)
    ts = await start_thinserve(
        [desktop("d1", server)],
        broker=BrokerConfig(),
        discovery_interfaces=("127.0.0.1",),
        address_pairing=(),
    )
    publisher = ZeroconfPublisher(SERVICE_TYPE, "127.0.0.1")
    term = Terminal()
    try:
        port = term.listen()
        await publisher.send(
            "register", "Front desk", port, "127.0.0.1",
            id="desk-7", model="Nivo", screen="800x600", proto="1",
        )  # fmt: skip

        def dialled() -> list[str]:
            return [t for t, v in ts.hub.terminals.items() if v.info.name == "Front desk"]

        await wait_until(lambda: bool(dialled()), 40, "thinserve to dial the terminal")
        (tid,) = dialled()
        assert tid.startswith("viewer-127.0.0.1~") and "desk-7" not in ts.hub.terminals
        shown = ts.hub.broker.assignment(tid)
        assert isinstance(shown, ShowScreen) and shown.kind is ScreenKind.PAIRING
        # The code is on the terminal's screen, drawn at its advertised size.
        pairing = screens.render(screens.pairing(tid, shown.code or "", shown.message), 800, 600)
        await term.wait_screen(pairing)
        assert not np.array_equal(term.framebuffer, frame)  # not one pixel of a desktop
        ts.hub.pair_code(shown.code or "", "d1", actor="admin:test")
        await term.wait_screen(frame)
        assert isinstance(ts.hub.broker.assignment(tid), ShowDesktop)
    finally:
        term.close()
        await publisher.child.stop()
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_hot_desk_desktop_follows_the_user_with_its_state(xvnc, tmp_path: Path) -> None:
    server = xvnc(size=(640, 480))
    out = tmp_path / "typed.txt"
    _xterm_writing(server, out)
    await wait_until(out.exists, 20, "xterm to start")
    config = BrokerConfig(unknown_terminal="login", hot_desk=True)
    ts = await start_thinserve([desktop("d1", server)], broker=config)
    try:
        ts.hub.broker.add_user("alice", "4711", actor="admin:test", desktop="d1")
        a = await Terminal().connect(ts.port_numbers[0], "127.0.0.2")
        assert ts.hub.broker.assignment("viewer-127.0.0.2").kind is ScreenKind.LOGIN
        a.type_text("alice\t4711\n")
        await wait_until(
            lambda: isinstance(ts.hub.broker.assignment("viewer-127.0.0.2"), ShowDesktop),
            10,
            "login at A",
        )
        a.pointer(60, 40)
        await sleep(0.3)
        a.type_text("work done at A\n")  # the desktop's state: text in its xterm
        await wait_until(lambda: out.read_text() == "work done at A\n", 20, "typed text")
        b = await Terminal().connect(ts.port_numbers[0], "127.0.0.3")
        b.type_text("alice\t4711\n")
        await wait_until(
            lambda: isinstance(ts.hub.broker.assignment("viewer-127.0.0.3"), ShowDesktop),
            10,
            "login at B",
        )
        desk = await threads.deferToThread(server.grab)
        await b.wait_screen(desk)  # the same desktop, xterm text and all
        left = ts.hub.broker.assignment("viewer-127.0.0.2")
        assert isinstance(left, ShowScreen) and left.kind is ScreenKind.LOGIN
        form = screens.login_form("", 0, "user", left.message, "viewer-127.0.0.2")
        await a.wait_screen(screens.render(form, 640, 480))  # drawn at A's current size
        # Typing at A no longer reaches the desktop; B types into it.
        a.type_text("nobody\t0000\n")
        b.pointer(60, 40)
        await sleep(0.3)
        b.type_text("and at B\n")
        await wait_until(lambda: out.read_text() == "work done at A\nand at B\n", 20, "B's text")
        # A wrong PIN keeps the login screen and says so.
        c = await Terminal().connect(ts.port_numbers[0], "127.0.0.4")
        c.type_text("alice\twrong\n")
        await wait_until(lambda: _notice(ts, "viewer-127.0.0.4") != "", 20, "the PIN's check")
        refused = ts.hub.broker.assignment("viewer-127.0.0.4")
        assert isinstance(refused, ShowScreen) and refused.kind is ScreenKind.LOGIN
        assert refused.message == "Wrong user name or password."
        for t in (a, b, c):
            t.close()
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_tigervnc_viewer_in_listen_mode_is_dialled_and_shows_the_desktop(
    xvnc, tigervnc_viewer
) -> None:
    from tests.support.ports import free_tcp_port
    from tests.support.server import first_free

    server = xvnc(size=(640, 480))
    frame = office_frame(640, 480)
    server.paint(frame)
    port = free_tcp_port()
    viewer = tigervnc_viewer(listen_port=port)
    desktops = [desktop("d1", server)]
    ts = await start_thinserve(desktops, broker=first_free(desktops), dial=(f"127.0.0.1:{port}",))
    try:
        shown = await threads.deferToThread(
            viewer.wait_for_frame, lambda img: np.array_equal(img, frame), 60.0
        )
        assert np.array_equal(shown, frame)
        assert "viewer-127.0.0.1" in ts.hub.terminals
    finally:
        await ts.stopService()


def _notice(ts: ThinServe, terminal_id: str) -> str:
    """The message on a terminal's screen ("" while it shows a desktop)."""
    shown = ts.hub.broker.assignment(terminal_id)  # type: ignore[union-attr]
    return shown.message if isinstance(shown, ShowScreen) else ""


# About a second per verification on a small server (the default costs a fifth of that).
HEAVY = SecretHasher(time_cost=6, memory_cost=131072, parallelism=4)
COUNTER = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done"  # a desktop that keeps changing


class TimedTerminal(Terminal):
    """A terminal that notes when each update from thinserve was complete."""

    def __init__(self) -> None:
        super().__init__()
        self.update_times: list[float] = []

    def _on_event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        if isinstance(event, UpdateDone):
            self.update_times.append(time.time())
        super()._on_event(proto, event)


@pytest_twisted.ensureDeferred
async def test_other_terminals_keep_their_updates_while_a_login_is_checked(xvnc) -> None:
    own, busy = xvnc(size=(640, 480)), xvnc(size=(640, 480))
    busy.run(["xterm", "-geometry", "80x30+0+0", "-e", "sh", "-c", COUNTER])
    config = BrokerConfig(unknown_terminal="login", hot_desk=True, pairing_codes=False)
    ts = await start_thinserve([desktop("d1", own), desktop("d2", busy)], broker=config)
    try:
        heavy = await threads.deferToThread(HEAVY.hash, "4711")
        assert ts.store is not None
        ts.store.add_user(User("alice", "d1", time.time()), heavy)
        ts.hub.pair("viewer-127.0.0.3", "d2")
        watcher = await TimedTerminal().connect(ts.port_numbers[0], "127.0.0.3")
        await wait_until(lambda: len(watcher.update_times) > 20, 20, "the counter to run")
        a = await Terminal().connect(ts.port_numbers[0], "127.0.0.2")
        a.type_text("alice\t4711")
        submitted = time.time()
        a.type_text("\n")
        height, width = a.framebuffer.shape
        checking = screens.login_form("alice", 0, "secret", CHECKING, "viewer-127.0.0.2")
        await a.wait_screen(screens.render(checking, width, height))
        a.type_text("\n")  # a second submit while checking: ignored
        await wait_until(
            lambda: isinstance(ts.hub.broker.assignment("viewer-127.0.0.2"), ShowDesktop),
            30,
            "the login",
        )
        attempts = [e for e in ts.store.list_audit() if e.action.startswith("login")]
        assert [(e.action, e.subject) for e in attempts] == [("login", "viewer-127.0.0.2")]
        checked = attempts[0].time  # written on the reactor thread once the check was done
        during = [t for t in watcher.update_times if submitted <= t <= checked]
        gaps = np.diff([submitted, *during, checked])
        assert checked - submitted > 0.5, "the check was not slow enough to tell"
        assert len(during) >= 5
        assert gaps.max() < (checked - submitted) / 2
        rehashed = ts.store.user_secret_hash("alice")
        assert rehashed != heavy and not SecretHasher().needs_rehash(rehashed or "")
        assert SecretHasher().verify(rehashed, "4711")
        for t in (a, watcher):
            t.close()
    finally:
        await ts.stopService()
