"""The admin API's HTTP layer: routes, bounded JSON bodies, JSON answers.

Requests are bounded (64 KiB bodies, JSON objects with known keys only);
errors are JSON ``{"code": ..., "message": ..., "hint": ...}`` with a fitting
HTTP status (thinserve.admin.errors).  Who is asking is decided by the
caller (``principal_of``): the Unix socket's peer, or the dashboard's login
or API token; each route says which role it needs.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.server import NOT_DONE_YET

from ..broker import BrokerError
from ..store.base import StoreError, StoreFault
from . import API_PREFIX
from .errors import ApiError, broker_error, store_error
from .fields import BODY_HINT
from .handlers import ROUTES, AdminAPI, Call, Route
from .principal import Principal

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger("thinserve.admin.api")  # one name for all the admin API's lines

MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 60  # seconds before an idle admin connection is closed
JSON_TYPE = b"application/json"

Authenticate = Callable[[server.Request], Principal]  # raises ApiError 401/403


class Reply(Protocol):
    """The part of a twisted.web request an answer is written to."""

    def setResponseCode(self, code: int, message: bytes | None = None) -> None: ...
    def setHeader(self, name: bytes, value: bytes) -> None: ...
    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def notifyFinish(self) -> defer.Deferred[None]: ...


class BoundedBody(io.BytesIO):
    """A request body kept in memory up to MAX_BODY bytes; past that it is
    only counted, and the request is answered 413."""

    def __init__(self, length: int | None) -> None:
        super().__init__()
        self.size = 0
        self.too_large = length is not None and length > MAX_BODY

    def write(self, data: ReadableBuffer, /) -> int:
        size = memoryview(data).nbytes
        self.size += size
        self.too_large = self.too_large or self.size > MAX_BODY
        return size if self.too_large else super().write(data)


class AdminResource(resource.Resource):
    """Routes /api/v1/... to AdminAPI methods and turns answers into JSON."""

    isLeaf = True

    def __init__(
        self, api: AdminAPI, principal_of: Authenticate, routes: tuple[Route, ...] = ROUTES
    ) -> None:
        super().__init__()  # Twisted leaves it unannotated
        self.api = api
        self.principal_of = principal_of
        self.routes = routes

    def render(self, request: server.Request) -> bytes | int:
        try:
            result = self._call(request)
        except Exception as exc:
            return error_reply(request, _answer_for(exc, request))
        if request.method != b"GET":  # a change: live pages look again
            if isinstance(result, defer.Deferred):
                result.addBoth(self._changed)
            else:
                self._changed(None)
        if isinstance(result, defer.Deferred):
            return _later(request, result)
        return json_reply(request, 200, result)

    def _changed(self, result: Any) -> Any:
        self.api.hub.changed()
        return result

    def _call(self, request: server.Request) -> Any:
        principal = self.principal_of(request)
        method = request.method.decode("ascii", "replace")
        route, params = _route(method, _segments(request.path), self.routes)
        if not principal.may(route.needs):
            raise ApiError(
                403,
                f"{principal.actor} ({principal.role}) may not {method} "
                f"{request.path[:200].decode('ascii', 'replace')}",
                f"it needs the {route.needs} role; ask an admin",
            )
        target = getattr(self.api, route.owner) if route.owner else self.api
        if target is None:
            raise ApiError(404, "this endpoint is not served here", "use the dashboard's listener")
        query = _query(request)
        body = json_body(request) if method in ("POST", "PUT", "PATCH") else {}
        call = Call(principal.actor, params, query, body, principal)
        return getattr(target, route.handler)(call)


class AdminSite(server.Site):
    """The API's site: bounded request bodies, idle connections closed, its
    own quiet access log."""

    noisy = False
    displayTracebacks = False

    def __init__(
        self, api: AdminAPI, principal_of: Authenticate, routes: tuple[Route, ...] = ROUTES
    ) -> None:
        super().__init__(  # Twisted leaves it unannotated
            AdminResource(api, principal_of, routes),
            timeout=IDLE_TIMEOUT,
            parsePOSTFormSubmission=False,
        )

    def getContentFile(self, length: int | None) -> BoundedBody:
        """Where twisted.web writes each request's body."""
        return BoundedBody(length)

    def log(self, request: http.Request) -> None:
        log.debug("admin %s %s -> %s", request.method, request.uri[:200], request.code)


