"""thinserve nodes as real ``thinserve serve`` processes sharing one PostgreSQL database.

Each node has its own state directory (its admin socket is STATE/run/admin.sock),
its own terminal port on loopback and its own ``[cluster]`` name; they share
the database URL.  ``Node.cli`` runs the real ``thinserve`` command against
that node's admin socket.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
LEASE = 3.0


@dataclass
class Node:
    name: str
    state: Path
    port: int
    proc: Spawned

    @property
    def socket(self) -> Path:
        return self.state / "run" / "admin.sock"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*THINSERVE, *args, "--socket", str(self.socket)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    def cli_ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, f"thinserve {' '.join(args)} on {self.name}: {done.stderr}"
        return done.stdout

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli_ok(*args, "--json"))

    def stop(self) -> None:
        self.proc.stop()


def node_config(name: str, database: str, port: int, desktops: dict[str, int]) -> str:
    """A node's TOML: loopback only, keyless viewers on loopback known by address."""
    lines = [
        "[server]",
        f'listen = ["tcp:port={port}:interface={LOOPBACK}"]',
        "web_listen = []",
        "dashboard_listen = []",
        f"database = {json.dumps(database)}",
        'address_pairing = ["127.0.0.0/8"]',
        "[discovery]",
        "enabled = false",
        "[cluster]",
        f'node_name = "{name}"',
        f"heartbeat = {HEARTBEAT}",
        f"lease = {LEASE}",
    ]
    for desktop, vnc_port in desktops.items():
        lines += ["[[desktop]]", f'name = "{desktop}"', f'address = "{LOOPBACK}:{vnc_port}"']
    return "\n".join(lines) + "\n"


def start_node(
    root: Path, name: str, database: str, desktops: dict[str, int] | None = None
) -> Node:
    """``thinserve serve`` as node ``name``; returns once its terminal port answers."""
    state = root / name
    state.mkdir(parents=True, exist_ok=True)
    config = root / f"{name}.toml"
    port = free_tcp_port()
    config.write_text(node_config(name, database, port, desktops or {}))
    argv = [*THINSERVE, "--log-format", "text", "serve", "--config", str(config)]
    argv += ["--state-dir", str(state)]
    proc = spawn(argv, root / f"{name}.log", env=None)
    node = Node(name, state, port, proc)
    wait_until_blocking(
        lambda: rfb_banner(LOOPBACK, port) and node.socket.exists(),
        START_TIMEOUT,
        f"node {name} to answer on port {port}",
        proc,
    )
    return node
