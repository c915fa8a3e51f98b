"""How long a terminal is without its desktop when a node is killed.

Two nodes on hosts of their own on the benchmark's LAN (bench/clusternodes.py),
on a fresh PostgreSQL database each time, with node links; one desktop (a
bench Xvnc of 640x480, reached over a Unix socket).  The software terminal
(``clients/terminal``) runs as a real process in the benchmark's namespace,
headless, recording a PNG after every update, with both nodes as its
servers, paired with the desktop.  Two cases:

- ``serving node``: the desktop runs on node A only; the terminal is at node
  B, which relays it.  Node B is SIGKILLed: the terminal moves on to node A.
- ``desktop's node``: the desktop is configured on both nodes (any node can
  reach it), node A runs it and the terminal is at node A.  Node A is
  SIGKILLed: node B takes the desktop over once A's lease has expired and
  the terminal moves on to node B.

Right after the kill a new picture is drawn on the desktop; the recovery
time runs from the kill to the first recorded frame that equals it pixel
for pixel (the PNG file's time), so it can only have come through the
surviving node.  Each case runs with thinserve's default timings (heartbeat
2 s, lease 10 s) and with short ones (0.5 s, 3 s).

Plain blocking code: run it in a thread (``run`` does).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image
from twisted.internet import threads

from . import processes
from .cluster import new_database
from .clusterlan import terminal_addresses
from .clusternodes import (
    DEFAULT_TIMINGS,
    SHORT_TIMINGS,
    BenchNode,
    Timings,
    config,
    node_hosts,
    secret_file,
)
from .options import ClusterOptions
from .xvnc import Xvnc, XvncError

Progress = Callable[[str], None]
REPO = Path(__file__).resolve().parents[1]
DESKTOP = "d1"
SIZE = (640, 480)
SHOW_TIMEOUT = 60.0  # seconds for the terminal's first picture
RECOVERY_TIMEOUT = 120.0  # seconds from the kill to the picture, at most
LEASE_TIMEOUT = 30.0
CASES = {
    "serving": "the terminal's node killed (desktop on the other node)",
    "owner": "the desktop's node killed (terminal connected to it)",
}


@dataclass(frozen=True)
class Recovery:
    case: str  # a key of CASES
    timings: Timings
    seconds: float  # from the kill to the new picture on the terminal


def picture(seed: int) -> np.ndarray:
    """A 0x00RRGGBB picture of coloured 16x16 blocks, different for every seed."""
    width, height = SIZE
    blocks = np.random.default_rng(seed).integers(0, 1 << 24, (height // 16, width // 16))
    return np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1).astype(np.uint32)


def read_frame(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB")).astype(np.uint32)
    except (OSError, ValueError):
        return None  # not written yet
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class SoftwareTerminal:
    """``python -m clients.terminal --headless --record DIR``, a real process."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self.frames = folder / "frames"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "XDG_CONFIG_HOME": str(folder / "config"),
            "SDL_VIDEODRIVER": "dummy",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "terminal.log"

    def identity(self) -> str:
        """Its terminal id (making its key)."""
        done = subprocess.run(
            [sys.executable, "-m", "clients.terminal", "--show-id", "--id", self.name],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def start(self, servers: list[BenchNode]) -> None:
        argv = [sys.executable, "-m", "clients.terminal", "--headless"]
        argv += [
            "--record",
            str(self.frames),
            "--id",
            self.name,
            "--window",
            "x".join(map(str, SIZE)),
        ]
        for node in servers:
            argv += ["--connect", f"{node.address}:{node.port}"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def recorded(self) -> list[Path]:
        return sorted(self.frames.glob("frame-*.png"))

    def wait_for(self, want: np.ndarray, timeout: float, after: int = 0) -> Path:
        """The first recorded frame past the ``after`` first ones equal to ``want``."""
        deadline = time.monotonic() + timeout
        checked = after
        while time.monotonic() < deadline:
            frames = self.recorded()
            for path in frames[checked:]:
                got = read_frame(path)
                if got is None:
                    break
                checked += 1
                if got.shape == want.shape and np.array_equal(got, want):
                    return path
            if self.process is not None and self.process.poll() is not None:
                raise XvncError(f"the software terminal exited: {self.log_tail()}")
            time.sleep(0.05)
        raise XvncError(f"the software terminal did not show the picture: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        processes.end(process)


def lease_holder(database: str, subject: str) -> str | None:
    """The node holding the desktop lease on ``subject`` now, read from the database."""
    query = (
        "SELECT node FROM leases WHERE kind = 'desktop' AND subject = %s "
        "AND expires > extract(epoch from clock_timestamp())"
    )
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(query, (subject,)).fetchone()
    return None if row is None else str(row[0])


def wait_holder(database: str, node: str) -> None:
    deadline = time.monotonic() + LEASE_TIMEOUT
    while lease_holder(database, DESKTOP) != node:
        if time.monotonic() > deadline:
            raise XvncError(f"{node} did not take the lease on {DESKTOP}")
        time.sleep(0.1)


def connected_at(node: BenchNode, terminal_id: str) -> bool:
    rows = json.loads(node.cli("terminals", "--json"))
    return any(r["id"] == terminal_id and r["connected"] for r in rows)


def one_kill(admin_url: str, case: str, timings: Timings, number: int) -> Recovery:
    folder = Path(tempfile.mkdtemp(prefix="thinserve-recovery-"))
    socket = folder / "desktop.sock"
    width, height = SIZE
    xvnc = Xvnc(width, height, name=DESKTOP, extra_args=("-rfbunixpath", str(socket)))
    nodes: list[BenchNode] = []
    terminal = SoftwareTerminal(folder, f"bench-{number}")
    try:
        xvnc.start()
        before, after = picture(2 * number), picture(2 * number + 1)
        xvnc.draw(before)
        database = new_database(admin_url, f"bench_recovery_{secrets.token_hex(4)}")
        secret = secret_file(folder)
        viewers = terminal_addresses()[0].rsplit(".", 1)[0] + ".0/24"
        for label, host in zip("ab", node_hosts()[:2], strict=True):
            desktops = {DESKTOP: socket} if label == "a" or case == "owner" else {}
            node = BenchNode(f"node-{label}", host, folder)
            nodes.append(node)
            node.start(config(node.name, host, database, desktops, secret, timings, viewers))
            if label == "a":
                wait_holder(database, "node-a")
        node_a, node_b = nodes
        victim, survivor = (node_b, node_a) if case == "serving" else (node_a, node_b)
        terminal_id = terminal.identity()
        node_a.cli("pair", "--new", terminal_id, DESKTOP)
        terminal.start([victim, survivor])
        terminal.wait_for(before, SHOW_TIMEOUT)
        if not connected_at(victim, terminal_id):
            raise XvncError(f"the software terminal is not at {victim.name}: {terminal.log_tail()}")
        seen = len(terminal.recorded())
        killed = victim.kill()
        xvnc.draw(after)  # only the surviving node can show this
        shown = terminal.wait_for(after, RECOVERY_TIMEOUT, seen)
        return Recovery(case, timings, shown.stat().st_mtime - killed)
    except BaseException:
        for node in nodes:
            print(f"[cluster] {node.name}'s log ends: {node.log_tail(1500)}", file=sys.stderr)
        raise
    finally:
        terminal.stop()
        for node in nodes:
            node.stop()
        xvnc.stop()
        shutil.rmtree(folder, ignore_errors=True)


def run_blocking(options: ClusterOptions, admin_url: str, progress: Progress) -> list[Recovery]:
    """``recovery_rounds`` kills per case and timings, the cases taking turns."""
    results = []
    number = 0
    for timings in (DEFAULT_TIMINGS, SHORT_TIMINGS):
        for round_number in range(options.recovery_rounds):
            for case in CASES:
                number += 1
                progress(f"[cluster] recovery {round_number + 1}: {CASES[case]}, {timings.label}")
                result = one_kill(admin_url, case, timings, number)
                progress(
                    f"[cluster] recovery: the new picture {result.seconds:.2f} s after the kill"
                )
                results.append(result)
    return results


async def run(options: ClusterOptions, admin_url: str, progress: Progress) -> list[Recovery]:
    return await threads.deferToThread(run_blocking, options, admin_url, progress)
