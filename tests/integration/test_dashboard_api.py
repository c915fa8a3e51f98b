"""The dashboard's JSON API over real HTTP, against thinserve in this process
with real Xvnc desktops (two VNC servers it relays, one session it runs)
and a real RFB terminal.

Every route of the table the dashboard serves (DASHBOARD_ROUTES) is walked
through: nobody gets anything without a login or an API token, a helpdesk
account gets nothing that needs the admin role, a session's change without
its CSRF token is refused, bad input gets a stable error code, and good
input does what it says and is audited under the caller's name.  The
OpenAPI document is compared with what the handlers accept.  A refused
request must change nothing: the store is dumped, table by table, before
and after.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import threads

from tests.integration.test_desktops import need_xvnc_session, runtime_dir  # noqa: F401
from tests.integration.test_rfb_interop import office_frame
from tests.support.dashboard_api import (
    API,
    NO_BODY,
    UNSAFE,
    Caller,
    Reply,
    Served,
    chunked,
    concrete,
    dump_difference,
    error_code,
    login,
    must_login,
    request,
    route_of,
    send,
    serve,
    store_dump,
)
from tests.support.need import need
from tests.support.pixels import read_image
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from tests.support.xvnc import XvncServer
from thinserve.admin.handlers import Route
from thinserve.admin.openapi import PARAMETER_NAMES
from thinserve.backends.xvnc import XvncDesktopConfig
from thinserve.config import DesktopConfig
from thinserve.dashboard.accounts import LOCK_AFTER
from thinserve.dashboard.wiring import DASHBOARD_ROUTES
from thinserve.desktop_config import DesktopSetup
from thinserve.relay import screens
from thinserve.store.base import Admin, Store, User

pytestmark = pytest.mark.integration

ADA, ADA_PASSWORD = "ada", "ada's long dashboard password"  # admin role
HAL, HAL_PASSWORD = "hal", "hal's long helpdesk password"  # helpdesk role
TERMINAL = "viewer-127.0.0.2"  # the terminal, keyless, known by its address
WIDTH, HEIGHT = 320, 240
OVER_64K = 65 * 1024
# What the dashboard serves beside the route table, all behind the login.
EXTRAS = (
    ("GET", f"{API}/events"),
    ("GET", f"{API}/thumbnails/desktops/d1.jpg"),
    ("GET", f"{API}/thumbnails/terminals/{TERMINAL}.jpg"),
    ("GET", f"{API}/openapi.json"),
    ("GET", f"{API}/session"),
    ("GET", f"{API}/viewers/rfb?ticket=x"),
    ("GET", "/metrics"),
)


@dataclass
class World:
    """thinserve with desktops d1, d2 (Xvnc it relays) and s1 (an Xvnc session
    it runs, stopped); a terminal showing its pairing screen; user bob; admin
    ada (logged in, and her API token "script") and helpdesk hal (logged in)."""

    served: Served
    frame: np.ndarray
    term: Terminal
    ada: Caller
    hal: Caller
    script: Caller
    token_id: str

    @property
    def port(self) -> int:
        return self.served.port

    def dump(self) -> dict[str, Any]:
        return store_dump(self.served.store)

    def pairing_code(self) -> str:
        code = self.served.store.pairing_code_for(TERMINAL)
        assert code is not None, "the terminal shows no pairing code"
        return code.code

    def values(self) -> dict[str, str]:
        """Names for the routes' path parameters, by the segment before them."""
        return {
            "terminals": TERMINAL,
            "desktops": "s1",
            "users": "bob",
            "admins": HAL,
            "tokens": self.token_id,
        }

    def good_body(self, route: Route) -> Any:
        """A body the route would accept now (``{}`` for one it does not know)."""
        bodies: dict[str, Any] = {
            "post_pair": {"terminal": TERMINAL, "desktop": "d2", "by_address": True},
            "post_pair_code": {"code": self.pairing_code(), "desktop": "d1", "by_address": True},
            "post_unpair": {"terminal": TERMINAL},
            "post_kick": {"terminal": TERMINAL},
            "post_shadow": {"terminal": TERMINAL, "desktop": "d1"},
            "post_unshadow": {"terminal": TERMINAL},
            "post_users": {"name": "tina", "secret": "2468"},
            "post_viewers": {"desktop": "d1", "mode": "view"},
            "post_admins": {"name": "carol", "password": "carol's long password", "role": "admin"},
            "post_admin_password": {"password": "a new long password"},
            "post_tokens": {"admin": ADA, "label": "grafana"},
            "post_user_secret": {"secret": "9999"},
        }
        if route.method not in ("POST", "PUT", "PATCH"):
            return NO_BODY
        return bodies.get(route.handler, {})

    def path(self, route: Route) -> str:
        return f"{API}/{concrete(route, self.values())}"


