"""The broker: every policy, their combinations, and invariants under random events.

Every test runs twice: with the broker's store on SQLite, then on PostgreSQL
(``stores``, an autouse fixture, says which for the Sites and machines it makes).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import reactor

from tests.support.stores import STORE_KINDS, location_for
from tests.support.waiting import wait_until
from thinserve.broker import (
    ALPHABET,
    FALLBACK_SCREENS,
    AlreadyConnectedError,
    Assignment,
    Broker,
    BrokerConfig,
    BrokerConfigError,
    BrokerError,
    Change,
    DesktopState,
    NotConnectedError,
    PairingCodeError,
    RateLimit,
    ScreenKind,
    ShowDesktop,
    ShowScreen,
    TerminalInfo,
    format_code,
    from_mapping,
    normalise_code,
    viewer_terminal_id,
)
from thinserve.broker.codes import new_code
from thinserve.broker.core import LoginCheck, LoginVerdict
from thinserve.broker.ratelimit import FailureLimiter
from thinserve.relay import screens
from thinserve.relay.login import CHECKING, KEY_ESCAPE, KEY_RETURN, KEY_TAB, LoginScreen
from thinserve.secrets import SecretHasher
from thinserve.store import Pairing, User, open_store
from thinserve.store.sql import SqlStore
from thinserve.verifier import Verifier

CHEAP = SecretHasher(time_cost=1, memory_cost=8, parallelism=1)
OWN_DESKTOPS = ("d1", "d2", "d3")


class Stores:
    """Fresh stores of the kind the running test asks for; closed when it ends."""

    def __init__(self) -> None:
        self.kind = "sqlite"
        self.request: pytest.FixtureRequest | None = None
        self.opened: list[SqlStore] = []

    def location(self, directory: Path) -> str:
        """A new empty database: a file in ``directory``, or on the PostgreSQL server."""
        assert self.request is not None, "only inside a test"
        return location_for(self.kind, self.request, directory)

    def open(self, location: str) -> SqlStore:
        store = open_store(location)
        assert isinstance(store, SqlStore)
        self.opened.append(store)
        return store

    def new(self) -> SqlStore:
        """A store of its own: in memory on SQLite, a new database on PostgreSQL."""
        if self.kind == "sqlite":
            return self.open(":memory:")
        return self.open(self.location(Path(tempfile.gettempdir())))


STORES = Stores()


@pytest.fixture(autouse=True, params=STORE_KINDS)
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    STORES.kind, STORES.request = request.param, request
    yield STORES
    for store in STORES.opened:
        store.close()
    STORES.opened, STORES.request = [], None


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Site:
    """A broker over an in-memory store, and the screens a relay would show."""

    def __init__(self, config: BrokerConfig, store: SqlStore | None = None) -> None:
        self.clock = Clock()
        self.store = store or STORES.new()
        self.broker = Broker(self.store, config, clock=self.clock, hasher=CHEAP)
        for name in OWN_DESKTOPS:
            self.broker.register_desktop(name, "xvnc")
        for desktops in config.pools.values():
            for name in desktops:
                self.broker.register_desktop(name, "qemu")
        self.screens: dict[str, Assignment] = {}

    def connect(self, terminal_id: str, connection: object = None) -> Assignment:
        shown = self.broker.terminal_connected(terminal_id, TerminalInfo(model="tb"), connection)
        self.screens[terminal_id] = shown
        return shown

    def apply(self, changes: Iterable[Change]) -> list[Change]:
        changes = list(changes)
        for terminal_id, assignment in changes:
            assert terminal_id in self.screens, f"change for unconnected {terminal_id}"
            if isinstance(assignment, ShowScreen) and assignment.kind is ScreenKind.KICKED:
                del self.screens[terminal_id]
            else:
                self.screens[terminal_id] = assignment
        return changes

    def disconnect(self, terminal_id: str) -> list[Change]:
        self.screens.pop(terminal_id, None)
        return self.apply(self.broker.terminal_disconnected(terminal_id))

    def actions(self) -> list[str]:
        return [e.action for e in self.store.list_audit()]

    def desktop(self, name: str, control: bool = True) -> Assignment:
        """What a terminal showing ``name`` has, for comparisons."""
        return next(
            a
            for a in [*self.screens.values(), *self.broker.snapshot().shown.values()]
            if isinstance(a, ShowDesktop) and a.desktop == name and a.control == control
        )


def _is_desktop(assignment: Assignment, desktop: str, control: bool = True) -> bool:
    return (
        isinstance(assignment, ShowDesktop)
        and assignment.desktop == desktop
        and assignment.control == control
    )


def _kind(assignment: Assignment) -> ScreenKind | None:
    return assignment.kind if isinstance(assignment, ShowScreen) else None


def _code(site: Site, terminal_id: str) -> str:
    shown = site.broker.assignment(terminal_id)
    assert isinstance(shown, ShowScreen) and shown.code is not None
    return shown.code


PAIRING = BrokerConfig()
LOGIN = BrokerConfig(unknown_terminal="login", hot_desk=True, pairing_codes=False)
POOL = BrokerConfig(
    unknown_terminal="pool", pools={"lab": ("p1", "p2")}, default_pool="lab", pairing_codes=False
)


# Assignments, codes, configuration, limiter.


def test_only_the_broker_makes_desktop_assignments() -> None:
    with pytest.raises(TypeError):
        ShowDesktop("d1", True)
    with pytest.raises(TypeError):
        ShowDesktop("d1", True, _key=object())
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    shown = site.connect("t1")
    assert _is_desktop(shown, "d1")
    with pytest.raises(AttributeError):
        shown.desktop = "d2"  # type: ignore[misc]
    with pytest.raises(ValueError):
        ShowScreen(ScreenKind.PAIRING)  # a pairing screen without a code
    with pytest.raises(ValueError):
        ShowScreen(ScreenKind.STARTING, code="ABC-DEF")


def test_codes_avoid_ambiguous_characters_and_parse_leniently() -> None:
    assert not set("0O1I") & set(ALPHABET)
    assert len(set(ALPHABET)) == len(ALPHABET) == 32
    made = {new_code(6) for _ in range(200)}
    assert len(made) == 200 and all(len(c) == 6 and set(c) <= set(ALPHABET) for c in made)
    assert format_code("K7DQ2M") == "K7D-Q2M"
    assert normalise_code(" k7d-q2m ", 6) == "K7DQ2M"
    assert normalise_code("K7D Q2M", 6) == "K7DQ2M"
    assert normalise_code("K7D-Q2O", 6) is None  # O is never in a code
    assert normalise_code("K7DQ2", 6) is None
    assert normalise_code("K" * 1000, 6) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"unknown_terminal": "everything"},
        {"unknown_terminal": "login"},  # needs hot_desk
        {"unknown_terminal": "pool"},  # needs default_pool
        {"pairing_codes": False},  # the pairing screen needs codes
        {"pools": {"a": ("x",), "b": ("x",)}},  # one desktop, two pools
        {"pools": {"a": ()}},
        {"pools": {"a": ("x",)}, "user_pool": "b"},
        {"code_lifetime": 5.0},
        {"code_tries": 0},
    ],
)
def test_contradictory_configurations_are_refused(kwargs: dict) -> None:
    with pytest.raises(BrokerConfigError):
        BrokerConfig(**kwargs)


def test_configuration_from_a_toml_table() -> None:
    text = """
    unknown_terminal = "pool"
    default_pool = "lab"
    hot_desk = true
    user_pool = "roam"
    code_lifetime = 300
    login_failures_per_user = [8, 600]
    [pools]
    lab = ["vm-1", "vm-2"]
    roam = ["vm-3"]
    """
    config = from_mapping(tomllib.loads(text))
    assert config.pools == {"lab": ("vm-1", "vm-2"), "roam": ("vm-3",)}
    assert config.pool_of("vm-3") == "roam" and config.pool_of("d1") is None
    assert config.login_failures_per_user == RateLimit(8, 600.0)
    assert (config.unknown_terminal, config.hot_desk, config.code_lifetime) == ("pool", True, 300)
    for bad in (
        {"colour": "blue"},
        {"hot_desk": "yes"},
        {"code_tries": True},
        {"login_failures_per_user": [0, 60]},
        {"login_failures_per_user": "5/min"},
        {"pools": {"lab": "vm-1"}},
        {"unknown_terminal": "pool"},
    ):
        with pytest.raises(BrokerConfigError, match=r"\[broker[\].]"):  # [broker], [broker.pools]
            from_mapping(bad)


def test_failure_limiter_blocks_after_n_failures_in_a_sliding_window() -> None:
    limiter = FailureLimiter(RateLimit(3, 60.0), max_keys=5)
    for t in (0.0, 10.0, 20.0):
        assert limiter.retry_after("k", t) == 0.0
        limiter.failed("k", t)
    assert limiter.retry_after("k", 30.0) == pytest.approx(30.0)  # first failure + 60
    assert limiter.retry_after("other", 30.0) == 0.0
    assert limiter.retry_after("k", 60.0) == 0.0  # the first left the window
    limiter.failed("k", 61.0)
    assert limiter.retry_after("k", 61.0) == pytest.approx(9.0)  # 10 + 60 - 61
    limiter.clear("k")
    assert limiter.retry_after("k", 61.0) == 0.0
    for i in range(20):
        limiter.failed(f"key{i}", 100.0)
    assert len(limiter._failures) == 5  # bounded memory


def test_viewer_ids_come_from_the_peer_address() -> None:
    assert viewer_terminal_id("192.168.1.20") == "viewer-192.168.1.20"
    assert viewer_terminal_id("::ffff:192.168.1.20") == "viewer-192.168.1.20"
    assert viewer_terminal_id("[2001:DB8:0:0::1]") == "viewer-2001:db8::1"
    assert viewer_terminal_id("fe80::1%eth0") == "viewer-fe80::1"


# Pairing codes and explicit pairing.


def test_unknown_terminal_sees_its_id_and_a_code_then_admin_pairs_by_code() -> None:
    site = Site(PAIRING)
    shown = site.connect("tb-0042")
    assert isinstance(shown, ShowScreen) and shown.kind is ScreenKind.PAIRING
    assert shown.terminal_id == "tb-0042"
    assert shown.code is not None and set(shown.code.replace("-", "")) <= set(ALPHABET)
    site.disconnect("tb-0042")
    assert site.connect("tb-0042") == shown  # the same code after a reboot, until it expires
    changes = site.apply(site.broker.pair_code(shown.code.lower(), "d2", "admin:ann"))
    assert [(c.terminal_id, c.assignment) for c in changes] == [
        ("tb-0042", site.broker.assignment("tb-0042"))
    ]
    assert _is_desktop(site.screens["tb-0042"], "d2")
    assert site.store.pairing_for("tb-0042").desktop == "d2"
    assert site.store.pairing_code_for("tb-0042") is None
    pair = site.store.list_audit()[-1]
    assert (pair.actor, pair.action, pair.subject) == ("admin:ann", "pair", "tb-0042")


def test_pairing_codes_are_single_use() -> None:
    site = Site(PAIRING)
    code = _code(site, "t1") if site.connect("t1") else ""
    site.apply(site.broker.pair_code(code, "d1", "admin"))
    site.apply(site.broker.unpair("t1", "admin"))
    fresh = _code(site, "t1")
    assert normalise_code(fresh, 6) != normalise_code(code, 6)
    with pytest.raises(PairingCodeError):
        site.broker.pair_code(code, "d2", "admin")
    assert site.store.pairing_for("t1") is None
    assert site.actions()[-1] == "pair-code-failed"


def test_pairing_codes_expire_and_the_screen_gets_a_new_one() -> None:
    site = Site(PAIRING)
    site.connect("t1")
    code = _code(site, "t1")
    assert site.broker.next_deadline() == site.clock.now + PAIRING.code_lifetime
    site.clock.advance(PAIRING.code_lifetime + 1)
    with pytest.raises(PairingCodeError):
        site.broker.pair_code(code, "d1", "admin")
    assert site.store.pairing_for("t1") is None
    changes = site.apply(site.broker.tick())
    assert [c.terminal_id for c in changes] == ["t1"]
    assert _code(site, "t1") != code
    site.apply(site.broker.pair_code(_code(site, "t1"), "d1", "admin"))
    assert _is_desktop(site.screens["t1"], "d1")


def test_wrong_codes_are_rate_limited_per_actor_and_in_total() -> None:
    config = BrokerConfig(
        code_failures_per_actor=RateLimit(3, 600.0),
        code_failures_total=RateLimit(5, 600.0),
        code_lifetime=3600.0,
    )
    site = Site(config)
    site.connect("t1")
    good = _code(site, "t1")
    wrong = next(c for c in (new_code(6) for _ in range(99)) if c != normalise_code(good, 6))
    for _ in range(3):
        with pytest.raises(PairingCodeError, match="no such"):
            site.broker.pair_code(wrong, "d1", "mallory")
    with pytest.raises(PairingCodeError, match="try again in 600 seconds"):
        site.broker.pair_code(good, "d1", "mallory")  # even the right code is refused
    assert site.actions()[-1] == "pair-code-refused"
    for _ in range(2):
        with pytest.raises(PairingCodeError, match="no such"):
            site.broker.pair_code(wrong, "d1", "eve")
    with pytest.raises(PairingCodeError, match="try again"):
        site.broker.pair_code(good, "d1", "ann")  # the total limit holds for everyone
    site.clock.advance(601)
    site.apply(site.broker.pair_code(good, "d1", "ann"))
    assert _is_desktop(site.screens["t1"], "d1")


def test_wrong_tries_at_one_terminal_replace_its_code() -> None:
    site = Site(BrokerConfig(code_tries=3))
    site.connect("t1")
    site.connect("t2")
    good = _code(site, "t1")
    for tries in range(1, 4):
        with pytest.raises(PairingCodeError) as caught:
            site.broker.pair_code(_code(site, "t2"), "d1", "admin", terminal_id="t1")
        site.apply(caught.value.changes)
        if tries < 3:
            assert caught.value.changes == [] and _code(site, "t1") == good
    assert [c.terminal_id for c in caught.value.changes] == ["t1"]
    assert _code(site, "t1") != good
    assert "pair-code-locked" in site.actions()
    with pytest.raises(PairingCodeError):
        site.broker.pair_code(good, "d1", "admin")
    assert site.store.pairing_for("t2") is None  # t2's code named with t1 paired nothing
    site.apply(site.broker.pair_code(_code(site, "t1"), "d1", "admin", terminal_id="t1"))
    assert _is_desktop(site.screens["t1"], "d1")


def test_a_bad_desktop_name_does_not_burn_the_code() -> None:
    site = Site(PAIRING)
    site.connect("t1")
    code = _code(site, "t1")
    with pytest.raises(BrokerError, match="not registered"):
        site.broker.pair_code(code, "nope", "admin")
    site.apply(site.broker.pair_code(code, "d1", "admin"))
    assert _is_desktop(site.screens["t1"], "d1")


def test_explicit_pairing_moves_a_desktop_and_unpair_falls_back() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")  # pairing before the terminal was ever seen
    assert _is_desktop(site.connect("t1"), "d1")
    site.connect("t2")
    changes = site.apply(site.broker.pair("t2", "d1", "admin"))
    assert [c.terminal_id for c in changes] == ["t1", "t2"]  # control leaves first
    assert _kind(site.screens["t1"]) is ScreenKind.PAIRING
    assert _is_desktop(site.screens["t2"], "d1")
    site.apply(site.broker.unpair("t2", "admin"))
    assert _kind(site.screens["t2"]) is ScreenKind.PAIRING
    assert site.broker.unpair("t2", "admin") == []
    assert site.actions().count("unpair") == 2  # the move and the unpair


def test_pool_and_user_desktops_cannot_be_paired() -> None:
    site = Site(BrokerConfig(hot_desk=True, pools={"lab": ("p1",)}))
    site.broker.add_user("alice", "pw", "admin", desktop="d1")
    with pytest.raises(BrokerError, match="pool"):
        site.broker.pair("t1", "p1", "admin")
    with pytest.raises(BrokerError, match="alice"):
        site.broker.pair("t1", "d1", "admin")
    with pytest.raises(BrokerError, match="not registered"):
        site.broker.pair("t1", "nope", "admin")
    site.broker.pair("t1", "d2", "admin")
    with pytest.raises(BrokerError, match="paired"):
        site.broker.set_user_desktop("alice", "d2", "admin")
    with pytest.raises(BrokerError, match="alice"):
        site.broker.add_user("bob", "pw", "admin", desktop="d1")


# Pools.


def test_pool_exhaustion_and_a_freed_desktop_goes_to_the_first_waiting_terminal() -> None:
    site = Site(POOL)
    assert _is_desktop(site.connect("t1"), "p1")
    assert _is_desktop(site.connect("t2"), "p2")
    assert _kind(site.connect("t3")) is ScreenKind.NO_DESKTOP_FREE
    assert _kind(site.connect("t4")) is ScreenKind.NO_DESKTOP_FREE
    changes = site.disconnect("t2")
    assert changes == [Change("t3", site.broker.assignment("t3"))]
    assert _is_desktop(site.screens["t3"], "p2")
    site.disconnect("t1")
    assert _is_desktop(site.screens["t4"], "p1")


def test_pool_desktop_states_starting_and_unavailable() -> None:
    site = Site(POOL)
    site.apply(site.broker.desktop_state("p1", DesktopState.STARTING, 0.25))
    shown = site.connect("t1")
    assert isinstance(shown, ShowScreen) and shown.kind is ScreenKind.STARTING
    assert (shown.desktop, shown.progress) == ("p1", 0.25)
    site.apply(site.broker.desktop_state("p1", DesktopState.RUNNING))
    assert _is_desktop(site.screens["t1"], "p1")
    site.connect("t2")
    site.apply(site.broker.desktop_state("p1", DesktopState.CRASHED))
    # t1 lost p1; p2 is taken: t1 waits
    assert _kind(site.screens["t1"]) is ScreenKind.NO_DESKTOP_FREE
    site.apply(site.broker.desktop_state("p1", DesktopState.RUNNING))
    assert _is_desktop(site.screens["t1"], "p1")


# Hot-desking.


def _hot_desk_site(config: BrokerConfig = LOGIN) -> Site:
    site = Site(config)
    site.broker.add_user("alice", "1234", "admin", desktop="d1")
    site.broker.add_user("bob", "4321", "admin", desktop="d2")
    return site


def test_hot_desk_desktop_follows_the_user_and_the_old_terminal_returns_to_login() -> None:
    site = _hot_desk_site()
    assert _kind(site.connect("A")) is ScreenKind.LOGIN
    assert _kind(site.connect("B")) is ScreenKind.LOGIN
    site.apply(site.broker.login("A", "alice", "1234"))
    assert _is_desktop(site.screens["A"], "d1")
    changes = site.apply(site.broker.login("B", "alice", "1234"))
    assert [c.terminal_id for c in changes] == ["A", "B"]
    assert _kind(site.screens["A"]) is ScreenKind.LOGIN
    assert _is_desktop(site.screens["B"], "d1")
    assert site.actions()[-3:] == ["login", "takeover", "login"]
    sessions = site.store.list_sessions()
    assert [(s.terminal_id, s.user, s.ended is None) for s in sessions] == [
        ("B", "alice", True),
        ("A", "alice", False),
    ]
    site.apply(site.broker.logout("B"))
    assert _kind(site.screens["B"]) is ScreenKind.LOGIN
    assert site.store.list_sessions()[0].ended == site.clock.now


def test_failed_login_shows_why_and_is_audited() -> None:
    site = _hot_desk_site()
    site.connect("A")
    changes = site.apply(site.broker.login("A", "alice", "9999"))
    assert changes[0].assignment == ShowScreen(ScreenKind.LOGIN, "Wrong user name or password.")
    entry = site.store.list_audit()[-1]
    assert (entry.actor, entry.action, entry.subject) == ("user:alice", "login-failed", "A")
    site.apply(site.broker.login("A", "nobody", "1234"))
    assert site.actions()[-1] == "login-failed"
    site.apply(site.broker.login("A", "alice", "1234"))
    assert _is_desktop(site.screens["A"], "d1")


def test_failed_logins_are_rate_limited_per_terminal() -> None:
    config = BrokerConfig(
        unknown_terminal="login",
        hot_desk=True,
        pairing_codes=False,
        login_failures_per_terminal=RateLimit(3, 60.0),
    )
    site = _hot_desk_site(config)
    site.connect("A")
    site.connect("B")
    for _ in range(3):
        site.apply(site.broker.login("A", "bob", "0000"))
    site.apply(site.broker.login("A", "alice", "1234"))  # right secret, but A is locked
    shown = site.screens["A"]
    assert _kind(shown) is ScreenKind.LOGIN and "60 seconds" in shown.message
    assert site.actions()[-1] == "login-refused"
    site.apply(site.broker.login("B", "alice", "1234"))  # another terminal is not locked
    assert _is_desktop(site.screens["B"], "d1")
    site.clock.advance(61)
    site.apply(site.broker.login("A", "alice", "1234"))
    assert _is_desktop(site.screens["A"], "d1")


def test_failed_logins_are_rate_limited_per_user_across_terminals() -> None:
    config = BrokerConfig(
        unknown_terminal="login",
        hot_desk=True,
        pairing_codes=False,
        login_failures_per_user=RateLimit(4, 900.0),
    )
    site = _hot_desk_site(config)
    for i in range(4):
        site.connect(f"T{i}")
        site.apply(site.broker.login(f"T{i}", "alice", "0000"))
    site.connect("fresh")
    site.apply(site.broker.login("fresh", "alice", "1234"))
    assert _kind(site.screens["fresh"]) is ScreenKind.LOGIN
    assert site.actions()[-1] == "login-refused"
    site.apply(site.broker.login("fresh", "bob", "4321"))  # other users are unaffected
    assert _is_desktop(site.screens["fresh"], "d2")
    site.clock.advance(901)
    site.apply(site.broker.login("T0", "alice", "1234"))
    assert _is_desktop(site.screens["T0"], "d1")


def test_users_without_a_desktop_borrow_from_the_user_pool_which_follows_them() -> None:
    config = BrokerConfig(
        unknown_terminal="login",
        hot_desk=True,
        pairing_codes=False,
        pools={"roam": ("r1",)},
        user_pool="roam",
    )
    site = Site(config)
    site.broker.add_user("carol", "pw", "admin")
    site.broker.add_user("dave", "pw", "admin")
    for t in ("A", "B", "C"):
        site.connect(t)
    site.apply(site.broker.login("A", "carol", "pw"))
    assert _is_desktop(site.screens["A"], "r1")
    site.apply(site.broker.login("C", "dave", "pw"))
    assert _kind(site.screens["C"]) is ScreenKind.NO_DESKTOP_FREE
    site.apply(site.broker.login("B", "carol", "pw"))
    assert _is_desktop(site.screens["B"], "r1")  # the borrowed desktop follows carol
    assert _kind(site.screens["A"]) is ScreenKind.LOGIN
    site.apply(site.broker.logout("B"))
    assert _is_desktop(site.screens["C"], "r1")  # and goes to dave when she logs out


def test_users_without_any_desktop_cannot_log_in() -> None:
    site = Site(LOGIN)
    site.broker.add_user("erin", "pw", "admin")
    site.connect("A")
    site.apply(site.broker.login("A", "erin", "pw"))
    assert _kind(site.screens["A"]) is ScreenKind.LOGIN
    assert "erin" in site.screens["A"].message
    assert site.broker.snapshot().logins == {}


def test_login_rehashes_secrets_made_with_old_parameters() -> None:
    site = Site(LOGIN)
    old = SecretHasher(time_cost=2, memory_cost=8, parallelism=1).hash("pw")
    site.store.add_user(User("frank", "d3", 0.0), old)
    site.connect("A")
    site.apply(site.broker.login("A", "frank", "pw"))
    assert _is_desktop(site.screens["A"], "d3")
    new = site.store.user_secret_hash("frank")
    assert new != old and not CHEAP.needs_rehash(new) and CHEAP.verify(new, "pw")


def test_login_needs_hot_desk_and_a_connected_terminal() -> None:
    site = Site(PAIRING)
    site.connect("A")
    with pytest.raises(BrokerError, match="hot-desking is off"):
        site.broker.login("A", "alice", "pw")
    with pytest.raises(NotConnectedError):
        _hot_desk_site().broker.login("nowhere", "alice", "1234")


def test_deleting_a_logged_in_user_sends_their_terminal_back() -> None:
    site = _hot_desk_site()
    site.connect("A")
    site.apply(site.broker.login("A", "alice", "1234"))
    site.apply(site.broker.delete_user("alice", "admin"))
    assert _kind(site.screens["A"]) is ScreenKind.LOGIN
    assert site.store.get_user("alice") is None


# Logins in three steps: prepare on the broker's thread, run anywhere, apply.


def _attempts(site: Site, terminal_id: str | None = None) -> list[tuple[str, str]]:
    """(action, detail) of every login attempt audited, at one terminal or all."""
    return [
        (e.action, e.detail)
        for e in site.store.list_audit()
        if e.action.startswith("login") and terminal_id in (None, e.subject)
    ]


def _run_elsewhere(check: LoginCheck) -> LoginVerdict:
    """Run a check in a thread of its own, as the relay's verifier does."""
    verdicts: list[LoginVerdict] = []
    worker = threading.Thread(target=lambda: verdicts.append(check.run()))
    worker.start()
    worker.join()
    return verdicts[0]


