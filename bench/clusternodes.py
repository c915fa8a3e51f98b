"""Nodes of a site for the cluster benchmark: ``thinserve serve`` on hosts of their own.

bench/clusterlan.py made two hosts on the benchmark's LAN (network
namespaces ``nodea`` and ``nodeb``, NODES_ENV says where); a
:class:`BenchNode` runs a real ``thinserve serve`` in one of them, pinned
to the servers' core, with its own state directory, a ``[cluster]`` table
with the given timings, node links (the site's secret file,
``node_listen`` on its LAN address) and the desktops it is given (Unix
sockets, which namespaces do not separate: a stand-in for a hypervisor
every node can reach).  Terminals in the benchmark's namespace reach it
across the bridge; security type None is accepted from them
(``allow_none = "all"``), so the terminals' cost is the same on every
path and the node link is the only TLS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinserve.admin.client import AdminClient, AdminError
from thinserve.cluster.link import write_secret

from .clusterlan import NODES_ENV, parse_hosts
from .processes import RELAY_CORE, wait_started
from .xvnc import XvncError

CONSOLE_SCRIPT = Path(sys.executable).parent / "thinserve"
THINSERVE = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "thinserve.cli"]
)
START_TIMEOUT = 60.0
TERMINAL_PORT = 5900
LINK_PORT = 5990


@dataclass(frozen=True)
class Timings:
    """A site's heartbeat and lease, seconds."""

    heartbeat: float
    lease: float

    @property
    def label(self) -> str:
        return f"heartbeat {self.heartbeat:g} s, lease {self.lease:g} s"


DEFAULT_TIMINGS = Timings(2.0, 10.0)  # thinserve's own defaults
SHORT_TIMINGS = Timings(0.5, 3.0)


@dataclass(frozen=True)
class NodeHost:
    name: str  # the LAN's host name: nodea, nodeb
    namespace: str
    address: str


def node_hosts() -> list[NodeHost]:
    """The node hosts bench/clusterlan.py made, in name order."""
    hosts = parse_hosts(os.environ.get(NODES_ENV, ""))
    if len(hosts) < 2:
        raise XvncError(f"{NODES_ENV} names no two node hosts: run 'python -m bench cluster'")
    return [NodeHost(name, ns, address) for name, (ns, address) in sorted(hosts.items())]


def secret_file(folder: Path) -> Path:
    """A new site's node secret, written as ``thinserve nodes secret`` writes it."""
    path = folder / "site.key"
    path.unlink(missing_ok=True)  # the last site's
    write_secret(path)
    return path


def config(
    name: str,
    host: NodeHost,
    database: str,
    desktops: dict[str, Path],
    secret: Path,
    timings: Timings,
    viewers: str,
) -> str:
    lines = [
        "[server]",
        f'listen = ["tcp:port={TERMINAL_PORT}:interface={host.address}"]',
        "web_listen = []",
        "dashboard_listen = []",
        f"database = {json.dumps(database)}",
        f'address_pairing = ["{viewers}"]',  # terminals known as viewer-ADDR
        'allow_none = "all"',
        "max_unpaired = 1000",
        "max_connections = 1000",
        "[discovery]",
        "enabled = false",
        "[cluster]",
        f'node_name = "{name}"',
        f'node_address = "{host.address}"',
        f'node_listen = "tcp:port={LINK_PORT}:interface={host.address}"',
        f"secret_file = {json.dumps(str(secret))}",
        f"heartbeat = {timings.heartbeat}",
        f"lease = {timings.lease}",
    ]
    for desktop, path in desktops.items():
        lines += ["[[desktop]]", f'name = "{desktop}"', f"address = {json.dumps(f'unix:{path}')}"]
    return "\n".join(lines) + "\n"


class BenchNode:
    """One ``thinserve serve`` on a node host, in a process group of its own."""

    def __init__(self, name: str, host: NodeHost, folder: Path) -> None:
        self.name = name
        self.host = host
        self.state = folder / name
        self.config = folder / f"{name}.toml"
        self.log_path = folder / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def port(self) -> int:
        return TERMINAL_PORT

    @property
    def socket(self) -> Path:
        return self.state / "run" / "admin.sock"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, text: str) -> None:
        """Run the node with TOML ``text``; returns once its terminal port answers."""
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        self.config.write_text(text)
        argv = [*THINSERVE, "--log-format", "text", "serve", "--config", str(self.config)]
        argv += ["--state-dir", str(self.state)]
        pin = ["taskset", "-c", str(RELAY_CORE)] if _can_pin() else []
        command = ["ip", "netns", "exec", self.host.namespace, *pin, *argv]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_started(
            self.process,
            lambda: _answers(self.address, self.port) and self.socket.exists(),
            f"node {self.name}",
            self.log_tail,
            self.stop,
            timeout=START_TIMEOUT,
        )

    def kill(self) -> float:
        """SIGKILL the node's process group (no clean leave: its leases stay until they
        expire); returns time.time() of the kill."""
        assert self.process is not None
        killed = time.time()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None
        return killed

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def wait_running(self, desktop: str, timeout: float = START_TIMEOUT) -> None:
        """Until the node has ``desktop`` running (a remote one once it has read who
        runs it: up to a heartbeat after its start)."""
        admin = AdminClient(self.socket)
        deadline = time.monotonic() + timeout
        while not any(
            r.get("name") == desktop and r.get("state") == "running" for r in _rows(admin)
        ):
            if time.monotonic() > deadline:
                raise XvncError(f"node {self.name} does not show desktop {desktop}")
            time.sleep(0.1)

    def cli(self, *args: str) -> str:
        """The real ``thinserve`` command against this node's admin socket."""
        done = subprocess.run(
            [*THINSERVE, *args, "--socket", str(self.socket)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise XvncError(f"thinserve {' '.join(args)} at {self.name}: {done.stderr.strip()}")
        return done.stdout

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def _rows(admin: AdminClient) -> list[dict[str, Any]]:
    try:
        return admin.desktops()
    except AdminError:
        return []


def _can_pin() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def _answers(address: str, port: int) -> bool:
    """Whether an RFB server answers at (address, port)."""
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            return sock.recv(12).startswith(b"RFB ")
    except OSError:
        return False
