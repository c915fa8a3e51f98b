"""Fixtures for the browser terminal tests: a served page, a raw WebSocket peer,
headless Chromium driven by Playwright.

Everything listens on 127.0.0.1 on a free port.  Playwright's asyncio API runs
on the same event loop as the Twisted asyncio reactor, so a test awaits its
browser steps through ``as_deferred``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import shutil
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.internet.interfaces import IListeningPort
from twisted.web.server import Site

from protocols.rfb import messages as m
from protocols.rfb.constants import SecurityType
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.rfbserver import RFBServerFactory, ServerOptions
from thinserve.tls import make_self_signed
from thinserve.web import NoVNCMissing, WebOptions, WebSocketOptions, find_novnc, terminal_site

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
T = TypeVar("T")


# -- what reaches the desktop ---------------------------------------------------------
@dataclass
class RecordingSink:
    """An input sink that records what the terminal in control sends."""

    keys: list[tuple[bool, int]] = field(default_factory=list)
    pointers: list[tuple[int, int, int]] = field(default_factory=list)
    clipboard_texts: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        self.keys.append((down, keysym))

    def pointer(self, buttons: int, x: int, y: int) -> None:
        self.pointers.append((buttons, x, y))

    def clipboard(self, text: str) -> None:
        self.clipboard_texts.append(text)

    def set_desktop_size(self, width: int, height: int) -> bool:
        self.sizes.append((width, height))
        return False


class LosslessSession(TerminalSession):
    """A session that never sends lossy JPEG, whatever quality the client asks for.

    noVNC always announces a JPEG quality level; a pixel-exact comparison needs
    the server to ignore it.
    """

    def handle(self, event: object) -> None:
        if isinstance(event, m.SetEncodings) and self.proto is not None:
            conn = self.proto.conn
            conn.settings = dataclasses.replace(conn.settings, quality=None)
            conn.rect_encoder.configure(conn.settings)
        super().handle(event)  # type: ignore[arg-type]


@dataclass
class Served:
    """A browser terminal server showing one fixed framebuffer."""

    port: IListeningPort
    source: Source
    sink: RecordingSink
    sessions: list[TerminalSession]

    @property
    def number(self) -> int:
        return self.port.getHost().port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.number}"

    def url(self, query: str = "") -> str:
        return f"{self.origin}/{'?' + query if query else ''}"


async def serve_frame(
    frame: np.ndarray,
    ws_options: WebSocketOptions | None = None,
    lossless: bool = True,
    tls: ssl.CertificateOptions | None = None,
    password: str | None = None,
) -> Served:
    source = Source(frame.copy(), name="test desktop")
    sink = RecordingSink()
    source.input = sink
    sessions: list[TerminalSession] = []
    kind = LosslessSession if lossless else TerminalSession

    def make_session() -> TerminalSession:
        session = kind(on_attach=lambda s: source)
        session.control = True
        sessions.append(session)
        return session

    server_options = ServerOptions()
    if password is not None:
        server_options = ServerOptions(methods=(SecurityType.VNC_AUTH,), password=password)
    rfb_factory = RFBServerFactory(server_options, make_session)
    options = WebOptions(websocket=ws_options or WebSocketOptions())
    port = await listen(terminal_site(rfb_factory, options), tls)
    return Served(port, source, sink, sessions)


async def listen(
    site: protocol.Factory, tls: ssl.CertificateOptions | None = None
) -> IListeningPort:
    if tls is None:
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    else:
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
    return await endpoint.listen(site)


def self_signed_tls(directory: Path) -> ssl.CertificateOptions:
    """Server TLS options with a new self-signed certificate for 127.0.0.1."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    make_self_signed(str(cert), str(key), "127.0.0.1")
    pem = cert.read_bytes() + key.read_bytes()
    return ssl.PrivateCertificate.loadPEM(pem).options()


def plain_site(body: bytes) -> Site:
    """A page on another origin, with no CSP of ours, for cross-origin attempts."""
    from twisted.web.static import Data

    return Site(Data(body, "text/html; charset=utf-8"))


