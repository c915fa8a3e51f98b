"""The browser terminal's web listener is bounded: deadlines, sizes, prompt closes.

A real thinserve web site (terminal_site over a real RFB server factory)
listens on loopback; the tests talk raw HTTP and WebSocket to it over TCP
and wait for the server to close, with generous upper bounds.  Deadlines
are set short here (``HTTPLimits``, ``WebSocketOptions``); the size limits
are the defaults of thinserve/web/limits.py.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import ssl, task

from protocols.rfb.client import ClientConnection, ServerInitReceived
from protocols.rfb.constants import Encoding
from protocols.rfb.limits import DEFAULT_LIMITS
from tests.support.aio import as_deferred
from tests.support.browser import browser_page, require_browser
from tests.support.need import need
from tests.support.rawpeer import RawPeer, connect_raw
from tests.support.server import start_thinserve
from tests.support.waiting import wait_until
from tests.support.webserve import RecordingSink, Served, listen, self_signed_tls
from tests.support.websocket import (
    WebSocketStream,
    client_frame,
    server_frames,
    split_response,
    upgrade_request,
)
from tests.unit.content import desktop_frame
from thinserve.broker import BrokerConfig
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.rfbserver import RFBServerFactory, ServerOptions
from thinserve.web import (
    HTTPLimits,
    NoVNCMissing,
    WebOptions,
    WebSocketOptions,
    find_novnc,
    terminal_site,
)
from thinserve.web.limits import (
    CLOSE_HANDSHAKE_TIMEOUT,
    LOG_BURST,
    MAX_CLIENT_RFB_MESSAGE,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    MAX_WS_MESSAGE,
    RefusalLog,
)

pytestmark = pytest.mark.integration

OPCODE_BINARY, OPCODE_CLOSE = 0x2, 0x8
MARGIN = 5.0  # seconds on top of a deadline before a test gives up waiting
DEADLINE = 1.0  # the short request deadline the HTTP tests use
CHANNEL_LOG = "thinserve.web.channel"
WEBSOCKET_LOG = "thinserve.web.websocket"


# -- a thinserve web listener on loopback ---------------------------------------------------


async def serve(
    http: HTTPLimits | None = None,
    websocket: WebSocketOptions | None = None,
    tls: ssl.CertificateOptions | None = None,
) -> Served:
    source = Source(desktop_frame(64, 48), name="test desktop")
    sink = RecordingSink()
    source.input = sink
    sessions: list[TerminalSession] = []

    def make_session() -> TerminalSession:
        session = TerminalSession(on_attach=lambda s: source)
        session.control = True
        sessions.append(session)
        return session

    options = WebOptions(websocket=websocket or WebSocketOptions(), http=http or HTTPLimits())
    site = terminal_site(RFBServerFactory(ServerOptions(), make_session), options)
    return Served(await listen(site, tls), source, sink, sessions)


def short(**changes: float) -> HTTPLimits:
    """Deadlines a test can wait out; sizes stay the defaults."""
    values = {"request_timeout": DEADLINE, "idle_timeout": 60.0, "close_grace": 1.0}
    return HTTPLimits(**(values | changes))


def refusals(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def peer_port(peer: RawPeer) -> int:
    return peer.transport.getHost().port


def responses(data: bytes) -> list[int]:
    """Status codes of the complete responses in ``data`` (Content-Length bodies)."""
    codes = []
    while b"\r\n\r\n" in data:
        status, headers, rest = split_response(data)
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            break
        codes.append(status)
        data = rest[length:]
    return codes


def get(path: str = "/", port: int = 0) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


async def trickle_until_closed(
    peer: RawPeer, data: bytes, interval: float, timeout: float
) -> bytes:
    """Send ``data`` one byte each ``interval`` s (then keep sending header
    bytes) until the server closes; fails when it is still open after ``timeout``."""

    def endless() -> Iterator[int]:
        yield from data
        while True:
            yield ord("a")

    byte = endless()
    sending = task.LoopingCall(lambda: peer.transport.write(bytes([next(byte)])))
    sending.start(interval)
    try:
        return await peer.wait_closed(timeout=timeout)
    finally:
        if sending.running:
            sending.stop()


# -- HTTP deadlines -------------------------------------------------------------------------
@pytest.mark.parametrize("later", [False, True], ids=["first request", "kept-alive request"])
@pytest_twisted.ensureDeferred
async def test_a_request_trickling_in_is_cut_off_at_its_deadline(
    later: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """One byte every 50 ms never completes the header: the server answers 408
    and closes once the deadline (from the connection, or from the first byte
    of a later request) has passed, however steadily bytes keep coming."""
    served = await serve(short())
    try:
        with caplog.at_level(logging.INFO, logger=CHANNEL_LOG):
            peer = await connect_raw(served.number)
            port = peer_port(peer)
            if later:
                peer.transport.write(get(port=served.number))
                await peer.wait_for(lambda d: responses(d) == [200])
            head = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{served.number}\r\nX-Slow: ".encode()
            data = await trickle_until_closed(peer, head, 0.05, timeout=DEADLINE + MARGIN)
        assert responses(data)[-1] == 408
        logged = refusals(caplog, CHANNEL_LOG)
        assert len(logged) == 1, logged
        assert f":{port}" in logged[0]
        assert f"request not complete within {DEADLINE:g} s" in logged[0]
        assert served.sessions == []
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    served = await serve(short())
    try:
        with caplog.at_level(logging.INFO, logger=CHANNEL_LOG):
            peer = await connect_raw(served.number)
            port = peer_port(peer)
            data = await peer.wait_closed(timeout=DEADLINE + MARGIN)
        assert data == b""
        logged = refusals(caplog, CHANNEL_LOG)
        assert len(logged) == 1 and f":{port}" in logged[0]
        assert f"no request within {DEADLINE:g} s" in logged[0]
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_kept_alive_connection_serves_requests_then_closes_when_idle() -> None:
    idle = 0.5
    served = await serve(short(request_timeout=60.0, idle_timeout=idle))
    try:
        peer = await connect_raw(served.number)
        peer.transport.write(get("/", served.number))
        await peer.wait_for(lambda d: responses(d) == [200])
        peer.transport.write(get("/terminal.js", served.number))
        await peer.wait_for(lambda d: responses(d) == [200, 200])
        data = await peer.wait_closed(timeout=idle + MARGIN)
        assert responses(data) == [200, 200]  # closed without a word: it was idle
    finally:
        await served.port.stopListening()


# -- HTTP sizes -----------------------------------------------------------------------------
def fields(count: int, total: int) -> str:
    """``count`` header fields whose lines add up to ``total`` bytes (no CRLFs)."""
    names = [f"X-Pad-{i:03d}: " for i in range(count)]
    room = total - sum(map(len, names))
    assert room >= count, "no room for a value in every field"
    sizes = [room // count + (1 if i < room % count else 0) for i in range(count)]
    return "".join(name + "v" * size + "\r\n" for name, size in zip(names, sizes, strict=True))


def at_the_limits(port: int, extra_bytes: int = 0, extra_fields: int = 0) -> bytes:
    """A request with exactly MAX_HEADERS fields and MAX_HEADER_BYTES bytes of
    request line and fields (plus the extras)."""
    line, host = "GET / HTTP/1.1", f"Host: 127.0.0.1:{port}"
    total = MAX_HEADER_BYTES + extra_bytes - len(line) - len(host)
    return f"{line}\r\n{host}\r\n{fields(MAX_HEADERS - 1 + extra_fields, total)}\r\n".encode()


@pytest_twisted.ensureDeferred
async def test_a_request_at_the_size_limits_is_served() -> None:
    served = await serve()
    try:
        peer = await connect_raw(served.number)
        peer.transport.write(at_the_limits(served.number))
        data = await peer.wait_for(lambda d: responses(d) == [200])
        assert split_response(data)[0] == 200
        peer.transport.loseConnection()
        peer = await connect_raw(served.number)
        target = "/?" + "q" * (MAX_REQUEST_LINE - len("GET /? HTTP/1.1"))
        peer.transport.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert responses(await peer.wait_for(lambda d: responses(d) != [])) == [200]
        peer.transport.loseConnection()
    finally:
        await served.port.stopListening()


OVERSIZED = {
    "one byte over the header bytes": (431, lambda port: at_the_limits(port, extra_bytes=1)),
    "one field too many": (431, lambda port: at_the_limits(port, extra_fields=1)),
    "one endless header line": (
        431,
        lambda port: b"GET / HTTP/1.1\r\nX-Big: " + b"b" * (2 * MAX_HEADER_BYTES),
    ),
    "a request line one byte too long": (
        414,
        lambda port: f"GET /{'u' * (MAX_REQUEST_LINE - 13)} HTTP/1.1\r\n\r\n".encode(),
    ),
    "an endless request line": (414, lambda port: b"GET /" + b"u" * (4 * MAX_HEADER_BYTES)),
    "a body": (
        413,
        lambda port: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    ),
    "a chunked body": (
        413,
        lambda port: (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        ),
    ),
    "a huge announced body": (
        413,
        lambda port: b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    ),
    "no request line": (400, lambda port: b"GARBAGE\r\n\r\n"),
}


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("case", list(OVERSIZED))
@pytest_twisted.ensureDeferred
async def test_an_oversized_or_unwanted_request_gets_a_short_refusal_and_a_close(
    case: str, tls: bool, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    status, request = OVERSIZED[case]
    served = await serve(short(), tls=self_signed_tls(tmp_path) if tls else None)
    try:
        with caplog.at_level(logging.INFO, logger=CHANNEL_LOG):
            peer = await connect_raw(served.number, tls)
            port = peer_port(peer)
            peer.transport.write(request(served.number))
            data = await peer.wait_closed(timeout=MARGIN)
        got, headers, body = split_response(data)
        assert got == status
        assert headers["connection"] == "close"
        assert len(body) == int(headers["content-length"]) < 200
        logged = refusals(caplog, CHANNEL_LOG)
        assert len(logged) == 1, logged
        assert f":{port}" in logged[0] and f"refused with {status}" in logged[0]
        assert served.sessions == []
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_flood_of_refusals_is_logged_in_a_few_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    served = await serve(short())
    flood = LOG_BURST + 20
    try:
        with caplog.at_level(logging.INFO, logger=CHANNEL_LOG):
            peers = [await connect_raw(served.number) for _ in range(flood)]
            for peer in peers:
                peer.transport.write(b"GARBAGE\r\n\r\n")
            for peer in peers:
                assert split_response(await peer.wait_closed(timeout=MARGIN))[0] == 400
        assert len(refusals(caplog, CHANNEL_LOG)) == LOG_BURST
    finally:
        await served.port.stopListening()


def test_refusals_over_the_budget_are_counted_in_the_next_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    logger = logging.getLogger("thinserve.test.refusals")
    refused = RefusalLog(logger, burst=2, window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=logger.name):
        for n in range(5):
            refused(logging.INFO, "refusal %d", n)
        now[0] = 10.0
        refused(logging.INFO, "refusal %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "refusal 0",
        "refusal 1",
        "3 more refusals were not logged (at most 2 per 10 s)",
        "refusal 5",
    ]


# -- WebSocket ------------------------------------------------------------------------------
def frame_header(opcode: int, declared: int) -> bytes:
    """A masked client frame header announcing ``declared`` payload bytes (none sent)."""
    return struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, declared) + os.urandom(4)


def close_code(data: bytes) -> int | None:
    for opcode, payload in server_frames(data.partition(b"\r\n\r\n")[2]):
        if opcode == OPCODE_CLOSE and len(payload) >= 2:
            return int.from_bytes(payload[:2], "big")
    return None


def frames(peer: RawPeer) -> list[tuple[int, bytes]]:
    return server_frames(bytes(peer.received).partition(b"\r\n\r\n")[2])


KEY = "thinserve-key.v1, binary"


@pytest.mark.parametrize("with_handshake", [False, True], ids=["after 101", "with the upgrade"])
@pytest.mark.parametrize("protocols", ["binary", KEY], ids=["binary", "key proof"])
@pytest_twisted.ensureDeferred
async def test_an_oversized_frame_closes_the_websocket_within_the_close_timeout(
    protocols: str, with_handshake: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame announcing one byte over the message bound: the server sends a
    close frame with the reason at once and, as this peer never answers it,
    drops the TCP connection within the close handshake timeout (no RFB byte
    and no session during a key proof)."""
    served = await serve(short())
    oversized = frame_header(OPCODE_BINARY, MAX_WS_MESSAGE + 1)
    try:
        with caplog.at_level(logging.WARNING, logger=WEBSOCKET_LOG):
            peer = await connect_raw(served.number)
            port = peer_port(peer)
            upgrade = upgrade_request(served.number, served.origin, protocols)
            if with_handshake:
                peer.transport.write(upgrade + oversized)
            else:
                peer.transport.write(upgrade)
                await peer.wait_for(lambda _: len(frames(peer)) >= 1)  # version or nonce
                peer.transport.write(oversized)
            data = await peer.wait_closed(timeout=CLOSE_HANDSHAKE_TIMEOUT + MARGIN)
        assert split_response(data)[0] == 101
        # 1009: message too big; 1008: the key proof (at most 666 bytes) failed first.
        expected = 1009 if protocols == "binary" else 1008
        assert close_code(data) == expected
        logged = refusals(caplog, WEBSOCKET_LOG)
        assert len(logged) == 1, logged
        assert f":{port}" in logged[0] and f"closing with {expected}" in logged[0]
        if protocols == "binary":
            assert len(served.sessions) == 1 and served.sessions[0].proto is None  # detached
        else:
            assert served.sessions == []
            assert not any(payload.startswith(b"RFB ") for _, payload in frames(peer))
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bytes_right_behind_the_upgrade_request_reach_rfb() -> None:
    """A client that sends its RFB version in the same packet as the upgrade
    request is answered: nothing is left behind in the HTTP layer."""
    served = await serve(short())
    try:
        peer = await connect_raw(served.number)
        upgrade = upgrade_request(served.number, served.origin, "binary")
        peer.transport.write(upgrade + client_frame(OPCODE_BINARY, b"RFB 003.008\n"))
        await peer.wait_for(lambda _: len(frames(peer)) >= 2, timeout=MARGIN)
        assert frames(peer)[0] == (OPCODE_BINARY, b"RFB 003.008\n")
        assert frames(peer)[1][0] == OPCODE_BINARY  # the security types, after our version
        peer.transport.loseConnection()
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_never_answers_pings_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ping = 0.3
    served = await serve(short(), WebSocketOptions(ping_interval=ping, ping_timeout=ping))
    try:
        with caplog.at_level(logging.INFO, logger=WEBSOCKET_LOG):
            peer = await connect_raw(served.number)
            port = peer_port(peer)
            peer.transport.write(upgrade_request(served.number, served.origin, "binary"))
            data = await peer.wait_closed(timeout=2 * ping + MARGIN)
        assert split_response(data)[0] == 101
        assert any(opcode == 0x9 for opcode, _ in frames(peer))  # it was pinged
        logged = refusals(caplog, WEBSOCKET_LOG)
        assert any("no answer to a ping" in m and f":{port}" in m for m in logged)
        assert served.sessions[0].proto is None
    finally:
        await served.port.stopListening()


