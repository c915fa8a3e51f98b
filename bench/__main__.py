"""``python -m bench``: thinserve measured next to TigerVNC's Xvnc.

``python -m bench encodings``: encode/decode speed and bytes per frame of
each encoding on still contents; ``python -m bench relay``: real workloads
replayed on Xvnc desktops and watched directly, through a byte relay and
through thinserve; ``python -m bench``: both.  ``python -m bench tls``: what
VeNCrypt X509None costs next to None, through thinserve.  ``python -m bench
flood``: a paired terminal before, during and after a flood of fake
terminals from many addresses; ``python -m bench soak``: terminals
connecting, typing and leaving for minutes, thinserve's memory and
descriptors over time; ``python -m bench restart``: how long a restart keeps
the default desktop from its terminals, taken over next to started afresh;
``python -m bench dashboard``: what the admin dashboard's live wall costs
thinserve with 50 desktops; ``python -m bench fullscreen``: a full-screen
update on a fresh connection and a refresh, Xvnc directly next to
thinserve, timed to the first rectangle, the last byte and decoded;
``python -m bench fanout``: many terminals watching one desktop, Xvnc
directly next to thinserve, then many terminals on many desktops through
thinserve; ``python -m bench adaptive``: the adaptive benchmark
(``bench/adaptive.py``); ``python -m bench cluster``: one node on a remote
PostgreSQL next to one on SQLite, and the database's work
(``bench/cluster.py``), a desktop relayed from another node next to a local
one (``bench/clusterrelay.py``) and the recovery after a node is killed
(``bench/clusterrecovery.py``).  None of these is part of the default run.
Tables go to stdout, progress to stderr; docs/performance.md explains every
column.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from .content import CONTENTS
from .options import (
    RELAY_SIZES,
    RELAY_WORKLOADS,
    ClusterOptions,
    FanoutOptions,
    FloodOptions,
    FullscreenOptions,
    Options,
    RelayOptions,
    SoakOptions,
    TLSOptions,
)
from .xvnc import INSTALL_HINT, xvnc_path, xvnc_version

COMMANDS = (
    "all",
    "encodings",
    "relay",
    "tls",
    "flood",
    "soak",
    "restart",
    "dashboard",
    "fullscreen",
    "fanout",
    "adaptive",
    "cluster",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="thinserve's benchmarks: 'encodings' (speed and bytes of each encoding "
        "next to TigerVNC's Xvnc), 'relay' (latency, frames, bytes, CPU, memory and scale "
        "of real workloads: direct, byte relay, thinserve); no command runs both. 'tls' "
        "(connection set-up, typing and full-frame times over X509None next to None). "
        "'flood' (a paired terminal before, during and after a flood of fake terminals), "
        "'soak' (terminals coming and going for minutes: memory, descriptors, latency), "
        "'restart' (a desktop taken over by a restarted thinserve next to a fresh one), "
        "'dashboard' (thinserve's CPU with the dashboard's live wall of 50 desktops), "
        "'fullscreen' (a full-screen update and a refresh: first rectangle, last byte, "
        "decoded and bytes, Xvnc directly next to thinserve), 'fanout' (many terminals "
        "watching one desktop, Xvnc directly next to thinserve: latency and CPU; then many "
        "terminals on many desktops through thinserve), 'adaptive' (bench/adaptive.py), "
        "'cluster' (bench/cluster.py).",
    )
    parser.add_argument("command", nargs="?", choices=COMMANDS, default="all")
    parser.add_argument("--quick", action="store_true", help="the short run (see docs)")
    encodings = parser.add_argument_group("encodings")
    encodings.add_argument(
        "--content",
        choices=list(CONTENTS),
        action="append",
        help="measure only this content (repeatable; default: all)",
    )
    encodings.add_argument("--no-xvnc", action="store_true", help="leave out Xvnc (encodings only)")
    encodings.add_argument("--repeat", type=int, help="repetitions per measurement (median)")
    relay = parser.add_argument_group("relay")
    relay.add_argument(
        "--workload",
        choices=list(RELAY_WORKLOADS),
        action="append",
        help="replay only this workload (repeatable; default: all)",
    )
    relay.add_argument(
        "--profile",
        choices=["tight", "zrle"],
        action="append",
        help="terminal profile (repeatable; default: both, quick: tight)",
    )
    relay.add_argument(
        "--size",
        choices=[f"{w}x{h}" for w, h in RELAY_SIZES],
        action="append",
        help="screen size (repeatable; default: both, quick: 1280x1024; also for tls)",
    )
    relay.add_argument("--no-scale", action="store_true", help="skip the scale test")
    relay.add_argument("--no-footprint", action="store_true", help="skip memory and idle CPU")
    relay.add_argument("--no-qemu", action="store_true", help="skip the QEMU peer")
    floods = parser.add_argument_group("flood and soak")
    floods.add_argument(
        "--addresses",
        type=int,
        help="flood: fake terminals, one per address (default 2000, quick 500)",
    )
    floods.add_argument("--minutes", type=float, help="soak: how long (default 30, quick 1)")
    fans = parser.add_argument_group("fullscreen and fanout")
    fans.add_argument(
        "--terminals",
        type=int,
        help="fanout: terminals watching the one desktop (default 50, quick 20)",
    )
    fans.add_argument(
        "--rounds",
        type=int,
        help="fullscreen: timed rounds (default 9, quick 3); fanout: replays per path "
        "(default 3, quick 1); cluster: replays per crowd and database (default 2, quick 1) "
        "and of the node relay (default 3, quick 1)",
    )
    args = parser.parse_args(argv)
    if args.terminals is not None and not 1 <= args.terminals <= 1000:
        parser.error("--terminals: from 1 to 1000")
    if args.rounds is not None and not 1 <= args.rounds <= 100:
        parser.error("--rounds: from 1 to 100")
    if args.addresses is not None and not 1 <= args.addresses <= 60_000:
        parser.error("--addresses: from 1 to 60000")
    if args.minutes is not None and not 0.1 <= args.minutes <= 24 * 60:
        parser.error("--minutes: from 0.1 to 1440")
    return args


def install_reactor() -> None:
    """Twisted on the asyncio event loop, before anything imports a reactor."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor

    asyncioreactor.install()


