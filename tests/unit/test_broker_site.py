"""Several brokers, one per node, over one real PostgreSQL database.

Each node has its own store and its own control claims (thinserve/cluster/
claims.py); the same desktops are registered at every node, as when a node
relays the desktops another runs.  Whatever happens, and in whatever order
the nodes hear of it, no desktop is ever controlled by two terminals of the
site at once.  Notifications are delivered here by calling ``refresh``, as
the node's change feed does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.support.cluster import execute, with_schema
from tests.support.waiting import wait_until_blocking
from thinserve.broker import (
    Assignment,
    Broker,
    BrokerConfig,
    BrokerError,
    Change,
    DesktopState,
    ScreenKind,
    ShowDesktop,
    ShowScreen,
)
from thinserve.cluster.claims import CONTROL, ControlClaims
from thinserve.secrets import SecretHasher
from thinserve.store import Store, open_store

CHEAP = SecretHasher(time_cost=1, memory_cost=8, parallelism=1)
LONG = 30.0  # seconds: leases that outlive the test
SHORT = 1.0  # ... that expire within it
DESKTOPS = ("d1", "d2", "d3", "p1", "p2", "r1")
HOT_DESK = BrokerConfig(unknown_terminal="login", hot_desk=True, pairing_codes=False)
POOL = BrokerConfig(
    unknown_terminal="pool", pairing_codes=False, pools={"lab": ("p1",)}, default_pool="lab"
)


class Node:
    """One node's broker, with its store and its control claims."""

    def __init__(
        self,
        url: str,
        name: str,
        config: BrokerConfig,
        ttl: float = LONG,
        margin: float = 5.0,
    ) -> None:
        self.name = name
        self.store: Store = open_store(url)
        self.claims = ControlClaims(url, name, ttl, margin=margin)
        self.broker = Broker(self.store, config, hasher=CHEAP, claims=self.claims)
        for desktop in DESKTOPS:
            self.broker.register_desktop(desktop, "vnc", DesktopState.RUNNING)

    def shows(self, terminal_id: str) -> Assignment:
        return self.broker.assignment(terminal_id)

    def close(self) -> None:
        self.claims.close()
        self.store.close()


MakeNode = Callable[..., Node]


@pytest.fixture
def url(postgres_url: str) -> str:
    return with_schema(postgres_url)


@pytest.fixture
def node(url: str) -> Iterator[MakeNode]:
    made: list[Node] = []

    def make(name: str, config: BrokerConfig = HOT_DESK, **options: float) -> Node:
        made.append(Node(url, name, config, **options))
        return made[-1]

    yield make
    for one in made:
        one.close()


def controls(assignment: Assignment) -> str | None:
    """The desktop an assignment gives control of, if any."""
    if isinstance(assignment, ShowDesktop) and assignment.control:
        return assignment.desktop
    return None


def kind(assignment: Assignment) -> ScreenKind | None:
    return assignment.kind if isinstance(assignment, ShowScreen) else None


def message(assignment: Assignment) -> str | None:
    return assignment.message if isinstance(assignment, ShowScreen) else None


def control_leases(url: str) -> dict[str, tuple[str, str]]:
    """desktop -> (node, terminal) of the control leases in the database."""
    found = execute(url, "SELECT subject, node, holder FROM leases WHERE kind = %s", CONTROL)
    return {str(d): (str(n), str(h)) for d, n, h in found}


def test_a_terminal_connected_at_two_nodes_controls_its_desktop_at_one(
    url: str, node: MakeNode
) -> None:
    """A device that reconnected to another node before the first noticed it left."""
    a, b = node("node-a"), node("node-b")
    a.broker.pair("t1", "d1", "admin")
    assert controls(a.broker.terminal_connected("t1")) == "d1"
    in_use = b.broker.terminal_connected("t1")
    assert isinstance(in_use, ShowScreen) and in_use.kind is ScreenKind.IN_USE
    assert in_use.desktop == "d1"
    assert control_leases(url) == {"d1": ("node-a", "t1")}
    assert b.broker.refresh() == []  # still a's

    a.broker.terminal_disconnected("t1")  # gives up the lease, telling every node
    assert control_leases(url) == {}
    (change,) = b.broker.refresh()
    assert change == Change("t1", change.assignment) and controls(change.assignment) == "d1"
    assert control_leases(url) == {"d1": ("node-b", "t1")}


