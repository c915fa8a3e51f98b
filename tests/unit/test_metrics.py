"""Prometheus metrics (thinserve/metrics.py): counters, the hub collector, /metrics.

The registry is the module's own and lives as long as the process, so every
check compares a counter before and after.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from protocols.rfb.client import ClientConnection, UpdateDone
from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect, TightEncoder
from protocols.rfb.pixelformat import NATIVE, PixelCodec
from protocols.rfb.updatestats import KINDS, UPDATE_HEADER, UpdateStats, rect_kind
from tests.support.pump import End, pump
from thinserve import metrics
from thinserve.broker import Broker, BrokerConfig, BrokerError, ShowScreen, TerminalInfo
from thinserve.desktop_state import DesktopState
from thinserve.hub import Hub
from thinserve.relay.source import Source
from thinserve.relay.upstream import Mirror
from thinserve.rfbserver import RFBServerProtocol, ServerOptions
from thinserve.secrets import SecretHasher
from thinserve.store import SqliteStore

from .content import desktop_frame, noise_frame
from .test_connection import H, Pair, W
from .test_session_stream import Wire, full_request

CHEAP = SecretHasher(time_cost=1, memory_cost=8, parallelism=1)
JPEG_Q8 = Encoding.JPEG_QUALITY_0 + 8


def value(name: str, **labels: str) -> float:
    """A sample's value now (0 for a series not there yet)."""
    found = metrics.REGISTRY.get_sample_value(name, labels)
    return found or 0.0


@pytest.fixture
def unbound() -> Iterator[None]:
    """No hub bound before or after the test."""
    metrics.unbind()
    yield
    metrics.unbind()


