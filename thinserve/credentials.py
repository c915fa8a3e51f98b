"""Checking what a terminal gives in the RFB handshake: a VNC password, or a
user name and password (VeNCrypt Plain, inside TLS).

One place decides, for every listener: the source's blacklist first (a
source that keeps failing waits, thinserve/blacklist.py), then the check
itself (a site password, a fixed user, or a hot-desk user whose Argon2
check runs in a worker thread), then the verdict is counted and audited.
The answer is ``None`` for yes, or the reason to send back to the terminal.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from protocols.rfb.handshake import PlainCredentials, VncAuthResponse
from protocols.rfb.security.vncauth import check_response

from .blacklist import Blacklist

log = logging.getLogger(__name__)

CheckLogin = Callable[[str, str, str], Deferred[str | None]]  # host, user, secret -> refusal
Audit = Callable[[str, str, str], None]  # host, action, detail
Given = VncAuthResponse | PlainCredentials

WRONG_PASSWORD = "Wrong password."
NOT_CHECKED = "The login could not be checked; try again."


@dataclass(frozen=True)
class Credentials:
    password: str | None = None  # the site's VNC password
    users: dict[str, str] = field(default_factory=dict)  # fixed VeNCrypt Plain users
    check_login: CheckLogin | None = None  # hot-desk users
    blacklist: Blacklist = field(default_factory=Blacklist, compare=False)
    audit: Audit | None = None

    def check(self, host: str, given: Given) -> Deferred[str | None]:
        """Whether ``given`` from ``host`` may in: None, or why not."""
        wait = self.blacklist.wait(host)
        if wait:
            reason = f"Too many failed attempts from this address; try again in {wait} seconds."
            self._note(host, "auth-refused", f"blocked for {wait} s")
            return succeed(reason)
        checked = self._verdict(host, given)
        checked.addErrback(self._lost, host)
        checked.addCallback(self._count, host, given)
        return checked

    def _verdict(self, host: str, given: Given) -> Deferred[str | None]:
        if isinstance(given, VncAuthResponse):
            ok = self.password is not None and check_response(
                self.password, given.challenge, given.response
            )
            return succeed(None if ok else WRONG_PASSWORD)
        expected = self.users.get(given.username)
        if expected is not None or self.check_login is None:
            ok = expected is not None and hmac.compare_digest(
                expected.encode(), given.password.encode()
            )
            return succeed(None if ok else "Wrong user name or password.")
        return self.check_login(host, given.username, given.password)

    def _lost(self, failure: Failure, host: str) -> str:
        log.error("checking credentials from %s failed: %s", host, failure.value)
        return NOT_CHECKED

    def _count(self, refusal: str | None, host: str, given: Given) -> str | None:
        who = f"user {given.username}" if isinstance(given, PlainCredentials) else "VNC password"
        if refusal is None:
            self.blacklist.succeeded(host)
        elif refusal != NOT_CHECKED:
            blocked = self.blacklist.failed(host)
            then = f"; blocked for {blocked} s" if blocked else ""
            # Hot-desk logins are audited by the broker, which checked them.
            self._note(host, "auth-failed", f"{who}: {refusal}{then}", not self.hot_desk(given))
        return refusal

    def hot_desk(self, given: Given) -> bool:
        """Whether ``given`` names a hot-desk user (not a fixed one)."""
        return isinstance(given, PlainCredentials) and given.username not in self.users

    def _note(self, host: str, action: str, detail: str, audit: bool = True) -> None:
        log.warning("authentication from %s: %s (%s)", host, action, detail)
        if audit and self.audit is not None:
            self.audit(host, action, detail)
