"""Failover of desktops: a node takes over the desktops of a node that died.

At start a node lets go of every configured desktop whose ``desktop`` lease
another node holds (thinserve/cluster/ownership.py).  What happens to such a
desktop next depends on where its console is:

- *Reachable* desktops, whose console any node can reach (a static
  ``[[desktop]]`` address, a libvirt domain), stay configured here but
  dormant.  On every heartbeat (and after a ``resync``) this node tries
  again to take their lease; it wins once the owner is gone and its lease
  expired (judged by the database's clock).  It then adopts the desktop: it
  is managed here again (a libvirt domain still running is connected to,
  not restarted) and registered with the broker, so the terminals paired
  with it see it again.
- *Node-bound* desktops, whose console was on the owner's machine
  (``[[local_desktop]]``, ``[[xvnc_desktop]]``, ``[[qemu_desktop]]``), are
  never taken over: the session in them died with their node.  When their
  lease lapses they are reported lost, with the reason ("node X, which ran
  it, is gone"), once in the log and in the admin view's detail, until a
  node runs them again.

A reachable desktop this node loses the lease of (the database was out of
reach too long) is let go and becomes dormant again.

The node link's serving side (cluster/remote.py) shows a dormant desktop as
the owner's remote desktop while the owner lives; it skips desktops this
node manages, so once adopted it forgets it.  The adoption takes the
remote registration out of the broker first, so terminals watching the
owner's mirror are given this node's.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, task

from ..backends.base import Backend
from ..desktop_state import Event
from ..desktops.bridge import bridge
from ..desktops.manager import DesktopManager
from ..relay.upstream import DesktopAddress
from . import ownership
from .nodes import NodeInfo
from .ownership import DESKTOP

log = logging.getLogger(__name__)

REACHABLE_BACKENDS = frozenset({"libvirt"})  # backends whose consoles every node reaches


class Claims(ownership.Claims, Protocol):
    """What takeover asks of the cluster service (ClusterService has these)."""

    def nodes(self) -> defer.Deferred[list[NodeInfo]]: ...


class Registrar(Protocol):
    """The hub, as far as takeover uses it."""

    broker: Any  # thinserve.broker.Broker
    desktop_details: dict[str, str]

    def apply(self, changes: list[Any]) -> None: ...


@dataclass(frozen=True)
class Dormant:
    """A reachable desktop run by another node, and how to run it here."""

    name: str
    address: DesktopAddress | None  # a static desktop's address
    backend: Backend | None  # a libvirt desktop's backend
    boot_estimate: float


def reachable(manager: DesktopManager, name: str, static: Collection[str]) -> bool:
    """Whether any node can reach ``name``'s console: one of the ``[[desktop]]``
    addresses ``static``, or a desktop of a backend such as libvirt."""
    md = manager.desktops[name]
    if md.backend is None:
        return name in static
    return md.backend.name in REACHABLE_BACKENDS


def lost_reason(node: str, nodes: list[NodeInfo]) -> str:
    """Why a node-bound desktop is gone, as its terminals' administrator reads it."""
    alive = any(n.name == node and n.alive for n in nodes)
    if alive:
        return f"node {node}, which ran it, no longer runs it"
    return f"node {node}, which ran it, is gone"


