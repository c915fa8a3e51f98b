"""Two thinserve nodes, separate processes, sharing one real PostgreSQL database.

An administrator's decision taken at one node reaches a terminal connected
to the other within a second: the database carries the pairing, and its
change notification wakes the other node.  A desktop configured on both
nodes is run by exactly one of them (its lease), and ``thinserve nodes``
shows both nodes and who holds what.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.integration.test_rfb_interop import office_frame
from tests.support.nodes import THINSERVE, Node
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until, wait_until_blocking

pytestmark = pytest.mark.integration

PAIRING_REACHES_WITHIN = 10.0  # seconds; generous for a busy 2-core machine (measured: printed)


async def on_thread(call: Callable[..., Any], *args: Any) -> Any:
    """A blocking call (the CLI) in a thread, so the test's terminal keeps its screen."""
    return await threads.deferToThread(call, *args)


def terminal_row(node: Node, terminal_id: str) -> dict[str, Any] | None:
    rows = node.cli_json("terminals")
    return next((r for r in rows if r["id"] == terminal_id and r["connected"]), None)


@pytest_twisted.ensureDeferred
async def test_a_pairing_made_at_one_node_shows_the_desktop_at_the_other(
    xvnc: Callable[..., Any], nodes: Callable[..., Node], postgres_url: str
) -> None:
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    node_b = nodes("node-b", postgres_url, {"d1": server.port})
    node_a = nodes("node-a", postgres_url)
    term = Terminal()
    try:
        await term.connect(node_b.port, source="127.0.0.7")
        tid = "viewer-127.0.0.7"
        row = await on_thread(
            wait_until_blocking,
            lambda: terminal_row(node_b, tid),
            20,
            "node-b to list the terminal",
        )
        assert row["shows"]["kind"] == "pairing"

        asked = time.monotonic()
        said = await on_thread(node_a.cli_ok, "pair", "--code", row["pairing_code"], "d1")
        answered = time.monotonic()
        assert f"paired {tid} with d1" in said
        await term.wait_screen(frame, timeout=PAIRING_REACHES_WITHIN)
        shown = time.monotonic()
        # node-b heard it from the database's notification, not from its 5 s tick.
        assert f"the site changed (pairing {tid})" in node_b.proc.log_tail(20000)
        print(
            f"\npairing at node-a: the command took {answered - asked:.3f} s; node-b's "
            f"terminal showed the desktop {shown - asked:.3f} s after it was typed"
        )

        said = await on_thread(node_a.cli_ok, "unpair", tid)
        await wait_until(
            lambda: term.framebuffer.shape != frame.shape or not (term.framebuffer == frame).all(),
            PAIRING_REACHES_WITHIN,
            "the unpaired terminal at node-b to stop showing the desktop",
        )
    finally:
        term.close()


def nodes_json(config: Path, database: str) -> list[dict[str, Any]]:
    """``thinserve nodes --json`` on the shared database."""
    config.write_text(f"[server]\ndatabase = {json.dumps(database)}\n")
    done = subprocess.run(
        [*THINSERVE, "nodes", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, Any]] = json.loads(done.stdout)["nodes"]
    return listed


def test_a_desktop_on_two_nodes_is_run_by_one(
    xvnc: Callable[..., Any], nodes: Callable[..., Node], postgres_url: str, tmp_path: Path
) -> None:
    server = xvnc(size=(320, 240))
    node_a = nodes("node-a", postgres_url, {"d1": server.port})
    node_b = nodes("node-b", postgres_url, {"d1": server.port})
    # The first node to start holds it; the other knows it from the shared store only.
    shown = {n.name: {d["name"]: d for d in n.cli_json("desktops")} for n in (node_a, node_b)}
    assert shown["node-a"]["d1"]["configured"] and shown["node-a"]["d1"]["state"] is not None
    assert not shown["node-b"]["d1"]["configured"] and shown["node-b"]["d1"]["state"] is None
    assert "desktop d1 is run by node node-a" in node_b.proc.log_tail(20000)

    def both_reported() -> dict[str, dict[str, Any]] | None:
        listed = {n["name"]: n for n in nodes_json(tmp_path / "nodes.toml", postgres_url)}
        return listed if listed.get("node-a", {}).get("desktops") == 1 else None

    listed = wait_until_blocking(both_reported, 20, "node-a to report its desktop")
    assert set(listed) == {"node-a", "node-b"}
    assert [listed[n]["state"] for n in ("node-a", "node-b")] == ["alive", "alive"]
    assert (listed["node-a"]["leases"], listed["node-b"]["leases"]) == (1, 0)
    assert listed["node-b"]["desktops"] == 0


@pytest_twisted.ensureDeferred
async def test_a_kick_at_one_node_closes_the_terminal_at_the_other(
    xvnc: Callable[..., Any], nodes: Callable[..., Node], postgres_url: str
) -> None:
    server = xvnc(size=(320, 240))
    node_b = nodes("node-b", postgres_url, {"d1": server.port})
    node_a = nodes("node-a", postgres_url)
    term = Terminal()
    try:
        await term.connect(node_b.port, source="127.0.0.8")
        tid = "viewer-127.0.0.8"
        await on_thread(
            wait_until_blocking, lambda: terminal_row(node_b, tid), 20, "node-b to list it"
        )
        said = await on_thread(node_a.cli_ok, "kick", tid)
        assert (
            said.strip() == f"asked every node to kick {tid}: the node it is connected to closes it"
        )
        await wait_until(lambda: term.closed, 20, "node-b to close the kicked terminal")
        assert f"terminal {tid} kicked by an admin at another node" in node_b.proc.log_tail(40000)
        audit = await on_thread(node_a.cli_json, "audit")
        assert any(e["action"] == "kick" and e["subject"] == tid for e in audit), audit
    finally:
        term.close()