def test_a_user_logging_in_at_another_node_takes_the_login_and_the_desktop(
    url: str, node: MakeNode
) -> None:
    a, b = node("node-a"), node("node-b")
    a.broker.add_user("alice", "1111", "admin", desktop="d1")
    a.broker.terminal_connected("ta")
    a.broker.login("ta", "alice", "1111")
    assert controls(a.shows("ta")) == "d1"
    assert [(r.user, r.terminal_id, r.node) for r in a.store.list_logins()] == [
        ("alice", "ta", "node-a")
    ]

    b.broker.terminal_connected("tb")
    (change,) = b.broker.login("tb", "alice", "1111")
    assert kind(change.assignment) is ScreenKind.IN_USE  # until node a lets go
    assert [(r.user, r.terminal_id, r.node) for r in b.store.list_logins()] == [
        ("alice", "tb", "node-b")
    ]
    takeover = b.store.list_audit()[-2]
    assert takeover.action == "takeover" and takeover.subject == "tb"
    assert takeover.detail == "from terminal ta at node node-a"

    # node a hears of it: its terminal shows the login screen, saying why
    (back,) = a.broker.refresh()
    assert back.terminal_id == "ta" and kind(back.assignment) is ScreenKind.LOGIN
    assert message(back.assignment) == "The session moved to another terminal."
    assert a.broker.snapshot().logins == {} and control_leases(url) == {}
    # node b hears that a let go: the desktop is at the user's new terminal
    (moved,) = b.broker.refresh()
    assert moved.terminal_id == "tb" and controls(moved.assignment) == "d1"
    assert control_leases(url) == {"d1": ("node-b", "tb")}

    b.broker.logout("tb")
    assert b.store.list_logins() == [] and control_leases(url) == {}


def test_a_user_deleted_at_one_node_is_logged_out_at_another(url: str, node: MakeNode) -> None:
    a, b = node("node-a"), node("node-b")
    a.broker.add_user("alice", "1111", "admin", desktop="d1")
    a.broker.terminal_connected("ta")
    a.broker.login("ta", "alice", "1111")
    b.broker.delete_user("alice", "admin")
    (gone,) = a.broker.refresh()
    assert kind(gone.assignment) is ScreenKind.LOGIN
    assert message(gone.assignment) == "The session was ended at another node."
    assert a.store.list_logins() == [] and control_leases(url) == {}


def connect_at_once(terminals: dict[Node, str]) -> dict[str, Assignment]:
    """Each node connects its terminal, all in the same instant; node -> what it shows."""
    start = threading.Barrier(len(terminals))
    shown: dict[str, Assignment] = {}

    def connect(one: Node, terminal_id: str) -> None:
        start.wait(timeout=30)
        shown[one.name] = one.broker.terminal_connected(terminal_id)

    racers = [threading.Thread(target=connect, args=pair) for pair in terminals.items()]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    return shown


def test_a_pool_desktop_raced_for_by_two_nodes_goes_to_one_and_the_other_waits(
    url: str, node: MakeNode
) -> None:
    """Rounds of two terminals, one per node, connecting at once for the one desktop."""
    a, b = node("node-a", POOL), node("node-b", POOL)
    for round_ in range(10):
        shown = connect_at_once({a: f"ta{round_}", b: f"tb{round_}"})
        winners = [n for n, s in shown.items() if controls(s) == "p1"]
        assert len(winners) == 1, shown
        winner, loser = (a, b) if winners == ["node-a"] else (b, a)
        mine, theirs = f"t{winner.name[-1]}{round_}", f"t{loser.name[-1]}{round_}"
        assert kind(shown[loser.name]) is ScreenKind.NO_DESKTOP_FREE
        assert loser.broker.refresh() == []  # the winner's notice: still taken
        assert control_leases(url) == {"p1": (winner.name, mine)}

        winner.broker.terminal_disconnected(mine)  # p1 goes back to the pool ...
        (change,) = loser.broker.refresh()  # ... and the waiting terminal gets it
        assert change.terminal_id == theirs and controls(change.assignment) == "p1"
        assert control_leases(url) == {"p1": (loser.name, theirs)}
        loser.broker.terminal_disconnected(theirs)
        assert control_leases(url) == {}


