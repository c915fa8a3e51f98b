"""The admin API's account calls, on a real broker, hub and SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from thinserve.admin.accounts_api import ACCOUNT_ROUTES, AccountsAPI
from thinserve.admin.errors import ApiError
from thinserve.admin.handlers import Call
from thinserve.admin.principal import ADMIN, Principal
from thinserve.broker import Broker
from thinserve.dashboard.accounts import Accounts
from thinserve.hub import Hub
from thinserve.secrets import SecretHasher
from thinserve.store.sql import SqlStore
from thinserve.verifier import Verifier

CHEAP = SecretHasher(time_cost=1, memory_cost=8, parallelism=1)
ROOT = Principal("admin:root", "root", "admin")
PASSWORD = "correct horse battery"


@dataclass
class Setup:
    api: AccountsAPI
    store: SqlStore
    broker: Broker


@pytest.fixture
def setup(store: SqlStore) -> Iterator[Setup]:
    """On SQLite, then on PostgreSQL (tests/support/stores.py closes the store)."""
    broker = Broker(store, hasher=CHEAP)
    verifier = Verifier(reactor)
    hub = Hub(broker, {}, reactor, verifier=verifier)
    accounts = Accounts(store, CHEAP, verifier)
    yield Setup(AccountsAPI(store, accounts, hub), store, broker)
    verifier.stop()


def call(
    *params: str, body: dict[str, Any] | None = None, principal: Principal = ROOT, **query: str
) -> Call:
    return Call(principal.actor, params, query, body or {}, principal)


def refused(handler: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        handler(*args)
    return caught.value


def test_every_account_route_needs_an_admin_and_names_a_handler() -> None:
    assert ACCOUNT_ROUTES
    for route in ACCOUNT_ROUTES:
        assert route.needs == ADMIN and route.owner == "accounts"
        assert callable(getattr(AccountsAPI, route.handler))


@pytest_twisted.ensureDeferred
async def test_admins_are_added_listed_locked_out_and_removed(setup: Setup) -> None:
    api = setup.api
    body = {"name": "ann", "password": PASSWORD, "role": "helpdesk"}
    added = await api.post_admins(call(body=body))
    assert added["admin"]["name"] == "ann" and added["admin"]["role"] == "helpdesk"
    assert refused(api.post_admins, call(body=body)).status == 409
    assert refused(api.post_admins, call(body={**body, "name": "bo", "role": "root"})).status == 400
    assert refused(api.post_admins, call(body={**body, "password": "short"})).status == 400
    rows = api.get_admins(call())
    assert [(r["name"], r["role"], r["disabled"], r["locked"]) for r in rows] == [
        ("ann", "helpdesk", False, False)
    ]
    assert PASSWORD not in json.dumps(rows) and "argon2" not in json.dumps(rows)

    assert api.post_admin_disable(call("ann"))["admin"]["disabled"] is True
    assert api.post_admin_disable(call("ann"))["changed"] is False
    assert api.post_admin_enable(call("ann"))["admin"]["disabled"] is False
    assert api.post_admin_unlock(call("ann"))["admin"]["failures"] == 0
    changed = await api.post_admin_password(call("ann", body={"password": "a new good one"}))
    assert changed["changed"] is True
    assert refused(api.post_admin_disable, call("nobody")).status == 404

    ann = Principal("web:ann", "ann", "admin")
    assert refused(api.post_admin_disable, call("ann", principal=ann)).status == 409
    assert refused(api.delete_admin, call("ann", principal=ann)).status == 409
    assert api.delete_admin(call("ann"))["admin"] is None
    assert api.get_admins(call()) == []
    actions = [e.action for e in setup.store.list_audit()]
    for action in ("admin-add", "admin-disable", "admin-enable", "admin-unlock"):
        assert action in actions
    assert actions[-2:] == ["admin-password", "admin-remove"]


@pytest_twisted.ensureDeferred
async def test_a_token_is_shown_once_and_never_listed(setup: Setup) -> None:
    api = setup.api
    await api.post_admins(call(body={"name": "ann", "password": PASSWORD}))
    made = api.post_tokens(call(body={"admin": "ann", "label": "grafana"}))
    assert made["token"].startswith("tst_" + made["id"] + "_")
    assert refused(api.post_tokens, call(body={"admin": "ann", "label": "grafana"})).status == 409
    assert refused(api.post_tokens, call(body={"admin": "zed", "label": "x"})).status == 404
    assert refused(api.post_tokens, call(body={"admin": "ann", "label": "a b"})).status == 400
    rows = api.get_tokens(call())
    assert rows == [
        {
            "id": made["id"],
            "admin": "ann",
            "label": "grafana",
            "created": made["created"],
            "last_used": None,
        }
    ]
    assert made["token"] not in json.dumps(rows)
    assert api.get_tokens(call(admin="nobody")) == []
    assert api.delete_token(call(made["id"]))["token"] is None
    assert refused(api.delete_token, call(made["id"])).status == 404


def test_users_can_be_given_a_new_secret_disabled_and_enabled(setup: Setup) -> None:
    api = setup.api
    setup.broker.add_user("alice", "1234", "admin:root")
    done = api.post_user_secret(call("alice", body={"secret": "4321"}))
    assert done["user"]["name"] == "alice"
    assert CHEAP.verify(setup.store.user_secret_hash("alice"), "4321")
    disabled = api.post_user_disable(call("alice"))
    assert disabled["changed"] is True and disabled["user"]["disabled"] is True
    assert [u.disabled for u in setup.store.list_users()] == [True]
    assert api.post_user_enable(call("alice"))["user"]["disabled"] is False
    assert refused(api.post_user_disable, call("bob")).status == 404
    assert refused(api.post_user_secret, call("alice", body={"secret": "x"})).status == 400
    actions = [e.action for e in setup.store.list_audit()]
    assert actions[-3:] == ["user-secret", "user-disable", "user-enable"]