class Takeover(service.Service):
    """The desktops configured here that another node runs: see the module's docstring.

    A service: once started (after the hub and the desktop manager) it tries
    again every ``interval`` seconds; stopping waits for a round under way.
    """

    def __init__(
        self,
        claims: Claims,
        manager: DesktopManager,
        reactor: Any,
        interval: float,
        static: Collection[str] = (),
    ) -> None:
        """``static``: the names of the ``[[desktop]]`` addresses, which any node reaches."""
        self.claims = claims
        self.manager = manager
        self.static = frozenset(static)
        self.reactor = reactor
        self.interval = interval
        self.hub: Registrar | None = None
        self.dormant: dict[str, Dormant] = {}
        self.bound: dict[str, str] = {}  # node-bound desktop -> the node that ran it
        self.lost: dict[str, str] = {}  # node-bound desktop -> why it is lost (reported)
        self.adopted: list[str] = []  # in the order they were taken over
        self.rounds = 0  # rounds done (for the admin and the tests)
        self._loop: task.LoopingCall | None = None
        self._round: defer.Deferred[None] | None = None  # the round under way

    # -- at start ------------------------------------------------------------------------------
    async def let_go(self, name: str, holder: str) -> None:
        """``holder`` runs ``name``: keep what it takes to adopt it later, and let it go."""
        md = self.manager.desktops[name]
        if reachable(self.manager, name, self.static):
            self.dormant[name] = Dormant(name, md.address, md.backend, md.boot_estimate)
        else:
            self.bound[name] = holder
        hub = self.hub
        if hub is not None and hub.broker.is_registered(name):
            hub.apply(hub.broker.unregister_desktop(name))
        await self.manager.let_go(name)

    def startService(self) -> None:
        """Try again every ``interval`` seconds (the heartbeat), reporting to ``hub``."""
        assert self.hub is not None, "give the takeover the hub before starting it"
        super().startService()
        self._loop = task.LoopingCall(self.try_again)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return _after(self._round)

    # -- every heartbeat -----------------------------------------------------------------------
    def try_again(self) -> defer.Deferred[None]:
        """One round: take the leases that became free; note node-bound desktops lost.
        A round still waiting for the database is not doubled."""
        if self._round is not None or self.hub is None or not self.running:
            return defer.succeed(None)
        if not self.dormant and not self.bound:
            return defer.succeed(None)
        round_ = self._round = defer.ensureDeferred(self._try_again())
        round_.addErrback(self._failed).addBoth(self._over)
        return round_

    async def _try_again(self) -> None:
        for name in sorted(self.dormant):
            if not self.running:
                return
            if name in self.dormant and await self.claims.acquire(DESKTOP, name):
                await self._adopt(self.dormant.pop(name))
        if self.bound:
            await self._watch_bound()

    def _failed(self, failure: Any) -> None:
        log.warning("desktop takeover: %s; trying again at the next heartbeat", failure.value)

    def _over(self, _: object) -> None:
        self._round = None
        self.rounds += 1

    async def _adopt(self, dormant: Dormant) -> None:
        """Run ``dormant`` here: managed, registered, shown to its terminals."""
        hub = self.hub
        assert hub is not None
        name = dormant.name
        backend = dormant.backend
        running = True if backend is None else await _is_running(backend, name)
        # From here on one reactor turn: nothing reads the broker half-way.
        if hub.broker.is_registered(name):
            # As another node's desktop (cluster/remote.py): its terminals watch that
            # node's mirror; taking it out and back gives them this node's.
            hub.apply(hub.broker.unregister_desktop(name))
        if backend is None:
            assert dormant.address is not None
            md = self.manager.add_static(dormant.address)
        else:
            md = self.manager.add(name, backend, boot_estimate=dormant.boot_estimate or None)
        hub.desktop_details.pop(name, None)
        hub.apply(hub.broker.register_desktop(name, _backend_name(dormant), md.state))
        if running and md.machine.can(Event.UP):
            md.machine.handle(Event.UP)  # found running: connected to, not restarted
        self.adopted.append(name)
        log.warning(
            "desktop %s taken over: the node that ran it is gone and its lease expired; "
            "this node runs it now",
            name,
        )

    async def _watch_bound(self) -> None:
        """Report each node-bound desktop whose lease lapsed, once; and its return."""
        hub = self.hub
        assert hub is not None
        nodes: list[NodeInfo] | None = None
        for name in sorted(self.bound):
            holder = await self.claims.holder(DESKTOP, name)
            if holder is not None:
                self.bound[name] = holder
                if self.lost.pop(name, None) is not None:
                    hub.desktop_details.pop(name, None)
                    log.info("desktop %s is run by node %s again", name, holder)
                continue
            if name in self.lost:
                continue
            if nodes is None:
                nodes = await self.claims.nodes()
            why = lost_reason(self.bound[name], nodes)
            self.lost[name] = why
            hub.desktop_details[name] = f"lost: {why}"
            log.error(
                "desktop %s is lost: %s; it cannot be taken over (its console was on "
                "that machine): start that node again",
                name,
                why,
            )

    # -- a lease this node lost ----------------------------------------------------------------
    def lost_lease(self, name: str) -> defer.Deferred[None]:
        """This node no longer holds ``name``'s lease: let it go; dormant again if reachable."""
        if name not in self.manager.desktops:
            return defer.succeed(None)
        letting = defer.ensureDeferred(self.let_go(name, "another node"))
        return letting.addErrback(lambda failure: log.error("letting %s go: %s", name, failure))


def _after(work: defer.Deferred[None] | None) -> defer.Deferred[None]:
    """Fires once ``work`` is over, leaving its own callbacks alone."""
    done: defer.Deferred[None] = defer.Deferred()
    if work is None:
        done.callback(None)
        return done

    def over(result: object) -> object:
        done.callback(None)
        return result

    work.addBoth(over)
    return done


async def _is_running(backend: Backend, name: str) -> bool:
    """Whether ``backend`` reports ``name`` running now (a libvirt domain that outlived
    its node)."""
    infos = await bridge(backend.list_desktops())
    return any(info.name == name and info.status.active for info in infos)


def _backend_name(dormant: Dormant) -> str:
    return dormant.backend.name if dormant.backend is not None else "vnc"