def peer_description(xvnc: bool) -> str:
    if xvnc:
        return xvnc_version()
    if xvnc_path() is None:
        return f"Xvnc not measured: not installed ({INSTALL_HINT}); its columns show '-'"
    return "Xvnc not measured: --no-xvnc was given; its columns show '-'"


async def encodings(options: Options) -> int:
    from .report import load, machine_lines, render
    from .runner import run
    from .xvnc import XvncError

    machine = machine_lines(peer_description(options.xvnc))
    started = time.monotonic()
    try:
        results = await run(options)
    except (XvncError, ConnectionError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(render(options, machine, results)), flush=True)
    print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end {load()})")
    return 0


Lines = list[str]


async def _pinned_run(body: Callable[[Lines, bool], Awaitable[Lines]]) -> int:
    """Pin the benchmark to its cores, run ``body(machine, pinned)``, print the
    lines it returns and how long it took; a peer that cannot start is an error."""
    from . import processes
    from .report import load, machine_lines
    from .xvnc import XvncError

    pinned = processes.pin_benchmark()
    machine = machine_lines(peer_description(True))
    started = time.monotonic()
    try:
        lines = await body(machine, pinned)
    except (XvncError, ConnectionError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if lines:
        print("\n".join(lines))
    print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end {load()})")
    return 0


async def relay(options: RelayOptions) -> int:
    from . import footprint, qemu, relayreport, scale
    from . import relay as relay_suite

    async def body(machine: Lines, pinned: bool) -> Lines:
        runs = await relay_suite.run(options)
        scaled = await scale.run(options) if options.scale_counts else None
        rest = await footprint.run(options) if options.footprint else None
        qemu_peer, echo = await qemu.run(relay_suite.stderr_progress) if options.qemu else ("", [])
        out = ["", "## thinserve relay benchmark", ""]
        out += [f"- {line}" for line in machine]
        core = "the relay on core 0, the rest on the others" if pinned else "no pinning (one core)"
        out.append(f"- Relay processes: thinserve and the byte relay as separate processes; {core}")
        out.append(f"- Workloads of {options.seconds:.0f} s; see docs/performance.md")
        out += relayreport.runs_section(runs)
        if scaled is not None:
            out += relayreport.scale_section(scaled)
        if rest is not None:
            out += relayreport.footprint_section(rest)
        if echo:
            out += relayreport.qemu_section(qemu_peer, echo)
        return out + relayreport.targets_section(runs, scaled, rest, echo)

    return await _pinned_run(body)


