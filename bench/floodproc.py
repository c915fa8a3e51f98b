"""Fake terminals in a process of their own: ``python -m bench.floodproc MODE PORT ...``.

The handshaken fake terminals of bench/floodpeer.py, driven from a separate
process so that connecting and handshaking thousands of them costs the
measuring process (painting, the paired terminals) nothing but a share of
the cores.  Reports go to stdout as JSON objects, one a line; commands
come on stdin, one a line.  An end of stdin or the time limit closes every
connection and ends the process.

* ``flood``: after ``go``, first ``--crowd`` peers from one address
  (``--crowd-address``), then one peer from each of ``--count`` addresses
  under ``--prefix``, all at once.  A ``status`` report every quarter
  second counts the peers per stage; once no peer is on its way and none
  changed for ``--quiet`` seconds (or ``--settle`` seconds passed) one
  ``settled`` report says what became of each peer and how long each took;
  the peers stay connected until ``close``.
* ``churn``: ``--concurrency`` peers at a time, each connecting from the
  next of ``4 x concurrency`` addresses under ``--prefix``, holding its
  connection 1 to 4 seconds once served, closing it and starting again,
  for ``--seconds``.  A ``status`` report every second gives the counts so
  far and the connect-to-update times since the previous report.

What became of a peer:

* ``waiting``: admitted (ServerInit and its one-pixel update), still open;
* ``turned away``: admitted, then closed by thinserve (``max_unpaired``
  turns a terminal away with a drawn screen and closes it 3 s later);
* ``refused``: answered "connection failed" with a reason (a connection
  cap: ``max_connections``, ``max_per_address``);
* ``failed``: closed or never connected before ServerInit, with no reason;
* ``pending``: still on its way when the report was made.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, reactor, stdio, task
from twisted.protocols.basic import LineReceiver

from .floodpeer import FloodPeer, PeerState, connect_peer, flood, sources

STATUS_EVERY = 0.25
CHURN_STATUS_EVERY = 1.0
HOLD_RANGE = (1.0, 4.0)  # seconds a churning peer keeps its served connection
PAUSE_RANGE = (0.1, 0.5)  # seconds between one churning connection and the next
SERVE_TIMEOUT = 30.0  # a churning peer not served within this is given up
CLOSE_GRACE = 1.0  # seconds for the aborts to be seen before the process ends
ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.perf_counter(), **fields}) + "\n")
    sys.stdout.flush()


def outcome(peer: PeerState) -> str:
    """What became of a peer so far (see the module's docstring)."""
    if peer.stage == "refused":
        return "refused"
    if peer.stage in ("connecting", "handshake"):
        return "pending"
    admitted = "admitted" in peer.reached
    if peer.stage == "closed":
        return "turned away" if admitted else "failed"
    return "waiting" if peer.stage == "updated" else "pending"  # admitted: update to come


def reason_kind(reason: str) -> str:
    """A refusal's reason with addresses and numbers taken out, to count alike ones."""
    return ADDRESS.sub("ADDR", reason)[:160]


def milliseconds(peer: PeerState, stage: str) -> float | None:
    at = peer.reached.get(stage)
    return None if at is None or not peer.started else round((at - peer.started) * 1000.0, 2)


def summary(peers: Sequence[PeerState]) -> dict[str, Any]:
    """Counts per outcome and stage, refusal reasons, and the time each peer took:
    connect to its one-pixel update (served peers) or to the reason (refused)."""
    outcomes = Counter(outcome(p) for p in peers)
    served: dict[str, list[float]] = {"waiting": [], "turned away": [], "refused": []}
    for peer in peers:
        kind = outcome(peer)
        stage = "refused" if kind == "refused" else "updated"
        value = milliseconds(peer, stage)
        if kind in served and value is not None:
            served[kind].append(value)
    return {
        "peers": len(peers),
        "outcomes": dict(outcomes),
        "stages": dict(Counter(p.stage for p in peers)),
        "reasons": dict(Counter(reason_kind(p.reason) for p in peers if p.reason)),
        "ms": served,
    }


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self) -> None:
        self.go: defer.Deferred[None] = defer.Deferred()
        self.close: defer.Deferred[None] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        command = line.strip().decode(errors="replace")
        if command == "go" and not self.go.called:
            self.go.callback(None)
        elif command == "close":
            self._closing()

    def connectionLost(self, reason: object = None) -> None:
        self._closing()

    def _closing(self) -> None:
        if not self.go.called:
            self.go.callback(None)
        if not self.close.called:
            self.close.callback(None)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, max(0.0, seconds), lambda: None)