async def make_world(xvnc: Callable[..., XvncServer], tmp_path: Path, runtime: Path) -> World:
    need_xvnc_session()
    d1, d2 = xvnc(size=(WIDTH, HEIGHT)), xvnc(size=(WIDTH, HEIGHT))
    frame = office_frame(WIDTH, HEIGHT)
    d1.paint(frame)
    session = XvncDesktopConfig("s1", geometry=f"{WIDTH}x{HEIGHT}", command="sleep 600")
    relayed = tuple(DesktopConfig(n, f"{s.host}:{s.port}") for n, s in (("d1", d1), ("d2", d2)))
    served = await serve(tmp_path, relayed, DesktopSetup(xvnc_desktops=((session, None),)), runtime)
    term = Terminal()
    try:
        await wait_until(lambda: all(u.live for u in served.ts.upstreams), 30, "live desktops")
        await served.add_admin(ADA, ADA_PASSWORD)
        await served.add_admin(HAL, HAL_PASSWORD, "helpdesk")
        token = served.add_token(ADA, "script")
        hub = served.ts.hub
        assert hub is not None
        hub.apply(hub.broker.add_user("bob", "1357", "test"))
        await term.connect(served.terminal_port, source="127.0.0.2")
        ada = await must_login(served.port, ADA, ADA_PASSWORD)
        hal = await must_login(served.port, HAL, HAL_PASSWORD)
        script = Caller(served.port, f"token:{ADA}/script", token=token)
        token_id = token.split("_")[1]
        return World(served, frame, term, ada, hal, script, token_id)
    except BaseException:
        term.close()
        await served.ts.stopService()
        raise


async def stop_world(world: World) -> None:
    world.term.close()
    await world.served.ts.stopService()


def all_requests(world: World) -> list[tuple[str, str, Any]]:
    """Every route with a body it would accept, then what the site serves beside."""
    table = [(r.method, world.path(r), world.good_body(r)) for r in DASHBOARD_ROUTES]
    return table + [(method, path, NO_BODY) for method, path in EXTRAS]


def unchanged(world: World, before: dict[str, Any], what: str) -> None:
    difference = dump_difference(before, world.dump())
    assert not difference, f"{what} changed the store:\n{difference}"


CLOCKS = ("connected_for", "idle_for")  # seconds, which run on between two reads


def without_clocks(row: dict[str, Any]) -> dict[str, Any]:
    """A terminal's row with the session's running clocks left out."""
    session = {k: v for k, v in row["session"].items() if k not in CLOCKS}
    return {**row, "session": session}


def admin(store: Store, name: str) -> Admin:
    found = store.get_admin(name)
    assert found is not None, f"no admin {name!r}"
    return found


def user(store: Store, name: str) -> User:
    found = store.get_user(name)
    assert found is not None, f"no user {name!r}"
    return found


def paired(store: Store, terminal: str) -> str | None:
    pairing = store.pairing_for(terminal)
    return pairing.desktop if pairing is not None else None