def masked_frame(payload: bytes) -> bytes:
    """client_frame for large payloads: masked with numpy."""
    mask = os.urandom(4)
    data = np.frombuffer(payload, np.uint8)
    key = np.resize(np.frombuffer(mask, np.uint8), data.size)
    head = struct.pack("!BBQ", 0x80 | OPCODE_BINARY, 0x80 | 127, len(payload))
    return head + mask + (data ^ key).tobytes()


@pytest_twisted.ensureDeferred
async def test_the_largest_clipboard_fits_in_one_message() -> None:
    """The message bound is above the largest RFB message a terminal sends: a
    ClientCutText with the largest clipboard the RFB core takes, in one frame."""
    served = await serve(short())
    text = (b"0123456789abcdef" * (DEFAULT_LIMITS.max_cut_text // 16 + 1))[
        : DEFAULT_LIMITS.max_cut_text
    ]
    message = struct.pack(">BxxxI", 6, len(text)) + text
    assert len(message) == MAX_CLIENT_RFB_MESSAGE <= MAX_WS_MESSAGE
    try:
        peer = await connect_raw(served.number)
        peer.transport.write(upgrade_request(served.number, served.origin, "binary"))
        stream = WebSocketStream(peer)
        client = ClientConnection()
        initialised = False
        while not initialised:
            for _, payload in await stream.next_frames(timeout=MARGIN):
                for event in client.receive_data(payload):
                    if isinstance(event, ServerInitReceived):
                        client.set_encodings([Encoding.RAW])
                        initialised = True
            stream.send(client.data_to_send())
        peer.transport.write(masked_frame(message))

        async def pasted() -> bool:
            return bool(served.sink.clipboard_texts) or peer.closed.called

        await wait_until(pasted, 30, "the pasted text (or the connection's end)")
        assert not peer.closed.called, "the server closed the connection"
        assert served.sink.clipboard_texts == [text.decode("latin-1")]
        assert served.sessions[0].proto is not None
        peer.transport.loseConnection()
    finally:
        await served.port.stopListening()


# -- the real server and a real browser -----------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_thinserve_serves_its_browser_terminal_with_the_bounds() -> None:
    """The web listener thinserve itself opens refuses oversized headers too."""
    try:
        find_novnc(WebOptions())
    except NoVNCMissing as exc:
        need(False, str(exc))
    ts = await start_thinserve([], broker=BrokerConfig(), web=True)
    try:
        number = ts.port_numbers[1]
        peer = await connect_raw(number)
        peer.transport.write(at_the_limits(number, extra_fields=1))
        assert split_response(await peer.wait_closed(timeout=MARGIN))[0] == 431
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_a_browser_terminal_still_connects_and_proves_its_key(tmp_path: Path) -> None:
    """Short deadlines and idle closes between the page's requests do not get in
    the way of a real page: it loads, proves its key and connects."""
    require_browser()
    served = await serve(short(request_timeout=5.0, idle_timeout=2.0))

    async def scenario() -> None:
        async with browser_page(tmp_path / "profile") as page:
            await page.goto(f"{served.origin}/?resize=off&reconnect=0")
            await page.wait_for_selector("body[data-state=connected]", timeout=15_000)
            assert served.sessions[-1].proto.proven_key is not None

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()
