"""Node links: a terminal at one node is shown a desktop another node runs.

Two real ``thinserve serve`` nodes share one real PostgreSQL database and a
node secret written by ``thinserve nodes secret``.  The desktop (a real
Xvnc) is configured on node-a only; node-b's terminals see it pixel for
pixel through node-a's node port, their keys reach it, and however many of
them watch, node-b holds one node link.  The node port takes node
credentials over pinned TLS and nothing else.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import pytest_twisted
from twisted.internet import threads

from protocols.rfb.constants import Encoding, SecurityType, VeNCryptSubtype
from tests.integration.test_cluster_nodes import on_thread, terminal_row
from tests.integration.test_relay import _xterm_writing, pointer_reaches
from tests.integration.test_rfb_interop import office_frame
from tests.support.nodes import THINSERVE, Node
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until, wait_until_blocking
from thinserve import rfbclient
from thinserve.cluster.link import read_secret
from thinserve.cluster.remote import LINGER
from thinserve.relay.upstream import KeyPin

pytestmark = pytest.mark.integration

OPENED = "opened for desktop d1"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """The site's node secret, as an administrator makes it."""
    path = tmp_path / "node.secret"
    done = subprocess.run(
        [*THINSERVE, "nodes", "secret", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    return path


def log_count(node: Node, text: str) -> int:
    return node.proc.log_tail(1_000_000).count(text)


async def paired_terminal(node: Node, source: str, desktop: str) -> Terminal:
    """A terminal at ``node`` from ``source``, paired with ``desktop`` by its code."""
    term = await Terminal().connect(node.port, source=source)
    tid = f"viewer-{source}"
    row = await on_thread(
        wait_until_blocking, lambda: terminal_row(node, tid), 20, f"{node.name} to list {tid}"
    )
    await on_thread(node.cli_ok, "pair", "--code", row["pairing_code"], desktop)
    return term


@pytest_twisted.ensureDeferred
async def test_a_terminal_at_node_b_works_a_desktop_node_a_runs(
    xvnc: Callable[..., Any],
    nodes: Callable[..., Node],
    postgres_url: str,
    secret: Path,
    tmp_path: Path,
) -> None:
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    node_a = nodes(
        "node-a", postgres_url, desktops={"d1": server.port}, secret=secret, node_listen=True
    )
    node_b = nodes("node-b", postgres_url, secret=secret, node_listen=True)
    await on_thread(
        wait_until_blocking,
        lambda: "desktop d1 is run by node node-a: shown here" in node_b.proc.log_tail(100_000),
        20,
        "node-b to register d1 as a remote desktop",
    )
    first = await paired_terminal(node_b, "127.0.0.7", "d1")
    second = Terminal()
    try:
        await first.wait_screen(frame)
        # A second terminal at node-b watches too: node-b's one link feeds both.
        await second.connect(node_b.port, source="127.0.0.8")
        await on_thread(node_b.cli_ok, "shadow", "viewer-127.0.0.8", "d1")
        await second.wait_screen(frame)
        assert log_count(node_a, OPENED) == 1, node_a.proc.log_tail(5000)
        assert log_count(node_b, "node link to node node-a for desktop d1: opening") == 1
        assert log_count(node_b, "desktop d1 live") == 1

        # Keys and pointer from node-b's terminal reach the desktop at node-a.
        out = tmp_path / "typed.txt"
        _xterm_writing(server, out)
        await wait_until(out.exists, 20, "xterm to start")
        first.pointer(60, 40)  # over the xterm: no window manager, focus follows the pointer
        await pointer_reaches(server, 60, 40)
        first.type_text("typed at node-b\n")
        await wait_until(lambda: out.read_text() == "typed at node-b\n", 20, "typed text")
        # Both terminals show the desktop's new picture: what Xvnc has, pixel for pixel.
        now = await threads.deferToThread(server.grab)
        await first.wait_screen(now)
        await second.wait_screen(now)
    finally:
        first.close()
        second.close()
    # The last terminal gone, the link closes at both ends after a while.
    await on_thread(
        wait_until_blocking,
        lambda: "node link for desktop d1 closed" in node_b.proc.log_tail(100_000),
        LINGER + 20,
        "node-b to close its idle link",
    )
    await on_thread(
        wait_until_blocking,
        lambda: "for desktop d1 closed" in node_a.proc.log_tail(100_000),
        20,
        "node-a to see the link closed",
    )
    assert log_count(node_a, OPENED) == 1


def published(url: str, node: str) -> tuple[str, str] | None:
    """(address, fingerprint) node ``node`` published, once it has both."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT address, fingerprint FROM nodes WHERE name = %s", (node,)
        ).fetchone()
    if row is None or not row[1] or ":" not in row[0]:
        return None
    return str(row[0]), str(row[1])


async def link(port: int, options: rfbclient.ClientOptions) -> np.ndarray:
    """The desktop's picture through a node link, or ConnectionError saying why not."""
    endpoint = rfbclient.tcp("127.0.0.1", port)
    picture, _ = await rfbclient.fetch_framebuffer(endpoint, (Encoding.RAW,), options)
    return picture


async def refused(port: int, options: rfbclient.ClientOptions) -> str:
    with pytest.raises(ConnectionError) as failed:
        await link(port, options)
    return str(failed.value)


@pytest_twisted.ensureDeferred
async def test_the_node_port_takes_node_credentials_over_pinned_tls_only(
    xvnc: Callable[..., Any],
    nodes: Callable[..., Node],
    postgres_url: str,
    secret: Path,
) -> None:
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    node_a = nodes(
        "node-a", postgres_url, desktops={"d1": server.port}, secret=secret, node_listen=True
    )
    address, fingerprint = await on_thread(
        wait_until_blocking, lambda: published(postgres_url, "node-a"), 20, "node-a's address"
    )
    assert address == f"127.0.0.1:{node_a.link_port}"
    port = node_a.link_port
    assert port is not None
    password = read_secret(secret).password
    node = rfbclient.ClientOptions(
        username="node:node-x/d1",
        password=password,
        methods=(VeNCryptSubtype.X509_PLAIN,),
        server_check=KeyPin(fingerprint),
    )
    assert np.array_equal(await link(port, node), frame)

    wrong = replace(node, password="00" * 32)
    assert "Wrong node secret" in await refused(port, wrong)
    other = replace(node, username="node:node-x/d2")
    assert "Desktop not run here" in await refused(port, other)
    log = node_a.proc.log_tail(100_000)
    assert "authentication from 127.0.0.1: node-link-refused" in log
    assert "'node:node-x/d1': Wrong node secret" in log

    for methods in ((SecurityType.NONE,), (SecurityType.VNC_AUTH,), (VeNCryptSubtype.PLAIN,)):
        plain = replace(node, methods=methods, server_check=None)
        assert "ended early" in await refused(port, plain)

    other_key = "a" * len(fingerprint)
    pinned = replace(node, server_check=KeyPin(other_key))
    assert f"not the pinned sha256:{other_key}" in await refused(port, pinned)
    assert log_count(node_a, OPENED) == 1  # only the first link got through


@pytest_twisted.ensureDeferred
async def test_a_desktop_whose_node_stops_is_unavailable_elsewhere_with_the_reason(
    xvnc: Callable[..., Any], nodes: Callable[..., Node], postgres_url: str, secret: Path
) -> None:
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    node_a = nodes(
        "node-a", postgres_url, desktops={"d1": server.port}, secret=secret, node_listen=True
    )
    node_b = nodes("node-b", postgres_url, secret=secret)  # it shows others' desktops only
    await on_thread(
        wait_until_blocking,
        lambda: "desktop d1 is run by node node-a: shown here" in node_b.proc.log_tail(100_000),
        20,
        "node-b to register d1 as a remote desktop",
    )
    term = await paired_terminal(node_b, "127.0.0.7", "d1")
    try:
        await term.wait_screen(frame)
        await on_thread(node_a.stop)
        await wait_until(
            lambda: not np.array_equal(term.framebuffer, frame), 20, "the terminal to change"
        )
        reason = "desktop d1 is unavailable here: no node runs it now"
        await wait_until(
            lambda: reason in node_b.proc.log_tail(100_000), 20, "node-b to give up d1"
        )

        def failed() -> dict[str, Any] | None:
            row = terminal_row(node_b, "viewer-127.0.0.7")
            return row if row is not None and row["shows"]["kind"] == "failed" else None

        row = await on_thread(wait_until_blocking, failed, 20, "the terminal to say why")
        assert "no node runs it now" in str(row["shows"]), row
    finally:
        term.close()
