"""A node that dies loses only its live connections.

Two real ``thinserve serve`` nodes share one real PostgreSQL database and
both configure one real Xvnc desktop (a ``[[desktop]]`` address, which any
node can reach).  The software terminal runs as a real process with both
nodes as servers, paired with the desktop, connected to the node that runs
it.  That node is SIGKILLed: the other node takes the desktop's lease once
it expires and adopts the desktop, the terminal reconnects to it, and shows
the desktop again pixel for pixel (a picture painted after the kill, so it
can only have come through the surviving node).  The recovery time, from
the kill to the pixels, is printed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.integration.test_software_terminal import Terminal as SoftwareTerminal
from tests.integration.test_software_terminal import (  # noqa: F401  (fixtures)
    pygame_installed,
    show_id,
    terminals,
)
from tests.support.failover import kill_node, lease_holder
from tests.support.nodes import HEARTBEAT, LEASE, Node
from tests.unit.content import desktop_frame

pytestmark = pytest.mark.integration

RECOVERS_WITHIN = 60.0  # seconds from the kill to the desktop's pixels; measured: printed
LOOPBACK = "127.0.0.1"


def connected_at(node: Node, terminal_id: str) -> dict[str, Any] | None:
    """The terminal's row at ``node`` while it is connected there."""
    try:
        rows = node.cli_json("terminals")
    except AssertionError:
        return None
    return next((r for r in rows if r["id"] == terminal_id and r["connected"]), None)


@pytest_twisted.ensureDeferred
async def test_a_desktop_comes_back_through_the_other_node_when_its_node_is_killed(
    xvnc: Callable[..., Any],
    nodes: Callable[..., Node],
    postgres_url: str,
    tmp_path: Path,
    terminals: list[SoftwareTerminal],  # noqa: F811 (the fixture)
) -> None:
    server = xvnc(size=(640, 480))
    server.paint(desktop_frame(640, 480, seed=3))
    before = await threads.deferToThread(server.grab)
    node_a = nodes("node-a", postgres_url, {"d1": server.port})
    node_b = nodes("node-b", postgres_url, {"d1": server.port})
    assert await threads.deferToThread(lease_holder, postgres_url, "desktop", "d1") == "node-a"

    name = f"fo-{secrets.token_hex(3)}"
    terminal_id = show_id(tmp_path, "--id", name)
    await threads.deferToThread(node_a.cli_ok, "pair", "--new", terminal_id, "d1")
    terminal = SoftwareTerminal(
        tmp_path,
        "--connect", f"{LOOPBACK}:{node_a.port}",
        "--connect", f"{LOOPBACK}:{node_b.port}",
        "--id", name, "--window", "640x480",
    )  # fmt: skip
    terminals.append(terminal)
    await terminal.wait_for_frame(before, timeout=60)
    assert await threads.deferToThread(connected_at, node_a, terminal_id) is not None

    killed = await threads.deferToThread(kill_node, node_a)
    server.paint(desktop_frame(640, 480, seed=11))  # only the surviving node can show this
    after = await threads.deferToThread(server.grab)
    await terminal.wait_for_frame(after, timeout=RECOVERS_WITHIN)
    recovered = time.monotonic() - killed
    print(
        f"\nfailover: the desktop's pixels were back {recovered:.2f} s after the kill "
        f"(heartbeat {HEARTBEAT:g} s, lease {LEASE:g} s)"
    )

    row = await threads.deferToThread(connected_at, node_b, terminal_id)
    assert row is not None, f"the terminal is not connected to node-b:\n{terminal.log}"
    assert row["shows"] == {"kind": "desktop", "desktop": "d1", "control": True}
    assert await threads.deferToThread(lease_holder, postgres_url, "desktop", "d1") == "node-b"
