"""thinserve nodes as real ``thinserve serve`` processes sharing one PostgreSQL database.

Each node has its own state directory (its admin socket is STATE/run/admin.sock),
its own terminal port on loopback and its own ``[cluster]`` name; they share
the database URL.  ``Node.cli`` runs the real ``thinserve`` command against
that node's admin socket.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import NetNamespace
from .ports import LOOPBACK, free_tcp_port, rfb_banner
from .procs import Spawned, spawn
from .waiting import wait_until_blocking

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "thinserve"
THINSERVE = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "thinserve.cli"]
)
START_TIMEOUT = 60.0
HEARTBEAT = 0.5  # seconds: short, so that the tests see leases and nodes move quickly
LEASE = 5.0  # a renewal may be 2.5 s late before control lapses (cluster/claims.py)


@dataclass
class Node:
    name: str
    state: Path
    port: int
    proc: Spawned
    link_port: int | None = None  # where other nodes link to its desktops
    host: str = LOOPBACK  # the address its ports listen on

    @property
    def socket(self) -> Path:
        return self.state / "run" / "admin.sock"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*THINSERVE, *args, "--socket", str(self.socket)],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    def cli_ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.cli(*args, stdin=stdin)
        assert done.returncode == 0, f"thinserve {' '.join(args)} on {self.name}: {done.stderr}"
        return done.stdout

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli_ok(*args, "--json"))

    def stop(self) -> None:
        self.proc.stop()


@dataclass(frozen=True)
class NodeHost:
    """Where a node runs when not on loopback: its own network namespace on a test
    LAN, at ``address``; keyless viewers of ``viewers`` (a CIDR) are known by address."""

    netns: NetNamespace
    address: str
    viewers: str


def node_config(
    name: str,
    database: str,
    port: int,
    desktops: Mapping[str, int | str],
    secret: Path | None = None,
    link_port: int | None = None,
    host: str = LOOPBACK,
    viewers: str = "127.0.0.0/8",
) -> str:
    """A node's TOML: listening on ``host`` only, keyless viewers of ``viewers`` known
    by address; with ``secret`` it links to other nodes, with ``link_port`` they link
    to it.  A desktop is a loopback port or a whole address (``unix:/path``)."""
    lines = [
        "[server]",
        f'listen = ["tcp:port={port}:interface={host}"]',
        "web_listen = []",
        "dashboard_listen = []",
        f"database = {json.dumps(database)}",
        f'address_pairing = ["{viewers}"]',
        "[discovery]",
        "enabled = false",
        "[cluster]",
        f'node_name = "{name}"',
        f"heartbeat = {HEARTBEAT}",
        f"lease = {LEASE}",
    ]
    if secret is not None:
        lines.append(f"secret_file = {json.dumps(str(secret))}")
    if link_port is not None:
        lines += [
            f'node_listen = "tcp:port={link_port}:interface={host}"',
            f'node_address = "{host}"',
        ]
    for desktop, where in desktops.items():
        address = where if isinstance(where, str) else f"{LOOPBACK}:{where}"
        lines += ["[[desktop]]", f'name = "{desktop}"', f"address = {json.dumps(address)}"]
    return "\n".join(lines) + "\n"


def start_node(
    root: Path,
    name: str,
    database: str,
    desktops: Mapping[str, int | str] | None = None,
    secret: Path | None = None,
    node_listen: bool = False,
    where: NodeHost | None = None,
    extra: str = "",
) -> Node:
    """``thinserve serve`` as node ``name``; returns once its terminal port answers.

    ``secret``: the site's node secret file (node links); ``node_listen``: other
    nodes may link to this node's desktops (at ``Node.link_port``); ``where``: in
    a network namespace of its own rather than on loopback; ``extra``: more TOML
    (a [broker] table, say)."""
    state = root / name
    state.mkdir(parents=True, exist_ok=True)
    config = root / f"{name}.toml"
    host = where.address if where is not None else LOOPBACK
    viewers = where.viewers if where is not None else "127.0.0.0/8"
    port = free_tcp_port()
    link_port = free_tcp_port() if node_listen else None
    config.write_text(
        node_config(name, database, port, desktops or {}, secret, link_port, host, viewers) + extra
    )
    argv = [*THINSERVE, "--log-format", "text", "serve", "--config", str(config)]
    argv += ["--state-dir", str(state)]
    if where is not None:
        argv = where.netns.command(argv)
    proc = spawn(argv, root / f"{name}.log", env=None)
    node = Node(name, state, port, proc, link_port, host)

    def answers() -> bool:
        with where.netns.entered() if where is not None else contextlib.nullcontext():
            banner = rfb_banner(host, port)
        return bool(banner) and node.socket.exists()

    wait_until_blocking(answers, START_TIMEOUT, f"node {name} to answer on port {port}", proc)
    return node
