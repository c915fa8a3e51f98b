"""The admin API's account calls: dashboard admins, API tokens, users' secrets
and whether a user may log in.

Handlers take a Call, like AdminAPI's, and return the answer's JSON (a
Deferred where a password is hashed, in a worker thread).  Every route here
needs the admin role.  Secrets and hashes are never part of an answer; a new
API token is, once, in the answer that made it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from ..dashboard.accounts import Accounts
from ..hub import Hub
from ..store.base import Admin, ApiToken, Store
from . import fields
from .errors import ApiError, not_found
from .handlers import Call, Route
from .principal import ADMIN, ROLES


class AccountsAPI:
    """Admin accounts, API tokens and users' secrets, for the socket and the dashboard."""

    def __init__(self, store: Store, accounts: Accounts, hub: Hub) -> None:
        self.store = store
        self.accounts = accounts
        self.hub = hub
        self.broker = hub.broker

    # -- admins -------------------------------------------------------------------------
    def get_admins(self, call: Call) -> list[dict[str, Any]]:
        now = self.accounts.clock()
        return [admin_row(a, now) for a in self.store.list_admins()]

    def post_admins(self, call: Call) -> Deferred[dict[str, Any]]:
        fields.only_keys(call.body, {"name", "password", "role"}, "field")
        name = fields.text(call.body, "name")
        role = call.body.get("role", ADMIN)
        if role not in ROLES:
            raise ApiError(400, f"'role' must be one of {', '.join(ROLES)}", fields.BODY_HINT)
        made = self.accounts.add(name, _password(call.body), role, call.actor)
        return made.addCallback(self._admin_done)

    def delete_admin(self, call: Call) -> dict[str, Any]:
        name = call.params[0]
        _not_yourself(call, name, "remove")
        self.accounts.remove(name, call.actor)
        return {"ok": True, "changed": True, "admin": None}

    def post_admin_password(self, call: Call) -> Deferred[dict[str, Any]]:
        fields.only_keys(call.body, {"password"}, "field")
        changed = self.accounts.set_password(call.params[0], _password(call.body), call.actor)
        return changed.addCallback(self._admin_done)

    def post_admin_disable(self, call: Call) -> dict[str, Any]:
        _not_yourself(call, call.params[0], "disable")
        return self._admin_changed(call, lambda n: self.accounts.set_disabled(n, True, call.actor))

    def post_admin_enable(self, call: Call) -> dict[str, Any]:
        return self._admin_changed(call, lambda n: self.accounts.set_disabled(n, False, call.actor))

    def post_admin_unlock(self, call: Call) -> dict[str, Any]:
        return self._admin_changed(call, lambda n: self.accounts.unlock(n, call.actor))

    def _admin_changed(self, call: Call, change: Callable[[str], Admin]) -> dict[str, Any]:
        fields.only_keys(call.body, set(), "field")
        before = self.accounts.known(call.params[0])
        after = change(call.params[0])
        now = self.accounts.clock()
        return {
            "ok": True,
            "changed": admin_row(before, now) != admin_row(after, now),
            "admin": admin_row(after, now),
        }

    def _admin_done(self, admin: Admin) -> dict[str, Any]:
        return {"ok": True, "changed": True, "admin": admin_row(admin, self.accounts.clock())}

    # -- API tokens ---------------------------------------------------------------------
    def get_tokens(self, call: Call) -> list[dict[str, Any]]:
        fields.only_keys(call.query, {"admin"}, "query parameter")
        return [token_row(t) for t in self.store.list_tokens(call.query.get("admin") or None)]

    def post_tokens(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"admin", "label"}, "field")
        admin, label = fields.text(call.body, "admin"), fields.text(call.body, "label")
        record, token = self.accounts.add_token(admin, label, call.actor)
        return {"ok": True, "changed": True, "id": record.id, "token": token, **token_row(record)}

    def delete_token(self, call: Call) -> dict[str, Any]:
        self.accounts.remove_token(call.params[0], call.actor)
        return {"ok": True, "changed": True, "token": None}

    # -- users ----------------------------------------------------------------------------
    def post_user_secret(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"secret"}, "field")
        name = self._known_user(call.params[0])
        self.broker.set_user_secret(name, fields.secret(call.body), call.actor)
        return self._user_done(name)

    def post_user_disable(self, call: Call) -> dict[str, Any]:
        return self._user_disabled(call, True)

    def post_user_enable(self, call: Call) -> dict[str, Any]:
        return self._user_disabled(call, False)

    def _user_disabled(self, call: Call, disabled: bool) -> dict[str, Any]:
        fields.only_keys(call.body, set(), "field")
        name = self._known_user(call.params[0])
        user = self.store.get_user(name)
        changed = user is not None and user.disabled != disabled
        if changed:  # the same again changes nothing, and is not audited
            self.hub.apply(self.broker.set_user_disabled(name, disabled, call.actor))
        return {**self._user_done(name), "changed": changed}

    def _known_user(self, name: str) -> str:
        if self.store.get_user(name) is None:
            known = [u.name for u in self.store.list_users()]
            raise not_found("user", name, known, "see `thinserve users list`")
        return name

    def _user_done(self, name: str) -> dict[str, Any]:
        user = self.store.get_user(name)
        row = None
        if user is not None:
            row = {
                "name": user.name,
                "desktop": user.desktop,
                "created": user.created,
                "disabled": user.disabled,
            }
        return {"ok": True, "changed": True, "user": row}


