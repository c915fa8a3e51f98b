"""The dashboard's web site: the pages, the JSON API, live updates, viewers, metrics.

One twisted.web site, on its own listener (``[server] dashboard_listen``),
serves

- ``/`` and the page's files from clients/dashboard (never a directory
  listing, never node_modules or dotfiles), ``/pico.css`` (the pinned Pico
  CSS), ``/novnc/core/`` and ``/novnc/vendor/`` for the viewer page;
- ``/api/v1/login``, ``/logout``, ``/session``: the admin's login;
- ``/api/v1/...``: the same JSON API as the admin socket, for the logged-in
  admin or an API token (thinserve.admin.http), plus ``openapi.json``;
- ``/api/v1/events`` (Server-Sent Events) and ``/api/v1/thumbnails/...``;
- ``/api/v1/viewers/rfb``: an admin's viewer, RFB over WebSocket;
- ``/metrics``: Prometheus metrics, for a token or a login.

Every response carries the browser terminal's security headers (a
Content-Security-Policy allowing only this origin).  Every request but the
login's and the static files' must be authenticated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import interfaces
from twisted.web import resource, server
from twisted.web.pages import notFound

from ..admin.errors import ApiError
from ..admin.handlers import AdminAPI, Route
from ..admin.http import AdminResource, BoundedBody, error_reply
from ..admin.openapi import openapi_document
from ..admin.principal import Principal
from ..web.channel import BoundedSite
from ..web.limits import HTTPLimits
from ..web.site import Folder, Page, StaticFile, TerminalRoot, WebOptions, find_novnc

if TYPE_CHECKING:
    from twisted.web.resource import IResource

Resource = resource.Resource  # what the site's parts are (IResource, as mypy can read it)

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "clients" / "dashboard"
PICO = Path("node_modules") / "@picocss" / "pico" / "css" / "pico.classless.min.css"
PICO_INSTALL = "npm ci --prefix clients/dashboard --no-audit --no-fund"
MAX_BODY = 64 * 1024
HIDDEN = (b"node_modules", b"package.json", b"package-lock.json")


class Authenticator(Protocol):
    """What the site needs of thinserve.dashboard.auth.Authenticator."""

    def principal(self, request: server.Request, secure: bool) -> Principal: ...


class DashboardMissing(RuntimeError):
    """The dashboard's page files (or Pico CSS) are not installed."""


@dataclass
class DashboardParts:
    """What the site serves, made by the service (thinserve.dashboard.wiring)."""

    api: AdminAPI
    routes: tuple[Route, ...]
    auth: Authenticator
    login: Resource
    events: Resource
    thumbnails: Resource
    viewer_socket: Resource
    metrics: Resource
    client_dir: Path = DASHBOARD_DIR
    web: WebOptions = field(default_factory=WebOptions)


def is_secure(request: server.Request) -> bool:
    return interfaces.ISSLTransport.providedBy(request.channel.transport)


class Guarded(resource.Resource):
    """A resource only an authenticated caller with the role ``needs`` reaches."""

    isLeaf = True

    def __init__(self, inner: Resource, auth: Authenticator, needs: str) -> None:
        super().__init__()  # Twisted leaves it unannotated
        self.inner = inner
        self.auth = auth
        self.needs = needs

    def render(self, request: server.Request) -> bytes | int:
        try:
            principal = self.auth.principal(request, is_secure(request))
            if not principal.may(self.needs):
                raise ApiError(403, f"{principal.actor} may not see this", f"it needs {self.needs}")
        except ApiError as exc:
            return error_reply(request, exc)
        result: bytes | int = self.inner.render(request)
        return result


class OpenAPIResource(resource.Resource):
    isLeaf = True

    def __init__(self, routes: tuple[Route, ...]) -> None:
        super().__init__()  # Twisted leaves it unannotated
        self.body = json.dumps(openapi_document(routes), indent=1).encode() + b"\n"

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return self.body


