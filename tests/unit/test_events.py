"""The dashboard's event stream over a real twisted.web channel, on a test clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import resource

from protocols.rfb.encodings import Rect
from tests.unit.test_thumbnails import HubParts, InlineRunner, blocks, draw, mirror_showing
from thinserve.dashboard.events import KEEPALIVE, MIN_GAP, STALL_LIMIT, EventsResource
from thinserve.dashboard.thumbnails import WATCH_WINDOW, Thumbnails
from thinserve.hub import Hub
from thinserve.web.channel import BoundedHTTPChannel, BoundedSite
from thinserve.web.limits import HTTPLimits

REQUEST = b"GET /api/v1/events HTTP/1.1\r\nHost: dashboard\r\n\r\n"


@dataclass
class Stream:
    """One client connection: what the server wrote, read as HTTP and then as SSE."""

    channel: BoundedHTTPChannel
    transport: StringTransport
    read_to: int = 0

    def head_and_body(self) -> tuple[str, bytes]:
        head, _, chunked = self.transport.value().partition(b"\r\n\r\n")
        return head.decode(), dechunk(chunked)

    def events(self) -> list[dict[str, Any]]:
        """Every event so far: {"event": ..., "data": ...} or {"comment": ...}."""
        return parse_sse(self.head_and_body()[1].decode())

    def new_events(self) -> list[dict[str, Any]]:
        events = self.events()
        fresh, self.read_to = events[self.read_to :], len(events)
        return fresh

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionError("closed by the client")))


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, as far as it has arrived."""
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Server-Sent Events as the browser's EventSource reads them (blocks end with a blank line)."""
    events: list[dict[str, Any]] = []
    blocks_, _, _unfinished = text.rpartition("\n\n")
    for block in blocks_.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                fields["data"] = json.loads(value)
            elif name:
                fields[name] = value
            else:
                fields["comment"] = value
        events.append(fields)
    return events


@dataclass
class Setup:
    clock: task.Clock = field(default_factory=task.Clock)
    hub: HubParts = field(default_factory=HubParts)
    max_clients: int = 50

    def __post_init__(self) -> None:
        self.clock.advance(1000.0)
        self.thumbs = Thumbnails(cast(Hub, self.hub), self.clock, InlineRunner(self.clock))
        self.thumbs.start()
        self.events = EventsResource(
            cast(Hub, self.hub), self.thumbs, self.clock, max_clients=self.max_clients
        )
        v1 = resource.Resource()
        v1.putChild(b"events", self.events)
        api = resource.Resource()
        api.putChild(b"v1", v1)
        root = resource.Resource()
        root.putChild(b"api", api)
        self.site = BoundedSite(root, HTTPLimits(response_timeout=60.0))
        self.site.reactor = self.clock  # type: ignore[assignment]

    def connect(self) -> Stream:
        channel = cast(
            BoundedHTTPChannel, self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        )
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        channel.dataReceived(REQUEST)
        return Stream(channel, transport)

    def hub_changed(self) -> None:
        for callback in list(self.hub.on_change):
            cast(Callable[[], None], callback)()


def test_a_stream_opens_with_the_current_state() -> None:
    setup = Setup()
    setup.hub.mirrors["d1"] = mirror_showing("d1", blocks(64, 48, 1))
    stream = setup.connect()
    head, _ = stream.head_and_body()
    assert head.startswith("HTTP/1.1 200")
    assert "Content-Type: text/event-stream; charset=utf-8" in head
    assert "Cache-Control: no-cache" in head
    first, second = stream.new_events()
    assert first == {"retry": "3000"}
    assert second["event"] == "changed"
    # the client's arrival started the encoding (done at once here)
    version = setup.thumbs.versions()["desktop/d1"]
    # a new picture sends an event, but the lists' revision stays
    assert second["data"] == {"revision": 0, "thumbnails": {"desktop/d1": version}}
    setup.clock.advance(MIN_GAP)
    assert [e["data"]["revision"] for e in stream.new_events()] == [0]


