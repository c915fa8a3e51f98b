"""Dashboard logins, sessions, CSRF and API tokens, with real Argon2 (tiny costs),
a real SQLite file, real worker threads and real twisted.web requests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

from thinserve.admin.errors import ApiError
from thinserve.admin.principal import Principal
from thinserve.dashboard import accounts as accounts_module
from thinserve.dashboard import auth as auth_module
from thinserve.dashboard.accounts import LOCK_AFTER, LOCK_SECONDS, Accounts
from thinserve.dashboard.auth import Authenticator, LoginResource
from thinserve.secrets import SecretHasher
from thinserve.store.base import Admin, ApiToken
from thinserve.store.sql import SqlStore
from thinserve.verifier import Verifier

PASSWORD = "correct horse battery"
START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class WatchedHasher(SecretHasher):
    """Argon2id with tiny costs, noting which thread each check ran in."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.checks: list[tuple[str | None, str]] = []  # (stored hash, thread name)

    def verify(self, encoded: str | None, secret: str) -> bool:
        self.checks.append((encoded, threading.current_thread().name))
        return super().verify(encoded, secret)


@dataclass
class Answer:
    status: int
    headers: dict[bytes, list[bytes]]
    body: dict[str, Any]

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclass
class World:
    store: SqlStore
    clock: Clock
    hasher: WatchedHasher
    verifier: Verifier
    auth: Authenticator
    login: LoginResource

    @property
    def accounts(self) -> Accounts:
        return self.auth.accounts

    def restart(self) -> World:
        """A new Authenticator (and Accounts) over the same store: memory is gone."""
        auth = Authenticator(self.store, self.hasher, self.verifier, self.clock)
        return World(self.store, self.clock, self.hasher, self.verifier, auth, LoginResource(auth))


@pytest.fixture
def world(store: SqlStore) -> Iterator[World]:
    """On SQLite, then on PostgreSQL (tests/support/stores.py closes the store)."""
    clock, hasher = Clock(), WatchedHasher()
    verifier = Verifier(reactor)
    auth = Authenticator(store, hasher, verifier, clock)
    yield World(store, clock, hasher, verifier, auth, LoginResource(auth))
    verifier.stop()


def make_request(
    method: bytes,
    path: bytes,
    body: Any = None,
    headers: dict[bytes, bytes] | None = None,
    secure: bool = False,
    client: str = "10.0.0.5",
) -> tuple[server.Request, DummyChannel]:
    """A real twisted.web request as its HTTP channel would hand it over."""
    channel = DummyChannel()
    if secure:
        channel.transport = DummyChannel.SSL()
    request = server.Request(channel)
    request.client = IPv4Address("TCP", client, 40000)
    request.method, request.uri, request.path = method, path, path
    request.clientproto = b"HTTP/1.0"  # answers unchunked, easy to read back
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    data = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.gotLength(len(data))  # the body, as the channel hands it over
    request.handleContentChunk(data)
    request.parseCookies()
    return request, channel


async def render(resource: LoginResource, request: server.Request, channel: DummyChannel) -> Answer:
    finished = request.notifyFinish()
    request.render(resource)
    await finished
    raw = channel.transport.written.getvalue()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Answer(int(lines[0].split()[1]), headers, json.loads(body))


async def login(
    world: World, name: str, password: str, secure: bool = False, client: str = "10.0.0.5"
) -> Answer:
    request, channel = make_request(
        b"POST",
        b"/api/v1/login",
        {"name": name, "password": password},
        secure=secure,
        client=client,
    )
    return await render(world.login, request, channel)


async def add_admin(world: World, name: str = "ann", role: str = "admin") -> None:
    await world.accounts.add(name, PASSWORD, role, "admin:root")


def cookie_of(answer: Answer) -> bytes:
    header = answer.header(b"set-cookie")
    assert header is not None
    return header.split(b";")[0]


def principal(
    world: World,
    method: bytes,
    cookie: bytes | None = None,
    csrf: str | None = None,
    token: str | None = None,
    secure: bool = False,
) -> Principal:
    headers = {}
    if cookie is not None:
        headers[b"cookie"] = cookie
    if csrf is not None:
        headers[b"x-csrf-token"] = csrf.encode()
    if token is not None:
        headers[b"authorization"] = b"Bearer " + token.encode()
    request, _ = make_request(method, b"/api/v1/pair", headers=headers, secure=secure)
    return world.auth.principal(request, secure)