# -- a raw peer on a TCP connection ---------------------------------------------------------
class RawPeer(protocol.Protocol):
    """Collects everything received; lets a test wait for bytes or the close."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[tuple[Callable[[bytes], bool], defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for item in list(self._waiters):
            if item[0](bytes(self.received)):
                self._waiters.remove(item)
                item[1].callback(None)

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)

    async def wait_for(self, ready: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        if not ready(bytes(self.received)):
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append((ready, waiter))
            await with_timeout(waiter, timeout)
        return bytes(self.received)

    async def wait_closed(self, timeout: float = 5.0) -> bytes:
        await with_timeout(self.closed, timeout)
        return bytes(self.received)


async def connect_raw(port: int, tls: bool = False) -> RawPeer:
    if tls:  # the test's own self-signed server: no verification wanted
        options = ssl.CertificateOptions()
        endpoint = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    else:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await endpoints.connectProtocol(endpoint, RawPeer())


async def with_timeout(d: defer.Deferred[T], seconds: float) -> T:
    d.addTimeout(seconds, reactor)
    return await d


def upgrade_request(
    port: int, origin: str | None, protocols: str | None = "binary", path: str = "/websockify"
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def head_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, rest) of an HTTP response."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


def client_frame(opcode: int, payload: bytes, declared: int | None = None) -> bytes:
    """A masked client frame; ``declared`` may claim more payload than is sent."""
    length = len(payload) if declared is None else declared
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the complete unmasked server frames in ``data``."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            if len(data) < 4:
                break
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            if len(data) < 10:
                break
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


class WebSocketStream:
    """The server's frames on a raw peer, read one by one after the handshake."""

    def __init__(self, peer: RawPeer) -> None:
        self.peer = peer
        self.frames_seen = 0

    def _frames(self) -> list[tuple[int, bytes]]:
        return server_frames(bytes(self.peer.received).partition(b"\r\n\r\n")[2])

    async def next_frames(self, timeout: float = 5.0) -> list[tuple[int, bytes]]:
        seen = self.frames_seen
        await self.peer.wait_for(lambda _: len(self._frames()) > seen, timeout)
        frames = self._frames()
        self.frames_seen = len(frames)
        return frames[seen:]

    def send(self, data: bytes) -> None:
        if data:
            self.peer.transport.write(client_frame(0x2, data))


# -- the browser ----------------------------------------------------------------------------------
def require_browser() -> None:
    """Skip (or in CI fail) when Chromium, Playwright or noVNC are missing."""
    missing = []
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        missing.append("Chromium (apt-get install -y chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (pip install playwright; no browser download)")
    try:
        find_novnc(WebOptions())
    except NoVNCMissing as exc:
        missing.append(str(exc))
    if not missing:
        return
    message = "browser terminal tests need: " + "; ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def as_deferred(coro: Awaitable[T]) -> defer.Deferred[T]:
    """Await an asyncio coroutine (Playwright) from a Twisted test."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


@asynccontextmanager
async def browser_page(user_data_dir: Path) -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium profile; console errors are collected."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 700},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.console_errors = []
            page.on(
                "console",
                lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None,
            )
            yield page
        finally:
            await context.close()


CANVAS_RGBA_JS = """
() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || canvas.width === 0) { return null; }
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let text = '';
  for (let i = 0; i < data.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  return {width: canvas.width, height: canvas.height, rgba: btoa(text)};
}
"""


async def canvas_pixels(page: Any) -> np.ndarray | None:
    """noVNC's visible canvas as 0x00RRGGBB words (alpha must be opaque)."""
    shot = await page.evaluate(CANVAS_RGBA_JS)
    if shot is None:
        return None
    rgba = np.frombuffer(base64.b64decode(shot["rgba"]), dtype=np.uint8)
    rgba = rgba.reshape(shot["height"], shot["width"], 4).astype(np.uint32)
    if not (rgba[..., 3] == 255).all():
        return None
    return (rgba[..., 0] << 16) | (rgba[..., 1] << 8) | rgba[..., 2]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    """Poll ``check`` on the asyncio loop until it holds or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()