def test_a_lend_that_loses_the_race_takes_the_next_free_desktop(url: str, node: MakeNode) -> None:
    two = BrokerConfig(
        unknown_terminal="pool",
        pairing_codes=False,
        pools={"lab": ("p1", "p2")},
        default_pool="lab",
    )
    a, b = node("node-a", two), node("node-b", two)
    assert controls(a.broker.terminal_connected("ta")) == "p1"
    assert controls(b.broker.terminal_connected("tb")) == "p2"  # p1 is a's: skipped
    assert control_leases(url) == {"p1": ("node-a", "ta"), "p2": ("node-b", "tb")}
    assert kind(b.broker.terminal_connected("tc")) is ScreenKind.NO_DESKTOP_FREE


def test_a_node_whose_heartbeat_stopped_loses_control_and_another_node_grants_it(
    url: str, node: MakeNode
) -> None:
    a = node("node-a", ttl=SHORT, margin=0.25)
    b = node("node-b")
    a.broker.add_user("alice", "1111", "admin", desktop="d1")
    a.broker.terminal_connected("ta")
    a.broker.login("ta", "alice", "1111")
    assert controls(a.shows("ta")) == "d1"
    # node a stops: no heartbeat renews its lease, and it hears nothing more
    b.broker.terminal_connected("tb")
    b.broker.login("tb", "alice", "1111")
    assert kind(b.shows("tb")) is ScreenKind.IN_USE

    # a's hub, at its next tick, takes control away once the lease is not held
    def a_let_go() -> list[Change]:
        return [c for c in a.broker.lapsed_control() if c.terminal_id == "ta"]

    (lapsed,) = wait_until_blocking(a_let_go, 10, "node a to stop granting d1")
    assert kind(lapsed.assignment) is ScreenKind.UNAVAILABLE
    # b's ticks take the desktop once a's lease has expired in the database
    wait_until_blocking(
        lambda: b.broker.tick() and controls(b.shows("tb")) == "d1",
        10,
        "node b to grant d1 to tb",
    )
    assert control_leases(url) == {"d1": ("node-b", "tb")}
    assert controls(a.shows("ta")) is None


def test_one_node_without_claims_writes_no_login_rows() -> None:
    store = open_store(":memory:")
    broker = Broker(store, HOT_DESK, hasher=CHEAP)
    broker.register_desktop("d1", "vnc", DesktopState.RUNNING)
    broker.add_user("alice", "1111", "admin", desktop="d1")
    broker.terminal_connected("t1")
    broker.login("t1", "alice", "1111")
    assert controls(broker.assignment("t1")) == "d1"
    assert store.list_logins() == [] and broker.lapsed_control() == []
    store.close()


# Random events at three nodes, notifications delivered in random order.

NODES = ("node-a", "node-b", "node-c")
TERMINALS = ("t1", "t2")  # few: the same id is often connected at two nodes
USERS = {"alice": "d1", "bob": None, "carol": "d2"}
SECRET = "1111"


