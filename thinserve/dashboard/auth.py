"""Who is calling the dashboard: a login session (cookie) or an API token.

A browser logs in with ``POST /api/v1/login`` and gets the cookie
``thinserve_session`` (HttpOnly, SameSite=Strict, Path=/, and Secure when the
login came over HTTPS) and a CSRF token, which every POST, PUT, PATCH and
DELETE of that session must repeat in ``X-CSRF-Token``: another site can make
a browser send the cookie, but cannot read the token.  Scripts send
``Authorization: Bearer TOKEN`` instead and need no CSRF token.

Sessions live in memory, so a restart logs everybody out: at most
MAX_SESSIONS (the least recently used goes first), each ending after
IDLE_SECONDS unused or MAX_AGE after login.  The store only keeps a SHA-256
of each session id.  Every request looks the account up again, so a
disabled or removed admin's sessions and tokens stop working at once, and a
role change applies at the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET

from ..admin.errors import CSRF, ApiError, store_error
from ..admin.http import error_reply, json_body, json_reply
from ..admin.principal import Principal
from ..secrets import SecretHasher
from ..store.base import Admin, Store, StoreError
from ..verifier import Verifier
from .accounts import MAX_PASSWORD, Accounts

log = logging.getLogger(__name__)

COOKIE = b"thinserve_session"
CSRF_HEADER = b"x-csrf-token"
MAX_SESSIONS = 1000
IDLE_SECONDS = 30 * 60.0
MAX_AGE = 12 * 3600.0
MAX_BODY = 16 * 1024  # a login body is a name and a password
MAX_AUTHORIZATION = 512
MAX_NAME = 128
UNSAFE = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
LOGIN_HINT = "log in at the dashboard (POST /api/v1/login), or send Authorization: Bearer TOKEN"


@dataclass
class Session:
    """One browser's login; the cookie holds its id, the table its SHA-256."""

    name: str
    account: float  # the account's creation time: a name removed and added again is new
    csrf: str
    secure: bool  # made over HTTPS: never accepted over plain HTTP
    started: float
    used: float


