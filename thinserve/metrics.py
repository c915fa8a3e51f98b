"""Prometheus metrics: what thinserve serves, counted where it happens.

Everything lives in one registry of this module's own (``REGISTRY``, not
prometheus_client's global one), served as text by ``MetricsResource``
(docs/metrics.md lists every metric).  Counters are bumped from the hot
path, so they are bumped once per update, never per rectangle: the
per-update counters are plain numbers read when scraped (``SentCounts``),
the encoding histogram's children are bound to their labels once.  What
terminals and desktops show now is not counted at all: ``HubCollector``
reads it from the hub bound with ``bind`` when Prometheus scrapes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web import resource
from twisted.web.server import Request

from protocols.rfb.updatestats import KINDS, PIXEL_KINDS, UpdateStats

from .broker import ScreenKind, ShowDesktop
from .desktop_state import DesktopState

if TYPE_CHECKING:
    from .hub import Hub

# No "_created" series: they double the text and no panel reads them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

# Encoding one update's rectangles of one kind: 0.1 ms (a small Hextile
# rectangle) to 1 s (a full 4K screen of Tight JPEG on a slow core).
ENCODE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# A request answered at once on loopback takes a millisecond; an idle
# desktop answers only when its screen changes, seconds later.
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# What a connected terminal shows, as the "state" label of thinserve_terminals.
TERMINAL_STATES = (
    "desktop-control",
    "desktop-view-only",
    "pairing",
    "login",
    "waiting",
    "starting",
    "failed",
    "other",
)
_SCREEN_STATES = {
    ScreenKind.PAIRING: "pairing",
    ScreenKind.LOGIN: "login",
    ScreenKind.NO_DESKTOP_FREE: "waiting",
    ScreenKind.STARTING: "starting",
    ScreenKind.FAILED: "failed",
}

ENCODE_SECONDS = Histogram(
    "thinserve_encode_seconds",
    "Seconds spent encoding one update's pixel rectangles of one encoding.",
    ["encoding"],
    buckets=ENCODE_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    "thinserve_upstream_latency_seconds",
    "From thinserve's FramebufferUpdateRequest to the desktop's whole update.",
    ["desktop"],
    buckets=UPSTREAM_BUCKETS,
    registry=REGISTRY,
)
DESKTOP_STARTS = Counter(
    "thinserve_desktop_starts",
    "Times a desktop went to the starting state.",
    ["desktop"],
    registry=REGISTRY,
)
DESKTOP_FAILURES = Counter(
    "thinserve_desktop_failures",
    "Times a desktop failed: could not start, or crashed (the crashed state).",
    ["desktop"],
    registry=REGISTRY,
)
LOGIN_FAILURES = Counter(
    "thinserve_login_failures",
    "User logins that failed (wrong secret, no desktop, disabled) or were refused "
    "unchecked (rate limited, another check in flight).",
    ["outcome"],
    registry=REGISTRY,
)
PAIRING_FAILURES = Counter(
    "thinserve_pairing_code_failures",
    "Pairing codes that were wrong, or refused unchecked (rate limited).",
    ["outcome"],
    registry=REGISTRY,
)
DASHBOARD_LOGIN_FAILURES = Counter(
    "thinserve_dashboard_login_failures",
    "Admin logins to the dashboard that failed.",
    registry=REGISTRY,
)

# Audit actions (Broker._audit, the dashboard's accounts) that count as
# failures: the counter (child) each one bumps.
_AUDITED: dict[str, Counter] = {
    "login-failed": LOGIN_FAILURES.labels(outcome="failed"),
    "login-refused": LOGIN_FAILURES.labels(outcome="refused"),
    "pair-code-failed": PAIRING_FAILURES.labels(outcome="failed"),
    "pair-code-refused": PAIRING_FAILURES.labels(outcome="refused"),
    "admin-login-failed": DASHBOARD_LOGIN_FAILURES,
}


# Children bound once per encoding label (every pixel kind the core can name).
_SECONDS = {kind: ENCODE_SECONDS.labels(encoding=kind) for kind in PIXEL_KINDS}


class SentCounts(Collector):
    """Updates, rectangles and bytes sent to terminals, by kind.

    Bumped once per update and terminal (fifty times per desktop change
    when fifty terminals watch it), so kept as plain numbers on the reactor
    thread and read as counters when Prometheus scrapes.
    """

    def __init__(self) -> None:
        self.updates = 0
        self.rects = dict.fromkeys(KINDS, 0)
        self.bytes = dict.fromkeys(KINDS, 0)

    def add(self, stats: UpdateStats) -> None:
        self.updates += 1
        rects, sizes = self.rects, self.bytes
        for kind, count in stats.rects.items():
            rects[kind] = rects.get(kind, 0) + count
            sizes[kind] = sizes.get(kind, 0) + stats.bytes[kind]

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        updates, rects, sizes = self._families()
        updates.add_metric([], self.updates)
        for kind in sorted(self.rects):
            rects.add_metric([kind], self.rects[kind])
            sizes.add_metric([kind], self.bytes[kind])
        return [updates, rects, sizes]

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily("thinserve_updates_sent", "FramebufferUpdates sent to terminals."),
            CounterMetricFamily(
                "thinserve_rectangles_sent",
                "Rectangles sent to terminals, by encoding "
                "(pseudo-encodings such as cursor included).",
                labels=["encoding"],
            ),
            CounterMetricFamily(
                "thinserve_sent_bytes",
                "Bytes of rectangles (12-byte header and payload) sent to terminals, by encoding.",
                labels=["encoding"],
            ),
        )


SENT = SentCounts()
REGISTRY.register(SENT)


# -- the hot path: counted as things happen ---------------------------------------------------
def update_sent(stats: UpdateStats) -> None:
    """One update went out whole to a terminal (TerminalSession, when its stream is done).

    Its encoding time is observed only where it was spent: an update sent
    again to another terminal as it was (see ``UpdateStats.sent_again``)
    carries none.
    """
    SENT.add(stats)
    for kind, seconds in stats.seconds.items():
        child = _SECONDS.get(kind)
        if child is None:  # a kind of pixel rectangle new to this list
            child = _SECONDS[kind] = ENCODE_SECONDS.labels(encoding=kind)
        child.observe(seconds)


def upstream_latency(desktop: str) -> Histogram:
    """The latency histogram of ``desktop``, bound once by its Upstream."""
    return UPSTREAM_LATENCY.labels(desktop=desktop)


# -- hooks for the hub and the broker -------------------------------------------------------
_last_states: dict[str, DesktopState] = {}


def desktop_state(name: str, state: DesktopState) -> None:
    """The desktop manager's report on ``name`` (Hub.desktop_state).

    Reports repeat a state (a start reports its progress): only a change
    into starting or crashed counts.
    """
    old = _last_states.get(name)
    _last_states[name] = state
    if state is old:
        return
    if state is DesktopState.STARTING:
        DESKTOP_STARTS.labels(desktop=name).inc()
    elif state is DesktopState.CRASHED:
        DESKTOP_FAILURES.labels(desktop=name).inc()


def desktop_removed(name: str) -> None:
    """``name`` is no longer configured (Hub.withdraw_desktop): its series go."""
    _last_states.pop(name, None)
    for metric in (DESKTOP_STARTS, DESKTOP_FAILURES, UPSTREAM_LATENCY):
        with contextlib.suppress(KeyError):  # never counted
            metric.remove(name)


def audited(action: str) -> None:
    """An audit record was written (Broker._audit, the dashboard's accounts):
    failures are counted."""
    child = _AUDITED.get(action)
    if child is not None:
        child.inc()


# -- read at scrape time ---------------------------------------------------------------------
class HubCollector(Collector):
    """Terminals, sessions and desktops by state, read from the bound hub when scraped.

    One hub at a time: a server binds its hub when it starts and unbinds it
    when it stops, so tests that run several servers in one process each
    see their own while they run.
    """

    def __init__(self) -> None:
        self.hub: Hub | None = None

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        terminals, sessions, desktops = self._families()
        hub = self.hub
        shows = terminal_states(hub) if hub is not None else []
        for state in TERMINAL_STATES:
            terminals.add_metric([state], shows.count(state))
        sessions.add_metric([], shows.count("desktop-control"))
        states = list(hub.broker.snapshot().desktops.values()) if hub is not None else []
        for desktop in DesktopState:
            desktops.add_metric([desktop.value], states.count(desktop))
        return [terminals, sessions, desktops]

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "thinserve_terminals",
                "Connected terminals by what they show.",
                labels=["state"],
            ),
            GaugeMetricFamily(
                "thinserve_sessions",
                "Terminals in control of a desktop.",
            ),
            GaugeMetricFamily(
                "thinserve_desktops",
                "Configured desktops by state.",
                labels=["state"],
            ),
        )


def terminal_states(hub: Hub) -> list[str]:
    """What each connected terminal shows, in TERMINAL_STATES' words."""
    shown = hub.broker.snapshot().shown
    states = []
    for terminal_id, terminal in hub.terminals.items():
        if not terminal.session.connected:
            continue
        assignment = shown.get(terminal_id)
        if isinstance(assignment, ShowDesktop):
            states.append("desktop-control" if assignment.control else "desktop-view-only")
        elif assignment is None:
            states.append("other")
        else:
            states.append(_SCREEN_STATES.get(assignment.kind, "other"))
    return states


COLLECTOR = HubCollector()
REGISTRY.register(COLLECTOR)


def bind(hub: Hub) -> None:
    """Read terminals and desktops from ``hub`` from now on (when the hub is made)."""
    COLLECTOR.hub = hub


def unbind(hub: Hub | None = None) -> None:
    """Stop reading ``hub`` (any hub if None); a later server's hub stays bound."""
    if hub is None or COLLECTOR.hub is hub:
        COLLECTOR.hub = None


def generate_latest() -> bytes:
    """Every metric, in Prometheus' text format."""
    return _generate_latest(REGISTRY)


class MetricsResource(resource.Resource):
    """``GET /metrics``: the text Prometheus scrapes.  Whoever mounts it
    authenticates first: the numbers name desktops."""

    isLeaf = True

    def __init__(self, hub: Hub | None = None) -> None:
        super().__init__()
        if hub is not None:
            bind(hub)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest()