# -- who may call what --------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_every_route_needs_a_login_the_role_and_the_csrf_token(
    xvnc: Callable[..., XvncServer],
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    world = await make_world(xvnc, tmp_path, runtime_dir)
    try:
        before = world.dump()
        nobody = Caller(world.port, "nobody")
        for method, path, body in all_requests(world):
            reply = await nobody.call(method, path, body)
            assert (reply.status, error_code(reply)) == (401, "unauthenticated"), (
                f"{method} {path} without a login: {reply}"
            )
        unchanged(world, before, "calls without a login")

        # A helpdesk account: nothing that needs the admin role, and what it may
        # call is reached (an empty body is refused by the handler, not the role).
        for route in DASHBOARD_ROUTES:
            path = world.path(route)
            if route.needs == "admin":
                reply = await world.hal.call(route.method, path, world.good_body(route))
                assert (reply.status, error_code(reply)) == (403, "forbidden"), (
                    f"{route.method} {path} as helpdesk: {reply}"
                )
                assert f"web:hal (helpdesk) may not {route.method} {path}" in reply.json["message"]
            else:
                reply = await world.hal.call(route.method, path)
                assert reply.status not in (401, 403), f"{route.method} {path} as helpdesk: {reply}"
                if route.method == "GET":
                    assert reply.status == 200, f"{route.method} {path} as helpdesk: {reply}"
        for method, path in EXTRAS:
            if path.endswith("/events") or "/viewers/rfb" in path:
                continue  # a stream, and a WebSocket upgrade
            reply = await world.hal.call(method, path)
            assert reply.status == 200, f"{method} {path} as helpdesk: {reply}"
        unchanged(world, before, "a helpdesk account's calls")

        # An admin's session, but no or a wrong CSRF token: no change goes through.
        for method, path, body in all_requests(world):
            if method not in UNSAFE:
                continue
            for csrf in (None, "wrong", world.hal.csrf):
                reply = await world.ada.call(method, path, body, csrf=csrf)
                assert (reply.status, error_code(reply)) == (403, "csrf"), (
                    f"{method} {path} with CSRF token {csrf!r}: {reply}"
                )
        reply = await world.ada.call("POST", f"{API}/logout", csrf=None)
        assert (reply.status, error_code(reply)) == (403, "csrf")
        assert not reply.all("Set-Cookie"), "a refused logout must not clear the cookie"
        assert (await world.ada.call("GET", f"{API}/session")).status == 200, "still logged in"
        unchanged(world, before, "changes without the CSRF token")

        # An API token needs no CSRF token; a wrong one gets nothing.
        state = await world.script.ok("GET", "state")
        assert TERMINAL in state["connected"]
        answer = await world.script.ok("POST", "users", {"name": "tina", "secret": "2468"})
        assert answer["user"]["name"] == "tina"
        entry = world.served.store.list_audit(limit=1_000_000)[-1]
        assert (entry.actor, entry.action, entry.subject) == (
            "token:ada/script",
            "user-add",
            "tina",
        )
        before = world.dump()
        token = world.script.token or ""
        wrong_tokens = (
            token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),  # its secret wrong
            f"tst_{'0' * 16}_{token.split('_', 2)[2]}",  # no such id
            "not-a-token",
        )
        for wrong in wrong_tokens:
            forger = Caller(world.port, "forger", token=wrong)
            for method, path, body in all_requests(world):
                reply = await forger.call(method, path, body)
                assert (reply.status, error_code(reply)) == (401, "unauthenticated"), (
                    f"{method} {path} with token {wrong!r}: {reply}"
                )
        # A wrong token next to a good session is still wrong: the token decides.
        reply = await world.ada.call("GET", "state", headers={"Authorization": "Bearer x"})
        assert (reply.status, error_code(reply)) == (401, "unauthenticated")
        unchanged(world, before, "calls with a wrong API token")
    finally:
        await stop_world(world)


