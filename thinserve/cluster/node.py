"""This server as one node of a site: every part the cluster adds to ``thinserve serve``.

``thinserve serve`` on a PostgreSQL database makes one ``SiteNode`` and calls
it at each step of its start (thinserve/service.py):

1. ``join``: the ClusterService (nodes table, heartbeat, leases, change feed);
2. ``claim``: the desktop leases; desktops another node runs are let go, and
   those any node can reach wait, dormant, to be taken over (takeover.py);
3. ``claims``: the control claims the broker grants control under (claims.py);
4. ``follow``, once the hub exists: what the site says reaches it; then
   ``link``, once it runs: node links both ways (link.py, remote.py) and
   taking over desktops;
5. ``dial_gate`` and ``publish_web``: one node dials each terminal; the
   site's browser terminals for ``/nodes.json``.

What the site says reaches the parts here, in one place each: a change
(``changed``; a ``kick`` closes the terminal if it is here, a ``state`` is a
remote desktop's state at its node), lost leases
(``lost``), and a desktop a terminal is given (``wanted``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..admission import Admission
from ..blacklist import Blacklist
from ..config import Config, ConfigError
from ..desktop_state import DesktopState
from ..store.changes import Change
from .leases import Key

if TYPE_CHECKING:
    from ..desktops import DesktopManager
    from ..hub import Hub
    from ..linksecurity import ServerCertificate
    from ..listeners import Port
    from ..reverse import ReverseConnector
    from .claims import ControlClaims
    from .link import NodeLinks, NodeSecret
    from .remote import RemoteDesktops
    from .service import ClusterService
    from .takeover import Takeover
    from .weburls import WebURLs

log = logging.getLogger(__name__)


class SiteNode:
    """See the module's docstring.  ``run`` adds a part to the server and starts it."""

    def __init__(
        self, config: Config, url: str, reactor: Any, run: Callable[[Any], Awaitable[Any]]
    ) -> None:
        from .service import ClusterService

        self.config = config
        self.url = url
        self.reactor = reactor
        self.run = run
        settings = config.cluster
        self.cluster: ClusterService = ClusterService(
            url,
            settings.node_name,
            settings.node_address,
            heartbeat=settings.heartbeat,
            lease=settings.lease,
            reactor=reactor,
        )
        self.takeover: Takeover | None = None
        self.remote: RemoteDesktops | None = None
        self.links: NodeLinks | None = None
        self.hub: Hub | None = None
        self._local_want: Callable[[str], None] = lambda name: None

    async def join(self) -> None:
        await self.run(self.cluster)

    # -- desktops -------------------------------------------------------------------------------
    async def claim(self, manager: DesktopManager) -> None:
        """Run only the desktops this node holds the lease of; another node runs the rest,
        and those whose console any node reaches are taken over should it die."""
        from .ownership import claim_desktops
        from .takeover import Takeover

        cluster = self.cluster
        static = [d.name for d in self.config.desktops]
        self.takeover = Takeover(cluster, manager, self.reactor, cluster.heartbeat, static)
        elsewhere = await claim_desktops(cluster, list(manager.desktops))
        for name, holder in elsewhere.items():
            await self.takeover.let_go(name, holder)

    def claims(self) -> ControlClaims:
        """Control of a desktop is granted here only while this node holds its control
        lease (docs/broker.md); the heartbeat renews them."""
        from ..hub import TICK_SECONDS
        from .claims import ControlClaims

        cluster = self.cluster
        claims = ControlClaims(
            self.url,
            cluster.node_name,
            cluster.lease,
            margin=TICK_SECONDS,  # the hub takes lapsed control away at its next tick
            allowed=lambda: cluster.problem != "name",
        )
        cluster.renewing.append(claims)
        return claims

    def follow(self, hub: Hub, manager: DesktopManager) -> None:
        """Once the hub exists, before it starts: what the site says reaches it."""
        self.hub = hub
        cluster = self.cluster
        cluster.on_change = self.changed
        cluster.on_lost = self.lost
        cluster.load = lambda: (len(hub.terminals), len(manager.desktops))
        self._local_want, hub.on_desktop_wanted = hub.on_desktop_wanted, self.wanted
        hub.announce = self._announce
        hub.on_state_change = self._tell_state
        assert self.takeover is not None  # made by claim
        self.takeover.hub = hub

    async def link(self, hub: Hub, manager: DesktopManager, certificate: ServerCertificate) -> None:
        """Once the hub runs: node links both ways, and taking over desktops."""
        await self._link_nodes(hub, manager, certificate)
        assert self.takeover is not None  # made by claim
        await self.run(self.takeover)

    # -- what the site says ---------------------------------------------------------------------
    def changed(self, change: Change) -> None:
        """Another node (or this one) changed the shared store: decide again."""
        if change.kind == "kick":
            self._kick(change.subject)
            return
        if change.kind == "state":
            self._owner_state(change.subject)
            return
        log.info("the site changed (%s %s): deciding again", change.kind, change.subject)
        if self.hub is not None:
            self.hub.refresh()
        if self.remote is not None:
            self.remote.changed(change)
        if change.kind == "resync" and self.takeover is not None:
            self.takeover.try_again()

    def _kick(self, terminal_id: str) -> None:
        """An admin at some node kicked ``terminal_id``: close it if it is here."""
        hub = self.hub
        if hub is not None and hub.broker.is_connected(terminal_id):
            log.info("terminal %s kicked by an admin at another node", terminal_id)
            hub.kick(terminal_id, "admin at another node")

    def _tell_state(self, name: str, state: DesktopState) -> None:
        """A desktop this node runs changed state: the nodes that show it follow."""
        self._announce("state", f"{state.value}:{name}")

    def _owner_state(self, subject: str) -> None:
        """The node running a desktop shown here said its state changed."""
        word, _, name = subject.partition(":")
        try:
            state = DesktopState(word)
        except ValueError:
            log.warning("a node told an unknown desktop state %r; ignored", word[:40])
            return
        if self.remote is not None:
            self.remote.owner_state(name, state)

    def _announce(self, kind: str, subject: str) -> None:
        """Tell every node, in a worker thread; a failure is logged, never raised."""
        told = self.cluster.announce(kind, subject)
        told.addErrback(lambda failure: log.warning("could not tell the site: %s", failure.value))

    def lost(self, keys: list[Key]) -> None:
        """Leases this node lost: its desktops go (dormant where reachable), and other
        nodes' links to them are closed."""
        from .ownership import lost_desktops

        for name in lost_desktops(keys):
            log.error(
                "desktop %s: this node lost its lease (the database was out of reach); "
                "another node may run it now, so this node lets it go",
                name,
            )
            if self.takeover is not None:
                self.takeover.lost_lease(name)
            if self.links is not None:
                self.links.drop(name, "this node no longer runs the desktop")

    def wanted(self, name: str) -> None:
        """A terminal here is given ``name``: open the link to its node, or start it here."""
        if self.remote is not None and name in self.remote.mirrors:
            self.remote.want(name)
        else:
            self._local_want(name)

    # -- node links -----------------------------------------------------------------------------
    async def _link_nodes(
        self, hub: Hub, manager: DesktopManager, certificate: ServerCertificate
    ) -> None:
        """Node links (docs/scale-out.md): this node's desktops shown at other nodes'
        terminals, and theirs at this node's; only with the site's node secret."""
        from .link import SecretError, read_secret
        from .remote import RemoteDesktops

        settings = self.config.cluster
        if settings.secret_file is None:
            return
        try:
            secret = read_secret(settings.secret_file)
        except SecretError as exc:
            raise ConfigError(f"[cluster] secret_file: {exc}") from None
        if settings.node_listen:
            await self._listen_for_nodes(hub, manager, certificate, secret)
        self.remote = await self.run(
            RemoteDesktops(
                self.url,
                self.cluster.node_name,
                secret,
                hub,
                lambda: manager.desktops,
                settings.heartbeat,
                self.reactor,
            )
        )

    async def _listen_for_nodes(
        self,
        hub: Hub,
        manager: DesktopManager,
        certificate: ServerCertificate,
        secret: NodeSecret,
    ) -> None:
        """The node port: other nodes' links to the desktops this node runs; its
        host:port and certificate key go into this node's row at the next heartbeat."""
        from ..desktops.holders import as_mapping
        from ..listeners import Listeners
        from .link import NodeLinks, link_factory, published_address

        config, settings = self.config, self.config.cluster
        assert settings.node_listen is not None
        links = self.links = await self.run(NodeLinks(manager.mirrors, manager.want, hub.workers))
        broker = hub.broker
        factory = link_factory(
            links,
            secret,
            certificate.cert_file,
            certificate.key_file,
            blacklist=Blacklist(config.blacklist_threshold, config.blacklist_timeout),
            admission=Admission(config.max_connections, config.max_per_address),
            audit=lambda host, action, detail: broker.record(
                "node-port", action, f"from {host}", detail
            ),
        )
        ports = await self.run(Listeners(self.reactor, [settings.node_listen], factory, "nodes"))
        bound = ports.ports()[0].getHost()
        try:
            address = published_address(
                settings.node_address, str(getattr(bound, "host", "")), getattr(bound, "port", 0)
            )
        except ValueError as exc:
            raise ConfigError(f"[cluster] node_listen: {exc}") from None
        self.cluster.registry.address = address
        self.cluster.registry.fingerprint = certificate.fingerprint
        log.info("other nodes link to this node's desktops at %s (TLS)", address)
        in_use = manager.in_use
        manager.in_use = lambda: {**links.desktops(), **as_mapping(in_use())}

    # -- terminals ------------------------------------------------------------------------------
    def dial_gate(self, connector: ReverseConnector) -> None:
        """One node of the site dials each terminal: the one holding its ``dial`` lease."""
        from .dialing import DialLeases

        connector.gate = DialLeases(self.cluster)
        connector.refused_delay = self.cluster.heartbeat

    async def publish_web(self, secured: list[str | None], ports: list[Port]) -> WebURLs:
        """Tell the site's nodes where this node's browser terminal is, and follow where
        theirs are, for the page's ``/nodes.json`` (docs/browser-terminal.md)."""
        from .weburls import WebURLs, web_url

        node_address = self.config.cluster.node_address
        own = []
        for secure, port in zip(secured, ports, strict=True):
            host, number = str(getattr(port.getHost(), "host", "")), port.getHost().port
            if node_address or host in ("0.0.0.0", "::", ""):
                host = node_address or socket.getfqdn()
            own.append(web_url("https" if secure else "http", host, number))
        cluster = self.cluster
        urls = WebURLs(cluster, self.url, own, cluster.heartbeat, self.reactor)
        published: WebURLs = await self.run(urls)
        return published
