"""The browser terminal's web site: the page, noVNC, and the RFB WebSocket.

One twisted.web site on one port serves

- ``/``             the terminal page (clients/web/index.html), never cached
- ``/terminal.js``, ``/key.js``, ``/terminal.css``, ``/favicon.svg``: the page's own files
- ``/novnc/core/``  and ``/novnc/vendor/``, the pinned noVNC release
- ``/websockify``   RFB over WebSocket, wrapping the RFB server factory given
- ``/nodes.json``   the browser terminals of the site's nodes (``WebOptions.nodes``;
  thinserve/cluster/weburls.py), an empty list for a server of its own

Every response carries a Content-Security-Policy that allows only this
origin (plus data: images, which noVNC uses for JPEG rectangles and cursors).
Every connection keeps the deadlines and size bounds of ``WebOptions.http``
(thinserve/web/channel.py, values in thinserve/web/limits.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, cast

from twisted.web import resource, static
from twisted.web.pages import notFound
from twisted.web.server import Request

from .channel import BoundedSite
from .limits import HTTPLimits
from .websocket import RFBFactory, WebSocketOptions, rfb_websocket_resource

if TYPE_CHECKING:
    from autobahn.twisted.resource import WebSocketResource

    # What ``putChild`` takes: an IResource provider.  Resource and
    # WebSocketResource declare it with zope's ``implementer``, unseen by mypy.
    _Child: TypeAlias = "resource.IResource | resource.Resource | WebSocketResource"

    class _Request(Request):
        """A request, with the signature Twisted leaves unannotated."""

        def setHeader(self, name: bytes, value: bytes) -> None: ...

    class _Resource(resource.Resource):
        """Resource, with the signatures Twisted leaves unannotated."""

        def __init__(self) -> None: ...
        def getChildWithDefault(self, path: bytes, request: _Request) -> resource.IResource: ...
        def putChild(self, path: bytes, child: _Child) -> None: ...

    class _File(static.File):
        """static.File, with the signatures Twisted leaves unannotated."""

        def getChild(self, path: bytes, request: _Request) -> resource.IResource: ...
        def render_GET(self, request: _Request) -> bytes | int: ...

else:
    _Request, _Resource, _File = Request, resource.Resource, static.File


class _Page(Protocol):
    """A page of twisted.web.pages (an IResource that renders to bytes)."""

    def render(self, request: _Request) -> bytes: ...


WEBSOCKET_PATH = b"websockify"
CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "web"
NOVNC_ENV = "THINSERVE_NOVNC_DIR"
NOVNC_INSTALL = "npm ci --prefix clients/web --no-audit --no-fund"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
COMMON_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode(),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
    b"X-Frame-Options": b"DENY",
}


class NoVNCMissing(RuntimeError):
    """noVNC is not installed where thinserve looks for it."""


@dataclass(frozen=True)
class WebOptions:
    websocket: WebSocketOptions = field(default_factory=WebSocketOptions)
    http: HTTPLimits = field(default_factory=HTTPLimits)
    client_dir: Path = CLIENT_DIR
    novnc_dir: Path | None = None  # None: $THINSERVE_NOVNC_DIR or clients/web/node_modules
    nodes: Callable[[], list[str]] | None = None  # the site's browser-terminal URLs


def find_novnc(options: WebOptions) -> Path:
    """The noVNC package directory (the one holding core/rfb.js)."""
    candidates = [options.novnc_dir] if options.novnc_dir is not None else []
    if not candidates and os.environ.get(NOVNC_ENV):
        candidates.append(Path(os.environ[NOVNC_ENV]))
    if not candidates:
        candidates.append(options.client_dir / "node_modules" / "@novnc" / "novnc")
    for path in candidates:
        if (path / "core" / "rfb.js").is_file():
            return path
    raise NoVNCMissing(
        f"noVNC not found at {', '.join(map(str, candidates))}: run `{NOVNC_INSTALL}` "
        f"in the source tree, or set {NOVNC_ENV} to a noVNC package directory"
    )


class StaticFile(_File):
    """A static file or tree: no directory listings, no dotfiles, revalidated."""

    contentTypes = {
        **static.File.contentTypes,
        ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".html": "text/html; charset=utf-8",
    }
    cache_control = b"no-cache"
    childNotFound = notFound()

    def directoryListing(self) -> resource.IResource:
        return notFound()

    def getChild(self, path: bytes, request: _Request) -> resource.IResource:
        if path.startswith(b"."):
            return notFound()
        return super().getChild(path, request)

    def render_GET(self, request: _Request) -> bytes | int:
        request.setHeader(b"Cache-Control", self.cache_control)
        return super().render_GET(request)


class Page(StaticFile):
    """The HTML page: never stored, so a new version is picked up at once."""

    cache_control = b"no-store"


class Folder(_Resource):
    """A path prefix: only its children exist."""

    def getChild(self, path: bytes, request: _Request) -> resource.IResource:
        return notFound()

    def render(self, request: _Request) -> bytes:
        return cast(_Page, notFound()).render(request)


class TerminalRoot(Folder):
    """Sets the security headers on every response, then routes."""

    def getChildWithDefault(self, path: bytes, request: _Request) -> resource.IResource:
        for name, value in COMMON_HEADERS.items():
            request.setHeader(name, value)
        return super().getChildWithDefault(path, request)


class NodesJSON(_Resource):
    """``{"nodes": [URL, ...]}``: where the page goes when its node stops answering."""

    isLeaf = True

    def __init__(self, nodes: Callable[[], list[str]]) -> None:
        super().__init__()
        self.nodes = nodes

    def render_GET(self, request: _Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps({"nodes": self.nodes()}).encode()


def terminal_resource(rfb_factory: RFBFactory, options: WebOptions) -> TerminalRoot:
    novnc = find_novnc(options)
    client = options.client_dir
    root = TerminalRoot()
    page = Page(str(client / "index.html"))
    root.putChild(b"", page)
    root.putChild(b"index.html", page)
    for name in ("terminal.js", "key.js", "terminal.css", "favicon.svg"):
        root.putChild(name.encode(), StaticFile(str(client / name)))
    novnc_root = Folder()
    for part in ("core", "vendor"):
        novnc_root.putChild(part.encode(), StaticFile(str(novnc / part)))
    root.putChild(b"novnc", novnc_root)
    root.putChild(WEBSOCKET_PATH, rfb_websocket_resource(rfb_factory, options.websocket))
    root.putChild(b"nodes.json", NodesJSON(options.nodes or list))
    return root


def terminal_site(rfb_factory: RFBFactory, options: WebOptions | None = None) -> BoundedSite:
    """A site to listen on, next to (or instead of) the TCP RFB listener.

    ``rfb_factory`` is the same RFBServerFactory the TCP listener uses.
    """
    options = options or WebOptions()
    site = BoundedSite(terminal_resource(rfb_factory, options), options.http)
    site.displayTracebacks = False
    return site