def refused(world: World, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        principal(world, *args, **kwargs)
    return caught.value


def actions(world: World) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.subject) for e in world.store.list_audit()]


# -- logging in ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_right_password_logs_in_with_a_strict_cookie_checked_off_the_reactor(
    world: World,
) -> None:
    await add_admin(world)
    answer = await login(world, "ann", PASSWORD)
    assert answer.status == 200
    assert set(answer.body) == {"name", "role", "csrf"}
    assert (answer.body["name"], answer.body["role"]) == ("ann", "admin")
    attributes = answer.header(b"set-cookie")
    assert attributes is not None
    parts = [p.strip() for p in attributes.split(b";")]
    assert parts[0].startswith(b"thinserve_session=") and len(parts[0]) > 40
    assert set(parts[1:]) == {b"HttpOnly", b"SameSite=Strict", b"Path=/"}  # no Secure on HTTP
    assert answer.header(b"cache-control") == b"no-store"
    assert all(thread.startswith("thinserve-verify") for _, thread in world.hasher.checks)
    assert threading.current_thread() is threading.main_thread()

    request, channel = make_request(b"GET", b"/api/v1/session", headers={b"cookie": parts[0]})
    session = await render(world.login, request, channel)
    assert session.status == 200
    assert session.body == {
        "name": "ann",
        "role": "admin",
        "csrf": answer.body["csrf"],
        "actor": "web:ann",
    }
    assert ("web:ann", "admin-login", "ann") in actions(world)


@pytest_twisted.ensureDeferred
async def test_over_tls_the_cookie_is_secure_and_never_accepted_over_plain_http(
    world: World,
) -> None:
    await add_admin(world)
    answer = await login(world, "ann", PASSWORD, secure=True)
    header = answer.header(b"set-cookie")
    assert header is not None and b"; Secure" in header
    cookie = cookie_of(answer)
    assert principal(world, b"GET", cookie, secure=True).actor == "web:ann"
    assert refused(world, b"GET", cookie, secure=False).status == 401


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_name_get_the_same_answer_and_the_same_work(
    world: World,
) -> None:
    await add_admin(world)
    world.hasher.checks.clear()
    wrong = await login(world, "ann", "not the password", client="10.0.0.1")
    unknown = await login(world, "nobody", "not the password", client="10.0.0.2")
    assert wrong.status == unknown.status == 401
    assert wrong.body == unknown.body
    assert wrong.body["code"] == "unauthenticated" and wrong.header(b"set-cookie") is None
    # Both ran one Argon2 check in a worker thread: a real hash, then the dummy one.
    [(real, real_thread), (dummy, dummy_thread)] = world.hasher.checks
    assert real is not None and dummy is None
    assert real_thread.startswith("thinserve-verify") and dummy_thread.startswith(
        "thinserve-verify"
    )
    failed = [a for a in actions(world) if a[1] == "admin-login-failed"]
    assert failed == [("web", "admin-login-failed", "ann"), ("web", "admin-login-failed", "nobody")]


@pytest_twisted.ensureDeferred
async def test_after_three_wrong_passwords_each_try_waits_twice_as_long(world: World) -> None:
    await add_admin(world)
    for _ in range(3):
        assert (await login(world, "ann", "wrong password!")).status == 401
    world.hasher.checks.clear()
    early = await login(world, "ann", PASSWORD)  # even the right one must wait
    assert early.status == 429
    assert early.body["code"] == "rate_limited" and early.body["retry_after"] == 1
    assert early.header(b"retry-after") == b"1"
    assert world.hasher.checks == []  # no Argon2 work while waiting
    world.clock.now += 1
    assert (await login(world, "ann", "wrong password!")).status == 401
    world.clock.now += 1
    assert (await login(world, "ann", PASSWORD)).body["retry_after"] == 1  # 2 s in all
    world.clock.now += 1
    assert (await login(world, "ann", PASSWORD)).status == 200


@pytest_twisted.ensureDeferred
async def test_one_address_trying_many_names_is_slowed_too(world: World) -> None:
    for name in ("a1", "a2", "a3"):
        assert (await login(world, name, "wrong password!")).status == 401
    slowed = await login(world, "a4", "wrong password!")
    assert slowed.status == 429 and slowed.body["retry_after"] == 1
    other = await login(world, "a4", "wrong password!", client="10.0.0.9")
    assert other.status == 401


