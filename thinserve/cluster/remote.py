"""The node link, serving side: desktops another node runs, shown to this node's terminals.

A desktop in the shared desktops table that this node does not run, whose
``desktop`` lease an alive node holds that takes node links (it published
host:port and its certificate's key in the nodes table), is registered in
this node's broker as a remote desktop (the shared row keeps the owner's
backend; ``node:<owner>`` for a row without one).  Its Mirror is fed by an
Upstream to the owner's node port (cluster/link.py): X509Plain, TLS pinned
to the published key, the site's node secret.  The
link opens when a terminal here is shown the desktop and closes ``LINGER``
seconds after the last one stopped watching; however many terminals here
watch, the desktop is decoded once on this node.

Who runs what is read again on each heartbeat and on the change
notifications that may move desktops (``desktop:``, ``resync``).  When the
owner changes, the link follows it; when the owner goes, the desktop is
unavailable here, with the reason, until a node runs it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, task, threads

from ..broker import Change as BrokerChange
from ..broker import ShowDesktop
from ..desktop_state import DesktopState
from ..hub import Hub
from ..relay import screens
from ..relay.upstream import REMOTE_ENCODINGS, DesktopAddress, Mirror, Upstream
from ..rfbclient import tcp
from ..store.changes import Change
from .db import NOW, ClusterError, Database
from .link import NodeSecret, link_user
from .ownership import DESKTOP

log = logging.getLogger(__name__)

LINGER = 10.0  # seconds a link stays open after the last terminal here stopped watching
BACKEND_PREFIX = "node:"
REREAD_ON = frozenset({"desktop", "resync"})

PLACEMENTS = f"""
    WITH clock AS (SELECT {NOW} AS now)
    SELECT d.name, l.node, coalesce(n.expires > clock.now, false),
           coalesce(n.address, ''), coalesce(n.fingerprint, '')
    FROM clock CROSS JOIN desktops d
    LEFT JOIN leases l
        ON l.kind = '{DESKTOP}' AND l.subject = d.name AND l.expires > clock.now
    LEFT JOIN nodes n ON n.name = l.node
    ORDER BY d.name"""


@dataclass(frozen=True)
class Placement:
    """Where the shared tables say a desktop runs."""

    desktop: str
    owner: str | None  # the node holding its desktop lease; None: nobody
    alive: bool  # the owner's row has not expired
    address: str  # the owner's node link, host:port ("" or a bare host: none)
    fingerprint: str  # the key of the owner's certificate ("": no node link)


@dataclass(frozen=True)
class Owner:
    """The node that runs a desktop, and how to reach its node port."""

    node: str
    host: str
    port: int
    fingerprint: str


def read_placements(db: Database) -> list[Placement]:
    """Every desktop of the site and who holds its lease now (the database's clock)."""
    rows = db.fetch(PLACEMENTS)
    return [Placement(str(d), o, bool(a), str(ad), str(f)) for d, o, a, ad, f in rows]


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) from ``host:port`` or ``[v6]:port``; None without a port."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or not host:
        return None
    return host, int(port)


def judge(
    placements: Iterable[Placement], this_node: str, local: Collection[str]
) -> dict[str, Owner | str]:
    """For each desktop not run here: its owner's node port, or why it cannot be shown."""
    judged: dict[str, Owner | str] = {}
    for p in placements:
        if p.desktop in local or p.owner == this_node:
            continue
        judged[p.desktop] = _owner(p)
    return judged


def _owner(p: Placement) -> Owner | str:
    if p.owner is None:
        return "no node runs it now"
    if not p.alive:
        return f"node {p.owner}, which runs it, is gone"
    where = split_address(p.address)
    if where is None or not p.fingerprint:
        return f"node {p.owner} runs it but takes no node links (no [cluster] node_listen there)"
    return Owner(p.owner, where[0], where[1], p.fingerprint)