async def until(condition: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await sleep(step)
    return True


async def run_flood(args: argparse.Namespace, commands: Commands) -> None:
    last_change = [time.monotonic()]

    def changed() -> None:
        last_change[0] = time.monotonic()

    peers: list[PeerState] = []
    protocols: list[FloodPeer] = []

    def status() -> None:
        emit("status", stages=dict(Counter(p.stage for p in peers)), peers=len(peers))

    emit("ready")
    await commands.go
    if commands.close.called:
        return
    began = time.perf_counter()
    ticker = task.LoopingCall(status)
    ticker.start(STATUS_EVERY)
    try:
        if args.crowd:
            crowd = await flood(reactor, args.port, [args.crowd_address] * args.crowd, changed)
            peers += crowd.peers
            protocols += crowd.protocols
            await until(crowd.settled, 10.0)
        wave = await flood(reactor, args.port, sources(args.count, args.prefix), changed)
        peers += wave.peers
        protocols += wave.protocols
        connected = time.perf_counter() - began

        def quiet() -> bool:
            on_the_way = any(p.stage in ("connecting", "handshake", "admitted") for p in peers)
            return not on_the_way and time.monotonic() - last_change[0] >= args.quiet

        settled = await until(quiet, max(0.0, args.settle - (time.perf_counter() - began)))
        groups = {"crowd": peers[: args.crowd], "flood": peers[args.crowd :]}
        emit(
            "settled",
            settled=settled,
            connected_s=round(connected, 3),
            settled_s=round(time.perf_counter() - began, 3),
            groups={name: summary(group) for name, group in groups.items()},
        )
        await until(lambda: commands.close.called, args.hold, step=0.1)
    finally:
        ticker.stop()
        for peer in protocols:
            if peer.transport is not None:
                peer.transport.abortConnection()  # type: ignore[attr-defined]
        await sleep(CLOSE_GRACE)
        emit("closed", groups={"all": summary(peers)})


class Churn:
    """Peers that connect, are served, hold, close and start again."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.addresses = sources(4 * args.concurrency, args.prefix)
        self.next_address = 0
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.served_ms: list[float] = []  # since the previous status report
        self.open: set[FloodPeer] = set()
        self.stopping = False

    def status(self) -> None:
        emit(
            "status",
            counts=dict(self.counts),
            reasons=dict(self.reasons),
            served_ms=self.served_ms,
            open=len(self.open),
        )
        self.served_ms = []

    async def slot(self, deadline: float) -> None:
        rng = random.Random()
        for _cycle in range(1_000_000):  # bounded; the deadline ends it first
            if self.stopping or time.monotonic() > deadline:
                return
            address = self.addresses[self.next_address % len(self.addresses)]
            self.next_address += 1
            await self.once(PeerState(address), rng, deadline)
            await sleep(rng.uniform(*PAUSE_RANGE))

    async def once(self, state: PeerState, rng: random.Random, deadline: float) -> None:
        peer, attempt = connect_peer(reactor, self.args.port, state, lambda: None)
        self.counts["attempts"] += 1

        def failed(failure: Any) -> None:
            state.stage, state.reason = "closed", ""  # never connected: counted as failed
            self.counts["connect errors"] += 1

        attempt.addErrback(failed)
        self.open.add(peer)
        try:
            served = await until(
                lambda: state.stage in ("updated", "refused", "closed") or self.stopping,
                SERVE_TIMEOUT,
            )
            if served and state.stage == "updated":
                value = milliseconds(state, "updated")
                if value is not None:
                    self.served_ms.append(value)
                hold = min(rng.uniform(*HOLD_RANGE), max(0.0, deadline - time.monotonic()))
                await until(lambda: state.stage == "closed" or self.stopping, hold, step=0.1)
            kind = outcome(state) if served else "failed"
            if kind == "waiting":
                kind = "served"  # admitted and held until we closed it
            self.counts[kind] += 1
            if state.reason:
                self.reasons[reason_kind(state.reason)] += 1
        finally:
            if peer.transport is not None and state.stage != "closed":
                peer.transport.abortConnection()  # type: ignore[attr-defined]
            await until(lambda: state.stage in ("closed", "refused"), 5.0)
            self.open.discard(peer)


async def run_churn(args: argparse.Namespace, commands: Commands) -> None:
    churn = Churn(args)
    emit("ready")
    await commands.go
    if commands.close.called:
        return
    deadline = time.monotonic() + args.seconds
    ticker = task.LoopingCall(churn.status)
    ticker.start(CHURN_STATUS_EVERY, now=False)

    def stop(_: object = None) -> None:
        churn.stopping = True

    commands.close.addCallback(stop)
    slots = []
    for _ in range(args.concurrency):
        slots.append(defer.ensureDeferred(churn.slot(deadline)))
        await sleep(args.seconds_between_starts)
    try:
        await defer.DeferredList(slots, consumeErrors=True)
    finally:
        ticker.stop()
        churn.status()
        emit("closed", counts=dict(churn.counts), reasons=dict(churn.reasons))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.floodproc")
    parser.add_argument("mode", choices=["flood", "churn"])
    parser.add_argument("port", type=int)
    parser.add_argument("--prefix", default="127.3", help="a /16 of loopback addresses")
    parser.add_argument("--count", type=int, default=100, help="flood: peers, one per address")
    parser.add_argument("--crowd", type=int, default=0, help="flood: peers from one address")
    parser.add_argument("--crowd-address", default="127.4.0.1")
    parser.add_argument("--quiet", type=float, default=4.0, help="flood: settled after this")
    parser.add_argument("--settle", type=float, default=120.0, help="flood: at most this")
    parser.add_argument("--hold", type=float, default=600.0, help="flood: held at most this")
    parser.add_argument("--concurrency", type=int, default=40, help="churn: peers at a time")
    parser.add_argument("--seconds", type=float, default=60.0, help="churn: for this long")
    parser.add_argument("--seconds-between-starts", type=float, default=0.05)
    args = parser.parse_args(argv)
    if not 0 < args.count <= 60_000 or not 0 <= args.crowd <= 1000:
        parser.error("--count from 1 to 60000, --crowd from 0 to 1000")
    if not 0 < args.concurrency <= 5000:
        parser.error("--concurrency from 1 to 5000")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    commands = Commands()
    stdio.StandardIO(commands)
    body = run_flood if args.mode == "flood" else run_churn
    outcome_: list[BaseException] = []

    async def go() -> None:
        try:
            await body(args, commands)
        except Exception as exc:  # reported, then the process ends
            outcome_.append(exc)
            emit("error", message=f"{type(exc).__name__}: {exc}")

    def stop(_: object = None) -> None:
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]

    limit = args.settle + args.hold + 60 if args.mode == "flood" else args.seconds + 120
    reactor.callLater(limit, stop)  # type: ignore[attr-defined]  # bounded, whatever happens
    reactor.callWhenRunning(lambda: defer.ensureDeferred(go()).addBoth(stop))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 1 if outcome_ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