class Authenticator:
    """Decides who a dashboard request comes from; holds the login sessions.

    ``accounts`` is shared with the admin API (AccountsAPI), so that limits on
    guessing and unlocks are one; by default a new Accounts is made.
    """

    def __init__(
        self,
        store: Store,
        hasher: SecretHasher,
        runner: Verifier,
        clock: Callable[[], float] = time.time,
        accounts: Accounts | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.accounts = accounts or Accounts(store, hasher, runner, clock)
        self.accounts.on_revoke.append(self.end_sessions)
        self.sessions: OrderedDict[bytes, Session] = OrderedDict()  # least recently used first

    def principal(self, request: server.Request, secure: bool) -> Principal:
        """Who sent ``request``: its bearer token, else its session cookie.

        ApiError 401 (code "unauthenticated") when neither is valid; 403
        (code "csrf") when a session's change lacks its CSRF token.
        """
        authorization = request.getHeader(b"authorization")
        if authorization is not None:
            return self.accounts.token_principal(_bearer(authorization))
        found = self.session(request, secure)
        if found is None:
            raise ApiError(401, "log in first", LOGIN_HINT, code="unauthenticated")
        key, session, admin = found
        if request.method in UNSAFE:
            check_csrf(request, session)
        session.used = self.clock()
        self.sessions.move_to_end(key)
        return Principal("web:" + admin.name, admin.name, admin.role)

    def session(self, request: server.Request, secure: bool) -> tuple[bytes, Session, Admin] | None:
        """The live session ``request``'s cookie names, with its account; None if none.

        An expired session, or one whose account is gone or disabled, ends here.
        """
        cookie = request.getCookie(COOKIE)
        if not cookie or len(cookie) > 100:
            return None
        key = hashlib.sha256(cookie).digest()
        session = self.sessions.get(key)
        if session is None or (session.secure and not secure):
            return None
        now = self.clock()
        admin = self.store.get_admin(session.name)
        expired = now - session.used > IDLE_SECONDS or now - session.started > MAX_AGE
        if expired or admin is None or admin.disabled or admin.created != session.account:
            del self.sessions[key]
            return None
        return key, session, admin

    def start_session(self, admin: Admin, secure: bool) -> tuple[str, Session]:
        """A new session for ``admin``: the cookie's value and the session."""
        now = self.clock()
        self._prune(now)
        while len(self.sessions) >= MAX_SESSIONS:
            self.sessions.popitem(last=False)
        value = secrets.token_urlsafe(32)
        session = Session(admin.name, admin.created, secrets.token_urlsafe(32), secure, now, now)
        self.sessions[hashlib.sha256(value.encode()).digest()] = session
        return value, session

    def end_sessions(self, name: str) -> None:
        """End every session of admin ``name`` (password changed, disabled, removed)."""
        for key in [k for k, s in self.sessions.items() if s.name == name]:
            del self.sessions[key]

    def _prune(self, now: float) -> None:
        for key in [
            k
            for k, s in self.sessions.items()
            if now - s.used > IDLE_SECONDS or now - s.started > MAX_AGE
        ]:
            del self.sessions[key]


def check_csrf(request: server.Request, session: Session) -> None:
    sent = request.getHeader(CSRF_HEADER) or b""
    if not hmac.compare_digest(sent, session.csrf.encode()):
        raise ApiError(
            403,
            "this change lacks the session's CSRF token",
            "send the csrf value of the login answer (or of GET /api/v1/session) "
            "in the X-CSRF-Token header",
            code=CSRF,
        )


def _bearer(header: bytes) -> str:
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token or len(header) > MAX_AUTHORIZATION:
        raise ApiError(
            401,
            "the Authorization header must be 'Bearer TOKEN'",
            "make a token with `thinserve tokens add ADMIN --label LABEL`",
            code="unauthenticated",
        )
    return token.strip().decode("ascii", "replace")


class LoginResource(resource.Resource):
    """``POST /api/v1/login``, ``POST /api/v1/logout``, ``GET /api/v1/session``.

    The site mounts the same resource at all three paths; the last path
    segment says which.  A request that came over TLS gets a Secure cookie.
    """

    isLeaf = True

    def __init__(self, auth: Authenticator) -> None:
        super().__init__()  # Twisted leaves it unannotated
        self.auth = auth

    def render(self, request: server.Request) -> bytes | int:
        what = request.path.rstrip(b"/").rsplit(b"/", 1)[-1]
        want = {b"login": b"POST", b"logout": b"POST", b"session": b"GET"}.get(what)
        try:
            if want is None:
                raise ApiError(404, "no such endpoint", "see docs/admin.md", code="not_found")
            if request.method != want:
                raise ApiError(
                    405,
                    f"{request.method.decode('ascii', 'replace')} is not allowed here",
                    f"use {want.decode()}",
                    code="method_not_allowed",
                )
            secure = bool(request.isSecure())
            if what == b"login":
                return self._login(request, secure)
            if what == b"logout":
                return json_reply(request, 200, self._logout(request, secure))
            return json_reply(request, 200, self._session(request, secure))
        except ApiError as exc:
            return error_reply(request, exc)
        except StoreError as exc:
            return error_reply(request, store_error(exc))

    def _login(self, request: server.Request, secure: bool) -> int:
        body = json_body(request, MAX_BODY)
        name, password = body.get("name"), body.get("password")
        if set(body) != {"name", "password"} or not isinstance(name, str):
            raise ApiError(400, 'send {"name": ..., "password": ...}', "", code="bad_request")
        if not 0 < len(name) <= MAX_NAME or not name.isprintable():
            raise ApiError(400, f"the name must be 1 to {MAX_NAME} printable characters", "")
        if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD:
            raise ApiError(400, f"the password must be 1 to {MAX_PASSWORD} characters", "")
        source = _source(request)
        checked = self.auth.accounts.login(name, password, source)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def logged_in(admin: Admin) -> None:
            old = self.auth.session(request, secure)
            if old is not None:
                del self.auth.sessions[old[0]]
            value, session = self.auth.start_session(admin, secure)
            cookie = f"{COOKIE.decode()}={value}; HttpOnly; SameSite=Strict; Path=/"
            request.responseHeaders.addRawHeader(
                b"Set-Cookie", (cookie + ("; Secure" if secure else "")).encode()
            )
            reply = {"name": admin.name, "role": admin.role, "csrf": session.csrf}
            _send(request, gone, json_reply(request, 200, reply))

        def refused(failure: Failure) -> None:
            exc = failure.value
            if isinstance(exc, StoreError):
                exc = store_error(exc)
            if not isinstance(exc, ApiError):
                log.error("dashboard login failed: %s", failure.getTraceback())
                exc = ApiError(500, "the login could not be checked", "see thinserve's log")
            _send(request, gone, error_reply(request, exc))

        checked.addCallbacks(logged_in, refused)
        return NOT_DONE_YET

    def _logout(self, request: server.Request, secure: bool) -> dict[str, Any]:
        found = self.auth.session(request, secure)
        if found is not None:
            check_csrf(request, found[1])  # another site must not clear the cookie either
        request.responseHeaders.addRawHeader(
            b"Set-Cookie",
            COOKIE + b"=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/" + (b"; Secure" * secure),
        )
        if found is None:
            return {"ok": True, "changed": False}
        key, _, admin = found
        del self.auth.sessions[key]
        self.auth.accounts.audit("web:" + admin.name, "admin-logout", admin.name)
        return {"ok": True, "changed": True}

    def _session(self, request: server.Request, secure: bool) -> dict[str, Any]:
        principal = self.auth.principal(request, secure)
        found = None if request.getHeader(b"authorization") else self.auth.session(request, secure)
        csrf = found[1].csrf if found else ""
        return {
            "name": principal.name,
            "role": principal.role,
            "csrf": csrf,
            "actor": principal.actor,
        }


def _send(request: server.Request, gone: list[bool], data: bytes) -> None:
    if not gone:
        request.write(data)
        request.finish()


def _source(request: server.Request) -> str:
    """The address the request came from (limits on guessing count per address)."""
    return str(getattr(request.getClientAddress(), "host", "local"))