async def tls(options: TLSOptions) -> int:
    from . import tlscost, tlsreport
    from .relay import stderr_progress

    async def body(machine: Lines, pinned: bool) -> Lines:
        result = await tlscost.run(options, stderr_progress)
        return tlsreport.render(options, machine, result, pinned)

    return await _pinned_run(body)


async def flood(options: FloodOptions) -> int:
    from . import flood as flood_suite
    from . import floodreport
    from .relay import stderr_progress

    async def body(machine: Lines, pinned: bool) -> Lines:
        result = await flood_suite.run(options, stderr_progress)
        return floodreport.render(result, machine, pinned)

    return await _pinned_run(body)


async def soak(options: SoakOptions) -> int:
    from . import soak as soak_suite
    from .relay import stderr_progress

    async def body(machine: Lines, pinned: bool) -> Lines:
        await soak_suite.run(options, machine, pinned, stderr_progress)  # prints as it goes
        return []

    return await _pinned_run(body)


async def fanout(options: FanoutOptions) -> int:
    from . import fanout as fanout_suite
    from . import fanoutreport
    from .relay import stderr_progress

    async def body(machine: Lines, pinned: bool) -> Lines:
        result = await fanout_suite.run(options, stderr_progress)
        return fanoutreport.render(result, machine, pinned)

    return await _pinned_run(body)


async def cluster(options: ClusterOptions) -> int:
    """Inside the LAN that bench/clusterlan.py made (the database's URL in the environment)."""
    from . import cluster as cluster_suite
    from . import clusterreport
    from .clusterlan import DATABASE_ENV, SUBNET
    from .relay import stderr_progress

    admin_url = os.environ[DATABASE_ENV]
    where = (
        f"PostgreSQL (fsync and synchronous commit on) on another host of a private LAN "
        f"{SUBNET}.0/24 (network namespaces, veth and a bridge, no added delay)"
    )

    hosts = (
        f"nodes A and B on hosts of their own on that LAN, the terminals on the bench's "
        f"host, each from an address of its own; the database on {SUBNET}.2"
    )

    async def body(machine: Lines, pinned: bool) -> Lines:
        from . import clusternodesreport, clusterrecovery, clusterrelay

        runs = await cluster_suite.run(options, admin_url, stderr_progress)
        relayed = await clusterrelay.run(options, admin_url, stderr_progress)
        recovered = await clusterrecovery.run(options, admin_url, stderr_progress)
        return [
            *clusterreport.render(options, runs, machine, where),
            *clusternodesreport.relay_section(options, relayed, hosts),
            *clusternodesreport.recovery_section(options, recovered, hosts),
        ]

    return await _pinned_run(body)


def _sizes(args: argparse.Namespace) -> tuple[tuple[int, int], ...]:
    return tuple((int(w), int(h)) for w, h in (size.split("x") for size in args.size))


async def run_command(args: argparse.Namespace) -> int:
    status = 0
    if args.command == "cluster":
        return await cluster(ClusterOptions.of(args.quick, args.rounds))
    if args.command == "fanout":
        return await fanout(FanoutOptions.of(args.quick, args.terminals, args.rounds))
    if args.command == "flood":
        return await flood(FloodOptions.of(args.quick, args.addresses))
    if args.command == "soak":
        return await soak(SoakOptions.of(args.quick, args.minutes))
    if args.command == "tls":
        tls_options = TLSOptions.of(args.quick)
        if args.size:
            tls_options = dataclasses.replace(tls_options, sizes=_sizes(args))
        return await tls(tls_options)
    if args.command in ("all", "encodings"):
        contents = tuple(args.content or CONTENTS)
        options = Options.of(args.quick, contents, not args.no_xvnc, args.repeat)
        status = await encodings(options)
    if args.command in ("all", "relay") and status == 0:
        relay_options = RelayOptions.of(args.quick, tuple(args.workload or ()) or None)
        if args.profile:
            relay_options = dataclasses.replace(relay_options, profiles=tuple(args.profile))
        if args.size:
            relay_options = dataclasses.replace(relay_options, sizes=_sizes(args))
        if args.no_scale:
            relay_options = dataclasses.replace(relay_options, scale_counts=())
        if args.no_footprint:
            relay_options = dataclasses.replace(relay_options, footprint=False)
        if args.no_qemu:
            relay_options = dataclasses.replace(relay_options, qemu=False)
        status = await relay(relay_options)
    return status


