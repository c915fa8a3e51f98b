"""The dashboard's HTTP API as a browser or a script sees it: real HTTP on
loopback, from a worker thread so the reactor keeps serving, with the
session cookie and the CSRF token handled explicitly.

Also: thinserve in this process with its dashboard on a free loopback port,
and a dump of everything the store keeps, to show that a refused request
changed nothing.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads

from thinserve.admin.handlers import Route
from thinserve.broker import BrokerConfig
from thinserve.config import Config, DesktopConfig
from thinserve.dashboard.accounts import Accounts
from thinserve.dashboard.site import DashboardSite
from thinserve.dashboard.wiring import Dashboard
from thinserve.desktop_config import DesktopSetup
from thinserve.service import ThinServe
from thinserve.store.base import Store

API = "/api/v1"
LOGIN_ACTIONS = frozenset({"admin-login", "admin-login-failed", "admin-logout"})
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TIMEOUT = 60.0  # seconds for one request: Argon2 on a busy machine takes a while
NO_BODY = object()  # send no body at all (not even "{}")


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, headers in order (repeats kept) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[-1] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.status} {self.body[:600]!r}"


def send(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Reply:
    """One request on a new connection (blocking: call it in a thread)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=TIMEOUT, source_address=(source, 0)
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


async def request(
    port: int,
    method: str,
    path: str,
    body: Any = NO_BODY,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    source: str = "127.0.0.1",
) -> Reply:
    """``method path`` with ``body`` as JSON (or ``raw`` bytes as they are)."""
    sent = dict(headers or {})
    data = raw
    if body is not NO_BODY:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    result: Reply = await threads.deferToThread(send, port, method, path, data, sent, source)
    return result


def error_code(reply: Reply) -> str:
    """The stable ``code`` of an error answer, after checking its shape."""
    assert (reply.header("Content-Type") or "").startswith("application/json"), reply
    payload = reply.json
    assert isinstance(payload, dict), reply
    assert isinstance(payload.get("message"), str) and payload["message"], reply
    assert isinstance(payload.get("hint"), str), reply
    assert payload.get("error") == payload["message"], reply
    code = payload.get("code")
    assert isinstance(code, str), reply
    return code