def _segments(path: bytes) -> list[str]:
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError:
        raise ApiError(400, "the path must be ASCII (percent-encode the rest)", "") from None
    prefix = API_PREFIX.strip("/").split("/")
    parts = text.strip("/").split("/")
    if parts[: len(prefix)] != prefix:
        raise ApiError(404, f"no such path {text[:200]!r}", f"the API lives under {API_PREFIX}/")
    try:
        return [unquote(p, errors="strict") for p in parts[len(prefix) :]]
    except UnicodeDecodeError:
        raise ApiError(400, "path segments must be UTF-8", "") from None


def _route(
    method: str, segments: list[str], routes: tuple[Route, ...]
) -> tuple[Route, tuple[str, ...]]:
    allowed = []
    for route in routes:
        if len(route.pattern) != len(segments):
            continue
        if all(p == "*" or p == s for p, s in zip(route.pattern, segments, strict=True)):
            if route.method == method:
                params = tuple(s for p, s in zip(route.pattern, segments, strict=True) if p == "*")
                return route, params
            allowed.append(route.method)
    path = API_PREFIX + "/" + "/".join(segments)
    if allowed:
        raise ApiError(405, f"{method} is not allowed on {path[:200]}", f"use {', '.join(allowed)}")
    raise ApiError(404, f"no such endpoint {path[:200]!r}", "see docs/admin.md for the endpoints")


def _query(request: server.Request) -> dict[str, str]:
    args: dict[bytes, list[bytes]] = request.args or {}
    query = {}
    for key, values in args.items():
        try:
            query[key.decode()] = values[-1].decode()
        except UnicodeDecodeError:
            raise ApiError(400, "query parameters must be UTF-8", "") from None
    return query


def json_body(request: server.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's body: a JSON object of at most ``limit`` bytes (413, 415
    or 400 otherwise).  The sites keep bodies in a BoundedBody, which stops
    storing past MAX_BODY; any other file is read up to the limit."""
    header = request.getHeader(b"content-type") or b""
    if header.split(b";")[0].strip().lower() != JSON_TYPE:
        raise ApiError(415, "send the body as application/json", "set Content-Type")
    content = request.content
    if isinstance(content, BoundedBody):
        data = b"" if content.too_large else content.getvalue()
        too_large = content.too_large or content.size > limit
    else:
        data = b""
        if content is not None:
            content.seek(0)
            data = content.read(limit + 1)
        too_large = len(data) > limit
    if too_large:
        raise ApiError(413, f"the request body is over {limit} bytes", "send less")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON", BODY_HINT) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", BODY_HINT)
    return body


def json_reply(request: Reply, status: int, payload: Any) -> bytes:
    """Set ``status`` and the JSON headers on ``request``; the body for ``payload``.
    The reason phrase is the standard one (twisted.web knows none for 423 or 429)."""
    request.setResponseCode(status, HTTPStatus(status).phrase.encode())
    request.setHeader(b"Content-Type", JSON_TYPE + b"; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"


def error_reply(request: Reply, error: ApiError) -> bytes:
    """``error`` as the API's JSON answer; one that says how long to wait
    (``retry_after``) also says so in whole seconds as Retry-After."""
    retry = error.payload.get("retry_after")
    if retry is not None:
        request.setHeader(b"Retry-After", str(max(1, math.ceil(float(retry)))).encode())
    return json_reply(request, error.status, error.payload)


def _answer_for(exc: Exception, request: server.Request) -> ApiError:
    """The answer to a request that raised ``exc``; faults and bugs are logged."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BrokerError):
        return broker_error(exc)
    what = (request.method + b" " + request.uri[:200]).decode("ascii", "replace")
    if isinstance(exc, StoreError):
        if isinstance(exc, StoreFault):
            log.error("admin request %s failed: %s", what, exc)
        return store_error(exc)
    log.error("admin request %s failed", what, exc_info=exc)
    return ApiError(500, "internal error", "see thinserve's log")


def _later(request: server.Request, result: defer.Deferred[Any]) -> int:
    """Answer once ``result`` has fired: PNG bytes (a snapshot) or a JSON
    answer (a desktop started or stopped)."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda failure: gone.append(True))

    def send(answer: Any) -> None:
        if gone:
            return
        if not isinstance(answer, bytes):
            request.write(json_reply(request, 200, answer))
            request.finish()
            return
        request.setHeader(b"Content-Type", b"image/png")
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(answer)
        request.finish()

    def fail(failure: Failure) -> None:
        exc = failure.value
        error = _answer_for(exc if isinstance(exc, Exception) else Exception(exc), request)
        if not gone:
            request.write(error_reply(request, error))
            request.finish()

    result.addCallbacks(send, fail)
    return NOT_DONE_YET