class SiteMachine(RuleBasedStateMachine):
    """Three nodes sharing one database; a terminal id may be connected at
    several nodes at once (a device that moved before the old node noticed)."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, Node] = {}

    @initialize(unknown=st.sampled_from(["login", "pool"]))
    def start(self, unknown: str) -> None:
        assert SITE.request is not None
        self.url = with_schema(SITE.request.getfixturevalue("postgres_server").new_database())
        config = BrokerConfig(
            unknown_terminal=unknown,
            hot_desk=True,
            pairing_codes=False,
            pools={"lab": ("p1", "p2"), "roam": ("r1",)},
            default_pool="lab",
            user_pool="roam",
        )
        self.nodes = {name: Node(self.url, name, config) for name in NODES}
        first = self.nodes[NODES[0]].broker
        for user, desktop in USERS.items():
            first.add_user(user, SECRET, "admin", desktop=desktop)

    def teardown(self) -> None:
        for one in self.nodes.values():
            one.close()

    def _connected(self, name: str, terminal: str) -> Broker:
        broker = self.nodes[name].broker
        if not broker.is_connected(terminal):
            broker.terminal_connected(terminal)
        return broker

    @rule(name=st.sampled_from(NODES), terminal=st.sampled_from(TERMINALS))
    def connect(self, name: str, terminal: str) -> None:
        self._connected(name, terminal)

    @rule(name=st.sampled_from(NODES), terminal=st.sampled_from(TERMINALS))
    def disconnect(self, name: str, terminal: str) -> None:
        self.nodes[name].broker.terminal_disconnected(terminal)

    @rule(
        name=st.sampled_from(NODES),
        terminal=st.sampled_from(TERMINALS),
        user=st.sampled_from(sorted(USERS)),
    )
    def login(self, name: str, terminal: str, user: str) -> None:
        self._connected(name, terminal).login(terminal, user, SECRET)
        last = self.nodes[name].store.list_audit()[-2:]
        if any(e.action == "takeover" and " at node " in e.detail for e in last):
            event("a login moved to another node")

    @rule(name=st.sampled_from(NODES), terminal=st.sampled_from(TERMINALS))
    def logout(self, name: str, terminal: str) -> None:
        self.nodes[name].broker.logout(terminal)

    @rule(
        name=st.sampled_from(NODES),
        terminal=st.sampled_from(TERMINALS),
        desktop=st.sampled_from(DESKTOPS),
    )
    def pair(self, name: str, terminal: str, desktop: str) -> None:
        try:
            self.nodes[name].broker.pair(terminal, desktop, "admin")
        except BrokerError:
            event("pairing refused: the desktop has an owner")

    @rule(name=st.sampled_from(NODES), terminal=st.sampled_from(TERMINALS))
    def unpair(self, name: str, terminal: str) -> None:
        self.nodes[name].broker.unpair(terminal, "admin")

    @rule(
        name=st.sampled_from(NODES),
        desktop=st.sampled_from(DESKTOPS),
        state=st.sampled_from([DesktopState.RUNNING, DesktopState.CRASHED]),
    )
    def desktop_state(self, name: str, desktop: str, state: DesktopState) -> None:
        self.nodes[name].broker.desktop_state(desktop, state)

    @rule(name=st.sampled_from(NODES))
    def hear(self, name: str) -> None:
        """One node hears the notifications sent so far."""
        self.nodes[name].broker.refresh()

    @rule()
    def everyone_hears_everything(self) -> None:
        """Every node hears every notification, until nothing changes any more;
        then a terminal shown IN_USE waits for one in control elsewhere, and
        each user is logged in at one terminal of the site at most."""
        for _ in range(10):
            if not any([one.broker.refresh() for one in self.nodes.values()]):
                break
        else:
            raise AssertionError("the nodes never settled")
        controlled = {d for d, _, _ in self._controllers()}
        for one in self.nodes.values():
            for terminal, shown in one.broker.snapshot().shown.items():
                if kind(shown) is ScreenKind.IN_USE:
                    assert isinstance(shown, ShowScreen)
                    assert shown.desktop in controlled, (one.name, terminal, shown)
                    event("in use at another node")
        logged_in = [
            u for one in self.nodes.values() for u in one.broker.snapshot().logins.values()
        ]
        assert len(logged_in) == len(set(logged_in))
        rows = {(r.user, r.terminal_id, r.node) for r in self.nodes[NODES[0]].store.list_logins()}
        here = {
            (u, t, one.name)
            for one in self.nodes.values()
            for t, u in one.broker.snapshot().logins.items()
        }
        assert rows == here

    def _controllers(self) -> list[tuple[str, str, str]]:
        return [
            (desktop, one.name, terminal)
            for one in self.nodes.values()
            for terminal, shown in one.broker.snapshot().shown.items()
            if (desktop := controls(shown)) is not None
        ]

    @invariant()
    def no_desktop_is_controlled_twice_across_the_site(self) -> None:
        for one in self.nodes.values():
            for shown in one.broker.snapshot().shown.values():
                if kind(shown) is ScreenKind.IN_USE:
                    event("a terminal shows IN_USE")
        desktops = [d for d, _, _ in self._controllers()]
        assert len(desktops) == len(set(desktops)), self._controllers()

    @invariant()
    def every_control_shown_is_the_lease_held_in_the_database(self) -> None:
        if not self.nodes:
            return
        leases = control_leases(self.url)
        for desktop, name, terminal in self._controllers():
            event("controlled")
            assert leases.get(desktop) == (name, terminal)
            assert self.nodes[name].claims.held().get(desktop) == terminal


class Site:
    request: pytest.FixtureRequest | None = None


SITE = Site()


def test_no_desktop_is_controlled_twice_under_random_events_at_three_nodes(
    request: pytest.FixtureRequest,
) -> None:
    SITE.request = request
    try:
        run_state_machine_as_test(
            SiteMachine,
            settings=settings(
                max_examples=25,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        SITE.request = None