@pytest_twisted.ensureDeferred
async def test_ten_wrong_passwords_lock_the_account_across_a_restart_until_unlocked(
    world: World,
) -> None:
    await add_admin(world)
    for number in range(LOCK_AFTER):
        answer = await login(world, "ann", f"wrong password {number}", client=f"10.0.1.{number}")
        assert answer.status == 401, answer.body
        world.clock.now += 300  # past every back-off
    locked = await login(world, "ann", PASSWORD, client="10.0.2.1")
    assert locked.status == 423 and locked.body["code"] == "locked"
    assert "thinserve admins unlock ann" in locked.body["hint"]
    assert 0 < locked.body["retry_after"] <= LOCK_SECONDS

    restarted = world.restart()
    assert (await login(restarted, "ann", PASSWORD, client="10.0.2.2")).status == 423
    world.clock.now += LOCK_SECONDS
    assert (await login(restarted, "ann", PASSWORD, client="10.0.2.3")).status == 200
    assert world.store.get_admin("ann") == Admin("ann", "admin", START)  # failures cleared

    for number in range(LOCK_AFTER):
        await login(restarted, "ann", f"wrong again {number}", client=f"10.0.3.{number}")
        world.clock.now += 300
    assert (await login(restarted, "ann", PASSWORD, client="10.0.4.1")).status == 423
    restarted.accounts.unlock("ann", "admin:root")
    assert (await login(restarted, "ann", PASSWORD, client="10.0.4.2")).status == 200
    assert ("admin:root", "admin-unlock", "ann") in actions(world)


@pytest_twisted.ensureDeferred
async def test_an_unknown_name_is_locked_like_a_real_one(world: World) -> None:
    for number in range(LOCK_AFTER):
        await login(world, "ghost", f"wrong password {number}", client=f"10.0.1.{number}")
        world.clock.now += 300
    answer = await login(world, "ghost", "wrong password", client="10.0.2.1")
    assert answer.status == 423 and answer.body["code"] == "locked"


@pytest_twisted.ensureDeferred
async def test_a_disabled_admin_cannot_log_in_even_with_the_right_password(world: World) -> None:
    await add_admin(world)
    world.accounts.set_disabled("ann", True, "admin:root")
    answer = await login(world, "ann", PASSWORD)
    assert answer.status == 403 and "disabled" in answer.body["message"]


@pytest_twisted.ensureDeferred
async def test_passwords_must_be_10_to_128_characters(world: World) -> None:
    for password in ("x" * 9, "x" * 129, "ten chars\n!"):
        with pytest.raises(ApiError) as caught:
            world.accounts.add("ann", password, "admin", "admin:root")
        assert caught.value.status == 400
    await world.accounts.add("ann", "x" * 10, "admin", "admin:root")
    with pytest.raises(ApiError) as again:
        world.accounts.add("ann", "x" * 10, "admin", "admin:root")
    assert again.value.status == 409


# -- sessions and CSRF ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_changes_need_the_sessions_csrf_token(world: World) -> None:
    await add_admin(world)
    answer = await login(world, "ann", PASSWORD)
    cookie, csrf = cookie_of(answer), answer.body["csrf"]
    assert principal(world, b"GET", cookie) == Principal("web:ann", "ann", "admin")
    for method in (b"POST", b"PUT", b"PATCH", b"DELETE"):
        missing = refused(world, method, cookie)
        wrong = refused(world, method, cookie, csrf=csrf[:-1] + "A" if csrf[-1] != "A" else "B")
        assert (missing.status, missing.payload["code"]) == (403, "csrf")
        assert (wrong.status, wrong.payload["code"]) == (403, "csrf")
        assert principal(world, method, cookie, csrf=csrf).actor == "web:ann"
    nobody = refused(world, b"GET")
    assert (nobody.status, nobody.payload["code"]) == (401, "unauthenticated")
    assert refused(world, b"GET", b"thinserve_session=made-up").status == 401


@pytest_twisted.ensureDeferred
async def test_sessions_end_when_idle_when_old_and_at_logout(world: World) -> None:
    await add_admin(world)
    idle = cookie_of(await login(world, "ann", PASSWORD))
    world.clock.now += 30 * 60 + 1
    assert refused(world, b"GET", idle).status == 401

    old = cookie_of(await login(world, "ann", PASSWORD))
    for _ in range(24):  # used every 29 minutes, for 12 hours
        world.clock.now += 29 * 60 + 59
        principal(world, b"GET", old)
    world.clock.now += 60
    assert refused(world, b"GET", old).status == 401

    answer = await login(world, "ann", PASSWORD)
    cookie = cookie_of(answer)
    request, channel = make_request(b"POST", b"/api/v1/logout", {}, headers={b"cookie": cookie})
    assert (await render(world.login, request, channel)).status == 403  # no CSRF token
    request, channel = make_request(
        b"POST",
        b"/api/v1/logout",
        {},
        headers={b"cookie": cookie, b"x-csrf-token": answer.body["csrf"].encode()},
    )
    out = await render(world.login, request, channel)
    assert out.status == 200 and out.body == {"ok": True, "changed": True}
    assert b"Max-Age=0" in (out.header(b"set-cookie") or b"")
    assert refused(world, b"GET", cookie).status == 401
    assert ("web:ann", "admin-logout", "ann") in actions(world)


