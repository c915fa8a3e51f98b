"""A small blocking client for the admin API, over the server's Unix socket.

Standard library only: http.client with a connection class that dials a
Unix socket.  Every failure becomes an ``AdminError`` whose message says
what went wrong and whose hint says what to do next.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from . import API_PREFIX

MAX_RESPONSE = 64 * 1024 * 1024  # a snapshot PNG of a very large screen fits
DEFAULT_TIMEOUT = 30.0
DESKTOP_TIMEOUT = 600.0  # starting or gently stopping a VM takes a while


class AdminError(Exception):
    """A request failed: ``message`` what happened, ``hint`` what to do next."""

    def __init__(
        self,
        message: str,
        hint: str = "",
        status: int = 0,
        payload: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status  # the HTTP status; 0 when the server was not reached
        self.payload = payload or {"error": message, "hint": hint}


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix stream socket."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """Calls the admin API of the thinserve listening on ``socket_path``."""

    def __init__(self, socket_path: str | Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    # -- plumbing -------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Response:
        """Send one request; ``path`` is relative to /api/v1."""
        url = API_PREFIX + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request(method, url, body=data, headers=headers)
            reply = conn.getresponse()
            content = reply.read(MAX_RESPONSE + 1)
        except OSError as exc:
            raise self._unreachable(exc) from None
        except http.client.HTTPException as exc:
            raise AdminError(
                f"thinserve at {self.socket_path} sent a broken answer: {exc!r}",
                "check thinserve's log",
            ) from None
        finally:
            conn.close()
        if len(content) > MAX_RESPONSE:
            raise AdminError(f"the answer is larger than {MAX_RESPONSE} bytes", "")
        return Response(reply.status, reply.getheader("Content-Type", ""), content)

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """The decoded JSON answer; AdminError for any error status."""
        response = self.request(method, path, body, query)
        payload = _decode(response)
        if response.status >= 400:
            raise _error(response.status, payload)
        return payload

    def _object(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A call whose answer is one JSON object."""
        payload = self.call(method, path, body)
        if not isinstance(payload, dict):
            raise _unexpected(payload)
        return payload

    def _rows(self, path: str, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """A listing: a JSON array of objects."""
        payload = self.call("GET", path, query=query)
        if not isinstance(payload, list) or not all(isinstance(row, dict) for row in payload):
            raise _unexpected(payload)
        return payload

    def _unreachable(self, exc: OSError) -> AdminError:
        where = self.socket_path
        if isinstance(exc, PermissionError):
            return AdminError(
                f"permission denied on {where}",
                "run this as the user running thinserve, or as root (e.g. with sudo)",
            )
        if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            return AdminError(
                f"nothing answers at {where}",
                f"is `thinserve serve` running? socket {where} "
                "(choose another with --socket or $THINSERVE_ADMIN_SOCKET)",
            )
        if isinstance(exc, TimeoutError):
            return AdminError(
                f"thinserve did not answer within {self.timeout:.0f} s at {where}",
                "check thinserve's log; it may be overloaded",
            )
        return AdminError(f"cannot talk to thinserve at {where}: {exc}", "check thinserve's log")

    # -- the API ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return self._object("GET", "/state")

    def terminals(self) -> list[dict[str, Any]]:
        return self._rows("/terminals")

    def terminal(self, terminal_id: str) -> dict[str, Any]:
        return self._object("GET", "/terminals/" + quote(terminal_id, safe=""))

    def desktops(self) -> list[dict[str, Any]]:
        return self._rows("/desktops")

    def desktop_action(self, name: str, action: str) -> dict[str, Any]:
        """``action`` start, stop or reset on desktop ``name``; answers once done."""
        slow = AdminClient(self.socket_path, max(self.timeout, DESKTOP_TIMEOUT))
        return slow._object("POST", "/desktops/" + quote(name, safe="") + "/" + action, {})

    def forget_desktop(self, name: str) -> dict[str, Any]:
        return self._object("DELETE", "/desktops/" + quote(name, safe=""))

    def pair(
        self, terminal_id: str, desktop: str, new: bool = False, by_address: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"terminal": terminal_id, "desktop": desktop}
        if new:
            body["new"] = True
        if by_address:
            body["by_address"] = True
        return self._object("POST", "/pair", body)

    def pair_code(self, code: str, desktop: str, by_address: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"code": code, "desktop": desktop}
        if by_address:
            body["by_address"] = True
        return self._object("POST", "/pair-code", body)

    def unpair(self, terminal_id: str) -> dict[str, Any]:
        return self._object("POST", "/unpair", {"terminal": terminal_id})

    def kick(self, terminal_id: str) -> dict[str, Any]:
        return self._object("POST", "/kick", {"terminal": terminal_id})

    def shadow(self, terminal_id: str, desktop: str) -> dict[str, Any]:
        return self._object("POST", "/shadow", {"terminal": terminal_id, "desktop": desktop})

    def unshadow(self, terminal_id: str) -> dict[str, Any]:
        return self._object("POST", "/unshadow", {"terminal": terminal_id})

    def users(self) -> list[dict[str, Any]]:
        return self._rows("/users")

    def add_user(self, name: str, secret: str, desktop: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "secret": secret}
        if desktop is not None:
            body["desktop"] = desktop
        return self._object("POST", "/users", body)

    def delete_user(self, name: str) -> dict[str, Any]:
        return self._object("DELETE", "/users/" + quote(name, safe=""))

    def user_secret(self, name: str, secret: str) -> dict[str, Any]:
        return self._object(
            "POST", "/users/" + quote(name, safe="") + "/secret", {"secret": secret}
        )

    def user_action(self, name: str, action: str) -> dict[str, Any]:
        """``action`` disable or enable on user ``name``."""
        return self._object("POST", "/users/" + quote(name, safe="") + "/" + action, {})

    def admins(self) -> list[dict[str, Any]]:
        return self._rows("/admins")

    def add_admin(self, name: str, password: str, role: str = "admin") -> dict[str, Any]:
        return self._object("POST", "/admins", {"name": name, "password": password, "role": role})

    def admin_password(self, name: str, password: str) -> dict[str, Any]:
        path = "/admins/" + quote(name, safe="") + "/password"
        return self._object("POST", path, {"password": password})

    def admin_action(self, name: str, action: str) -> dict[str, Any]:
        """``action`` disable, enable or unlock on admin ``name``."""
        return self._object("POST", "/admins/" + quote(name, safe="") + "/" + action, {})

    def remove_admin(self, name: str) -> dict[str, Any]:
        return self._object("DELETE", "/admins/" + quote(name, safe=""))

    def tokens(self, admin: str | None = None) -> list[dict[str, Any]]:
        return self._rows("/tokens", {"admin": admin})

    def add_token(self, admin: str, label: str) -> dict[str, Any]:
        """A new API token; the answer's "token" is shown only this once."""
        return self._object("POST", "/tokens", {"admin": admin, "label": label})

    def remove_token(self, token_id: str) -> dict[str, Any]:
        return self._object("DELETE", "/tokens/" + quote(token_id, safe=""))

    def sessions(
        self, limit: int | None = None, terminal: str | None = None
    ) -> list[dict[str, Any]]:
        return self._rows("/sessions", {"limit": limit, "terminal": terminal})

    def audit(self, limit: int | None = None, subject: str | None = None) -> list[dict[str, Any]]:
        return self._rows("/audit", {"limit": limit, "subject": subject})

    def snapshot(self, terminal_id: str) -> bytes:
        """A PNG of what the terminal shows now."""
        path = "/terminals/" + quote(terminal_id, safe="") + "/snapshot.png"
        response = self.request("GET", path)
        if response.status >= 400:
            raise _error(response.status, _decode(response))
        if not response.content_type.startswith("image/png"):
            raise AdminError(f"expected a PNG, got {response.content_type!r}", "")
        return response.body


def _decode(response: Response) -> Any:
    if not response.content_type.startswith("application/json"):
        if response.status >= 400:
            return {"error": f"HTTP {response.status}"}
        raise AdminError(f"expected JSON, got {response.content_type!r}", "check thinserve's log")
    try:
        return json.loads(response.body)
    except ValueError:
        raise AdminError(
            "thinserve sent JSON that does not parse", "check thinserve's log"
        ) from None


def _unexpected(payload: object) -> AdminError:
    return AdminError(
        f"thinserve sent an unexpected answer: {str(payload)[:200]}", "check thinserve's log"
    )


def _error(status: int, payload: Any) -> AdminError:
    if not isinstance(payload, dict):
        payload = {"error": f"HTTP {status}"}
    return AdminError(
        str(payload.get("error") or f"HTTP {status}"),
        str(payload.get("hint") or ""),
        status,
        payload,
    )