def test_a_login_in_steps_logs_in_once_the_verdict_is_applied() -> None:
    site = _hot_desk_site()
    site.connect("A")
    check = site.broker.prepare_login("A", "alice", "1234")
    assert isinstance(check, LoginCheck)
    assert site.broker.snapshot().checking == {"A": "alice"}
    assert _kind(site.broker.assignment("A")) is ScreenKind.LOGIN  # nothing shown changes yet
    assert _attempts(site) == []  # audited when the verdict is known
    verdict = _run_elsewhere(check)
    assert verdict.ok and verdict.rehashed is None
    site.apply(site.broker.apply_login(verdict))
    assert _is_desktop(site.screens["A"], "d1")
    assert site.broker.snapshot().checking == {}
    assert _attempts(site) == [("login", "")]
    with pytest.raises(BrokerError, match="not in flight"):
        site.broker.apply_login(verdict)  # a verdict applies once
    assert _attempts(site) == [("login", "")]


def test_unknown_users_are_checked_against_a_dummy_hash_like_known_ones() -> None:
    site = _hot_desk_site()
    site.connect("A")
    known = site.broker.prepare_login("A", "alice", "0000")
    assert isinstance(known, LoginCheck) and known.stored is not None
    site.apply(site.broker.apply_login(known.run()))
    unknown = site.broker.prepare_login("A", "nobody", "0000")
    invalid = LoginCheck("A", "bad name!", 0, None, "0000", CHEAP)
    assert isinstance(unknown, LoginCheck) and unknown.stored is None
    assert not unknown.run().ok and not invalid.run().ok
    site.apply(site.broker.apply_login(unknown.run()))
    assert _attempts(site) == [("login-failed", "wrong secret")] * 2
    # The same Argon2 work either way: compare CPU time over a few runs each.
    hasher = SecretHasher(time_cost=3, memory_cost=16384, parallelism=1)
    real = LoginCheck("A", "alice", 0, hasher.hash("1234"), "0000", hasher)
    ghost = LoginCheck("A", "nobody", 0, None, "0000", hasher)
    ghost.run()  # the dummy hash is made on first use
    ratio = _cpu_time(ghost.run) / _cpu_time(real.run)
    assert 0.5 < ratio < 2.0


