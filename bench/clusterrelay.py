"""What a node-to-node relay adds to a desktop's latency, next to a local one.

Two nodes on hosts of their own on the benchmark's LAN (bench/clusternodes.py),
on the same remote PostgreSQL, with node links.  Node A runs the one desktop
(the bench's Xvnc with the probe workload, ``bench/probeload.py``, reached
over a Unix socket); node B runs none.  In every round ``terminals``
terminals watch the desktop at node A (the local path) and as many at node B
(the relayed path: node B shows it through its node link from node A), all
at the same time over the same replay, each from an address of its own on
the benchmark's bridge, made view-only watchers through each node's admin
API (``AdminClient.shadow``, as bench/fanout.py does).  Every painted step
so gets a latency for each terminal on both paths (``bench/terminal.py``'s
tracker), and the difference between the paths is the node link's cost:
one more TLS hop across the bridge, one more decode and encode at node B.

Both nodes and Xvnc share the servers' core; this process (painting, every
terminal decoding) keeps the others.  CPU time of both nodes is read from
/proc over the replay.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import endpoints, protocol, reactor, threads

from thinserve import rfbclient
from thinserve.admin.client import AdminClient, AdminError

from . import processes, servercore
from .cluster import new_database
from .clusterlan import terminal_addresses
from .clusternodes import DEFAULT_TIMINGS, BenchNode, config, node_hosts, secret_file
from .fanout import all_settled, quantile_ms, quiet
from .options import ClusterOptions
from .painter import Painter
from .probeload import probe_workload
from .replay import Desktop, replay, wait_showing
from .terminal import TIGHT, MeasuringTerminal, Tracker
from .workloads import Workload
from .xvnc import Xvnc, XvncError

Progress = Callable[[str], None]
DESKTOP = "d1"
SHOW_TIMEOUT = 60.0
PATHS = ("local", "relayed")


@dataclass(frozen=True)
class RelayRun:
    """One replay, both paths at once."""

    terminals: int  # on each path
    latencies: dict[str, tuple[float, ...]]  # path: seconds, one per step and terminal
    missed: dict[str, int]  # path: steps a terminal never saw, summed
    seconds: float  # wall time of the replay
    node_cpu: dict[str, float]  # "A", "B": CPU seconds over the replay
    xvnc_cpu: float

    def latency_ms(self, path: str, quantile: float) -> float:
        return quantile_ms(self.latencies[path], quantile)

    def share(self, cpu: float) -> float:
        return cpu / self.seconds


async def connect_at(host: str, port: int, source: str) -> MeasuringTerminal:
    """A measuring terminal at ``host:port`` from ``source``, past its first update."""
    endpoint = f"{rfbclient.tcp(host, port)}:bindAddress={source}"
    factory = protocol.Factory.forProtocol(lambda: MeasuringTerminal(TIGHT))
    proto: MeasuringTerminal = await endpoints.clientFromString(reactor, endpoint).connect(factory)
    proto.ready.addTimeout(30, reactor)
    return await proto.ready


class RelayStage:
    """The desktop, its painter and workload, and the two nodes."""

    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self.folder = Path(tempfile.mkdtemp(prefix="thinserve-relay-"))
        width, height = options.relay_size
        self.socket = self.folder / "desktop.sock"
        self.xvnc = Xvnc(width, height, name=DESKTOP, extra_args=("-rfbunixpath", str(self.socket)))
        self.workload: Workload = probe_workload(
            width, height, options.relay_seconds, options.relay_rate
        )
        self.painter: Painter | None = None
        self.nodes: dict[str, BenchNode] = {}
        self.addresses = terminal_addresses()

    def start(self, admin_url: str) -> None:
        self.xvnc.start()
        servercore.pin(self.xvnc)
        self.painter = Painter(self.xvnc)
        database = new_database(admin_url, f"bench_relay_{secrets.token_hex(4)}")
        secret = secret_file(self.folder)
        viewers = self.addresses[0].rsplit(".", 1)[0] + ".0/24"
        host_a, host_b = node_hosts()[:2]
        for label, host, desktops in (("A", host_a, {DESKTOP: self.socket}), ("B", host_b, {})):
            node = BenchNode(f"node-{label.lower()}", host, self.folder)
            self.nodes[label] = node
            node.start(
                config(node.name, host, database, desktops, secret, DEFAULT_TIMINGS, viewers)
            )
        self.nodes["B"].wait_running(DESKTOP)  # it reads who runs d1 from the database

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.painter is not None:
            self.painter.close()
        self.xvnc.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        pids = [node.pid for node in self.nodes.values()]
        return pids + ([self.xvnc.process.pid] if self.xvnc.process is not None else [])

    def take(self, count: int) -> list[str]:
        """``count`` addresses that last round's terminals did not use (a node may not
        have noticed them leave), taking turns through the bridge's addresses."""
        if 2 * count > len(self.addresses):
            raise XvncError(f"more terminals than the bridge's {len(self.addresses)} addresses")
        taken, self.addresses = self.addresses[:count], self.addresses[count:]
        self.addresses += taken
        return taken

    async def connect(self) -> dict[str, list[MeasuringTerminal]]:
        """``terminals`` terminals at each node, all watching the desktop."""
        assert self.painter is not None
        self.painter.show_initial(self.workload)
        count = self.options.relay_terminals
        paths: dict[str, list[MeasuringTerminal]] = {path: [] for path in PATHS}
        try:
            for path, label in zip(PATHS, ("A", "B"), strict=True):
                node = self.nodes[label]
                for address in self.take(count):
                    terminal = await connect_at(node.address, node.port, address)
                    paths[path].append(terminal)
                    await _shadow(node, address)
            everyone = [t for terminals in paths.values() for t in terminals]
            for terminal in everyone:
                await wait_showing(terminal, self.workload.initial, SHOW_TIMEOUT)
        except BaseException:
            for terminals in paths.values():
                for terminal in terminals:
                    terminal.close()
            raise
        await all_settled(everyone)
        return paths

    async def measure(self) -> RelayRun:
        assert self.painter is not None
        paths = await self.connect()
        try:
            desktop = Desktop(self.painter, self.workload)
            for terminals in paths.values():
                for terminal in terminals:
                    terminal.tracker = Tracker(self.workload.steps)
                    desktop.trackers.append(terminal.tracker)
            meters = {label: processes.Meter(n.pid).start() for label, n in self.nodes.items()}
            xvnc = processes.Meter(self.pids[-1]).start()
            await replay([desktop])
            node_cpu = {label: meter.read()[0] for label, meter in meters.items()}
            xvnc_cpu, seconds = xvnc.read()
        finally:
            for terminals in paths.values():
                for terminal in terminals:
                    terminal.close()
        trackers = {
            path: [t.tracker for t in terminals if t.tracker is not None]
            for path, terminals in paths.items()
        }
        return RelayRun(
            self.options.relay_terminals,
            {path: tuple(x for t in ts for x in t.latencies) for path, ts in trackers.items()},
            {path: sum(t.missed for t in ts) for path, ts in trackers.items()},
            seconds,
            node_cpu,
            xvnc_cpu,
        )