def test_changes_are_coalesced_to_four_events_a_second() -> None:
    setup = Setup()
    stream = setup.connect()
    stream.new_events()
    for _ in range(100):  # a burst: one event
        setup.hub_changed()
    setup.clock.advance(0)
    assert [e["data"]["revision"] for e in stream.new_events()] == [100]
    for _ in range(200):  # a change every 10 ms for 2 s
        setup.hub_changed()
        setup.clock.advance(0.01)
    setup.clock.advance(MIN_GAP)
    events = stream.new_events()
    assert 2 / MIN_GAP - 1 <= len(events) <= 2 / MIN_GAP + 1
    assert events[-1]["data"]["revision"] == 300
    revisions = [e["data"]["revision"] for e in events]
    assert revisions == sorted(set(revisions))
    setup.clock.advance(10)
    assert stream.new_events() == []  # nothing changed: nothing sent


def test_a_new_thumbnail_is_an_event_with_its_version() -> None:
    setup = Setup()
    mirror = setup.hub.mirrors["d1"] = mirror_showing("d1", blocks(64, 48, 1))
    stream = setup.connect()
    setup.clock.advance(1)
    old = setup.thumbs.versions()["desktop/d1"]
    stream.new_events()
    draw(mirror, blocks(64, 48, 2), Rect(0, 0, 64, 48))
    setup.clock.advance(1)
    (event,) = stream.new_events()
    new = event["data"]["thumbnails"]["desktop/d1"]
    assert new > old and new == setup.thumbs.versions()["desktop/d1"]


def test_a_stream_outlives_the_response_deadline_with_keepalives() -> None:
    setup = Setup()
    stream = setup.connect()
    stream.new_events()
    for _ in range(8):  # 2 minutes: twice the site's response deadline
        setup.clock.advance(KEEPALIVE)
    assert not stream.transport.disconnecting
    assert stream.new_events() == [{"comment": "keepalive"}] * 8
    setup.hub_changed()
    setup.clock.advance(MIN_GAP)
    assert stream.new_events()[0]["data"]["revision"] == 1


def test_a_client_that_stops_reading_gets_nothing_then_is_dropped() -> None:
    setup = Setup()
    stream = setup.connect()
    stream.new_events()
    stream.channel.pauseProducing()  # what the transport does when its buffer is full
    for _ in range(10):
        setup.hub_changed()
        setup.clock.advance(1)
    assert stream.new_events() == []
    stream.channel.resumeProducing()  # it read again: the newest state, once
    assert [e["data"]["revision"] for e in stream.new_events()] == [10]

    stream.channel.pauseProducing()
    setup.clock.advance(STALL_LIMIT + KEEPALIVE)
    assert stream.transport.disconnected  # aborted, not waiting for a flush
    stream.close()
    assert setup.events.clients == []


def test_clients_are_bounded_and_leaving_stops_the_watch() -> None:
    setup = Setup(max_clients=2)
    streams = [setup.connect(), setup.connect()]
    refused = setup.connect()
    head, body = refused.transport.value().partition(b"\r\n\r\n")[::2]
    assert head.startswith(b"HTTP/1.1 503")
    answer = json.loads(dechunk(body) if b"Transfer-Encoding: chunked" in head else body)
    assert answer["code"] == "rate_limited" and answer["retry_after"] > 0 and answer["hint"]
    assert b"Retry-After: " in head
    assert setup.thumbs.watched
    for stream in [*streams, refused]:
        stream.close()
    assert setup.events.clients == []
    setup.clock.advance(WATCH_WINDOW)
    assert not setup.thumbs.watched
    assert setup.clock.getDelayedCalls() == []  # no keepalive, no tick


def test_close_ends_every_stream_and_stops_listening() -> None:
    setup = Setup()
    stream = setup.connect()
    setup.events.close()
    assert stream.transport.value().endswith(b"0\r\n\r\n")  # the chunked body's end
    assert setup.events.changed not in setup.hub.on_change and setup.thumbs.on_change == []
    stream.close()
    setup.clock.advance(1)
    assert setup.clock.getDelayedCalls() == []
