"""The software terminal through the real server: discovered, paired, working.

thinserve-terminal runs headless as its own process and advertises itself
over mDNS on loopback; thinserve discovers it, dials it, and shows it a
pairing code; once paired it records frames equal to the desktop's pixels,
and its scripted keys reach a program in the desktop.  thinserve knows it
by the key it proves (``key-...``), as ``--show-id`` prints it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import threads

from tests.integration.test_relay import _xterm_writing, desktop
from tests.integration.test_software_terminal import Terminal as SoftwareTerminal
from tests.integration.test_software_terminal import (  # noqa: F401  (fixtures)
    pygame_installed,
    script_text,
    show_id,
    terminals,
)
from tests.support.server import start_thinserve
from tests.support.waiting import wait_until
from thinserve.broker import BrokerConfig, ScreenKind, ShowDesktop
from thinserve.relay import screens

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_software_terminal_is_discovered_paired_and_types(
    xvnc,
    tmp_path: Path,
    terminals: list[SoftwareTerminal],  # noqa: F811 (the fixture)
) -> None:
    server = xvnc(size=(640, 480))
    out = tmp_path / "typed.txt"
    _xterm_writing(server, out)
    await wait_until(out.exists, 20, "xterm to start")
    ts = await start_thinserve(
        [desktop("d1", server)], broker=BrokerConfig(), discovery_interfaces=("127.0.0.1",)
    )
    name = f"sw-{secrets.token_hex(3)}"
    terminal_id = show_id(tmp_path, "--id", name)
    assert terminal_id.startswith("key-")
    terminal = SoftwareTerminal(
        tmp_path, "--interfaces", "127.0.0.1", "--port", "0", "--id", name,
        "--window", "640x480",
    )  # fmt: skip
    terminals.append(terminal)
    try:
        await wait_until(lambda: terminal_id in ts.hub.terminals, 40, "thinserve to dial it")
        shown = ts.hub.broker.assignment(terminal_id)
        assert shown.kind is ScreenKind.PAIRING
        pairing = screens.render(screens.pairing(terminal_id, shown.code, shown.message), 640, 480)
        await terminal.wait_for_frame(pairing)  # its pairing code, on its own screen
        ts.hub.pair_code(shown.code, "d1", actor="admin:test")
        assert isinstance(ts.hub.broker.assignment(terminal_id), ShowDesktop)
        desk = await threads.deferToThread(server.grab)
        await terminal.wait_for_frame(desk)
        terminal.send("move 60 40", "wait 0.5", f"type {script_text('paired and typing')}\\n")
        await wait_until(lambda: out.read_text() == "paired and typing\n", 20, "typed text")
        assert np.array_equal(terminal.latest().shape, desk.shape)
    finally:
        await ts.stopService()
