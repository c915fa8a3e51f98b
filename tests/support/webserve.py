"""A browser terminal server in the test's reactor, showing one fixed frame.

Everything listens on 127.0.0.1 on a port the kernel picks.  The desktop is
a ``Source`` the test changes at will; what the terminal in control sends
lands in a ``RecordingSink``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from twisted.internet import endpoints, ssl
from twisted.web.server import Site

from protocols.rfb import messages as m
from protocols.rfb.constants import SecurityType
from protocols.rfb.server import ServerEvent
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.rfbserver import RFBServerFactory, ServerOptions
from thinserve.tls import make_self_signed
from thinserve.web import WebOptions, WebSocketOptions, terminal_site

from .reactor import ListeningPort, running_reactor


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

    def handle(self, event: ServerEvent) -> None:
        if isinstance(event, m.SetEncodings) and self.proto is not None:
            conn = self.proto.conn
            conn.settings = dataclasses.replace(conn.settings, quality=None)
            conn.rect_encoder.configure(conn.settings)
        super().handle(event)


@dataclass
class Served:
    """A browser terminal server showing one fixed framebuffer."""

    port: ListeningPort
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
    """Serve the browser terminal; every terminal gets control of ``frame``."""
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


async def listen(site: Site, tls: ssl.CertificateOptions | None = None) -> ListeningPort:
    """``site`` on 127.0.0.1, on a port the kernel picks; over TLS when given."""
    reactor = running_reactor()
    endpoint: endpoints.TCP4ServerEndpoint | endpoints.SSL4ServerEndpoint
    if tls is None:
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    else:
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
    port: ListeningPort = await endpoint.listen(site)
    return port


def self_signed_tls(directory: Path) -> ssl.CertificateOptions:
    """Server TLS options with a new self-signed certificate for 127.0.0.1."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    make_self_signed(str(cert), str(key), "127.0.0.1")
    pem = cert.read_bytes() + key.read_bytes()
    options: ssl.CertificateOptions = ssl.PrivateCertificate.loadPEM(pem).options()
    return options


def plain_site(body: bytes) -> Site:
    """A page on another origin, with no CSP of ours, for cross-origin attempts."""
    from twisted.web.static import Data  # imported late: its import warns of deprecations

    return Site(Data(body, "text/html; charset=utf-8"))
