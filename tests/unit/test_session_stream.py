"""A terminal session sends large updates slice by slice, on turns of its clock."""

from __future__ import annotations

import time

import numpy as np
from twisted.internet import task
from twisted.internet.testing import StringTransport

from protocols.rfb import messages as m
from protocols.rfb.client import ClientConnection, UpdateDone
from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect
from protocols.rfb.updates import BAND_ROWS, FIRST_WIDTH
from tests.support.pump import End, pump
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.relay.upstream import Mirror
from thinserve.rfbserver import RFBServerProtocol, ServerOptions

from .content import desktop_frame
from .test_shared_work import jobs_of

W, H = 1280, 1024  # a full update is several bands


class TurnClock(task.Clock):
    """A clock whose turn runs only what was due when the turn began, like a reactor's."""

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class Wire:
    """A session behind thinserve's server protocol, and a client, over a string transport."""

    def __init__(self, source: Source) -> None:
        self.clock = TurnClock()
        self.source = source
        self.session = TerminalSession(lambda s: self.source, clock=self.clock)
        self.session.control = True
        self.proto = RFBServerProtocol(ServerOptions(), self.session)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.client = ClientConnection()
        self.events: list[object] = []
        self.pump()
        self.client.set_encodings([Encoding.ZRLE, Encoding.COPYRECT])
        self.pump()

    def pump(self) -> None:
        """Exchange bytes until both sides are quiet (the clock does not move)."""
        server = End(self._written, self.proto.dataReceived)
        pump(server, End(self.client.data_to_send, self._to_client))

    def _written(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def _to_client(self, data: bytes) -> None:
        self.events += self.client.receive_data(data)

    def turn(self) -> None:
        """One turn of the reactor: the next slice goes."""
        self.clock.turn()
        self.pump()

    def take(self, kind: type) -> list:
        found = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return found


def full_request(wire: Wire) -> None:
    wire.client.request_update(incremental=False)
    wire.pump()


def test_full_update_goes_out_band_by_band_and_arrives_whole() -> None:
    frame = desktop_frame(W, H, seed=4)
    wire = Wire(Source(frame.copy(), "desk"))
    full_request(wire)
    assert wire.session.stream is not None  # one slice went; the rest waits for a turn
    assert not wire.take(UpdateDone)
    shown = wire.client.framebuffer
    first_piece = shown[:BAND_ROWS, :FIRST_WIDTH]  # the first band's first tiles, alone
    np.testing.assert_array_equal(first_piece, frame[:BAND_ROWS, :FIRST_WIDTH])
    assert not np.array_equal(shown[:BAND_ROWS, FIRST_WIDTH:], frame[:BAND_ROWS, FIRST_WIDTH:])
    assert not np.array_equal(shown[-64:], frame[-64:])
    turns = 0
    while wire.session.stream is not None:
        wire.turn()
        turns += 1
    assert turns >= 3
    (done,) = wire.take(UpdateDone)
    np.testing.assert_array_equal(wire.client.framebuffer, frame)
    assert wire.session.updates_sent == 1
    assert done.rects


def test_messages_during_a_streamed_update_come_after_it() -> None:
    frame = desktop_frame(W, H, seed=5)
    wire = Wire(Source(frame.copy(), "desk"))
    full_request(wire)
    wire.session.on_bell()
    wire.session.on_clipboard("sent while the update was going out")
    wire.pump()
    assert not wire.take(m.Bell)
    while wire.session.stream is not None:
        wire.turn()
    kinds = [type(e) for e in wire.events]
    assert kinds.index(UpdateDone) < kinds.index(m.Bell)
    np.testing.assert_array_equal(wire.client.framebuffer, frame)


def test_desktop_changes_during_a_streamed_update_reach_the_terminal() -> None:
    frame = desktop_frame(W, H, seed=6)
    source = Source(frame.copy(), "desk")
    wire = Wire(source)
    full_request(wire)
    changed = desktop_frame(W, H, seed=9)
    source.set_frame(changed)  # the whole desktop changes mid-update
    while wire.session.stream is not None:
        wire.turn()
    wire.client.request_update(incremental=True)
    wire.pump()
    while wire.session.stream is not None:
        wire.turn()
    np.testing.assert_array_equal(wire.client.framebuffer, changed)


def test_switching_desktops_mid_update_sends_no_more_of_the_old_one() -> None:
    secret = desktop_frame(W, H, seed=7)
    wire = Wire(Source(secret.copy(), "first desktop"))
    full_request(wire)
    not_yet = wire.client.framebuffer != secret  # what the terminal has not seen
    assert not_yet.any()
    other = Source(np.full((H, W), 0x00336699, dtype=np.uint32), "second desktop")
    wire.session.show(other, control=False)
    wire.pump()
    while wire.session.stream is not None:
        wire.turn()
    assert len(wire.take(UpdateDone)) == 1
    assert not wire.client.framebuffer[not_yet].any()  # black, never the old desktop
    wire.client.request_update(incremental=True)
    wire.pump()
    while wire.session.stream is not None:
        wire.turn()
    assert (wire.client.framebuffer == 0x00336699).all()


def test_terminal_leaving_mid_update_stops_the_stream() -> None:
    wire = Wire(Source(desktop_frame(W, H, seed=8), "desk"))
    full_request(wire)
    assert wire.clock.getDelayedCalls()
    wire.proto.connectionLost(None)  # type: ignore[arg-type]
    assert wire.session.stream is None
    assert not [c for c in wire.clock.getDelayedCalls() if c.active()]


class HalfwaySource(Source):
    """A source whose own update can be caught half-applied."""

    halfway = False

    @property
    def settled(self) -> bool:
        return not self.halfway


def test_no_update_is_cut_from_a_source_halfway_through_its_own() -> None:
    frame = np.zeros((H, W), dtype=np.uint32)
    source = HalfwaySource(frame, "desk")
    wire = Wire(source)
    full_request(wire)
    while wire.session.stream is not None:
        wire.turn()
    wire.take(UpdateDone)
    wire.client.request_update(incremental=True)
    wire.pump()
    source.halfway = True
    source.framebuffer[:64] = 0x00FF0000  # the first half of the source's update
    source.damaged([Rect(0, 0, W, 64)])
    wire.pump()
    assert not wire.take(UpdateDone)  # nothing goes while the source is halfway
    source.framebuffer[64:128] = 0x0000FF00
    source.halfway = False
    source.damaged([Rect(0, 64, W, 64)])
    wire.pump()
    assert len(wire.take(UpdateDone)) == 1
    np.testing.assert_array_equal(wire.client.framebuffer, source.framebuffer)


def test_terminals_watching_one_desktop_share_its_encoding_work() -> None:
    frame = desktop_frame(W, H, seed=12)
    source = Source(frame.copy(), "desk")
    wires = [Wire(source), Wire(source)]
    wires[1].clock = wires[1].session.clock = wires[0].clock  # one reactor

    def until_sent() -> None:
        while any(w.session.stream is not None for w in wires):
            wires[0].clock.turn()
            for wire in wires:
                wire.pump()

    for wire in wires:
        full_request(wire)
    jobs = [jobs_of(w.session.stream) for w in wires]
    assert jobs[0] and all(a is b for a, b in zip(jobs[0], jobs[1], strict=True))
    until_sent()
    changed = desktop_frame(W, H, seed=13)
    source.set_frame(changed)  # a new picture: none of the old work is taken for it
    for wire in wires:
        wire.client.request_update(incremental=True)
        wire.pump()
    fresh = [jobs_of(w.session.stream) for w in wires]
    assert fresh[0] and all(a is b for a, b in zip(fresh[0], fresh[1], strict=True))
    assert not set(map(id, fresh[0])) & set(map(id, jobs[0]))
    until_sent()
    for wire in wires:
        np.testing.assert_array_equal(wire.client.framebuffer, changed)


def test_only_a_terminal_alone_on_a_fast_link_trades_bytes_for_time() -> None:
    """Tight's quick zlib (``RectEncoder.prefer_speed``) is worth it for one
    terminal; with two watching, each would be sent the extra bytes."""
    source = Source(desktop_frame(W, H, seed=14), "desk")
    alone = Wire(source)
    alone.client.set_encodings([Encoding.TIGHT, Encoding.COPYRECT])
    assert alone.session.proto is not None
    encoder = alone.session.proto.conn.rect_encoder
    full_request(alone)
    assert encoder.quick  # the string transport's link: not measured, taken as fast
    while alone.session.stream is not None:
        alone.turn()
    other = Wire(source)
    other.clock = other.session.clock = alone.clock  # one reactor
    for wire in (alone, other):
        wire.client.set_encodings([Encoding.TIGHT, Encoding.COPYRECT])
        full_request(wire)
    assert not encoder.quick
    assert other.session.proto is not None
    assert not other.session.proto.conn.rect_encoder.quick
    while any(w.session.stream is not None for w in (alone, other)):
        alone.clock.turn()
        alone.pump()
        other.pump()
    for wire in (alone, other):
        np.testing.assert_array_equal(wire.client.framebuffer, source.framebuffer)
    other.session.detach()
    full_request(alone)
    assert encoder.quick  # alone again
    while alone.session.stream is not None:
        alone.turn()
    alone.session.link.policy.levels.lower(500, time.monotonic())  # the link is slow
    full_request(alone)
    assert not encoder.quick


def test_a_change_the_desktop_sent_in_pieces_goes_out_cut_once() -> None:
    """A desktop's VNC server sends a large change in pieces of 64K pixels
    (51 rows at 1280 wide).  The terminal gets the change cut where its own
    encoding cuts it, not also at every edge of the desktop's pieces."""
    mirror = Mirror("desk")
    mirror.set_frame(desktop_frame(W, H, seed=11))
    wire = Wire(mirror)
    full_request(wire)
    while wire.session.stream is not None:
        wire.turn()
    wire.take(UpdateDone)
    changed = desktop_frame(W, H, seed=12)
    mirror.writable()[:] = changed
    rows = 65536 // W
    pieces = [Rect(0, y, W, min(rows, H - y)) for y in range(0, H, rows)]
    mirror.updated([], pieces)
    wire.client.request_update(incremental=True)
    wire.pump()
    while wire.session.stream is not None:
        wire.turn()
    (done,) = wire.take(UpdateDone)
    np.testing.assert_array_equal(wire.client.framebuffer, changed)
    assert sum(r.area for r in done.rects) == W * H
    assert len(done.rects) < len(pieces)
    assert not {r.y + r.h for r in done.rects} & {p.y + p.h for p in pieces[:-1]}
