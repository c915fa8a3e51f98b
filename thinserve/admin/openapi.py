"""The admin API's OpenAPI 3.1 document, made from the route table.

Served at ``/api/v1/openapi.json`` on the dashboard's listener.  Each
route's path, method, summary and role come from its Route; request
bodies and query parameters from the tables below, which say the same as
the handlers' field checks (a test compares the two).  Errors share one
schema, ``Error``.
"""

from __future__ import annotations

from typing import Any

from . import API_PREFIX
from .handlers import Route

# Path parameters, named after the collection they sit in.
PARAMETER_NAMES = {
    "terminals": "terminal",
    "desktops": "desktop",
    "users": "user",
    "admins": "admin",
    "tokens": "token",
}
STRING: dict[str, Any] = {"type": "string"}
FLAG: dict[str, Any] = {"type": "boolean"}
# Request bodies: handler -> (fields with their schema, the required ones).
BODIES: dict[str, tuple[dict[str, dict[str, Any]], tuple[str, ...]]] = {
    "post_pair": (
        {"terminal": STRING, "desktop": STRING, "new": FLAG, "by_address": FLAG},
        ("terminal", "desktop"),
    ),
    "post_pair_code": (
        {"code": STRING, "desktop": STRING, "by_address": FLAG},
        ("code", "desktop"),
    ),
    "post_unpair": ({"terminal": STRING}, ("terminal",)),
    "post_kick": ({"terminal": STRING}, ("terminal",)),
    "post_shadow": ({"terminal": STRING, "desktop": STRING}, ("terminal", "desktop")),
    "post_unshadow": ({"terminal": STRING}, ("terminal",)),
    "post_users": ({"name": STRING, "secret": STRING, "desktop": STRING}, ("name", "secret")),
    "post_viewers": (
        {"desktop": STRING, "mode": {"type": "string", "enum": ["view", "control"]}},
        ("desktop",),
    ),
    "post_admins": (
        {
            "name": STRING,
            "password": STRING,
            "role": {"type": "string", "enum": ["helpdesk", "admin"]},
        },
        ("name", "password"),
    ),
    "post_admin_password": ({"password": STRING}, ("password",)),
    "post_tokens": ({"admin": STRING, "label": STRING}, ("admin", "label")),
    "post_user_secret": ({"secret": STRING}, ("secret",)),
}
LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}
QUERIES: dict[str, list[dict[str, Any]]] = {
    "get_sessions": [
        LIMIT,
        {"name": "terminal", "in": "query", "schema": STRING},
        {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    ],
    "get_tokens": [{"name": "admin", "in": "query", "schema": STRING}],
    "get_audit": [
        LIMIT,
        {"name": "subject", "in": "query", "schema": STRING},
        {"name": "actor", "in": "query", "schema": STRING},
        {"name": "action", "in": "query", "schema": STRING},
        {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    ],
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "hint"],
    "properties": {
        "code": {
            "type": "string",
            "description": "stable: bad_request, unauthenticated, forbidden, csrf, not_found, "
            "method_not_allowed, timeout, conflict, too_large, unsupported_media_type, locked, "
            "rate_limited, store_unavailable, internal",
        },
        "message": STRING,
        "error": {"type": "string", "description": "the message again, for older clients"},
        "hint": {"type": "string", "description": "what to do next"},
        "retry_after": {"type": "number", "description": "with 429: seconds to wait"},
    },
}
ERRORS = {
    "400": "bad input: nothing was changed",
    "401": "not logged in and no API token",
    "403": "the role does not allow it, or the X-CSRF-Token is missing or wrong",
    "404": "no such thing",
    "409": "it conflicts with the current state",
}


def openapi_document(routes: tuple[Route, ...]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path, parameters = _path(route.pattern)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route, parameters)
    paths.update(_special_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "thinserve admin API",
            "version": "1",
            "description": "The same API the thinserve CLI uses over its Unix socket. Over "
            "HTTP, authenticate with the dashboard's login (a cookie; send X-CSRF-Token "
            "with every change) or an API token (Authorization: Bearer).",
        },
        "servers": [{"url": API_PREFIX}],
        "security": [{"cookie": []}, {"token": []}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "cookie": {"type": "apiKey", "in": "cookie", "name": "thinserve_session"},
                "token": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _path(pattern: tuple[str, ...]) -> tuple[str, list[dict[str, Any]]]:
    parts, parameters = [], []
    for index, part in enumerate(pattern):
        if part != "*":
            parts.append(part)
            continue
        name = PARAMETER_NAMES.get(pattern[index - 1], "name") if index else "name"
        parts.append("{" + name + "}")
        parameters.append({"name": name, "in": "path", "required": True, "schema": STRING})
    return "/" + "/".join(parts), parameters


def _operation(route: Route, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.handler,
        "summary": route.summary or route.handler.replace("_", " "),
        "x-thinserve-role": route.needs,
        "parameters": parameters + QUERIES.get(route.handler, []),
        "responses": {"200": {"description": "done"}, **_error_responses()},
    }
    body = BODIES.get(route.handler)
    if body is not None:
        fields, required = body
        schema = {
            "type": "object",
            "properties": fields,
            "required": list(required),
            "additionalProperties": False,
        }
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    return operation


def _error_responses() -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {status: {"description": text, "content": error} for status, text in ERRORS.items()}


def _special_paths() -> dict[str, Any]:
    """What the dashboard serves beside the route table."""
    login_body = {
        "type": "object",
        "required": ["name", "password"],
        "properties": {"name": STRING, "password": STRING},
    }
    return {
        "/login": {
            "post": {
                "operationId": "login",
                "summary": "Log in: sets the session cookie, answers the CSRF token",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": login_body}},
                },
                "responses": {
                    "200": {"description": "logged in: name, role, csrf"},
                    "401": {"description": "wrong name or password"},
                    "423": {"description": "the account is locked"},
                    "429": {"description": "too many failures: wait retry_after seconds"},
                },
            }
        },
        "/logout": {"post": {"operationId": "logout", "responses": {"200": {"description": "ok"}}}},
        "/session": {
            "get": {
                "operationId": "session",
                "summary": "Who is logged in, and the CSRF token",
                "responses": {"200": {"description": "name, role, csrf"}},
            }
        },
        "/events": {
            "get": {
                "operationId": "events",
                "summary": "Server-Sent Events: `changed` with the revision and thumbnail versions",
                "responses": {"200": {"description": "text/event-stream"}},
            }
        },
        "/thumbnails/desktops/{desktop}.jpg": _thumbnail(
            "desktop", "A desktop's thumbnail (JPEG; ETag is its version)"
        ),
        "/thumbnails/terminals/{terminal}.jpg": _thumbnail(
            "terminal", "What a terminal shows, as a thumbnail"
        ),
        "/viewers/rfb": {
            "get": {
                "operationId": "viewer_socket",
                "summary": "RFB over WebSocket for a viewer ticket (query: ticket)",
                "responses": {"101": {"description": "switching to WebSocket"}},
            }
        },
    }


def _thumbnail(kind: str, summary: str) -> dict[str, Any]:
    """The GET of a thumbnail of ``kind`` ("desktop" or "terminal"), named in its path."""
    return {
        "get": {
            "operationId": f"{kind}_thumbnail",
            "parameters": [{"name": kind, "in": "path", "required": True, "schema": STRING}],
            "summary": summary,
            "responses": {"200": {"description": "image/jpeg"}, "304": {"description": "same"}},
        }
    }