# -- what the core reports per update -----------------------------------------------------------
def test_rect_kind_tells_tight_jpeg_from_lossless_tight() -> None:
    encoder = TightEncoder()
    encoder.configure(8, None)
    codec = PixelCodec(NATIVE)
    photo = desktop_frame(W, H)[H * 2 // 3 :, W * 2 // 3 :][:64, :64]
    two_colours = np.where(np.arange(64 * 64).reshape(64, 64) % 3, 0x00FFFFFF, 0).astype(np.uint32)
    assert rect_kind(Encoding.TIGHT, encoder.encode(photo, codec)) == "tight-jpeg"
    assert rect_kind(Encoding.TIGHT, encoder.encode(two_colours, codec)) == "tight"
    assert rect_kind(Encoding.ZRLE, b"\x90") == "zrle"
    assert rect_kind(Encoding.CURSOR, b"") == "cursor"
    assert rect_kind(12345, b"") == "other"


def tight_pair() -> Pair:
    pair = Pair(desktop_frame(W, H, seed=3))
    pair.client.set_encodings([Encoding.TIGHT, JPEG_Q8, Encoding.COPYRECT])
    pair.full_update()
    pair.take_client(UpdateDone)
    return pair


def test_update_stats_add_up_to_the_update_the_client_reads() -> None:
    pair = tight_pair()
    frame = desktop_frame(W, H, seed=9)
    frame[H // 2 :] = noise_frame(W, H - H // 2)  # many tones: JPEG
    copies = [(Rect(0, 0, 40, 20), 100, 100)]
    halves = [Rect(0, 0, W, H // 2), Rect(0, H // 2, W, H - H // 2)]
    stream = pair.server.begin_update(frame, halves, copies)
    stream.send()
    wire = pair.server.data_to_send()
    pair.pump()
    pair.client_events += pair.client.receive_data(wire)
    (done,) = pair.take_client(UpdateDone)
    stats = stream.stats
    assert sum(stats.bytes.values()) + UPDATE_HEADER == stream.bytes == len(wire)
    assert sum(stats.rects.values()) == int.from_bytes(wire[2:4], "big")
    tight = done.encodings.count(Encoding.TIGHT)
    assert stats.rects["tight"] + stats.rects["tight-jpeg"] == tight
    assert stats.rects["tight-jpeg"] > 0
    assert stats.rects["copyrect"] == done.encodings.count(Encoding.COPYRECT) == 1
    assert set(stats.seconds) == {"tight", "tight-jpeg"}
    assert all(seconds > 0 for seconds in stats.seconds.values())


def _update_readings() -> dict[str, float]:
    """The series one update moves, as Prometheus would scrape them."""
    return {
        "updates": value("thinserve_updates_sent_total"),
        "zrle rects": value("thinserve_rectangles_sent_total", encoding="zrle"),
        "zrle bytes": value("thinserve_sent_bytes_total", encoding="zrle"),
        "copy rects": value("thinserve_rectangles_sent_total", encoding="copyrect"),
        "copy bytes": value("thinserve_sent_bytes_total", encoding="copyrect"),
        "zrle count": value("thinserve_encode_seconds_count", encoding="zrle"),
        "zrle sum": value("thinserve_encode_seconds_sum", encoding="zrle"),
        "zrle 2.5ms": value("thinserve_encode_seconds_bucket", encoding="zrle", le="0.0025"),
        "zrle 1ms": value("thinserve_encode_seconds_bucket", encoding="zrle", le="0.001"),
        "raw count": value("thinserve_encode_seconds_count", encoding="raw"),
    }


def test_update_sent_counts_each_kind_once_per_update() -> None:
    stats = UpdateStats()
    stats.add("copyrect", 16)
    stats.add_encoded("zrle", 1000, 0.002)
    stats.add_encoded("zrle", 500, 0.001)
    stats.add_encoded("raw", 76, 0.00002)
    before = _update_readings()
    metrics.update_sent(stats)
    after = _update_readings()
    moved = {key: round(after[key] - before[key], 9) for key in before}
    assert moved == {
        "updates": 1,
        "zrle rects": 2,
        "zrle bytes": 1500,
        "copy rects": 1,
        "copy bytes": 16,
        "zrle count": 1,  # one observation: the update's 3 ms of ZRLE
        "zrle sum": 0.003,
        "zrle 2.5ms": 0,
        "zrle 1ms": 0,
        "raw count": 1,
    }
    assert value("thinserve_encode_seconds_count", encoding="copyrect") == 0


def test_a_session_counts_what_it_sent() -> None:
    """Over a real server protocol: the counters move by the session's own bytes."""
    frame = noise_frame(W, H, seed=2)
    frame[:, : W // 2] = 0x00336699  # a solid half, sent in a cheaper solid form
    before_updates = value("thinserve_updates_sent_total")
    before_bytes = sum(value("thinserve_sent_bytes_total", encoding=k) for k in KINDS)
    wire = Wire(Source(frame, "desk"))
    full_request(wire)
    while wire.session.stream is not None:
        wire.turn()
    updates = value("thinserve_updates_sent_total") - before_updates
    sent = sum(value("thinserve_sent_bytes_total", encoding=k) for k in KINDS) - before_bytes
    session = wire.session
    assert updates == session.updates_sent >= 1
    assert sent + UPDATE_HEADER * session.updates_sent == session.bytes_sent


def test_an_update_sent_again_counts_its_bytes_but_not_its_encoding_again() -> None:
    """Two terminals watching one picture: the second is sent the first's bytes
    as they are; both count as sent, the encoding time only once."""
    source = Source(desktop_frame(W, H, seed=5), "desk")
    wires = [Wire(source), Wire(source)]
    for wire in wires:
        wire.client.set_encodings([Encoding.TIGHT])
        full_request(wire)
        while wire.session.stream is not None:
            wire.turn()
    for wire in wires:
        wire.take(UpdateDone)
        wire.client.request_update(incremental=True)
        wire.pump()
    sent_before = [wire.session.bytes_sent for wire in wires]
    before = (
        value("thinserve_updates_sent_total"),
        value("thinserve_sent_bytes_total", encoding="tight"),
        value("thinserve_encode_seconds_count", encoding="tight"),
    )
    frame = source.writable()
    frame[40:60, 30:90] = noise_frame(60, 20, seed=6)
    source.damaged([Rect(30, 40, 60, 20)])
    for wire in wires:
        wire.pump()
    (first, second) = [wire.take(UpdateDone) for wire in wires]
    assert len(first) == len(second) == 1
    moved = (
        value("thinserve_updates_sent_total") - before[0],
        value("thinserve_sent_bytes_total", encoding="tight") - before[1],
        value("thinserve_encode_seconds_count", encoding="tight") - before[2],
    )
    sent = [wire.session.bytes_sent - b for wire, b in zip(wires, sent_before, strict=True)]
    assert moved[0] == 2
    assert moved[2] == 1  # encoded once, for the first terminal
    assert sent[0] == sent[1] > UPDATE_HEADER  # the same bytes to both
    assert moved[1] == sum(sent) - 2 * UPDATE_HEADER
    for wire in wires:
        np.testing.assert_array_equal(wire.client.framebuffer, source.framebuffer)


# -- desktops, audit --------------------------------------------------------------------------
def test_desktop_starts_and_failures_count_changes_not_reports() -> None:
    name = "metrics-desk"
    starts = value("thinserve_desktop_starts_total", desktop=name)
    failures = value("thinserve_desktop_failures_total", desktop=name)
    for state in (
        DesktopState.STOPPED,
        DesktopState.STARTING,
        DesktopState.STARTING,  # progress reports repeat the state
        DesktopState.CRASHED,
        DesktopState.CRASHED,
        DesktopState.STARTING,
        DesktopState.RUNNING,
    ):
        metrics.desktop_state(name, state)
    assert value("thinserve_desktop_starts_total", desktop=name) - starts == 2
    assert value("thinserve_desktop_failures_total", desktop=name) - failures == 1
    metrics.desktop_removed(name)
    assert (
        metrics.REGISTRY.get_sample_value("thinserve_desktop_starts_total", {"desktop": name})
        is None
    )


def test_failed_logins_and_pairing_codes_count_from_the_broker_s_audit_actions() -> None:
    """The actions counted are the ones a real broker writes."""
    pairing_codes = Broker(SqliteStore(), BrokerConfig(), hasher=CHEAP)
    pairing_codes.register_desktop("d1", "xvnc")
    assert isinstance(pairing_codes.terminal_connected("t1", TerminalInfo()), ShowScreen)
    with pytest.raises(BrokerError, match="no such pairing code"):
        pairing_codes.pair_code("ZZZZ-ZZZZ", "d1", "admin")
    hot_desk = Broker(SqliteStore(), BrokerConfig(hot_desk=True), hasher=CHEAP)
    hot_desk.register_desktop("d1", "xvnc")
    hot_desk.add_user("alice", "right-secret", "admin", desktop="d1")
    hot_desk.terminal_connected("t1", TerminalInfo())
    hot_desk.login("t1", "alice", "wrong")
    actions = [e.action for b in (pairing_codes, hot_desk) for e in b.store.list_audit()]
    assert "login-failed" in actions and "pair-code-failed" in actions
    login = value("thinserve_login_failures_total", outcome="failed")
    pairing = value("thinserve_pairing_code_failures_total", outcome="failed")
    for action in actions:
        metrics.audited(action)
    assert value("thinserve_login_failures_total", outcome="failed") - login == 1
    assert value("thinserve_pairing_code_failures_total", outcome="failed") - pairing == 1


def test_dashboard_login_failures_count_and_other_actions_do_not() -> None:
    failures = value("thinserve_dashboard_login_failures_total")
    logins = value("thinserve_login_failures_total", outcome="failed")
    for action in ("admin-login-failed", "admin-login", "login", "pair", "unknown-action"):
        metrics.audited(action)
    assert value("thinserve_dashboard_login_failures_total") - failures == 1
    assert value("thinserve_login_failures_total", outcome="failed") == logins


# -- terminals by state, read from a hub --------------------------------------------------------
class Viewer:
    """A terminal on a string transport, connected to the hub's session."""

    def __init__(self, hub: Hub, host: str) -> None:
        self.proto = RFBServerProtocol(ServerOptions(), hub.new_session())
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 5000))
        self.proto.makeConnection(self.transport)
        self.client = ClientConnection()
        self.pump()

    def pump(self) -> None:
        pump(End(self._written, self.proto.dataReceived), End(self.client.data_to_send, self._read))

    def _written(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def _read(self, data: bytes) -> None:
        self.client.receive_data(data)

    def close(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics's text, parsed as Prometheus parses it."""
    request = DummyRequest([b""])
    body = metrics.MetricsResource().render(request)
    assert isinstance(body, bytes)
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_terminals_sessions_and_desktops_by_state(unbound: None) -> None:
    broker = Broker(SqliteStore(), BrokerConfig(), hasher=CHEAP)
    for name in ("d1", "d2"):
        broker.register_desktop(name, "xvnc")
    broker.desktop_state("d2", DesktopState.CRASHED, failure="no disk")
    hub = Hub(
        broker, {"d1": Mirror("d1"), "d2": Mirror("d2")}, reactor, address_subnets=("10.0.0.0/8",)
    )
    viewers = [Viewer(hub, f"10.0.0.{n}") for n in (1, 2, 3)]
    try:
        assert sorted(hub.terminals) == ["viewer-10.0.0.1", "viewer-10.0.0.2", "viewer-10.0.0.3"]
        hub.pair("viewer-10.0.0.1", "d1")
        metrics.bind(hub)
        samples = scrape()
        terminals = {
            dict(labels)["state"]: v
            for (name, labels), v in samples.items()
            if name == "thinserve_terminals"
        }
        assert terminals == {
            "desktop-control": 1,
            "desktop-view-only": 0,
            "pairing": 2,
            "login": 0,
            "waiting": 0,
            "starting": 0,
            "failed": 0,
            "other": 0,
        }
        assert samples[("thinserve_sessions", ())] == 1
        desktops = {
            dict(labels)["state"]: v
            for (name, labels), v in samples.items()
            if name == "thinserve_desktops"
        }
        assert desktops == {s.value: 0 for s in DesktopState} | {"stopped": 1, "crashed": 1}
        viewers[0].close()
        assert scrape()[("thinserve_terminals", (("state", "desktop-control"),))] == 0
        assert scrape()[("thinserve_sessions", ())] == 0
    finally:
        hub.stop()


def test_a_later_server_s_hub_stays_bound(unbound: None) -> None:
    first = Hub(Broker(SqliteStore(), hasher=CHEAP), {}, reactor)
    second = Hub(Broker(SqliteStore(), hasher=CHEAP), {}, reactor)
    metrics.bind(first)
    metrics.bind(second)
    metrics.unbind(first)  # the first server stops after the second started
    assert metrics.COLLECTOR.hub is second
    metrics.unbind(second)
    assert metrics.COLLECTOR.hub is None


def test_unbound_the_gauges_read_zero(unbound: None) -> None:
    samples = scrape()
    assert samples[("thinserve_sessions", ())] == 0
    assert samples[("thinserve_terminals", (("state", "pairing"),))] == 0


def test_metrics_resource_answers_prometheus_text() -> None:
    request = DummyRequest([b""])
    body = metrics.MetricsResource().render(request)
    assert isinstance(body, bytes)
    (content_type,) = request.responseHeaders.getRawHeaders(b"content-type")
    assert content_type == CONTENT_TYPE_LATEST.encode()
    assert content_type.startswith(b"text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {
        "thinserve_terminals",
        "thinserve_sessions",
        "thinserve_desktops",
        "thinserve_updates_sent",
        "thinserve_rectangles_sent",
        "thinserve_sent_bytes",
        "thinserve_encode_seconds",
        "thinserve_upstream_latency_seconds",
        "thinserve_desktop_starts",
        "thinserve_desktop_failures",
        "thinserve_login_failures",
        "thinserve_pairing_code_failures",
    } <= names


# -- the docs and the Grafana dashboard name what exists ------------------------------------------
DOCS = Path(__file__).resolve().parents[2] / "docs"


def exported() -> set[str]:
    """Every sample name the registry serves, or will once a label is seen."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in suffixes[family.type]
    }


def test_docs_list_every_metric() -> None:
    text = (DOCS / "metrics.md").read_text()
    for family in metrics.REGISTRY.collect():
        shown = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{shown}`" in text, f"docs/metrics.md does not list {shown}"


def test_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    used = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used.update(re.findall(r"thinserve_\w+", target["expr"]))
    assert used <= exported(), f"unknown metrics: {used - exported()}"
    wanted = {
        "thinserve_terminals",
        "thinserve_sessions",
        "thinserve_sent_bytes_total",
        "thinserve_encode_seconds_bucket",
        "thinserve_upstream_latency_seconds_bucket",
        "thinserve_desktop_starts_total",
        "thinserve_desktop_failures_total",
        "thinserve_login_failures_total",
        "thinserve_pairing_code_failures_total",
    }
    assert wanted <= used
