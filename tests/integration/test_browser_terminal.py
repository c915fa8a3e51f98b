"""The browser terminal: the served page, RFB over WebSocket, and real Chromium.

The handshake and framing tests talk raw HTTP/WebSocket on a TCP connection;
the browser tests drive headless Chromium (Debian's) with Playwright against
the page thinserve serves, with noVNC rendering into its canvas.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted

from protocols.rfb.client import ClientConnection, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding
from tests.support.aio import as_deferred
from tests.support.backpressure import fix_socket_buffers, stalled
from tests.support.browser import browser_page, canvas_pixels, require_browser
from tests.support.rawpeer import RawPeer, connect_raw
from tests.support.reactor import transport_of
from tests.support.waiting import wait_until
from tests.support.webserve import Served, listen, plain_site, self_signed_tls, serve_frame
from tests.support.websocket import (
    WebSocketStream,
    client_frame,
    head_complete,
    server_frames,
    split_response,
    upgrade_request,
)
from tests.unit.content import desktop_frame, noise_frame
from thinserve.web import WebSocketOptions, origin_allowed

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 640, 480
OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE = 0x1, 0x2, 0x8
BARRIER_KEY = 0xFFE3  # Control_L: a key event the server forwards, to show it read up to there


def frame() -> np.ndarray:
    return desktop_frame(WIDTH, HEIGHT)


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    peer = await connect_raw(port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    transport_of(peer).write(request.encode())
    return split_response(await peer.wait_closed())


async def handshake(
    port: int, origin: str | None, protocols: str | None = "binary", tls: bool = False
) -> tuple[RawPeer, int, dict[str, str]]:
    peer = await connect_raw(port, tls)
    transport_of(peer).write(upgrade_request(port, origin, protocols))
    status, headers, _ = split_response(await peer.wait_for(head_complete))
    return peer, status, headers


def close_code(data: bytes) -> int | None:
    for opcode, payload in server_frames(data):
        if opcode == OPCODE_CLOSE and len(payload) >= 2:
            return int.from_bytes(payload[:2], "big")
    return None


# -- the page -----
@pytest_twisted.ensureDeferred
async def test_page_is_served_with_a_strict_policy_and_no_caching() -> None:
    served = await serve_frame(frame())
    try:
        status, headers, body = await http_get(served.number, "/")
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert b'src="terminal.js"' in body
        assert headers["cache-control"] == "no-store"
        policy = dict(
            part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";")
        )
        assert policy["default-src"] == "'none'"
        for directive in ("script-src", "style-src", "connect-src"):
            assert policy[directive] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        assert headers["x-content-type-options"] == "nosniff"

        status, headers, body = await http_get(served.number, "/novnc/core/rfb.js")
        assert status == 200
        assert headers["content-type"].startswith("text/javascript")
        assert b"export default class RFB" in body
        assert "content-security-policy" in headers
    finally:
        await served.port.stopListening()


@pytest.mark.parametrize(
    "path", ["/novnc/core/", "/novnc/", "/novnc/core/.hidden", "/package.json", "/node_modules/"]
)
@pytest_twisted.ensureDeferred
async def test_nothing_but_the_terminal_files_is_served(path: str) -> None:
    served = await serve_frame(frame())
    try:
        status, _, _ = await http_get(served.number, path)
        assert status == 404
    finally:
        await served.port.stopListening()


# -- the WebSocket handshake -----
@pytest.mark.parametrize("protocols", ["binary", None, "base64, binary"])
@pytest_twisted.ensureDeferred
async def test_same_origin_handshake_carries_rfb_in_binary_messages(protocols: str | None) -> None:
    served = await serve_frame(frame())
    try:
        peer, status, headers = await handshake(served.number, served.origin, protocols)
        assert status == 101
        assert headers.get("sec-websocket-protocol") == ("binary" if protocols else None)
        data = await peer.wait_for(lambda d: len(server_frames(d.partition(b"\r\n\r\n")[2])) > 0)
        frames = server_frames(data.partition(b"\r\n\r\n")[2])
        assert frames[0] == (OPCODE_BINARY, b"RFB 003.008\n")
        assert len(served.sessions) == 1
        transport_of(peer).loseConnection()
    finally:
        await served.port.stopListening()


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://127.0.0.1:1",  # same host, another port: another origin
        "https://127.0.0.1:{port}",  # another scheme
        "null",
        None,
    ],
)
@pytest_twisted.ensureDeferred
async def test_foreign_origin_is_refused_before_any_session(
    origin: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve_frame(frame())
    try:
        origin = origin.format(port=served.number) if origin else origin
        with caplog.at_level(logging.WARNING, logger="thinserve.web.websocket"):
            peer, status, _ = await handshake(served.number, origin)
            await peer.wait_closed()
        assert status == 403
        assert served.sessions == []
        assert any("refused" in r.getMessage() for r in caplog.records)
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_configured_origin_is_accepted() -> None:
    options = WebSocketOptions(same_origin=False, allowed_origins=("https://Term.Example.org/",))
    served = await serve_frame(frame(), options)
    try:
        peer, status, _ = await handshake(served.number, "https://term.example.org")
        assert status == 101
        transport_of(peer).loseConnection()
        _, status, _ = await handshake(served.number, served.origin)
        assert status == 403  # the page's own origin was switched off
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_listener_expects_https_origins(tmp_path: Path) -> None:
    served = await serve_frame(frame(), tls=self_signed_tls(tmp_path))
    try:
        peer, status, _ = await handshake(
            served.number, f"https://127.0.0.1:{served.number}", tls=True
        )
        assert status == 101
        await peer.wait_for(lambda d: b"RFB 003.008" in d)
        transport_of(peer).loseConnection()
        peer, status, _ = await handshake(served.number, served.origin, tls=True)  # http://
        assert status == 403
    finally:
        await served.port.stopListening()


def test_origin_rules() -> None:
    opts = WebSocketOptions()
    assert origin_allowed("http://host:8080", "host:8080", False, opts)
    assert origin_allowed("HTTPS://Host", "host", True, opts)
    assert not origin_allowed("http://host", "host", True, opts)  # page over http, socket wss
    assert not origin_allowed("http://host:8080", "other:8080", False, opts)
    assert not origin_allowed("http://host", None, False, opts)
    assert not origin_allowed("", "host", False, opts)


@pytest.mark.parametrize("protocols", ["base64", "chat"])
@pytest_twisted.ensureDeferred
async def test_other_subprotocols_are_refused(protocols: str) -> None:
    served = await serve_frame(frame())
    try:
        peer, status, _ = await handshake(served.number, served.origin, protocols)
        await peer.wait_closed()
        assert status == 406
        assert served.sessions == []
    finally:
        await served.port.stopListening()


# -- bounded messages -----
async def open_socket(served: Served) -> RawPeer:
    peer, status, _ = await handshake(served.number, served.origin)
    assert status == 101
    await peer.wait_for(lambda d: b"RFB 003.008" in d)
    return peer


@pytest_twisted.ensureDeferred
async def test_oversized_frame_closes_without_waiting_for_its_payload() -> None:
    limit = 4096
    served = await serve_frame(frame(), WebSocketOptions(max_message_size=limit))
    try:
        peer = await open_socket(served)
        # Claim 100 MB, send only the header: the server must not wait to buffer it.
        transport_of(peer).write(client_frame(OPCODE_BINARY, b"", declared=100_000_000))
        data = await peer.wait_closed()
        assert close_code(data.partition(b"\r\n\r\n")[2]) == 1009  # message too big
        assert served.sessions[0].proto is None  # the session was detached
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_message_split_over_frames_is_bounded_too() -> None:
    limit = 4096
    served = await serve_frame(frame(), WebSocketOptions(max_message_size=limit))
    try:
        peer = await open_socket(served)
        piece = b"\0" * 3000
        first = bytearray(client_frame(OPCODE_BINARY, piece))
        first[0] &= 0x7F  # not the final fragment
        transport_of(peer).write(bytes(first) + client_frame(0x0, piece))  # continuation
        data = await peer.wait_closed()
        assert close_code(data.partition(b"\r\n\r\n")[2]) == 1009
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_text_messages_are_refused() -> None:
    served = await serve_frame(frame())
    try:
        peer = await open_socket(served)
        transport_of(peer).write(client_frame(OPCODE_TEXT, b"RFB 003.008\n"))
        data = await peer.wait_closed()
        assert close_code(data.partition(b"\r\n\r\n")[2]) == 1003
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_rfb_client_over_raw_websocket_gets_the_frame_in_bounded_messages() -> None:
    limit = 4096
    expected = frame()
    served = await serve_frame(expected, WebSocketOptions(max_message_size=limit))
    try:
        peer, status, _ = await handshake(served.number, served.origin)
        assert status == 101
        stream = WebSocketStream(peer)
        client = ClientConnection()
        sizes: list[int] = []
        done = False
        while not done:
            for opcode, payload in await stream.next_frames(timeout=10):
                assert opcode == OPCODE_BINARY
                sizes.append(len(payload))
                for event in client.receive_data(payload):
                    if isinstance(event, ServerInitReceived):
                        client.set_encodings([Encoding.RAW])
                        client.request_update(incremental=False)
                    done = done or isinstance(event, UpdateDone)
            stream.send(client.data_to_send())
        assert client.name == "test desktop"
        assert np.array_equal(client.framebuffer, expected)
        assert max(sizes) == limit  # a raw frame is 1.2 MB: it went out in pieces
        assert sum(sizes) > WIDTH * HEIGHT * 4
        transport_of(peer).loseConnection()
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_browser_that_stops_reading_pauses_its_session() -> None:
    served = await serve_frame(noise_frame(WIDTH, HEIGHT))
    try:
        peer, status, _ = await handshake(served.number, served.origin)
        assert status == 101
        stream = WebSocketStream(peer)
        client = ClientConnection()
        while not any(isinstance(e, UpdateDone) for e in await rfb_events(stream, client)):
            pass
        session = served.sessions[0]
        proto = session.proto
        assert proto is not None
        server_socket = proto.transport  # the WebSocket framing, over TCP
        fix_socket_buffers(peer.transport, server_socket)
        transport_of(peer).pauseProducing()  # the browser stops reading
        keys_read = 0

        async def new_picture_and_request(seed: int) -> None:
            """A new picture and a request for it; returns once the server has read
            the request (a key event sent behind it has reached the desktop)."""
            nonlocal keys_read
            served.source.set_frame(noise_frame(WIDTH, HEIGHT, seed=seed))
            client.request_update(incremental=True)
            client.key_event(True, BARRIER_KEY)
            stream.send(client.data_to_send())
            keys_read += 1
            await wait_until(
                lambda: len(served.sink.keys) == keys_read, 10, "the server to read the request"
            )

        seeds = itertools.count(2)

        async def stalled_after_another_picture() -> bool:
            if stalled(proto.paused, server_socket):
                return True
            await new_picture_and_request(next(seeds))
            return False

        await wait_until(
            stalled_after_another_picture, 30, "the socket buffers to fill and pause the session"
        )
        sent_while_paused = session.updates_sent
        for _ in range(10):
            await new_picture_and_request(next(seeds))
        assert proto.paused
        assert session.updates_sent == sent_while_paused, (
            f"{session.updates_sent - sent_while_paused} updates went out to a browser "
            "that reads nothing"
        )  # nothing piles up in memory
        transport_of(peer).resumeProducing()
        await wait_until(
            lambda: not proto.paused and session.updates_sent > sent_while_paused,
            10,
            "the session to send again once the browser reads",
        )
        transport_of(peer).loseConnection()
    finally:
        await served.port.stopListening()


async def rfb_events(stream: WebSocketStream, client: ClientConnection) -> list[object]:
    """Feed the next server frames to ``client``; answer as a raw-only viewer."""
    events: list[object] = []
    for _, payload in await stream.next_frames(timeout=10):
        for event in client.receive_data(payload):
            if isinstance(event, ServerInitReceived):
                client.set_encodings([Encoding.RAW])
                client.request_update(incremental=False)
            events.append(event)
    stream.send(client.data_to_send())
    return events


# -- real Chromium -----
@pytest.fixture
def browser_profile(tmp_path: Path) -> Path:
    require_browser()
    return tmp_path / "chromium-profile"


async def open_terminal(page: Any, served: Served, query: str = "resize=off") -> None:
    await page.goto(served.url(query))
    await page.wait_for_selector("body[data-state=connected]", timeout=10_000)


@pytest_twisted.ensureDeferred
async def test_canvas_shows_the_framebuffer_pixel_for_pixel(browser_profile: Path) -> None:
    expected = frame()
    served = await serve_frame(expected)

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await open_terminal(page, served)
            shown = None

            async def matches() -> bool:
                nonlocal shown
                shown = await canvas_pixels(page)
                return shown is not None and np.array_equal(shown, expected)

            await wait_until(
                matches,
                10,
                lambda: f"the canvas to show the frame ({_difference(shown, expected)})",
            )
            assert await page.inner_text("#status") == "Connected to test desktop"
            assert page.console_errors == []

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()


def _difference(shown: np.ndarray | None, expected: np.ndarray) -> str:
    if shown is None:
        return "the canvas never showed an opaque picture"
    if shown.shape != expected.shape:
        return f"canvas is {shown.shape[1]}x{shown.shape[0]}"
    return f"{int((shown != expected).sum())} pixels differ"


@pytest_twisted.ensureDeferred
async def test_changes_on_the_desktop_reach_the_canvas(browser_profile: Path) -> None:
    first = frame()
    served = await serve_frame(first)
    second = first.copy()
    second[100:164, 200:328] = 0x00C03020
    second[400:, :64] = 0x0000FF00

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await open_terminal(page, served)

            async def shows(picture: np.ndarray) -> bool:
                shown = await canvas_pixels(page)
                return shown is not None and np.array_equal(shown, picture)

            await wait_until(lambda: shows(first), 10, "the canvas to show the first frame")
            served.source.set_frame(second)
            await wait_until(lambda: shows(second), 10, "the canvas to show the changed frame")

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()


XK = {
    "a": 0x61,
    "Z": 0x5A,
    "1": 0x31,
    "space": 0x20,
    "Return": 0xFF0D,
    "Escape": 0xFF1B,
    "Left": 0xFF51,
    "BackSpace": 0xFF08,
    "Control_L": 0xFFE3,
    "Shift_L": 0xFFE1,
    "c": 0x63,
    "A": 0x41,
    "F5": 0xFFC2,
}


@pytest_twisted.ensureDeferred
async def test_typed_keys_arrive_as_key_events(browser_profile: Path) -> None:
    served = await serve_frame(frame())
    taps = ["a", "Z", "1", "space", "Return", "Escape", "Left", "BackSpace", "F5"]
    expected = [(down, XK[name]) for name in taps for down in (True, False)]
    chords = [
        (True, XK["Control_L"]),
        (True, XK["c"]),
        (False, XK["c"]),
        (False, XK["Control_L"]),
        (True, XK["Shift_L"]),
        (True, XK["A"]),
        (False, XK["A"]),
        (False, XK["Shift_L"]),
    ]

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await open_terminal(page, served)
            await page.keyboard.type("aZ1 ")
            for key in ("Enter", "Escape", "ArrowLeft", "Backspace", "F5", "Control+c", "Shift+A"):
                await page.keyboard.press(key)

            async def all_arrived() -> bool:
                return len(served.sink.keys) >= len(expected) + len(chords)

            await wait_until(all_arrived, 10, lambda: f"every key (so far {served.sink.keys})")
            assert served.sink.keys == expected + chords

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_clicks_arrive_at_framebuffer_coordinates(browser_profile: Path) -> None:
    served = await serve_frame(frame())
    left, middle, right = 1, 2, 4

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await open_terminal(page, served)
            box = await page.locator("#screen canvas").bounding_box()
            assert (box["width"], box["height"]) == (WIDTH, HEIGHT)
            clicks = [(100, 50, "left", left), (639, 479, "right", right), (0, 0, "middle", middle)]
            for x, y, button, _ in clicks:
                await page.mouse.click(box["x"] + x + 0.5, box["y"] + y + 0.5, button=button)

            async def released_last() -> bool:
                """The last click's release has arrived after its press (a pointer
                at 0,0 before any click must not end the wait)."""
                events = served.sink.pointers
                return (middle, 0, 0) in events and (0, 0, 0) in events[
                    events.index((middle, 0, 0)) + 1 :
                ]

            await wait_until(released_last, 10, lambda: f"the clicks ({served.sink.pointers})")
            events = served.sink.pointers
            for x, y, _, mask in clicks:
                down = events.index((mask, x, y))
                assert (0, x, y) in events[down + 1 :], f"no release at {x},{y}"

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_page_from_another_origin_cannot_open_the_socket(
    browser_profile: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve_frame(frame())
    other = await listen(plain_site(b"<!doctype html><title>elsewhere</title>"))
    attempt = """
    (url) => new Promise((resolve) => {
      const ws = new WebSocket(url, ['binary']);
      let opened = false;
      ws.onopen = () => { opened = true; };
      ws.onclose = (event) => resolve({opened, code: event.code});
    })
    """

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await page.goto(f"http://127.0.0.1:{other.getHost().port}/")
            with caplog.at_level(logging.WARNING, logger="thinserve.web.websocket"):
                result = await page.evaluate(attempt, f"ws://127.0.0.1:{served.number}/websockify")
            assert result == {"opened": False, "code": 1006}
            assert served.sessions == []
            origin = f"http://127.0.0.1:{other.getHost().port}"
            assert any(origin in r.getMessage() for r in caplog.records)

            # The same request from the terminal's own page opens.
            await page.goto(served.url("resize=off&reconnect=0"))
            result = await page.evaluate(
                """(url) => new Promise((resolve) => {
                  const ws = new WebSocket(url, ['binary']);
                  ws.onopen = () => { ws.close(); resolve('open'); };
                  ws.onclose = () => resolve('closed');
                })""",
                f"ws://127.0.0.1:{served.number}/websockify",
            )
            assert result == "open"

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()
        await other.stopListening()


def smooth_frame(width: int, height: int) -> np.ndarray:
    """Continuous-tone content everywhere, the kind Tight sends as JPEG."""
    yy, xx = np.mgrid[0:height, 0:width]
    r = (128 + 100 * np.sin(xx / 23.0)).astype(np.uint32)
    g = (128 + 100 * np.cos(yy / 17.0)).astype(np.uint32)
    b = ((xx + yy) * 255 // (width + height)).astype(np.uint32)
    return (r << 16) | (g << 8) | b


def channels(words: np.ndarray) -> np.ndarray:
    return np.stack([(words >> shift) & 0xFF for shift in (16, 8, 0)]).astype(np.int16)


@pytest_twisted.ensureDeferred
async def test_photo_content_with_the_default_jpeg_quality_stays_close(
    browser_profile: Path,
) -> None:
    expected = smooth_frame(WIDTH, HEIGHT)
    served = await serve_frame(expected, lossless=False)

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await open_terminal(page, served)
            error = None

            async def close_enough() -> bool:
                nonlocal error
                shown = await canvas_pixels(page)
                if shown is None or shown.shape != expected.shape:
                    return False
                error = np.abs(channels(shown) - channels(expected))
                return float(error.mean()) < 2.5 and int(error.max()) <= 24

            await wait_until(
                close_enough,
                10,
                lambda: (
                    "the canvas to come close to the frame (mean, max error: "
                    f"{None if error is None else (float(error.mean()), int(error.max()))})"
                ),
            )
            assert page.console_errors == []

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_scaled_view_maps_clicks_back_to_the_desktop(browser_profile: Path) -> None:
    served = await serve_frame(frame())

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await page.set_viewport_size({"width": 400, "height": 340})
            await open_terminal(page, served, "resize=scale")
            box = await page.locator("#screen canvas").bounding_box()
            assert box["width"] < WIDTH and box["height"] < HEIGHT
            assert box["width"] / box["height"] == pytest.approx(WIDTH / HEIGHT, rel=0.02)
            await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

            async def clicked() -> bool:
                return any(b == 1 for b, _, _ in served.sink.pointers)

            await wait_until(clicked, 10, "the click on the desktop")
            _, x, y = next(p for p in served.sink.pointers if p[0] == 1)
            assert abs(x - WIDTH / 2) <= 2 and abs(y - HEIGHT / 2) <= 2

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_remote_resize_gives_the_terminal_the_window_size(browser_profile: Path) -> None:
    served = await serve_frame(frame())

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await open_terminal(page, served, "resize=remote")
            area = await page.locator("#screen").bounding_box()
            wanted = (int(area["width"]), int(area["height"]))

            async def resized() -> bool:
                shown = await canvas_pixels(page)
                return shown is not None and shown.shape == (wanted[1], wanted[0])

            await wait_until(resized, 10, f"a canvas of {wanted[0]}x{wanted[1]}")
            # The desktop refused to change (the sink said no), so the relay
            # scales it to the terminal's size instead.
            assert served.sink.sizes[-1] == wanted
            assert (served.sessions[0].width, served.sessions[0].height) == wanted

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_page_reconnects_after_the_connection_drops(browser_profile: Path) -> None:
    served = await serve_frame(frame())

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await open_terminal(page, served)
            proto = served.sessions[0].proto
            assert proto is not None
            transport_of(proto).loseConnection()
            await page.wait_for_selector("body[data-state=disconnected]", timeout=5_000)
            assert "Reconnecting" in await page.inner_text("#status")
            await page.wait_for_selector("body[data-state=connected]", timeout=10_000)
            assert len(served.sessions) == 2
            assert served.sessions[0].proto is None and served.sessions[1].proto is not None

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_page_asks_for_the_vnc_password(browser_profile: Path) -> None:
    served = await serve_frame(frame(), password="open sesame")

    async def scenario() -> None:
        async with browser_page(browser_profile) as page:
            await page.goto(served.url("resize=off"))
            await page.wait_for_selector("body[data-state=login]", timeout=10_000)
            await page.fill("#password", "wrong")
            await page.press("#password", "Enter")
            await page.wait_for_selector("body[data-state=failed]", timeout=10_000)
            assert "Wrong password." in await page.inner_text("#status")  # the server's reason
            await page.wait_for_selector("body[data-state=login]", timeout=10_000)
            await page.fill("#password", "open sesame")
            await page.press("#password", "Enter")
            await page.wait_for_selector("body[data-state=connected]", timeout=10_000)
            assert served.sessions[-1].proto is not None

    try:
        await as_deferred(scenario())
    finally:
        await served.port.stopListening()