def address_for(desktop: str, owner: Owner, serving: str, secret: NodeSecret) -> DesktopAddress:
    """The console address of ``desktop`` at its owner's node port, for node ``serving``."""
    return DesktopAddress(
        desktop,
        tcp(owner.host, owner.port),
        password=secret.password,
        username=link_user(serving, desktop),
        encodings=REMOTE_ENCODINGS,  # lossless, compressed: nodes may be far apart
        fingerprint=owner.fingerprint,
    )


class RemoteDesktops(service.Service):
    """This node's remote desktops: registered in the hub's broker, their links on demand.

    ``local`` names the desktops this node runs (never remote).  The mirrors
    are the hub's ``remote_mirrors``, so terminals given a remote desktop
    watch them; the hub's ``on_desktop_wanted`` should call ``want``.
    """

    def __init__(
        self,
        url: str,
        node: str,
        secret: NodeSecret,
        hub: Hub,
        local: Callable[[], Collection[str]],
        interval: float,
        reactor: Any,
        linger: float = LINGER,
    ) -> None:
        self.db = Database(url)
        self.node = node
        self.secret = secret
        self.hub = hub
        self.local = local
        self.interval = interval
        self.reactor = reactor
        self.linger = linger
        self.mirrors: dict[str, Mirror] = hub.remote_mirrors
        self.owners: dict[str, Owner | str] = {}  # registered here: the owner, or why none
        self.upstreams: dict[str, Upstream] = {}  # the links open now
        self.idle_since: dict[str, float] = {}  # open links nobody here watches
        self.opened = 0  # links opened since the start
        self._loop: task.LoopingCall | None = None
        self._reading: defer.Deferred[None] | None = None
        self._again = False
        self._problem: str | None = None

    # -- life -----------------------------------------------------------------------------
    def startService(self) -> defer.Deferred[None]:
        super().startService()
        self._loop = task.LoopingCall(self._heartbeat)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)
        return self.update()

    def stopService(self) -> defer.Deferred[None]:
        """Close every link; the database connection once no read uses it."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        closing = [upstream.stop() for upstream in self.upstreams.values()]
        self.upstreams.clear()
        reading = self._reading
        if reading is not None:
            closing.append(reading)
        done = defer.gatherResults(closing, consumeErrors=True)
        return done.addBoth(lambda _: self.db.close())

    def _heartbeat(self) -> None:
        self.update()
        self._close_idle()

    def changed(self, change: Change) -> None:
        """A change notification: desktops may have moved."""
        if change.kind in REREAD_ON:
            self.update()

    # -- reading who runs what --------------------------------------------------------------
    def update(self) -> defer.Deferred[None]:
        """Read the placements again (one read at a time; a change meanwhile reads again)."""
        if self._reading is not None:
            self._again = True
            return self._reading
        pool = self.reactor.getThreadPool()
        read = threads.deferToThreadPool(self.reactor, pool, read_placements, self.db)
        self._reading = read.addCallbacks(self._read, self._read_failed).addBoth(self._done)
        return self._reading

    def _read(self, placements: list[Placement]) -> None:
        if self._problem is not None:
            log.info("remote desktops: the shared tables can be read again")
            self._problem = None
        if self.running:
            self.apply(judge(placements, self.node, set(self.local())))

    def _read_failed(self, failure: Any) -> None:
        problem = failure.getErrorMessage()
        if not failure.check(ClusterError):
            log.error("remote desktops: reading the shared tables failed", exc_info=failure.value)
        elif problem != self._problem:
            log.warning("remote desktops: cannot read who runs what (%s); trying again", problem)
        self._problem = problem

    def _done(self, _: object) -> None:
        self._reading = None
        if self._again and self.running:
            self._again = False
            self.update()

    # -- applying it ------------------------------------------------------------------------
    def apply(self, judged: dict[str, Owner | str]) -> None:
        """Register, follow or mark unavailable each remote desktop; drop the ones gone."""
        for name in [n for n in self.owners if n not in judged]:
            self._forget(name)
        for name, owner in judged.items():
            if self.owners.get(name) == owner:
                continue
            if isinstance(owner, Owner):
                self._follow(name, owner)
            elif name in self.owners:
                self._unavailable(name, owner)

    def _follow(self, name: str, owner: Owner) -> None:
        before = self.owners.get(name)
        self.owners[name] = owner
        broker = self.hub.broker
        if name not in self.mirrors:
            self.mirrors[name] = Mirror(name)
        if not broker.is_registered(name):
            # The shared row keeps the owner's backend; node:OWNER only if it has none.
            record = broker.store.get_desktop(name)
            backend = record.backend if record is not None else BACKEND_PREFIX + owner.node
            self.hub.apply(broker.register_desktop(name, backend, DesktopState.RUNNING))
        elif not isinstance(before, Owner):
            self.hub.apply(broker.desktop_state(name, DesktopState.RUNNING))
        log.info(
            "desktop %s is run by node %s: shown here over a node link to %s:%d",
            name,
            owner.node,
            owner.host,
            owner.port,
        )
        if name in self.upstreams:  # the owner moved: the watching terminals follow it
            self._close(name, "its owner changed")
            self.want(name)

    def owner_state(self, name: str, state: DesktopState) -> None:
        """The node running ``name`` said its state changed: terminals here are shown
        what they would be shown there (starting, failed, running)."""
        broker = self.hub.broker
        if isinstance(self.owners.get(name), Owner) and broker.is_registered(name):
            failure = "it failed at the node that runs it" if state is DesktopState.CRASHED else ""
            self.hub.apply(broker.desktop_state(name, state, failure=failure))

    def _unavailable(self, name: str, why: str) -> None:
        self.owners[name] = why
        log.warning("desktop %s is unavailable here: %s", name, why)
        self._close(name, why)
        mirror = self.mirrors[name]
        mirror.show_screen(screens.unavailable(name, 0, why))
        broker = self.hub.broker
        if broker.is_registered(name):
            self.hub.apply(broker.desktop_state(name, DesktopState.CRASHED, failure=why))

    def _forget(self, name: str) -> None:
        """Run here now, or no longer in the shared store: not a remote desktop any more.
        Terminals shown it here watch this node's own mirror of it from now on."""
        self.owners.pop(name, None)
        self._close(name, "it is no longer remote")
        self.mirrors.pop(name, None)
        if name not in self.local():
            self.hub.withdraw_desktop(name)
            return
        shown = self.hub.broker.snapshot().shown
        self.hub.apply(
            [
                BrokerChange(terminal, assignment)
                for terminal, assignment in shown.items()
                if isinstance(assignment, ShowDesktop) and assignment.desktop == name
            ]
        )

    # -- the links ------------------------------------------------------------------------
    def want(self, name: str) -> None:
        """A terminal here is shown ``name``: its link opens (if it is not open)."""
        self.idle_since.pop(name, None)
        owner = self.owners.get(name)
        if name in self.upstreams or not isinstance(owner, Owner) or not self.running:
            return
        address = address_for(name, owner, self.node, self.secret)
        upstream = Upstream(address, self.mirrors[name], clock=self.reactor)
        self.upstreams[name] = upstream
        self.opened += 1
        log.info("node link to node %s for desktop %s: opening", owner.node, name)
        upstream.start()

    def _close(self, name: str, why: str) -> None:
        upstream = self.upstreams.pop(name, None)
        self.idle_since.pop(name, None)
        if upstream is None:
            return
        log.info("node link for desktop %s closed: %s", name, why)
        upstream.stop()
        mirror = self.mirrors.get(name)
        if mirror is not None:  # the old connection keeps its own picture
            mirror.framebuffer = mirror.framebuffer.copy()
            mirror.show_screen(screens.connecting(name))

    def _close_idle(self) -> None:
        """Close the links nobody here has watched for ``linger`` seconds."""
        now = self.reactor.seconds()
        for name in list(self.upstreams):
            if self.mirrors[name].listeners:
                self.idle_since.pop(name, None)
            elif now - self.idle_since.setdefault(name, now) >= self.linger:
                self._close(name, f"no terminal here watched it for {self.linger:g} s")