@pytest_twisted.ensureDeferred
async def test_at_most_max_sessions_the_least_recently_used_goes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_module, "MAX_SESSIONS", 2)
    await add_admin(world)
    first = cookie_of(await login(world, "ann", PASSWORD))
    second = cookie_of(await login(world, "ann", PASSWORD))
    principal(world, b"GET", first)  # now the second is the least recently used
    third = cookie_of(await login(world, "ann", PASSWORD))
    assert len(world.auth.sessions) == 2
    assert refused(world, b"GET", second).status == 401
    assert principal(world, b"GET", first).name == principal(world, b"GET", third).name == "ann"


# -- API tokens, and accounts that change ---------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_bearer_token_acts_with_its_admins_role_without_csrf(world: World) -> None:
    await add_admin(world, "hal", "helpdesk")
    record, token = world.accounts.add_token("hal", "grafana", "admin:root")
    assert token.startswith(f"tst_{record.id}_") and len(token) == 4 + 16 + 1 + 43
    assert token not in json.dumps(world.store._all("SELECT * FROM api_tokens"))
    for method in (b"GET", b"POST", b"DELETE"):
        assert principal(world, method, token=token) == Principal(
            "token:hal/grafana", "hal", "helpdesk"
        )
    assert world.store.get_token(record.id) == ApiToken(record.id, "hal", "grafana", START, START)
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), "tst_nope", "x" * 600):
        assert refused(world, b"GET", token=bad).status == 401
    world.accounts.remove_token(record.id, "admin:root")
    assert refused(world, b"GET", token=token).status == 401
    assert [a[1] for a in actions(world)][-2:] == ["token-add", "token-remove"]


@pytest_twisted.ensureDeferred
async def test_a_disabled_admins_sessions_and_tokens_stop_at_once(world: World) -> None:
    await add_admin(world)
    cookie = cookie_of(await login(world, "ann", PASSWORD))
    _, token = world.accounts.add_token("ann", "ci", "admin:root")
    world.accounts.set_disabled("ann", True, "admin:root")
    assert refused(world, b"GET", cookie).status == 401
    assert refused(world, b"GET", token=token).status == 401
    world.accounts.set_disabled("ann", False, "admin:root")
    assert principal(world, b"GET", token=token).name == "ann"  # a token comes back
    assert refused(world, b"GET", cookie).status == 401  # a session does not
    assert [a[1] for a in actions(world) if a[1].startswith("admin-")][-2:] == [
        "admin-disable",
        "admin-enable",
    ]


@pytest_twisted.ensureDeferred
async def test_a_new_password_or_a_new_account_of_that_name_ends_old_sessions(
    world: World,
) -> None:
    await add_admin(world)
    cookie = cookie_of(await login(world, "ann", PASSWORD))
    await world.accounts.set_password("ann", "another good password", "admin:root")
    assert refused(world, b"GET", cookie).status == 401
    assert (await login(world, "ann", "another good password")).status == 200

    cookie = cookie_of(await login(world, "ann", "another good password"))
    world.accounts.remove("ann", "admin:root")
    world.clock.now += 1
    await add_admin(world, "ann", "helpdesk")
    assert refused(world, b"GET", cookie).status == 401
    assert {"admin-password", "admin-remove", "admin-add"} <= {a[1] for a in actions(world)}


def test_the_limits_are_the_documented_ones() -> None:
    assert (accounts_module.MIN_PASSWORD, accounts_module.MAX_PASSWORD) == (10, 128)
    assert (accounts_module.BACKOFF_AFTER, accounts_module.BACKOFF_MAX) == (3, 300.0)
    assert (LOCK_AFTER, LOCK_SECONDS) == (10, 900.0)
    assert (auth_module.MAX_SESSIONS, auth_module.IDLE_SECONDS) == (1000, 1800.0)
    assert auth_module.MAX_AGE == 12 * 3600.0