# -- bad input ---------------------------------------------------------------------------------
def wrong_values(schema: dict[str, Any]) -> list[Any]:
    """Values a field of ``schema`` must refuse: the wrong type, empty, too long."""
    if schema.get("type") == "boolean":
        return ["yes", 1, None]
    wrong: list[Any] = [7, ["a"], {"a": 1}, True, "", "x" * 5000]
    if "enum" in schema:
        wrong.append("nope")
    return wrong


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    xvnc: Callable[..., XvncServer],
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    world = await make_world(xvnc, tmp_path, runtime_dir)
    ada = world.ada
    try:
        document = await ada.ok("GET", "openapi.json")
        before = world.dump()

        async def refused(
            status: int, code: str, method: str, path: str, body: Any = NO_BODY, **kw: Any
        ) -> Reply:
            reply = await ada.call(method, path, body, **kw)
            assert (reply.status, error_code(reply)) == (status, code), (
                f"{method} {path} {body!r:.200} {kw!r:.200}: {reply}"
            )
            return reply

        for route in DASHBOARD_ROUTES:
            if route.method not in ("POST", "PUT", "PATCH"):
                continue
            path, good = world.path(route), world.good_body(route)
            reply = await refused(400, "bad_request", route.method, path, {**good, "bogus": 1})
            assert "bogus" in reply.json["message"] and "allowed:" in reply.json["hint"]
            await refused(400, "bad_request", route.method, path, raw=b"{not json", headers=JSON)
            await refused(400, "bad_request", route.method, path, raw=b"[1, 2]", headers=JSON)
            await refused(400, "bad_request", route.method, path, raw=b'"text"', headers=JSON)
            raw = json.dumps(good).encode()
            for kind in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
                await refused(
                    415,
                    "unsupported_media_type",
                    route.method,
                    path,
                    raw=raw,
                    headers={"Content-Type": kind},
                )
            await refused(415, "unsupported_media_type", route.method, path, raw=raw)
            schema = body_schema(document, route)
            for name, field_schema in (schema or {}).get("properties", {}).items():
                for value in wrong_values(field_schema):
                    await refused(400, "bad_request", route.method, path, {**good, name: value})
            for name in (schema or {}).get("required", []):
                missing = {k: v for k, v in good.items() if k != name}
                await refused(400, "bad_request", route.method, path, missing)
        unchanged(world, before, "bad bodies")

        # Query parameters.
        for path in ("sessions", "audit", "tokens"):
            await refused(400, "bad_request", "GET", f"{path}?bogus=1")
        for query in ("limit=0", "limit=abc", "limit=1001", "limit=-1", "limit=" + "9" * 30):
            await refused(400, "bad_request", "GET", f"sessions?{query}")
            await refused(400, "bad_request", "GET", f"audit?{query}")
        await refused(400, "bad_request", "GET", "audit?after=1&before=5")
        await refused(400, "bad_request", "GET", "audit?before=0")

        # Paths and methods that do not exist.
        await refused(404, "not_found", "GET", "nothing-here")
        await refused(404, "not_found", "POST", "users/bob/nothing-here", {})
        await refused(405, "method_not_allowed", "PUT", "users", {})
        await refused(405, "method_not_allowed", "GET", "kick")
        await refused(400, "bad_request", "GET", "terminals/%ff")

        # Unknown names, in the path or in the body.
        for route in DASHBOARD_ROUTES:
            if "*" not in route.pattern:
                continue
            path = f"{API}/{concrete(route, default='no-such-name')}"
            await refused(404, "not_found", route.method, path, world.good_body(route))
        unknown = {
            "post_pair": [{"terminal": "viewer-127.9.9.9"}, {"desktop": "nope"}],
            "post_unpair": [{"terminal": "viewer-127.9.9.9"}],
            "post_kick": [{"terminal": "viewer-127.9.9.9"}],
            "post_shadow": [{"terminal": "viewer-127.9.9.9"}, {"desktop": "nope"}],
            "post_unshadow": [{"terminal": "viewer-127.9.9.9"}],
            "post_users": [{"desktop": "nope"}],
            "post_viewers": [{"desktop": "nope"}],
            "post_tokens": [{"admin": "nope"}],
            "post_pair_code": [{"desktop": "nope"}],
        }
        for route in DASHBOARD_ROUTES:
            for change in unknown.get(route.handler, []):
                body = {**world.good_body(route), **change}
                await refused(404, "not_found", route.method, world.path(route), body)
        unchanged(world, before, "unknown names")

        # A wrong pairing code is a failed try at guessing, and logged as one.
        pair_code = next(r for r in DASHBOARD_ROUTES if r.handler == "post_pair_code")
        body = {**world.good_body(pair_code), "code": "ZZZ-ZZZ"}
        await refused(404, "not_found", "POST", world.path(pair_code), body)
        after = world.dump()
        assert after["audit"][: len(before["audit"])] == before["audit"]
        (entry,) = after["audit"][len(before["audit"]) :]
        assert (entry.actor, entry.action) == ("web:ada", "pair-code-failed")
        after["audit"] = before["audit"]
        assert not dump_difference(before, after)
    finally:
        await stop_world(world)


JSON = {"Content-Type": "application/json"}