def restart(quick: bool) -> int:
    """The restart benchmark: plain processes and threads, no reactor of its own."""
    from . import restart as restart_suite
    from .report import load, machine_lines

    machine = machine_lines(xvnc_version())  # the load before the run
    started = time.monotonic()
    try:
        results = restart_suite.run(3 if quick else 7, _to_stderr)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(restart_suite.render(results, machine)))
    print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end {load()})")
    return 0


def dashboard(quick: bool) -> int:
    """The dashboard benchmark: plain processes and threads, no reactor of its own."""
    from . import dashboard as dashboard_suite
    from .report import load, machine_lines

    options = dashboard_suite.DashboardOptions.of(quick)
    machine = machine_lines(xvnc_version())  # the load before the run
    started = time.monotonic()
    try:
        results = dashboard_suite.run(options, _to_stderr)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(dashboard_suite.render(options, results, machine)))
    print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end {load()})")
    return 0


def fullscreen(options: FullscreenOptions) -> int:
    """The full-screen benchmark: plain processes and blocking sockets, no reactor."""
    from . import fullreport, processes
    from . import fullscreen as fullscreen_suite
    from .report import load, machine_lines

    processes.pin_benchmark()
    machine = machine_lines(xvnc_version())  # the load before the run
    try:
        result = fullscreen_suite.run(options, _to_stderr)
    except (RuntimeError, OSError) as exc:  # CaptureError and XvncError among them
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(fullreport.render(result, machine)))
    print(f"\n(run took {result.seconds:.0f} s; load average at the end {load()})")
    return 0


def adaptive(quick: bool) -> int:
    """The adaptive benchmark, bench/adaptive.py, imported only when asked for."""
    try:
        suite = importlib.import_module("bench.adaptive")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.adaptive":
            raise
        print("error: bench/adaptive.py is not there: nothing to run", file=sys.stderr)
        return 2
    return int(suite.main(quick))


CLUSTER_DATABASE_ENV = "THINSERVE_BENCH_DATABASE"  # bench/clusterlan.py sets it


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "adaptive":
        return adaptive(args.quick)
    if args.command == "fullscreen":
        options = FullscreenOptions.of(args.quick, args.rounds)
        return fullscreen(options) if xvnc_path() else _no_xvnc()
    if args.command == "restart":
        return restart(args.quick) if xvnc_path() else _no_xvnc()
    if args.command == "dashboard":
        return dashboard(args.quick) if xvnc_path() else _no_xvnc()
    if args.command == "cluster" and not os.environ.get(CLUSTER_DATABASE_ENV):
        from .clusterlan import run_outside

        return run_outside(sys.argv[1:] if argv is None else argv) if xvnc_path() else _no_xvnc()
    if args.command == "all" and args.no_xvnc:
        args.command = "encodings"  # the relay suite needs Xvnc
    needs_xvnc = (
        args.command in ("relay", "tls", "flood", "soak", "fanout", "cluster") or not args.no_xvnc
    )
    if needs_xvnc and xvnc_path() is None:
        return _no_xvnc()
    install_reactor()
    from twisted.internet import defer, task

    status = [1]

    async def body() -> None:
        status[0] = await run_command(args)

    try:
        task.react(lambda _reactor: defer.Deferred.fromCoroutine(body()))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return int(exit_.code) if isinstance(exit_.code, int) else 1
    return status[0]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _no_xvnc() -> int:
    print(f"error: Xvnc is not installed: {INSTALL_HINT} (or pass --no-xvnc)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