def _cpu_time(work: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.thread_time()
        work()
        times.append(time.thread_time() - start)
    return sorted(times)[runs // 2]


STALE_EVENTS: dict[str, Callable[[Site], object]] = {
    "reconnected": lambda site: (site.disconnect("A"), site.connect("A")),
    "kicked": lambda site: site.apply(site.broker.kick("A", "admin")),
    "shadowed": lambda site: site.apply(site.broker.shadow("A", "d3", "admin")),
    "paired": lambda site: site.apply(site.broker.pair("A", "d3", "admin")),
    "unpaired": lambda site: site.apply(site.broker.unpair("A", "admin")),
    "paired away": lambda site: site.apply(site.broker.pair("B", "d3", "admin")),
    "secret changed": lambda site: site.broker.set_user_secret("alice", "1234", "admin"),
    "user deleted": lambda site: site.apply(site.broker.delete_user("alice", "admin")),
}


@pytest.mark.parametrize("event", sorted(STALE_EVENTS))
def test_a_late_verdict_never_logs_in_a_terminal_that_stopped_waiting(event: str) -> None:
    site = _hot_desk_site()
    site.connect("A")
    site.connect("B")
    site.broker.pair("A", "d3", "admin")  # so that unpairing has something to undo
    check = site.broker.prepare_login("A", "alice", "1234")
    assert isinstance(check, LoginCheck)
    STALE_EVENTS[event](site)
    shown = dict(site.screens)
    site.apply(site.broker.apply_login(_run_elsewhere(check)))
    assert site.broker.snapshot().logins == {}
    assert site.screens == shown
    assert all(not _is_desktop(a, "d1") for a in site.screens.values())
    cancelled = _attempts(site, "A")
    assert [action for action, _ in cancelled] == ["login-cancelled"]
    # The next attempt at A is checked and applied as usual.
    if site.broker.is_connected("A") and site.store.get_user("alice") is not None:
        site.apply(site.broker.login("A", "alice", "1234"))
        assert _is_desktop(site.screens["A"], "d1")


def test_a_wrong_secret_counts_once_even_when_the_terminal_stopped_waiting() -> None:
    config = BrokerConfig(
        unknown_terminal="login",
        hot_desk=True,
        pairing_codes=False,
        login_failures_per_terminal=RateLimit(2, 60.0),
    )
    site = _hot_desk_site(config)
    site.connect("A")
    first = site.broker.prepare_login("A", "alice", "0000")
    assert isinstance(first, LoginCheck)
    site.disconnect("A")  # leaving does not take the guess back
    site.apply(site.broker.apply_login(first.run()))
    site.connect("A")
    assert _kind(site.screens["A"]) is ScreenKind.LOGIN and site.screens["A"].message == ""
    second = site.broker.prepare_login("A", "bob", "0000")
    assert isinstance(second, LoginCheck)
    verdict = second.run()
    site.apply(site.broker.apply_login(verdict))
    with pytest.raises(BrokerError):
        site.broker.apply_login(verdict)  # applied twice: refused, not counted again
    assert site.screens["A"].message == "Wrong user name or password."
    refused = site.broker.prepare_login("A", "alice", "1234")
    assert isinstance(refused, list)  # two failures: locked, the secret not even checked
    site.apply(refused)
    assert "60 seconds" in site.screens["A"].message
    assert _attempts(site, "A") == [
        ("login-failed", "wrong secret"),
        ("login-failed", "wrong secret"),
        ("login-refused", "rate limited for 60 s"),
    ]


def test_one_check_at_a_time_per_terminal_and_per_user() -> None:
    site = _hot_desk_site()
    for terminal in ("A", "B", "C"):
        site.connect(terminal)
    check = site.broker.prepare_login("A", "alice", "1234")
    assert isinstance(check, LoginCheck)
    for _ in range(3):  # the same terminal submits again, any user
        site.apply(site.broker.prepare_login("A", "bob", "4321"))  # type: ignore[arg-type]
    site.apply(site.broker.prepare_login("B", "alice", "0000"))  # type: ignore[arg-type]
    assert "being checked" in site.screens["B"].message
    assert site.broker.snapshot().checking == {"A": "alice"}
    other = site.broker.prepare_login("C", "bob", "4321")  # another user elsewhere: checked
    assert isinstance(other, LoginCheck)
    assert _attempts(site) == [
        ("login-refused", "another login is being checked"),  # A: once per check waited on
        ("login-refused", "another login is being checked"),  # B
    ]
    site.apply(site.broker.apply_login(check.run()))
    site.apply(site.broker.apply_login(other.run()))
    assert _is_desktop(site.screens["A"], "d1") and _is_desktop(site.screens["C"], "d2")
    site.apply(site.broker.login("B", "alice", "1234"))  # nothing in flight: checked again
    assert _is_desktop(site.screens["B"], "d1")


def test_a_check_that_never_finished_is_forgotten_without_counting() -> None:
    config = BrokerConfig(
        unknown_terminal="login",
        hot_desk=True,
        pairing_codes=False,
        login_failures_per_terminal=RateLimit(1, 60.0),
    )
    site = _hot_desk_site(config)
    site.connect("A")
    check = site.broker.prepare_login("A", "alice", "1234")
    assert isinstance(check, LoginCheck)
    site.apply(site.broker.abandon_login(check, "the worker died"))
    assert "could not be checked" in site.screens["A"].message
    assert _attempts(site) == [("login-cancelled", "the worker died")]
    with pytest.raises(BrokerError):
        site.broker.apply_login(check.run())
    site.apply(site.broker.login("A", "alice", "1234"))  # not locked out by it
    assert _is_desktop(site.screens["A"], "d1")


def test_a_rehash_from_the_check_is_stored_only_when_the_login_applies() -> None:
    site = Site(LOGIN)
    old = SecretHasher(time_cost=2, memory_cost=8, parallelism=1).hash("pw")
    site.store.add_user(User("frank", "d3", 0.0), old)
    site.connect("A")
    check = site.broker.prepare_login("A", "frank", "pw")
    assert isinstance(check, LoginCheck)
    verdict = check.run()
    assert verdict.ok and verdict.rehashed is not None
    site.apply(site.broker.shadow("A", "d1", "admin"))
    site.apply(site.broker.apply_login(verdict))
    assert site.store.user_secret_hash("frank") == old  # a stale verdict writes nothing
    site.apply(site.broker.unshadow("A", "admin"))
    site.apply(site.broker.login("A", "frank", "pw"))
    assert site.store.user_secret_hash("frank") not in (None, old)


# The login form and the verifier's threads.


def test_the_login_form_says_checking_and_takes_no_keys_meanwhile() -> None:
    submitted: list[tuple[str, str]] = []
    form = LoginScreen(320, 240, lambda user, secret: submitted.append((user, secret)))
    for keysym in [*map(ord, "ann"), KEY_TAB, *map(ord, "12"), KEY_RETURN]:
        form.key(True, keysym, None)
    assert submitted == [("ann", "12")]
    form.checking()
    checking = screens.login_form("ann", 0, "secret", CHECKING)
    assert np.array_equal(form.framebuffer, screens.render(checking, 320, 240))
    for keysym in [ord("9"), KEY_RETURN, KEY_ESCAPE]:
        form.key(True, keysym, None)
    assert submitted == [("ann", "12")]
    form.checked()
    assert np.array_equal(
        form.framebuffer, screens.render(screens.login_form("ann", 0, "secret"), 320, 240)
    )
    form.key(True, KEY_RETURN, None)
    assert submitted == [("ann", "12"), ("ann", "")]


@pytest_twisted.ensureDeferred
async def test_the_verifier_runs_two_at_a_time_and_answers_on_the_reactor_thread() -> None:
    verifier = Verifier(reactor, workers=2)
    gate = threading.Event()
    lock = threading.Lock()
    running, most = [0], [0]
    worked_in: set[int] = set()
    answered_in: set[int] = set()

    def work(n: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            worked_in.add(threading.get_ident())
        gate.wait(10)
        with lock:
            running[0] -= 1
        return n

    def answered(n: int) -> int:
        answered_in.add(threading.get_ident())
        return n

    done = [verifier.run(lambda n=n: work(n)).addCallback(answered) for n in range(6)]
    await wait_until(lambda: running[0] == 2, 10, "two workers busy")
    gate.set()
    assert [await d for d in done] == list(range(6))
    verifier.stop()
    assert most[0] == 2  # the other four waited their turn
    assert len(worked_in) == 2 and threading.get_ident() not in worked_in
    assert answered_in == {threading.get_ident()}


@pytest_twisted.ensureDeferred
async def test_a_stopped_verifier_cancels_the_work_still_queued() -> None:
    verifier = Verifier(reactor, workers=1)
    gate = threading.Event()
    first = verifier.run(lambda: gate.wait(10))
    queued = verifier.run(lambda: "never")
    verifier.stop()
    gate.set()
    assert await first is True
    with pytest.raises(CancelledError):
        await queued


# Combinations.


def test_login_screen_carries_a_pairing_code_and_login_overrides_a_pairing() -> None:
    config = BrokerConfig(unknown_terminal="login", hot_desk=True, pairing_codes=True)
    site = _hot_desk_site(config)
    shown = site.connect("A")
    assert _kind(shown) is ScreenKind.LOGIN and shown.code is not None
    site.apply(site.broker.pair_code(shown.code, "d3", "admin"))
    assert _is_desktop(site.screens["A"], "d3")
    site.apply(site.broker.login("A", "bob", "4321"))
    assert _is_desktop(site.screens["A"], "d2")
    site.apply(site.broker.logout("A"))
    assert _is_desktop(site.screens["A"], "d3")  # back to the terminal's own pairing


def test_pool_terminals_can_be_paired_and_log_in() -> None:
    config = BrokerConfig(
        unknown_terminal="pool",
        pools={"lab": ("p1",)},
        default_pool="lab",
        hot_desk=True,
        pairing_codes=False,
    )
    site = _hot_desk_site(config)
    assert _is_desktop(site.connect("A"), "p1")
    assert _kind(site.connect("B")) is ScreenKind.NO_DESKTOP_FREE
    site.apply(site.broker.login("A", "alice", "1234"))  # A no longer needs p1: B gets it
    assert _is_desktop(site.screens["A"], "d1") and _is_desktop(site.screens["B"], "p1")
    site.apply(site.broker.pair("B", "d3", "admin"))
    assert _is_desktop(site.screens["B"], "d3")
    site.apply(site.broker.logout("A"))
    assert _is_desktop(site.screens["A"], "p1")


def test_a_corrupt_store_still_gives_a_desktop_one_controller() -> None:
    site = _hot_desk_site()
    site.store.pair(Pairing("B", "d1", 0.0, "test"))  # behind the broker's back: d1 is alice's
    site.connect("A")
    site.apply(site.broker.login("A", "alice", "1234"))
    shown = site.connect("B")
    assert _is_desktop(site.screens["A"], "d1")
    assert _kind(shown) is ScreenKind.IN_USE


# Control, kicking, watching, reconnecting.


def test_kick_disconnects_and_a_pairing_survives_it() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    site.connect("t1")
    changes = site.apply(site.broker.kick("t1", "admin:ann"))
    assert changes[0].terminal_id == "t1" and _kind(changes[0].assignment) is ScreenKind.KICKED
    with pytest.raises(NotConnectedError):
        site.broker.assignment("t1")
    entry = site.store.list_audit()[-1]
    assert (entry.actor, entry.action, entry.subject) == ("admin:ann", "kick", "t1")
    assert site.store.list_sessions()[0].ended is not None
    assert site.broker.kick("t1", "admin") == []
    assert site.broker.terminal_disconnected("t1") == []
    assert _is_desktop(site.connect("t1"), "d1")


def test_kicking_a_pool_terminal_frees_its_desktop_for_the_next() -> None:
    site = Site(POOL)
    for t in ("t1", "t2", "t3"):
        site.connect(t)
    changes = site.apply(site.broker.kick("t1", "admin"))
    assert [c.terminal_id for c in changes] == ["t1", "t3"]
    assert _is_desktop(site.screens["t3"], "p1")


def test_kicking_a_hot_desk_user_logs_them_out() -> None:
    site = _hot_desk_site()
    site.connect("A")
    site.apply(site.broker.login("A", "alice", "1234"))
    site.apply(site.broker.kick("A", "admin"))
    assert site.broker.snapshot().logins == {}
    assert _kind(site.connect("A")) is ScreenKind.LOGIN


def test_shadowing_is_view_only_and_leaves_control_alone() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    site.connect("t1")
    site.connect("dash-1")
    changes = site.apply(site.broker.shadow("dash-1", "d1", "admin:ann"))
    assert changes == [Change("dash-1", site.broker.assignment("dash-1"))]
    assert _is_desktop(site.screens["dash-1"], "d1", control=False)
    assert _is_desktop(site.screens["t1"], "d1", control=True)
    site.apply(site.broker.unshadow("dash-1", "admin:ann"))
    assert _kind(site.screens["dash-1"]) is ScreenKind.PAIRING
    assert site.actions()[-2:] == ["shadow", "unshadow"]


def test_a_new_connection_for_a_connected_id_needs_the_old_one_closed_first() -> None:
    site = _hot_desk_site()
    site.connect("A", connection="conn-1")
    site.apply(site.broker.login("A", "alice", "1234"))
    with pytest.raises(AlreadyConnectedError):
        site.broker.terminal_connected("A", TerminalInfo(), "conn-2")
    assert _is_desktop(site.broker.assignment("A"), "d1")  # nothing changed
    assert site.broker.is_connected("A")
    site.broker.terminal_disconnected("A", "conn-1")  # what the relay does first
    assert not site.broker.is_connected("A")
    assert _kind(site.connect("A", connection="conn-2")) is ScreenKind.LOGIN  # login ended
    assert site.broker.terminal_disconnected("A", "conn-1") == []  # old one reported late
    assert _kind(site.broker.assignment("A")) is ScreenKind.LOGIN
    site.broker.terminal_disconnected("A", "conn-2")
    with pytest.raises(NotConnectedError):
        site.broker.assignment("A")


def test_paired_desktop_not_running_shows_progress_then_the_desktop() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    site.apply(site.broker.desktop_state("d1", DesktopState.CRASHED))
    assert _kind(site.connect("t1")) is ScreenKind.UNAVAILABLE
    site.apply(site.broker.desktop_state("d1", DesktopState.STARTING, 0.5))
    assert site.screens["t1"] == ShowScreen(
        ScreenKind.STARTING, "Starting the desktop.", desktop="d1", progress=0.5
    )
    site.apply(site.broker.desktop_state("d1", DesktopState.RUNNING))
    assert _is_desktop(site.screens["t1"], "d1")


def test_a_terminal_paired_with_a_desktop_not_configured_shows_its_pairing_screen() -> None:
    site = Site(PAIRING)
    store = site.store
    site.broker.pair("t1", "d1", "admin")
    store_again = store  # the same database, a new broker that registered nothing
    broker = Broker(store_again, PAIRING, clock=site.clock, hasher=CHEAP)
    shown = broker.terminal_connected("t1")
    assert isinstance(shown, ShowScreen) and shown.kind is ScreenKind.PAIRING
    assert shown.message == "Its desktop d1 is no longer configured."
    broker.register_desktop("d1", "xvnc")
    assert _is_desktop(broker.assignment("t1"), "d1")


def test_a_desktop_that_could_not_start_says_why_and_a_crashed_one_is_unavailable() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    site.connect("t1")
    site.apply(site.broker.desktop_state("d1", DesktopState.CRASHED, failure="no template"))
    assert site.screens["t1"] == ShowScreen(ScreenKind.FAILED, "no template", desktop="d1")
    site.apply(site.broker.desktop_state("d1", DesktopState.CRASHED))  # crashed, no start failure
    assert _kind(site.screens["t1"]) is ScreenKind.UNAVAILABLE
    site.apply(site.broker.desktop_state("d1", DesktopState.CRASHED, failure="no template"))
    site.apply(site.broker.desktop_state("d1", DesktopState.STOPPED))  # fixed: offered again
    assert _is_desktop(site.screens["t1"], "d1")


def test_a_pool_whose_desktops_all_failed_says_why_rather_than_all_in_use() -> None:
    site = Site(POOL)
    shown = site.connect("t1")
    assert _is_desktop(shown, "p1")
    for name in POOL.pools["lab"]:
        site.apply(site.broker.desktop_state(name, DesktopState.CRASHED, failure=f"{name} broke"))
    waiting = site.screens["t1"]
    assert isinstance(waiting, ShowScreen) and waiting.kind is ScreenKind.NO_DESKTOP_FREE
    assert (waiting.desktop, waiting.message) == ("p1", "p1 broke")
    site.apply(site.broker.desktop_state("p2", DesktopState.STOPPED))
    assert _is_desktop(site.screens["t1"], "p2")


def test_an_unregistered_desktop_sends_its_terminal_back_and_only_its_terminal() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    site.broker.pair("t2", "d2", "admin")
    site.connect("t1"), site.connect("t2"), site.connect("t3")
    site.apply(site.broker.shadow("t3", "d1", "admin"))
    changes = site.apply(site.broker.unregister_desktop("d1"))
    assert {c.terminal_id for c in changes} == {"t1", "t3"}
    assert _kind(site.screens["t1"]) is ScreenKind.PAIRING
    assert _kind(site.screens["t3"]) is ScreenKind.PAIRING  # no longer watching it
    assert _is_desktop(site.screens["t2"], "d2")
    assert site.store.pairing_for("t1") is not None  # kept until forgotten
    with pytest.raises(BrokerError, match="not registered"):
        site.broker.pair("t3", "d9", "admin")
    site.apply(site.broker.register_desktop("d1", "xvnc"))  # configured again: back
    assert _is_desktop(site.screens["t1"], "d1")


def test_forget_desktop_refuses_a_configured_one_and_drops_pairings_and_owners() -> None:
    site = Site(PAIRING)
    site.broker.add_user("ann", "1234", "admin", "d1")
    site.broker.pair("t1", "d2", "admin")
    with pytest.raises(BrokerError, match="is configured"):
        site.broker.forget_desktop("d2", "admin:root")
    site.broker.unregister_desktop("d1")
    site.broker.unregister_desktop("d2")
    site.broker.forget_desktop("d2", "admin:root")
    site.broker.forget_desktop("d1", "admin:root")
    assert [d.name for d in site.store.list_desktops()] == ["d3"]
    assert site.store.pairing_for("t1") is None
    assert site.store.get_user("ann") is not None and site.store.get_user("ann").desktop is None
    forgotten = [e for e in site.store.list_audit() if e.action == "desktop-forget"]
    assert [(e.subject, e.detail, e.actor) for e in forgotten] == [
        ("d2", "paired with t1", "admin:root"),
        ("d1", "owned by ann", "admin:root"),
    ]
    with pytest.raises(BrokerError, match="not registered"):
        site.broker.forget_desktop("d1", "admin:root")


def test_reconfigure_swaps_the_policy_live() -> None:
    site = Site(PAIRING)
    assert _kind(site.connect("t1")) is ScreenKind.PAIRING
    site.broker.pair("t2", "d2", "admin")
    assert _is_desktop(site.connect("t2"), "d2")
    site.broker.register_desktop("p1", "qemu")
    pooled = BrokerConfig(unknown_terminal="pool", pools={"vms": ("p1",)}, default_pool="vms")
    site.apply(site.broker.reconfigure(pooled))
    assert _is_desktop(site.screens["t1"], "p1")  # unknown terminals now get a pool desktop
    assert _is_desktop(site.screens["t2"], "d2")  # the paired one is untouched
    assert site.store.get_desktop("p1").pool == "vms"
    assert "broker-policy" in site.actions()
    site.apply(site.broker.reconfigure(PAIRING))
    assert _kind(site.screens["t1"]) is ScreenKind.PAIRING
    assert site.store.get_desktop("p1").pool is None


# Random sequences of every event, with invariants checked after each step.

TERMINALS = ("t1", "t2", "t3", "t4")
USERS = {
    "alice": ("1111", "d1"),
    "bob": ("2222", None),
    "carol": ("3333", "d2"),
    "dave": ("4444", None),
}
SECRETS = {name: secret for name, (secret, _) in USERS.items()}
ALL_DESKTOPS = (*OWN_DESKTOPS, "p1", "p2", "r1")


class BrokerMachine(RuleBasedStateMachine):
    """A relay's view of a site, driven by random events.

    The machine keeps its own model of what justifies a desktop (pairings,
    logins, shadow grants, user desktops) from the broker's answers and the
    audit log, and checks each assignment against it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="thinserve-broker-"))
        self.location = STORES.location(self.dir)
        self.screens: dict[str, Assignment] = {}

    @initialize(unknown=st.sampled_from(["pairing", "login", "pool"]), codes=st.booleans())
    def start(self, unknown: str, codes: bool) -> None:
        self.config = BrokerConfig(
            unknown_terminal=unknown,
            pairing_codes=codes or unknown == "pairing",
            hot_desk=True,
            pools={"lab": ("p1",), "roam": ("r1", "p2")},  # scarce, so terminals wait
            default_pool="lab",
            user_pool="roam",
            login_failures_per_terminal=RateLimit(3, 60.0),
            login_failures_per_user=RateLimit(4, 300.0),
            code_failures_per_actor=RateLimit(3, 300.0),
        )
        self.clock = Clock()
        self._open()
        for name, (secret, desktop) in USERS.items():
            self.broker.add_user(name, secret, "admin", desktop=desktop)
        self.pairings: dict[str, str] = {}
        self.user_desktops = {name: desktop for name, (_, desktop) in USERS.items()}

    def _open(self) -> None:
        self.store = open_store(self.location)
        self.broker = Broker(self.store, self.config, clock=self.clock, hasher=CHEAP)
        for name in ALL_DESKTOPS:
            self.broker.register_desktop(name, "test")
        self.screens: dict[str, Assignment] = {}
        self.logins: dict[str, str] = {}
        self.watching: dict[str, str] = {}
        self.checks: dict[int, tuple[LoginCheck, bool]] = {}  # in flight: check, right secret
        self.waiting: dict[str, int] = {}  # terminal -> the check it waits for

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _apply(self, changes: list[Change]) -> None:
        for terminal_id, assignment in changes:
            assert terminal_id in self.screens, f"change for unconnected {terminal_id}"
            if _kind(assignment) is ScreenKind.KICKED:
                del self.screens[terminal_id]
            else:
                self.screens[terminal_id] = assignment

    def _last_action(self) -> str:
        return self.store.list_audit()[-1].action

    def _forget(self, terminal_id: str) -> None:
        self.logins.pop(terminal_id, None)
        self.watching.pop(terminal_id, None)
        self.waiting.pop(terminal_id, None)

    def _new_actions(self, written: int) -> list[str]:
        actions = [e.action for e in self.store.list_audit(after_id=0, limit=100_000)[written:]]
        for action in actions:
            event(f"login: {action}")
        return actions

    def _logged_in(self, terminal: str, user: str) -> None:
        self.logins = {t: u for t, u in self.logins.items() if u != user}
        self.logins[terminal] = user
        self.watching.pop(terminal, None)

    def _refusal_said(self, terminal: str) -> None:
        """A right secret refused unchecked: the login screen says why."""
        shown = self.screens[terminal]
        fallback = isinstance(shown, ShowScreen) and shown.kind in FALLBACK_SCREENS
        if fallback and terminal not in self.logins:
            assert "Too many" in shown.message or "being checked" in shown.message  # type: ignore[union-attr]

    def _owned(self, desktop: str) -> bool:
        return self.config.pool_of(desktop) is not None or desktop in self.user_desktops.values()

    # Terminal events.

    @rule(terminal=st.sampled_from(TERMINALS))
    def connect(self, terminal: str) -> None:
        """A connection arrives; as the relay does, close an old one for the id first."""
        if terminal in self.screens:
            with pytest.raises(AlreadyConnectedError):
                self.broker.terminal_connected(terminal, TerminalInfo())
            self.disconnect(terminal)
        self.screens[terminal] = self.broker.terminal_connected(terminal, TerminalInfo())

    @rule(terminal=st.sampled_from(TERMINALS))
    def disconnect(self, terminal: str) -> None:
        self.screens.pop(terminal, None)
        self._forget(terminal)
        self._apply(self.broker.terminal_disconnected(terminal))

    @rule(terminal=st.sampled_from(TERMINALS))
    def login_needs_a_connection(self, terminal: str) -> None:
        if terminal not in self.screens:
            with pytest.raises(NotConnectedError):
                self.broker.login(terminal, "alice", SECRETS["alice"])

    @rule(
        terminal=st.sampled_from(TERMINALS),
        user=st.sampled_from(sorted(USERS)),
        right=st.sampled_from([True] * 3 + [False]),
    )
    def login(self, terminal: str, user: str, right: bool) -> None:
        """A user logs in (the terminal connects first if it has not)."""
        if terminal not in self.screens:
            self.connect(terminal)
        secret = SECRETS[user] if right else "bad"
        written = len(self.store.list_audit(limit=100_000))
        self._apply(self.broker.login(terminal, user, secret))
        actions = self._new_actions(written)
        if "login" not in actions:
            # refused (rate-limited, or another check in flight; audited once) or a wrong secret
            assert set(actions) <= {"login-failed", "login-refused"}
            if right:
                assert "login-failed" not in actions
                self._refusal_said(terminal)
            return
        assert right and actions[-1] == "login"
        self._logged_in(terminal, user)

    @rule(
        terminal=st.sampled_from(TERMINALS),
        user=st.sampled_from(sorted(USERS)),
        right=st.sampled_from([True] * 3 + [False]),
    )
    def start_login(self, terminal: str, user: str, right: bool) -> None:
        """A login whose secret is checked later, with other events in between."""
        if terminal not in self.screens:
            self.connect(terminal)
        secret = SECRETS[user] if right else "bad"
        written = len(self.store.list_audit(limit=100_000))
        prepared = self.broker.prepare_login(terminal, user, secret)
        actions = self._new_actions(written)
        if isinstance(prepared, LoginCheck):
            assert actions == []
            self.checks[prepared.ticket] = (prepared, right)
            self.waiting[terminal] = prepared.ticket
            return
        self._apply(prepared)
        assert set(actions) <= {"login-refused"}
        if right:
            self._refusal_said(terminal)

    @precondition(lambda self: self.checks)
    @rule(data=st.data())
    def finish_login(self, data: st.DataObject) -> None:
        """A check in flight comes back; it logs in only where it is still awaited."""
        ticket = data.draw(st.sampled_from(sorted(self.checks)), label="check")
        check, right = self.checks.pop(ticket)
        awaited = self.waiting.get(check.terminal_id) == ticket
        if awaited:
            del self.waiting[check.terminal_id]
        written = len(self.store.list_audit(limit=100_000))
        self._apply(self.broker.apply_login(check.run()))
        actions = self._new_actions(written)
        if not right:
            assert actions == ["login-failed"]
        elif not awaited:
            assert actions == ["login-cancelled"]
        else:
            assert actions[-1] == "login" and set(actions) <= {"login", "takeover", "logout"}
            self._logged_in(check.terminal_id, check.user)

    @rule(
        user=st.sampled_from(sorted(USERS)),
        first=st.sampled_from(TERMINALS),
        second=st.sampled_from(TERMINALS),
    )
    def walk_to_another_terminal(self, user: str, first: str, second: str) -> None:
        """Hot-desking: log in at one terminal, then at another."""
        self.login(first, user, True)
        self.login(second, user, True)

    @rule(terminal=st.sampled_from(TERMINALS))
    def logout(self, terminal: str) -> None:
        self._apply(self.broker.logout(terminal))
        self.logins.pop(terminal, None)

    # Administration.

    @rule(terminal=st.sampled_from(TERMINALS), desktop=st.sampled_from(ALL_DESKTOPS))
    def pair(self, terminal: str, desktop: str) -> None:
        if self._owned(desktop):
            with pytest.raises(BrokerError):
                self.broker.pair(terminal, desktop, "admin")
            return
        self._apply(self.broker.pair(terminal, desktop, "admin"))
        event("paired")
        self._paired(terminal, desktop)

    def _paired(self, terminal: str, desktop: str) -> None:
        """Pairing changes what a terminal shows: a login checked there will not apply."""
        for moved in [t for t, d in self.pairings.items() if d == desktop]:
            self.waiting.pop(moved, None)
        self.waiting.pop(terminal, None)
        self.pairings = {t: d for t, d in self.pairings.items() if d != desktop}
        self.pairings[terminal] = desktop

    def _showing_codes(self) -> list[str]:
        return sorted(t for t, a in self.screens.items() if isinstance(a, ShowScreen) and a.code)

    @precondition(lambda self: self._showing_codes())
    @rule(data=st.data(), desktop=st.sampled_from(OWN_DESKTOPS), right=st.booleans())
    def pair_code(self, data: st.DataObject, desktop: str, right: bool) -> None:
        terminal = data.draw(st.sampled_from(self._showing_codes()), label="terminal")
        shown = self.screens[terminal]
        assert isinstance(shown, ShowScreen) and shown.code is not None
        code = shown.code if right else "ZZZ-ZZZ"
        if self._owned(desktop):
            with pytest.raises(BrokerError):
                self.broker.pair_code(code, desktop, "admin", terminal_id=terminal)
            return
        try:
            self._apply(self.broker.pair_code(code, desktop, "admin", terminal_id=terminal))
        except PairingCodeError as failed:
            self._apply(failed.changes)
            assert not right or self._last_action() == "pair-code-refused"
            event(f"pair code: {self._last_action()}")
            return
        assert right
        event("pair code: paired")
        self._paired(terminal, desktop)

    @rule(terminal=st.sampled_from(TERMINALS))
    def unpair(self, terminal: str) -> None:
        self._apply(self.broker.unpair(terminal, "admin"))
        if self.pairings.pop(terminal, None) is not None:
            self.waiting.pop(terminal, None)

    @rule(terminal=st.sampled_from(TERMINALS))
    def kick(self, terminal: str) -> None:
        connected = terminal in self.screens
        changes = self.broker.kick(terminal, "admin")
        if connected:
            assert changes[0].terminal_id == terminal
            assert _kind(changes[0].assignment) is ScreenKind.KICKED
        else:
            assert changes == []
        self._apply(changes)
        self._forget(terminal)

    @rule(terminal=st.sampled_from(TERMINALS), desktop=st.sampled_from(ALL_DESKTOPS))
    def shadow(self, terminal: str, desktop: str) -> None:
        if terminal not in self.screens:
            self.connect(terminal)
        self._apply(self.broker.shadow(terminal, desktop, "admin"))
        self.logins.pop(terminal, None)
        self.waiting.pop(terminal, None)
        self.watching[terminal] = desktop

    @rule(terminal=st.sampled_from(TERMINALS))
    def unshadow(self, terminal: str) -> None:
        self._apply(self.broker.unshadow(terminal, "admin"))
        self.watching.pop(terminal, None)

    @rule(user=st.sampled_from(sorted(USERS)), desktop=st.sampled_from((None, *OWN_DESKTOPS)))
    def set_user_desktop(self, user: str, desktop: str | None) -> None:
        others = {d for u, d in self.user_desktops.items() if u != user}
        if desktop is not None and (desktop in others or desktop in self.pairings.values()):
            with pytest.raises(BrokerError):
                self.broker.set_user_desktop(user, desktop, "admin")
            return
        self._apply(self.broker.set_user_desktop(user, desktop, "admin"))
        self.user_desktops[user] = desktop

    @rule(desktop=st.sampled_from(ALL_DESKTOPS), state=st.sampled_from(DesktopState))
    def desktop_state(self, desktop: str, state: DesktopState) -> None:
        self._apply(self.broker.desktop_state(desktop, state))

    @rule(seconds=st.sampled_from([1.0, 30.0, 400.0, 700.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._apply(self.broker.tick())

    @rule()
    def restart(self) -> None:
        """Close and reopen the database: what persists must come back equal."""
        before = self._persistent()
        self.store.close()
        self._open()
        assert self._persistent() == before
        assert all(s.ended is not None for s in self.store.list_sessions(limit=10_000))

    def _persistent(self) -> tuple:
        users = self.store.list_users()
        return (
            self.store.list_pairings(),
            users,
            [self.store.user_secret_hash(u.name) for u in users],
            self.store.list_audit(limit=100_000),
            self.store.list_terminals(),
        )

    # Invariants.

    @invariant()
    def relay_view_matches_the_broker(self) -> None:
        if not hasattr(self, "broker"):
            return
        assert set(self.broker.snapshot().connected) == set(self.screens)
        for terminal, shown in self.screens.items():
            assert self.broker.assignment(terminal) == shown

    @invariant()
    def checks_in_flight_match(self) -> None:
        if hasattr(self, "broker"):
            in_flight = {c.terminal_id: c.user for c, _ in self.checks.values()}
            assert self.broker.snapshot().checking == in_flight

    @invariant()
    def note_screens(self) -> None:
        for shown in self.screens.values():
            kind = _kind(shown)
            event(f"shown: {kind.value if kind else 'desktop'}")

    @invariant()
    def nothing_is_left_unsaid(self) -> None:
        """Every event returned all its changes: recomputing now changes nothing."""
        if hasattr(self, "broker"):
            assert self.broker.tick() == []

    @invariant()
    def one_controller_per_desktop(self) -> None:
        controlled = [
            a.desktop for a in self.screens.values() if isinstance(a, ShowDesktop) and a.control
        ]
        assert len(controlled) == len(set(controlled))

    @invariant()
    def every_desktop_shown_is_justified(self) -> None:
        if not hasattr(self, "broker"):
            return
        leases = self.broker.snapshot().leases
        for terminal, shown in self.screens.items():
            if not isinstance(shown, ShowDesktop):
                continue
            assert self._justified(terminal, shown, leases), (terminal, shown)

    def _justified(self, terminal: str, shown: ShowDesktop, leases: dict) -> bool:
        if not shown.control:
            return self.watching.get(terminal) == shown.desktop
        if terminal in self.watching:
            return False
        user = self.logins.get(terminal)
        if user is not None:
            own = self.user_desktops[user]
            if own is not None:
                return shown.desktop == own
            return (
                leases.get(shown.desktop) == ("user", user)
                and self.config.pool_of(shown.desktop) == "roam"
            )
        if terminal in self.pairings:
            return shown.desktop == self.pairings[terminal]
        return (
            self.config.unknown_terminal == "pool"
            and leases.get(shown.desktop) == ("terminal", terminal)
            and self.config.pool_of(shown.desktop) == "lab"
        )

    @invariant()
    def model_matches_the_store(self) -> None:
        if not hasattr(self, "broker"):
            return
        assert {p.terminal_id: p.desktop for p in self.store.list_pairings()} == self.pairings
        assert {u.name: u.desktop for u in self.store.list_users()} == self.user_desktops
        assert self.broker.snapshot().logins == self.logins

    @invariant()
    def pairing_codes_on_screen_are_the_stored_ones(self) -> None:
        for terminal, shown in self.screens.items():
            if isinstance(shown, ShowScreen) and shown.code is not None:
                stored = self.store.pairing_code_for(terminal)
                assert stored is not None
                assert stored.code == normalise_code(shown.code, self.config.code_length)


def test_broker_invariants_hold_under_random_events(stores: Stores) -> None:
    """Fewer runs on PostgreSQL: each makes a database, and the same broker
    logic is explored on SQLite; these check that the store behaves the same."""
    run_state_machine_as_test(
        BrokerMachine,
        settings=settings(
            max_examples=250 if stores.kind == "sqlite" else 25,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
        ),
    )


# Admins' viewers (the dashboard): watching and taking over.


def _viewer(site: Site, viewer_id: str, desktop: str, control: bool) -> list[Change]:
    site.screens[viewer_id] = ShowScreen(ScreenKind.UNAVAILABLE, "")  # replaced by the changes
    return site.apply(
        site.broker.viewer_connected(viewer_id, desktop, control, "web:ann", object())
    )


def test_a_viewer_watches_without_touching_the_terminal_in_control() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    site.connect("t1")
    changes = _viewer(site, "dashboard-ann~1", "d1", control=False)
    assert [c.terminal_id for c in changes] == ["dashboard-ann~1"]
    assert _is_desktop(site.screens["dashboard-ann~1"], "d1", control=False)
    assert _is_desktop(site.screens["t1"], "d1", control=True)
    assert site.actions()[-1] == "shadow"
    assert site.store.get_terminal("dashboard-ann~1") is None  # nothing stored about it


def test_taking_over_makes_the_terminal_view_only_until_the_viewer_leaves() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    site.connect("t1")
    _viewer(site, "dashboard-ann~1", "d1", control=True)
    assert _is_desktop(site.screens["dashboard-ann~1"], "d1", control=True)
    assert _is_desktop(site.screens["t1"], "d1", control=False)
    assert site.broker.snapshot().taken == {"d1": "dashboard-ann~1"}
    entry = site.store.list_audit()[-1]
    assert (entry.actor, entry.action, entry.subject) == ("web:ann", "take-over", "d1")
    assert "terminal t1 is view-only" in entry.detail
    site.disconnect("dashboard-ann~1")
    assert _is_desktop(site.screens["t1"], "d1", control=True)
    assert site.actions()[-1] == "take-over-end"
    assert site.broker.snapshot().taken == {}


def test_a_taken_over_desktop_stays_with_the_viewer_when_its_terminal_reconnects() -> None:
    site = Site(PAIRING)
    site.broker.pair("t1", "d1", "admin")
    _viewer(site, "dashboard-ann~1", "d1", control=True)
    assert _is_desktop(site.connect("t1"), "d1", control=False)
    assert _is_desktop(site.broker.assignment("dashboard-ann~1"), "d1", control=True)


def test_one_take_over_at_a_time() -> None:
    site = Site(PAIRING)
    _viewer(site, "dashboard-ann~1", "d1", control=True)
    with pytest.raises(BrokerError, match="already taken over"):
        site.broker.viewer_connected("dashboard-bob~2", "d1", True, "web:bob", object())
    assert not site.broker.is_connected("dashboard-bob~2")
    with pytest.raises(BrokerError, match="not registered"):
        site.broker.viewer_connected("dashboard-bob~3", "nowhere", False, "web:bob", object())


def test_a_disabled_user_is_logged_out_and_refused() -> None:
    site = _hot_desk_site()
    site.connect("A")
    site.apply(site.broker.login("A", "alice", "1234"))
    assert _is_desktop(site.screens["A"], "d1")
    site.apply(site.broker.set_user_disabled("alice", True, "web:ann"))
    assert _kind(site.screens["A"]) is ScreenKind.LOGIN
    shown = site.broker.assignment("A")
    assert isinstance(shown, ShowScreen) and "disabled" in shown.message
    site.apply(site.broker.login("A", "alice", "1234"))
    assert _kind(site.screens["A"]) is ScreenKind.LOGIN
    assert site.store.list_audit()[-1].action == "login-failed"
    site.apply(site.broker.set_user_disabled("alice", False, "web:ann"))
    site.apply(site.broker.login("A", "alice", "1234"))
    assert _is_desktop(site.screens["A"], "d1")