@pytest_twisted.ensureDeferred
async def test_a_body_over_64_kib_gets_the_apis_too_large_answer(
    xvnc: Callable[..., XvncServer],
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    """Sent with a Content-Length or in chunks, to every route that takes a body."""
    world = await make_world(xvnc, tmp_path, runtime_dir)
    ada = world.ada
    try:
        before = world.dump()
        for route in DASHBOARD_ROUTES:
            if route.method not in ("POST", "PUT", "PATCH"):
                continue
            path = world.path(route)
            padded = json.dumps({**world.good_body(route), "pad": "x" * OVER_64K}).encode()
            reply = await ada.call(route.method, path, raw=padded, headers=JSON)
            assert (reply.status, error_code(reply)) == (413, "too_large"), f"{path}: {reply}"
            reply = await chunked(world.port, route.method, path, padded, ada.headers(ada.csrf))
            assert (reply.status, error_code(reply)) == (413, "too_large"), f"{path}: {reply}"
        unchanged(world, before, "bodies over 64 KiB")
    finally:
        await stop_world(world)


def openapi_path(route: Route) -> str:
    """The route's path as the OpenAPI document writes it (without /api/v1)."""
    parts = []
    for index, part in enumerate(route.pattern):
        if part == "*":
            before = route.pattern[index - 1] if index else ""
            parts.append("{" + PARAMETER_NAMES.get(before, "name") + "}")
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def body_schema(document: dict[str, Any], route: Route) -> dict[str, Any] | None:
    operation = document["paths"][openapi_path(route)][route.method.lower()]
    body = operation.get("requestBody")
    if body is None:
        return None
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


# -- good input --------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_every_route_does_its_work_and_is_audited_under_the_callers_name(
    xvnc: Callable[..., XvncServer],
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    world = await make_world(xvnc, tmp_path, runtime_dir)
    ada, script, term, store = world.ada, world.script, world.term, world.served.store
    hub = world.served.ts.hub
    assert hub is not None
    manager = world.served.ts.desktops
    assert manager is not None

    async def change(caller: Caller, method: str, path: str, body: Any, action: str) -> Any:
        """A change that must succeed and be audited as ``action`` by ``caller``."""
        last = store.list_audit(limit=1_000_000)[-1].id
        answer = await caller.ok(method, path, body)
        new = [(e.actor, e.action) for e in store.list_audit(after_id=last)]
        assert (caller.actor, action) in new, f"{method} {path}: audited {new}"
        return answer

    try:
        # Reading.
        state = await ada.ok("GET", "state")
        assert state["connected"] == [TERMINAL] and state["desktops"]["s1"] == "stopped"
        rows = await ada.ok("GET", "terminals")
        row = next(r for r in rows if r["id"] == TERMINAL)
        one = await ada.ok("GET", f"terminals/{TERMINAL}")
        assert without_clocks(row) == without_clocks(one)
        for clock in CLOCKS:
            assert 0 <= one["session"][clock] - row["session"][clock] <= 5, clock
        code = row["pairing_code"]
        assert code and row["shows"]["kind"] == "pairing"
        text = screens.pairing(TERMINAL, code, row["shows"]["message"])
        pairing = screens.render(text, row["session"]["width"], row["session"]["height"])
        await term.wait_screen(pairing)
        shot = await ada.call("GET", f"terminals/{TERMINAL}/snapshot.png")
        assert shot.status == 200 and shot.header("Content-Type") == "image/png"
        (tmp_path / "shot.png").write_bytes(shot.body)
        assert np.array_equal(read_image(tmp_path / "shot.png"), pairing)
        desktops = {d["name"]: d for d in await ada.ok("GET", "desktops")}
        assert set(desktops) == {"d1", "d2", "s1"}
        assert [u["name"] for u in await ada.ok("GET", "users")] == ["bob"]
        assert await script.ok("GET", "sessions") == []
        audit = await ada.ok("GET", "audit?limit=5")
        assert len(audit) == 5 and audit[-1]["id"] == store.list_audit(limit=10**6)[-1].id
        admins = {a["name"]: a["role"] for a in await ada.ok("GET", "admins")}
        assert admins == {ADA: "admin", HAL: "helpdesk"}
        tokens = await ada.ok("GET", "tokens")
        assert [(t["id"], t["admin"], t["label"]) for t in tokens] == [
            (world.token_id, ADA, "script")
        ]
        assert "token" not in tokens[0]

        # The terminal is paired by the code on its screen, and shows d1.
        body = {"code": code, "desktop": "d1", "by_address": True}
        answer = await change(ada, "POST", "pair-code", body, "pair")
        assert answer["terminal"]["paired_desktop"] == "d1"
        await term.wait_screen(world.frame)
        assert store.pairing_for(TERMINAL) is not None
        await change(ada, "POST", "unpair", {"terminal": TERMINAL}, "unpair")
        assert store.pairing_for(TERMINAL) is None

        # Watching d1 without a pairing, then stopping.
        await change(ada, "POST", "shadow", {"terminal": TERMINAL, "desktop": "d1"}, "shadow")
        await term.wait_screen(world.frame)
        assert TERMINAL in hub.broker.snapshot().watchers
        await change(script, "POST", "unshadow", {"terminal": TERMINAL}, "unshadow")
        assert TERMINAL not in hub.broker.snapshot().watchers

        body = {"terminal": TERMINAL, "desktop": "d1", "by_address": True}
        await change(script, "POST", "pair", body, "pair")
        assert paired(store, TERMINAL) == "d1"
        await term.wait_screen(world.frame)

        # Users.
        body = {"name": "tina", "secret": "2468", "desktop": "d2"}
        answer = await change(ada, "POST", "users", body, "user-add")
        assert answer["user"]["name"] == "tina" and store.get_user("tina") is not None
        hashed = store.user_secret_hash("tina")
        await change(script, "POST", "users/tina/secret", {"secret": "8642"}, "user-secret")
        assert store.user_secret_hash("tina") not in (None, hashed)
        answer = await change(ada, "POST", "users/tina/disable", {}, "user-disable")
        assert answer["user"]["disabled"] and user(store, "tina").disabled
        answer = await change(ada, "POST", "users/tina/enable", {}, "user-enable")
        assert not user(store, "tina").disabled
        await change(ada, "DELETE", "users/tina", NO_BODY, "user-delete")
        assert store.get_user("tina") is None

        # Admin accounts.
        body = {"name": "carol", "password": "carol's long password", "role": "helpdesk"}
        answer = await change(ada, "POST", "admins", body, "admin-add")
        assert answer["admin"]["role"] == "helpdesk"
        carol = await must_login(world.port, "carol", "carol's long password")
        assert (await carol.call("GET", "state")).status == 200
        hashed = store.admin_secret_hash("carol")
        body = {"password": "carol's newer password"}
        await change(ada, "POST", "admins/carol/password", body, "admin-password")
        assert store.admin_secret_hash("carol") not in (None, hashed)
        assert (await carol.call("GET", "state")).status == 401, "a new password ends sessions"
        carol = await must_login(world.port, "carol", "carol's newer password")
        answer = await change(script, "POST", "admins/carol/disable", {}, "admin-disable")
        assert answer["admin"]["disabled"] and admin(store, "carol").disabled
        assert (await carol.call("GET", "state")).status == 401, "disabling ends sessions"
        await change(ada, "POST", "admins/carol/enable", {}, "admin-enable")
        assert not admin(store, "carol").disabled
        store.record_admin_failure("carol", 1.0, 2**40)
        answer = await change(ada, "POST", "admins/carol/unlock", {}, "admin-unlock")
        assert not answer["admin"]["locked"] and admin(store, "carol").failures == 0

        # API tokens: made (shown once), used, removed.
        answer = await change(
            ada, "POST", "tokens", {"admin": "carol", "label": "cli"}, "token-add"
        )
        made = Caller(world.port, "token:carol/cli", token=answer["token"])
        assert [t["id"] for t in await ada.ok("GET", "tokens?admin=carol")] == [answer["id"]]
        assert (await made.ok("GET", "state"))["connected"] == [TERMINAL]
        assert (await made.call("GET", "admins")).status == 403, "carol is helpdesk"
        await change(ada, "DELETE", f"tokens/{answer['id']}", NO_BODY, "token-remove")
        assert store.get_token(answer["id"]) is None
        assert (await made.call("GET", "state")).status == 401
        await change(script, "DELETE", "admins/carol", NO_BODY, "admin-remove")
        assert store.get_admin("carol") is None

        # A desktop thinserve runs: started, stopped, reset.
        answer = await change(ada, "POST", "desktops/s1/start", {}, "desktop-start")
        assert answer["desktop"]["state"] == "running" and manager.running() == ["s1"]
        answer = await change(script, "POST", "desktops/s1/stop", {}, "desktop-stop")
        assert answer["desktop"]["state"] == "stopped" and manager.running() == []
        answer = await change(ada, "POST", "desktops/s1/reset", {}, "desktop-reset")
        assert answer["desktop"]["state"] == "stopped"

        # Viewer tickets (a ticket is no change; opening the viewer is audited).
        answer = await ada.ok("POST", "viewers", {"desktop": "d1", "mode": "control"})
        assert answer["ticket"] and answer["mode"] == "control" and "#ticket=" in answer["url"]
        answer = await world.hal.ok("POST", "viewers", {"desktop": "d2"})
        assert answer["mode"] == "view"
        reply = await world.hal.call("POST", "viewers", {"desktop": "d2", "mode": "control"})
        assert (reply.status, error_code(reply)) == (403, "forbidden")

        # Kicked, then forgotten.
        await change(world.hal, "POST", "kick", {"terminal": TERMINAL}, "kick")
        await wait_until(lambda: term.closed, 15, "the kicked terminal's connection to close")
        await wait_until(lambda: TERMINAL not in hub.terminals, 15, "thinserve to see it go")
        await change(ada, "DELETE", f"terminals/{TERMINAL}", NO_BODY, "terminal-forget")
        assert store.get_terminal(TERMINAL) is None and store.pairing_for(TERMINAL) is None

        # A desktop removed from the configuration is forgotten.
        config = world.served.ts.config
        await world.served.ts.reload(dataclasses.replace(config, desktops=config.desktops[:1]))
        await change(ada, "DELETE", "desktops/d2", NO_BODY, "desktop-forget")
        assert store.get_desktop("d2") is None

        # Every route answered 200 at least once.
        answered = {
            route_of(DASHBOARD_ROUTES, method, path)
            for caller in (ada, script, world.hal)
            for method, path, status in caller.answered
            if status == 200
        }
        missing = [
            f"{r.method} /{'/'.join(r.pattern)}" for r in DASHBOARD_ROUTES if r not in answered
        ]
        assert not missing, f"routes never exercised: {missing}"
    finally:
        await stop_world(world)


# -- the OpenAPI document ------------------------------------------------------------------------
def allowed_of(reply: Reply) -> set[str]:
    """The names an unknown-field or unknown-parameter answer lists as allowed."""
    assert reply.status == 400, reply
    hint = reply.json["hint"]
    assert hint.startswith("allowed:"), reply
    return {name.strip() for name in hint.removeprefix("allowed:").split(",") if name.strip()}


@pytest_twisted.ensureDeferred
async def test_the_openapi_document_says_what_the_handlers_accept(
    xvnc: Callable[..., XvncServer],
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    world = await make_world(xvnc, tmp_path, runtime_dir)
    ada = world.ada
    try:
        document = await ada.ok("GET", "openapi.json")
        validate = openapi_validator()
        validate(document)
        assert document["servers"] == [{"url": API}]

        listed = {
            (path, method.upper())
            for path, operations in document["paths"].items()
            for method in operations
        }
        routes = {(openapi_path(r), r.method) for r in DASHBOARD_ROUTES}
        assert routes <= listed, f"routes missing from the document: {routes - listed}"
        special = listed - routes
        assert special == {
            ("/login", "POST"),
            ("/logout", "POST"),
            ("/session", "GET"),
            ("/events", "GET"),
            ("/thumbnails/desktops/{desktop}.jpg", "GET"),
            ("/thumbnails/terminals/{terminal}.jpg", "GET"),
            ("/viewers/rfb", "GET"),
        }
        # What is listed beside the routes exists.
        reply = await ada.call("POST", f"{API}/login", {})
        assert (reply.status, error_code(reply)) == (400, "bad_request")
        assert (await ada.call("GET", f"{API}/session")).json["name"] == ADA
        reply = await ada.call("GET", f"{API}/viewers/rfb")
        assert (reply.status, error_code(reply)) == (403, "forbidden")  # no ticket
        headers = ada.headers(None)
        status, kind = await threads.deferToThread(first_line, world.port, f"{API}/events", headers)
        assert status == 200 and kind.startswith("text/event-stream")

        async def thumbnail(path: str) -> Reply | None:
            reply = await ada.call("GET", path)
            return reply if reply.status == 200 else None

        for path in ("thumbnails/desktops/d1.jpg", f"thumbnails/terminals/{TERMINAL}.jpg"):
            reply = await wait_until(partial(thumbnail, path), 30, path)
            assert reply.header("Content-Type") == "image/jpeg"
        reply = await (Caller(world.port, "?", cookie=ada.cookie)).call("POST", f"{API}/logout")
        assert (reply.status, error_code(reply)) == (403, "csrf")

        # Each route's body and query parameters are what its handler accepts.
        for route in DASHBOARD_ROUTES:
            path = world.path(route)
            operation = document["paths"][openapi_path(route)][route.method.lower()]
            assert operation["x-thinserve-role"] == route.needs
            in_path = [p["name"] for p in operation["parameters"] if p["in"] == "path"]
            assert len(in_path) == route.pattern.count("*"), route
            if route.method in ("POST", "PUT", "PATCH"):
                reply = await ada.call(route.method, path, {"zz-unknown": 1})
                allowed = allowed_of(reply)
                schema = body_schema(document, route)
                fields = set(schema["properties"]) if schema else set()
                assert fields == allowed, (
                    f"{route.method} {path}: document {fields}, handler {allowed}"
                )
            query = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
            if route.method == "GET":
                reply = await ada.call("GET", f"{path}?zz-unknown=1")
                if reply.status == 400:
                    assert query == allowed_of(reply), f"GET {path}"
                else:  # a route without query parameters need not refuse one
                    assert reply.status == 200 and not query, f"GET {path}: {reply}"
    finally:
        await stop_world(world)


def openapi_validator() -> Callable[[dict[str, Any]], None]:
    """openapi-spec-validator's check (in setup.cfg's test extras)."""
    try:
        from openapi_spec_validator import validate
    except ImportError:
        need(False, "pip install openapi-spec-validator (setup.cfg's test extras)")
        raise
    return validate


def first_line(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """The status and Content-Type of a streaming answer, without reading its body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or ""
    finally:
        sock = connection.sock
        if sock is not None:
            sock.close()
        connection.close()


# -- logging in -----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_login_is_hardened_over_plain_loopback_http(
    xvnc: Callable[..., XvncServer],
    tmp_path: Path,
    runtime_dir: Path,  # noqa: F811
) -> None:
    world = await make_world(xvnc, tmp_path, runtime_dir)
    port, store = world.port, world.served.store
    try:
        # The cookie: HttpOnly, SameSite=Strict, not Secure over plain HTTP.
        reply, bea = await login(port, HAL, HAL_PASSWORD, source="127.0.0.5")
        assert bea is not None and reply.json["role"] == "helpdesk" and reply.json["csrf"]
        (cookie,) = reply.all("Set-Cookie")
        attributes = [a.strip() for a in cookie.split(";")]
        assert attributes[0].startswith("thinserve_session=") and len(attributes[0]) > 40
        assert set(attributes[1:]) == {"HttpOnly", "SameSite=Strict", "Path=/"}, cookie
        session = await bea.ok("GET", f"{API}/session")
        assert session == {"name": HAL, "role": "helpdesk", "csrf": bea.csrf, "actor": "web:hal"}

        # Logging out ends the session: its cookie gets nothing any more.
        reply = await bea.call("POST", f"{API}/logout")
        assert reply.status == 200 and reply.json["changed"]
        assert any("Max-Age=0" in c for c in reply.all("Set-Cookie"))
        for path in (f"{API}/session", f"{API}/state", "/metrics"):
            reply = await bea.call("GET", path)
            assert (reply.status, error_code(reply)) == (401, "unauthenticated"), path
        entries = [(e.actor, e.action) for e in store.list_audit(limit=10**6)]
        assert ("web:hal", "admin-logout") in entries

        # Wrong passwords: 401, the same for an unknown name; then 429, with Retry-After.
        for name in ("ghost", ADA):
            reply, caller = await login(port, name, "not the password", source="127.0.0.6")
            assert caller is None and (reply.status, error_code(reply)) == (401, "unauthenticated")
            assert reply.json["message"] == "wrong name or password"
        assert admin(store, ADA).failures == 1
        statuses: list[int] = []
        while not statuses or statuses[-1] == 401:
            assert len(statuses) < 6, f"no back-off after {statuses}"
            reply, _ = await login(port, ADA, "still not it", source="127.0.0.7")
            statuses.append(reply.status)
        assert (reply.status, error_code(reply)) == (429, "rate_limited")
        retry_after = reply.json["retry_after"]
        assert isinstance(retry_after, int) and retry_after >= 1
        assert reply.header("Retry-After") == str(retry_after)
        assert admin(store, ADA).failures == len(statuses)

        # The right password, once the wait is over, clears the count.
        async def logged_in() -> Caller | None:
            reply, caller = await login(port, ADA, ADA_PASSWORD, source="127.0.0.8")
            assert reply.status in (200, 429), reply
            return caller

        await wait_until(logged_in, 60, "a login after the back-off", interval=0.5)
        assert admin(store, ADA).failures == 0

        # LOCK_AFTER wrong in a row lock the account (423) until an admin unlocks it.
        await world.served.add_admin("cy", "cy's long password")
        for _ in range(LOCK_AFTER - 1):
            store.record_admin_failure("cy", 1.0, 0.0)
        reply, _ = await login(port, "cy", "wrong once more", source="127.0.0.9")
        assert reply.status == 401
        reply, caller = await login(port, "cy", "cy's long password", source="127.0.0.10")
        assert caller is None and (reply.status, error_code(reply)) == (423, "locked")
        assert reply.json["retry_after"] > 60
        await world.ada.ok("POST", "admins/cy/unlock", {})
        await must_login(port, "cy", "cy's long password", source="127.0.0.11")

        # The login's own bad input.
        for body in (
            {},
            {"name": ADA},
            {"name": ADA, "password": 5},
            {"name": "", "password": "x"},
        ):
            reply = await request(port, "POST", f"{API}/login", body, source="127.0.0.12")
            assert (reply.status, error_code(reply)) == (400, "bad_request"), body
        reply = await request(
            port,
            "POST",
            f"{API}/login",
            raw=b"name=ada",
            source="127.0.0.12",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert (reply.status, error_code(reply)) == (415, "unsupported_media_type")
        reply = await request(port, "GET", f"{API}/login")
        assert (reply.status, error_code(reply)) == (405, "method_not_allowed")
        padded = json.dumps({"name": ADA, "password": "x" * 20_000}).encode()
        reply = await threads.deferToThread(send, port, "POST", f"{API}/login", padded, JSON)
        assert (reply.status, error_code(reply)) == (413, "too_large")
    finally:
        await stop_world(world)