def admin_row(admin: Admin, now: float) -> dict[str, Any]:
    """An admin account as the API shows it (never its password hash)."""
    locked = admin.locked_until > now
    return {
        "name": admin.name,
        "role": admin.role,
        "created": admin.created,
        "disabled": admin.disabled,
        "locked": locked,
        "locked_until": admin.locked_until if locked else None,
        "failures": admin.failures,
    }


def token_row(token: ApiToken) -> dict[str, Any]:
    """An API token as the API shows it (never the token or its hash)."""
    return {
        "id": token.id,
        "admin": token.admin,
        "label": token.label,
        "created": token.created,
        "last_used": token.last_used,
    }


def _password(body: dict[str, Any]) -> str:
    value = body.get("password")
    if not isinstance(value, str):
        raise ApiError(400, "'password' must be a string", fields.BODY_HINT)
    return value


def _not_yourself(call: Call, name: str, what: str) -> None:
    """An admin logged in at the dashboard may not lock themselves out."""
    principal = call.principal
    if principal is not None and principal.name == name and not call.actor.startswith("admin:"):
        raise ApiError(
            409,
            f"you cannot {what} your own account {name!r}",
            "ask another administrator, or use the thinserve command on the server",
            code="conflict",
        )


def _route(method: str, pattern: tuple[str, ...], handler: str, summary: str) -> Route:
    return Route(method, pattern, handler, needs=ADMIN, owner="accounts", summary=summary)


ACCOUNT_ROUTES: tuple[Route, ...] = (
    _route("GET", ("admins",), "get_admins", "Dashboard admin accounts"),
    _route("POST", ("admins",), "post_admins", "Add an admin account"),
    _route("DELETE", ("admins", "*"), "delete_admin", "Remove an admin and its tokens"),
    _route("POST", ("admins", "*", "password"), "post_admin_password", "Set a password"),
    _route("POST", ("admins", "*", "disable"), "post_admin_disable", "Disable an admin"),
    _route("POST", ("admins", "*", "enable"), "post_admin_enable", "Enable an admin"),
    _route("POST", ("admins", "*", "unlock"), "post_admin_unlock", "Lift a lockout"),
    _route("GET", ("tokens",), "get_tokens", "API tokens (never the tokens themselves)"),
    _route("POST", ("tokens",), "post_tokens", "Make an API token, shown once"),
    _route("DELETE", ("tokens", "*"), "delete_token", "Remove an API token"),
    _route("POST", ("users", "*", "secret"), "post_user_secret", "Set a user's PIN or password"),
    _route("POST", ("users", "*", "disable"), "post_user_disable", "Refuse a user's logins"),
    _route("POST", ("users", "*", "enable"), "post_user_enable", "Accept a user's logins again"),
)