async def _shadow(node: BenchNode, address: str) -> None:
    admin = AdminClient(node.socket)
    try:
        await threads.deferToThread(admin.shadow, f"viewer-{address}", DESKTOP)
    except AdminError as exc:
        why = f"could not let {address} watch {DESKTOP} at {node.name}: {exc.message}"
        raise XvncError(why) from None


async def run(options: ClusterOptions, admin_url: str, progress: Progress) -> list[RelayRun]:
    """``relay_rounds`` replays, both paths in each."""
    stage = RelayStage(options)
    runs = []
    try:
        progress("[cluster] relay: starting Xvnc and two nodes on hosts of their own")
        stage.start(admin_url)
        for number in range(options.relay_rounds):
            count = options.relay_terminals
            progress(f"[cluster] relay round {number + 1}: {count} terminals at each node")
            run = await stage.measure()
            await quiet(stage.pids)
            progress(
                "[cluster] relay: p50 local "
                f"{run.latency_ms('local', 0.5):.1f} ms, relayed "
                f"{run.latency_ms('relayed', 0.5):.1f} ms; p99 local "
                f"{run.latency_ms('local', 0.99):.1f} ms, relayed "
                f"{run.latency_ms('relayed', 0.99):.1f} ms"
            )
            runs.append(run)
    except BaseException:
        for node in stage.nodes.values():
            progress(f"[cluster] {node.name}'s log ends: {node.log_tail(1500)}")
        raise
    finally:
        stage.stop()
    return runs