class ApiFolder(resource.Resource):
    """/api/v1/: the named special resources, else the JSON API's routes."""

    def __init__(self, parts: DashboardParts) -> None:
        super().__init__()  # Twisted leaves it unannotated
        auth = parts.auth
        self.api = AdminResource(
            parts.api, lambda request: auth.principal(request, is_secure(request)), parts.routes
        )
        self.named: dict[bytes, Resource] = {
            b"login": parts.login,
            b"logout": parts.login,
            b"session": parts.login,
            b"events": Guarded(parts.events, auth, "read"),
            b"thumbnails": Guarded(parts.thumbnails, auth, "read"),
            b"openapi.json": Guarded(OpenAPIResource(parts.routes), auth, "read"),
        }
        self.viewers = ViewersFolder(self.api, parts.viewer_socket)

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        if path == b"viewers":
            return self.viewers
        return self.named.get(path, self.api)

    def render(self, request: server.Request) -> bytes | int:
        return self.api.render(request)


class ViewersFolder(resource.Resource):
    """/api/v1/viewers (a ticket, through the API) and /api/v1/viewers/rfb."""

    def __init__(self, api: AdminResource, socket: Resource) -> None:
        super().__init__()  # Twisted leaves it unannotated
        self.api = api
        self.socket = socket

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        if path == b"rfb":
            return self.socket
        if path == b"":
            return self
        return self.api

    def render(self, request: server.Request) -> bytes | int:
        return self.api.render(request)


class ClientFiles(StaticFile):
    """clients/dashboard, without its npm files."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path in HIDDEN:
            return notFound()
        return super().getChild(path, request)


class DashboardSite(BoundedSite):
    """A BoundedSite whose request bodies are the API's BoundedBody, and whose
    refusals (a body too large, a request too slow) are the API's JSON errors."""

    def getContentFile(self, length: int | None) -> BoundedBody:
        return BoundedBody(length)

    def refusal(self, status: HTTPStatus, reason: str) -> tuple[str, bytes]:
        error = ApiError(status.value, reason, "send less, or send it faster")
        return "application/json; charset=utf-8", json.dumps(error.payload).encode() + b"\n"


def find_pico(client_dir: Path) -> Path:
    path = client_dir / PICO
    if not (client_dir / "index.html").is_file() or not path.is_file():
        raise DashboardMissing(
            f"the dashboard's files are missing ({client_dir / 'index.html'} or {path}): "
            f"run `{PICO_INSTALL}` in the source tree"
        )
    return path


def dashboard_resource(parts: DashboardParts) -> TerminalRoot:
    client = parts.client_dir
    pico = find_pico(client)
    novnc = find_novnc(parts.web)
    root = TerminalRoot()
    for child in sorted(client.iterdir()):
        name = child.name.encode()
        if child.name.startswith(".") or name in HIDDEN:
            continue
        if child.is_dir():
            root.putChild(name, ClientFiles(str(child)))
        elif child.suffix == ".html":
            root.putChild(name, Page(str(child)))
        else:
            root.putChild(name, StaticFile(str(child)))
    root.putChild(b"", Page(str(client / "index.html")))
    root.putChild(b"pico.css", StaticFile(str(pico)))
    novnc_root = Folder()
    for part in ("core", "vendor"):
        novnc_root.putChild(part.encode(), StaticFile(str(novnc / part)))
    root.putChild(b"novnc", novnc_root)
    api = Folder()
    api.putChild(b"v1", ApiFolder(parts))
    root.putChild(b"api", api)
    root.putChild(b"metrics", Guarded(parts.metrics, parts.auth, "read"))
    return root


def dashboard_site(parts: DashboardParts) -> DashboardSite:
    """The dashboard's site, to listen on (DashboardMissing when its files are not installed)."""
    limits = HTTPLimits(max_body=MAX_BODY)
    site = DashboardSite(dashboard_resource(parts), limits)
    site.displayTracebacks = False
    return site