@dataclass
class Caller:
    """Someone calling the API: a browser's login (cookie and CSRF token) or
    a script's API token; ``actor`` is what the audit log names them."""

    port: int
    actor: str
    cookie: str | None = None
    csrf: str | None = None
    token: str | None = None
    source: str = "127.0.0.1"
    answered: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status

    def headers(self, csrf: str | None) -> dict[str, str]:
        headers = {}
        if self.cookie is not None:
            headers["Cookie"] = self.cookie
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return headers

    async def call(
        self,
        method: str,
        path: str,
        body: Any = NO_BODY,
        raw: bytes | None = None,
        csrf: str | bool | None = True,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """``method`` on ``path`` (under /api/v1 unless it starts with /).

        POSTs send ``{}`` unless told otherwise; ``csrf`` True sends the
        session's token, a string sends that, None or False none.
        """
        if body is NO_BODY and raw is None and method in ("POST", "PUT", "PATCH"):
            body = {}
        token = self.csrf if csrf is True else (csrf or None)
        sent = {**self.headers(token if isinstance(token, str) else None), **(headers or {})}
        url = path if path.startswith("/") else f"{API}/{path}"
        reply = await request(self.port, method, url, body, sent, raw, self.source)
        self.answered.append((method, url, reply.status))
        return reply

    async def ok(self, method: str, path: str, body: Any = NO_BODY) -> Any:
        """A call that must succeed: its JSON (or its bytes, if not JSON)."""
        reply = await self.call(method, path, body)
        assert reply.status == 200, f"{method} {path}: {reply}"
        kind = reply.header("Content-Type") or ""
        return reply.json if kind.startswith("application/json") else reply.body


async def login(
    port: int, name: str, password: str, source: str = "127.0.0.1"
) -> tuple[Reply, Caller | None]:
    """POST /api/v1/login; with a 200, the logged-in Caller."""
    reply = await request(
        port, "POST", f"{API}/login", {"name": name, "password": password}, source=source
    )
    if reply.status != 200:
        return reply, None
    cookie = reply.header("Set-Cookie") or ""
    value = cookie.split(";")[0]
    assert value.startswith("thinserve_session="), cookie
    return reply, Caller(port, f"web:{name}", value, reply.json["csrf"], source=source)


async def must_login(port: int, name: str, password: str, source: str = "127.0.0.1") -> Caller:
    reply, caller = await login(port, name, password, source)
    assert caller is not None, f"login as {name}: {reply}"
    return caller


def concrete(route: Route, values: dict[str, str] | None = None, default: str = "x") -> str:
    """A path for ``route``: each ``*`` filled from ``values`` (by the segment
    before it) or ``default``."""
    parts = []
    for index, part in enumerate(route.pattern):
        if part == "*":
            before = route.pattern[index - 1] if index else ""
            parts.append((values or {}).get(before, default))
        else:
            parts.append(part)
    return "/".join(parts)


def route_of(routes: tuple[Route, ...], method: str, path: str) -> Route | None:
    """The route that ``method path`` (under /api/v1) reaches, if any."""
    if not path.startswith(API + "/"):
        return None
    segments = path[len(API) + 1 :].split("?")[0].strip("/").split("/")
    for route in routes:
        if route.method != method or len(route.pattern) != len(segments):
            continue
        if all(p in ("*", s) for p, s in zip(route.pattern, segments, strict=True)):
            return route
    return None


# -- the store ------------------------------------------------------------------------------
def store_dump(store: Store) -> dict[str, Any]:
    """Everything the store keeps, through its API, but the audit log's logins
    (each login or logout is logged, and tests log in as they go)."""
    terminals = store.list_terminals()
    return {
        "terminals": terminals,
        "desktops": store.list_desktops(),
        "pairings": store.list_pairings(),
        "pairing_codes": [store.pairing_code_for(t.id) for t in terminals],
        "users": [(u, store.user_secret_hash(u.name)) for u in store.list_users()],
        "admins": [(a, store.admin_secret_hash(a.name)) for a in store.list_admins()],
        "api_tokens": [(t, store.token_hash(t.id)) for t in store.list_tokens()],
        "sessions": store.list_sessions(limit=100_000),
        "audit": [e for e in store.list_audit(limit=1_000_000) if e.action not in LOGIN_ACTIONS],
    }


def dump_difference(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What changed between two dumps, table by table ('' if nothing)."""
    lines = []
    for table in before:
        if before[table] != after[table]:
            lines.append(f"{table}: {before[table]!r} -> {after[table]!r}")
    return "\n".join(lines)


# -- thinserve with its dashboard -----------------------------------------------------------
@dataclass
class Served:
    """thinserve running in this process, and its dashboard."""

    ts: ThinServe
    port: int  # the dashboard's
    dashboard: Dashboard

    @property
    def store(self) -> Store:
        assert self.ts.store is not None
        return self.ts.store

    @property
    def accounts(self) -> Accounts:
        return self.dashboard.admin.accounts

    @property
    def terminal_port(self) -> int:
        return self.ts.port_numbers[0]

    async def add_admin(self, name: str, password: str, role: str = "admin") -> None:
        await self.accounts.add(name, password, role, "test")

    def add_token(self, admin: str, label: str) -> str:
        return self.accounts.add_token(admin, label, "test")[1]


async def serve(
    tmp_path: Path,
    desktops: tuple[DesktopConfig, ...],
    setup: DesktopSetup | None = None,
    runtime_dir: Path | None = None,
) -> Served:
    """thinserve with its dashboard on a free loopback port and no other web
    listener; discovery off; keyless viewers on loopback known by address."""
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        dashboard_listen=("tcp:port=0:interface=127.0.0.1",),
        broker=BrokerConfig(),
        database=str(tmp_path / "thinserve.db"),
        admin_socket="",
        discovery=False,
        address_pairing=("127.0.0.0/8",),
        desktops=desktops,
        local_desktops=(),
        state_dir=tmp_path / "state",
        runtime_dir=runtime_dir or tmp_path / "run",
        stop_desktops=True,
        setup=setup or DesktopSetup(),
        source="test",
    )
    ts = ThinServe(config, reactor)
    await ts.startService()
    try:
        dashboard = next(s for s in ts if isinstance(s, Dashboard))
        return Served(ts, dashboard_port(ts), dashboard)
    except BaseException:
        await ts.stopService()
        raise


def dashboard_port(ts: ThinServe) -> int:
    """The port the dashboard's site listens on, of the service's listeners."""
    for listeners in ts.listeners:
        for listener in listeners:
            if isinstance(getattr(listener, "factory", None), DashboardSite):
                return int(getattr(listeners.ports()[0].getHost(), "port", 0))
    raise AssertionError("thinserve runs no dashboard listener")


def send_chunked(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
    """``body`` in chunks, without a Content-Length (blocking: call it in a thread)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))
        sent = {**headers, "Content-Type": "application/json"}
        connection.request(method, path, body=chunks, headers=sent, encode_chunked=True)
        response = connection.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


async def chunked(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
    result: Reply = await threads.deferToThread(send_chunked, port, method, path, body, headers)
    return result
