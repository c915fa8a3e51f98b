"""Wires thinserve together as a tree of Twisted services.

Desktops (local Xvnc sessions, configured VNC endpoints) each get a mirror
fed by an upstream link; the broker, over the store, decides what each
terminal shows; the hub applies its decisions to terminal sessions.
Terminals arrive three ways: connecting in over RFB, connecting in from a
browser (WebSocket), or being discovered over zeroconf and connected to.

``ThinServe``'s children, in the order they start (they stop in reverse):

  store            StoreService            the store (SQLite or PostgreSQL)
  local desktops   LocalDesktops           one LocalDesktop (Xvnc) each
  desktop manager  DesktopManagerService   the desktops' links and lifecycles
  hub              HubService              the broker's decisions on the sessions
  admin socket     AdminSocket             the admin API
  terminal ports   listeners.Listeners     the RFB listening ports
  web ports        listeners.Listeners     the browser terminal's (if configured)
  dashboard        Dashboard, Listeners    the admin dashboard: thumbnails, events,
                                           metrics, then its ports (if configured)
  reverse          reverse.ReverseConnector  a ClientService per listening
                                           terminal or viewer it dials
  discovery        Discovery               the zeroconf browser, then one
                                           advertiser per RFB port (if enabled)

Stopping in reverse stops the dialling and the listening first, then closes
every terminal connection (hub) before the desktop links go (desktop
manager), and closes the store last.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet import reactor as default_reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress

from protocols.terminal import TerminalAdvert

from .admin import api as admin_socket
from .admin.handlers import AdminAPI, Route
from .admission import Admission
from .backends.qemu import QemuBackend
from .backends.records import records_in
from .backends.xvnc import LocalXvncDesktop
from .blacklist import Blacklist
from .broker import Broker, TerminalInfo
from .config import Config, ConfigError, LocalDesktopConfig, address_to_endpoint
from .credentials import Credentials
from .dashboard.site import DashboardMissing
from .dashboard.wiring import SOCKET_ROUTES, Admin, Dashboard, admin_api
from .desktops import DesktopListener, DesktopManager, Holders, desktops_in_use
from .desktops.wiring import add_sessions, add_vms, is_unstartable, static_address, take_over
from .discovery import ServerAdvertiser, TerminalBrowser, advertised_addresses
from .hub import Hub
from .linksecurity import SecurityPolicy, ServerCertificate, https_description, is_loopback
from .listeners import AnyFactory, Listeners, Port
from .relay.upstream import DesktopAddress, Upstream
from .reload import Spec, compare, desktop_specs, restart_needed
from .reverse import ReverseConnector
from .rfbserver import RFBServerFactory, RFBServerProtocol, ServerOptions
from .servicetree import Child, InOrder, settled
from .store import Store, describe_location, local_file, open_store
from .store.location import is_postgres

if TYPE_CHECKING:
    from .cluster.node import SiteNode
    from .cluster.weburls import WebURLs
from .store.sqlite import default_path
from .viewers import listening_viewer
from .web import NoVNCMissing

log = logging.getLogger(__name__)

PartT = TypeVar("PartT", bound=Child)


class ThinServe(InOrder):
    """thinserve: its parts as child services (see the module's docstring).

    Each part is made once the parts before it run, from what they made: the
    hub needs the open store and the desktops read from their backends, the
    advertisers need the listening ports.  So ``startService`` makes the
    children, starting each before making the next, and ``stopService``,
    once they have stopped, lets them go; a later start makes new ones.
    """

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        self.config = config
        # IReactorTCP, IReactorTime & co: zope interfaces, which mypy cannot check
        self.reactor: Any = reactor or default_reactor
        self.store: Store | None = None
        self.certificate: ServerCertificate | None = None
        self.desktops: DesktopManager | None = None
        self.site: SiteNode | None = None  # one node of a site: on PostgreSQL only
        self.hub: Hub | None = None
        self.local: LocalDesktops | None = None
        self.qemu: QemuBackend | None = None
        self.listeners: list[Listeners] = []  # the terminal ports, then the web ports

    def startService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    def stopService(self) -> defer.Deferred[None]:
        return super().stopService().addCallback(lambda _: self._let_go())

    def _let_go(self) -> None:
        for child in list(self):
            self.removeService(child)  # stopped already: removing does not stop it again

    async def _start(self) -> None:
        config = self.config
        self.listeners = []
        self.site = None
        database = str(config.database or default_path())
        store = (await self._run(StoreService(database))).store
        assert store is not None  # opened by startService
        self.store = store
        self.certificate = certificate = _certificate(
            config, local_file(database, config.state_dir)
        )
        site = self.site = await self._join_site(database)
        local = self.local = await self._run(
            LocalDesktops(config.local_desktops, self.reactor, server=config)
        )
        manager = self.desktops = await self._desktop_manager(local.addresses())
        if site is not None:
            await site.claim(manager)
        hub = self.hub = self._hub(store, manager)
        broker = hub.broker
        if site is not None:
            site.follow(hub, manager)
        await self._run(
            DesktopManagerService(
                manager,
                hub,
                lambda: desktops_in_use(broker.snapshot()),
                stop_desktops=config.stop_desktops,
            )
        )
        await self._run(HubService(hub))
        if site is not None:
            await site.link(hub, manager, certificate)
        admin = admin_api(hub, self._admin_info, manager, local)
        await self._run(AdminSocket(self.reactor, admin.api, config.admin_socket, SOCKET_ROUTES))
        rfb = RFBServerFactory(
            terminal_options(config, hub, certificate),
            hub.new_session,
            Admission(config.max_connections, config.max_per_address),
        )
        terminals = await self._listen(config.listen, rfb, "terminals")
        for port in terminals.ports():
            log.info("terminals connect to %s", _describe(port))
            self._warn_if_plain(port)
        await self._start_web(rfb, certificate)
        await self._start_dashboard(admin, certificate)
        connector = await self._start_reverse(hub, certificate)
        if config.discovery:
            await self._run(Discovery(config, connector, _tcp_binds(terminals.ports())))
            log.info("looking for terminals over zeroconf")
        self.running = True  # only now: a child added to a running parent starts unawaited

    async def _join_site(self, database: str) -> SiteNode | None:
        """On a PostgreSQL database this server is one node of a site (docs/scale-out.md)."""
        if not is_postgres(database):
            return None
        from .cluster.node import SiteNode  # psycopg: only on PostgreSQL
        from .store.postgres import PostgresStore

        store = self.store
        assert isinstance(store, PostgresStore)
        site = SiteNode(self.config, store.connection_url, self.reactor, self._run)
        await site.join()
        return site

    def _hub(self, store: Store, manager: DesktopManager) -> Hub:
        """The broker over the store, knowing every desktop; the hub applying its decisions."""
        config = self.config
        claims = self.site.claims() if self.site is not None else None
        broker = Broker(store, config.broker, claims=claims)
        for name, backend, state in manager.registrations():
            broker.register_desktop(name, backend, state)
        return Hub(
            broker,
            manager.mirrors,
            self.reactor,
            on_desktop_wanted=_wanting(manager),
            address_subnets=config.address_pairing,
            max_unpaired=config.max_unpaired,
        )

    async def _start_reverse(self, hub: Hub, certificate: ServerCertificate) -> ReverseConnector:
        """Outgoing connections: discovered terminals (added by Discovery) and listening viewers."""
        options = terminal_options(self.config, hub, certificate)
        connector = ReverseConnector(
            self.reactor, lambda advert: DialledTerminalFactory(options, hub, advert)
        )
        if self.site is not None:
            self.site.dial_gate(connector)
        for address in self.config.dial:
            connector.terminal_added(listening_viewer(address))
            log.info("dialling the listening viewer at %s", address)
        return await self._run(connector)

    async def _run(self, part: PartT) -> PartT:
        """Add ``part`` and start it, before the next part is made from it."""
        self.addService(part)
        await settled(part.startService())
        return part

    async def _listen(
        self, descriptions: Sequence[str], factory: AnyFactory, kind: str
    ) -> Listeners:
        listeners = await self._run(Listeners(self.reactor, descriptions, factory, kind))
        self.listeners.append(listeners)
        return listeners

    async def _desktop_manager(self, local: list[DesktopAddress]) -> DesktopManager:
        """Every configured desktop, under one manager (docs/desktops.md)."""
        setup = self.config.setup
        pools = self.config.broker.pools
        manager = DesktopManager(setup.manager, pools=pools, reactor=self.reactor)
        for address in local:
            manager.add_static(address)
        for d in self.config.desktops:
            manager.add_static(static_address(d))
        if setup.xvnc_desktops:
            add_sessions(manager, setup.xvnc_desktops, setup.xvnc, self.reactor)
        if setup.qemu_desktops:
            self.qemu = add_vms(manager, None, setup.qemu_desktops)
        if setup.libvirt:  # libvirt-python is optional: imported only when used
            from .backends.libvirt_backend import LibvirtBackend

            for libvirt in setup.libvirt:
                await manager.add_backend(LibvirtBackend(libvirt))
        await take_over(manager, self.config.state_dir, self.config.runtime_dir)
        return manager

    async def _start_web(self, factory: RFBServerFactory, certificate: ServerCertificate) -> None:
        """The browser terminal, on the same sessions as the RFB listener."""
        if not self.config.web_listen:
            return
        from .web import NoVNCMissing, WebOptions, WebSocketOptions, terminal_site

        origins = self.config.web_allowed_origins
        options = WebOptions(WebSocketOptions(same_origin=not origins, allowed_origins=origins))
        published: list[WebURLs] = []  # the site's browser terminals (cluster only)
        if self.site is not None:
            options = replace(options, nodes=lambda: published[0].site() if published else [])
        try:
            site = terminal_site(factory, options)
        except NoVNCMissing as exc:
            log.warning("browser terminal off: %s", exc)
            return
        configured = self.config.web_listen
        secured = [https_description(d, certificate) for d in configured]
        descriptions = [s or d for s, d in zip(secured, configured, strict=True)]
        web = await self._listen(descriptions, site, "browsers")
        for secure, port in zip(secured, web.ports(), strict=True):
            scheme = "https" if secure else "http"
            log.info("browser terminal at %s://%s/", scheme, _describe(port))
        if self.site is not None:
            published.append(await self.site.publish_web(secured, web.ports()))

    async def _start_dashboard(self, admin: Admin, certificate: ServerCertificate) -> None:
        """The admin dashboard and its HTTP API: HTTPS beyond loopback, like the
        browser terminal.  Its files missing, or the default port taken, turn it
        off with a warning; a configured port must work."""
        configured = self.config.dashboard_listen
        if not configured:
            return
        dashboard = Dashboard(admin, self.reactor)
        try:
            site = dashboard.site()
        except (DashboardMissing, NoVNCMissing) as exc:
            dashboard.events.close()
            log.warning("dashboard off: %s", exc)
            return
        await self._run(dashboard)
        secured = [https_description(d, certificate) for d in configured]
        descriptions = [s or d for s, d in zip(secured, configured, strict=True)]
        ports = Listeners(self.reactor, descriptions, site, "the dashboard")
        try:
            await self._run(ports)
        except CannotListenError as exc:
            if configured != Config.dashboard_listen:
                raise
            for part in (ports, dashboard):
                part.stopService()
                self.removeService(part)
            log.warning("dashboard off: %s (set dashboard_listen in [server])", exc)
            return
        self.listeners.append(ports)
        for secure, port in zip(secured, ports.ports(), strict=True):
            scheme = "https" if secure else "http"
            log.info("admin dashboard at %s://%s/", scheme, _describe(port))

    def _warn_if_plain(self, port: Port) -> None:
        host = str(getattr(port.getHost(), "host", ""))
        if self.config.allow_none == "all" and not is_loopback(host):
            log.warning(
                "terminals on %s may connect unencrypted (security type None): "
                'set allow_none = "loopback" in [server] to require TLS beyond this machine',
                _describe(port),
            )

    @property
    def ports(self) -> list[Port]:
        """The listening ports: the terminals', then the browser terminal's."""
        return [port for listeners in self.listeners for port in listeners.ports()]

    @property
    def port_numbers(self) -> list[int]:
        return [int(getattr(p.getHost(), "port", 0)) for p in self.ports]

    @property
    def upstreams(self) -> list[Upstream]:
        """The live links to desktops, in configuration order."""
        if self.desktops is None:
            return []
        return [md.upstream for md in self.desktops.desktops.values() if md.upstream is not None]

    def _admin_info(self) -> dict[str, object]:
        assert self.certificate is not None  # made before the admin socket opens
        return {
            "name": self.config.name,
            "listening": [_describe(p) for p in self.ports],
            "certificate": self.certificate.cert_file,
            "fingerprint": f"sha256:{self.certificate.fingerprint}",
        }

    # -- reloading ---------------------------------------------------------------------------
    def reload(self, config: Config) -> defer.Deferred[list[str]]:
        """Apply ``config`` without dropping any live session; fires with one line
        per change, "restart to apply: ..." for what is only read at start.

        Desktops added are managed, registered with the broker and offered to
        terminals; desktops removed are withdrawn (their terminals fall back
        to their pairing or waiting screen) and, if thinserve runs them,
        stopped; pool policies and the broker's policy are swapped in.
        Terminals of other desktops keep their connections and pictures.
        """
        return defer.ensureDeferred(self._reload(config))

    async def _reload(self, new: Config) -> list[str]:
        manager, hub = self.desktops, self.hub
        if not self.running or manager is None or hub is None:
            raise RuntimeError("thinserve is not running: nothing to reload")
        old = self.config
        lines = restart_needed(old, new)
        unstartable = frozenset(name for name in manager.desktops if is_unstartable(manager, name))
        old_specs, specs = desktop_specs(old), desktop_specs(new)
        changes = compare(old_specs, specs, unstartable)
        manager.reconfigure(new.setup.manager, new.broker.pools)
        if old.setup.manager != new.setup.manager:
            lines.append("applied: the pool policies ([desktops])")
        for name in changes.replaced:
            lines.append(await self._remove_desktop(name, old_specs[name]))
        for name in changes.added + changes.replaced:
            lines.append(await self._add_desktop(name, specs[name]))
        if old.broker != new.broker:
            hub.apply(hub.broker.reconfigure(new.broker))
            lines.append("applied: the broker's policy ([broker])")
        for name in changes.removed:
            lines.append(await self._remove_desktop(name, old_specs[name]))
        for name in changes.reconfigured:
            assert self.qemu is not None  # a QEMU desktop was there before
            self.qemu.configure(specs[name][1][0])
            lines.append(f"desktop {name}: its new settings apply at its next start")
        lines += [f"restart to apply: the settings of desktop {name}" for name in changes.later]
        self.config = replace(
            old,
            desktops=new.desktops,
            local_desktops=new.local_desktops,
            setup=replace(new.setup, xvnc=old.setup.xvnc, libvirt=old.setup.libvirt),
            broker=new.broker,
            source=new.source,
        )
        for line in lines or ["nothing changed"]:
            log.info("reload: %s", line)
        return lines

    async def _add_desktop(self, name: str, spec: Spec) -> str:
        """Manage, register and check a desktop the new configuration adds."""
        manager, hub, local = self.desktops, self.hub, self.local
        assert manager is not None and hub is not None and local is not None
        kind, item = spec
        known = {id(md.backend) for md in manager.desktops.values()}
        try:
            if kind == "desktop":
                manager.add_static(static_address(item))
            elif kind == "local_desktop":
                manager.add_static((await local.add(item, self.reactor)).address())
            elif kind == "xvnc_desktop":
                add_sessions(manager, [item], self.config.setup.xvnc, self.reactor)
            else:
                self.qemu = add_vms(manager, self.qemu, [item])
        except Exception as exc:
            log.exception("reload: desktop %s", name)
            return f"desktop {name} not added: {exc}"
        backend, state = next((b, s) for n, b, s in manager.registrations() if n == name)
        hub.apply(hub.broker.register_desktop(name, backend, state))
        new_backend = manager.desktops[name].backend
        if new_backend is not None and id(new_backend) not in known:
            dirs = self.config.state_dir, self.config.runtime_dir
            await take_over(manager, *dirs, only=new_backend)
        problem = manager.check(name)
        return f"desktop {name} added" + (f", but it cannot start: {problem}" if problem else "")

    async def _remove_desktop(self, name: str, spec: Spec) -> str:
        """Withdraw a desktop the new configuration drops: its terminals first."""
        manager, hub, local = self.desktops, self.hub, self.local
        assert manager is not None and hub is not None and local is not None
        hub.withdraw_desktop(name)
        if name not in manager.desktops:
            return f"desktop {name} removed"
        outcome = await manager.remove(name)
        if spec[0] == "local_desktop":
            await local.drop(name)
            outcome = "its Xvnc is stopped"
        return f"desktop {name} removed: {outcome}"


# -- the parts ------------------------------------------------------------------------------
class StoreService(service.Service):
    """The store (an SQLite file or a PostgreSQL URL): opened first, closed last."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.store: Store | None = None

    def startService(self) -> None:
        super().startService()
        self.store = open_store(self.location)
        log.info("database %s", describe_location(self.location))

    def stopService(self) -> None:
        super().stopService()
        if self.store is not None:
            self.store.close()


class LocalDesktop(service.Service):
    """One local Xvnc desktop: started before the desktop manager links to it.

    Its socket is in the server's runtime directory and it outlives
    thinserve: recorded under the state directory, left running on stop
    (unless ``stop_desktops``) and taken over by the next start.
    """

    def __init__(self, config: LocalDesktopConfig, reactor: Any, server: Config) -> None:
        self.config = config
        self.reactor = reactor
        self.server = server
        self.desktop: LocalXvncDesktop | None = None

    def startService(self) -> defer.Deferred[None]:
        super().startService()
        return self.resume()

    def resume(self) -> defer.Deferred[None]:
        """Keep a fresh desktop running (at start, or after ``halt``)."""
        server = self.server
        records = records_in(server.state_dir)
        self.desktop = LocalXvncDesktop(self.config, self.reactor, server.runtime_dir, records)
        return self.desktop.start()

    def halt(self) -> defer.Deferred[None]:
        """End the desktop until ``resume`` (an admin's ``desktops stop``)."""
        desktop, self.desktop = self.desktop, None
        return desktop.stop() if desktop is not None else defer.succeed(None)

    def stopService(self) -> defer.Deferred[None]:
        """Fires once Xvnc and its session are gone, or left to run on their own."""
        super().stopService()
        if self.desktop is None:
            return defer.succeed(None)
        if self.server.stop_desktops:
            return self.desktop.stop()
        return self.desktop.release()

    def address(self) -> DesktopAddress:
        """Where its VNC server is, once started."""
        assert self.desktop is not None, "the local desktop has not started"
        return DesktopAddress(self.config.name, address_to_endpoint(self.desktop.address))


class LocalDesktops(InOrder):
    """The local Xvnc desktops, one LocalDesktop each."""

    def __init__(self, configs: Sequence[LocalDesktopConfig], reactor: Any, server: Config) -> None:
        super().__init__()
        self.server = server
        self.desktops = [LocalDesktop(config, reactor, server) for config in configs]
        for desktop in self.desktops:
            self.addService(desktop)

    def addresses(self) -> list[DesktopAddress]:
        return [desktop.address() for desktop in self.desktops]

    async def add(self, config: LocalDesktopConfig, reactor: Any) -> LocalDesktop:
        """Start one more (a reload added it), then keep it with the others."""
        desktop = LocalDesktop(config, reactor, self.server)
        await settled(desktop.startService())
        self.desktops.append(desktop)
        self.services.append(desktop)  # not addService: that would start it again
        cast(Any, desktop).parent = self  # Twisted declares it None
        return desktop

    def names(self) -> list[str]:
        return [desktop.config.name for desktop in self.desktops]

    def stop(self, name: str) -> defer.Deferred[None]:
        """End ``name``'s Xvnc and session; nothing starts it again but ``start``
        or the next start of thinserve.  Its terminals wait meanwhile."""
        return self._named(name).halt()

    def start(self, name: str) -> defer.Deferred[None]:
        """Start ``name`` afresh if it is stopped; fires once the start is over."""
        desktop = self._named(name)
        return desktop.resume() if desktop.desktop is None else defer.succeed(None)

    def _named(self, name: str) -> LocalDesktop:
        return next(d for d in self.desktops if d.config.name == name)

    async def drop(self, name: str) -> None:
        """Stop one that is no longer configured (its Xvnc too), and let it go."""
        desktop = self._named(name)
        self.desktops.remove(desktop)
        self.services.remove(desktop)
        desktop.parent = None
        service.Service.stopService(desktop)
        if desktop.desktop is not None:
            await desktop.desktop.stop()


class DesktopManagerService(service.Service):
    """The desktop manager: reports to the hub from start, closes every desktop link on
    stop, and leaves the desktops running unless ``stop_desktops``."""

    def __init__(
        self,
        manager: DesktopManager,
        listener: DesktopListener,
        in_use: Callable[[], Holders],
        stop_desktops: bool = False,
    ) -> None:
        self.manager = manager
        self.listener = listener
        self.in_use = in_use
        self.stop_desktops = stop_desktops

    def startService(self) -> None:
        super().startService()
        self.manager.start(self.listener, self.in_use)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.manager.close(self.stop_desktops)


class HubService(service.Service):
    """The hub: decides on a tick; on stop closes every terminal connection."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def startService(self) -> None:
        super().startService()
        self.hub.start()

    def stopService(self) -> None:
        super().stopService()
        self.hub.stop()


class AdminSocket(service.Service):
    """The admin API on its Unix socket (thinserve/admin/api.py), when there is one."""

    def __init__(
        self, reactor: Any, api: AdminAPI, configured: str | None, routes: tuple[Route, ...]
    ) -> None:
        self.reactor = reactor
        self.api = api
        self.configured = configured
        self.routes = routes
        self.port: Port | None = None

    def startService(self) -> defer.Deferred[None]:
        super().startService()
        return defer.ensureDeferred(self._listen())

    async def _listen(self) -> None:
        self.port = await admin_socket.start(self.reactor, self.api, self.configured, self.routes)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class Discovery(InOrder):
    """Zeroconf: the browser that finds terminals (handing them to the reverse
    connector), then one advertiser per RFB port so VNC viewers list thinserve,
    at the addresses each port listens on (discovery.advertised_addresses)."""

    def __init__(
        self, config: Config, connector: ReverseConnector, ports: list[tuple[str, int]]
    ) -> None:
        super().__init__()
        interfaces = list(config.discovery_interfaces) or None
        browser = TerminalBrowser(
            on_added=connector.terminal_added,
            on_updated=connector.terminal_updated,
            on_removed=connector.terminal_removed,
            interfaces=interfaces,
        )
        self.addService(browser)
        for host, port in ports:
            addresses = advertised_addresses(host, interfaces)
            if not addresses:
                log.info(
                    "not advertising %s:%d over zeroconf: %s",
                    host,
                    port,
                    "it listens on loopback only, which a viewer on the LAN cannot reach"
                    if _is_loopback(host)
                    else "it listens on no address of [discovery] interfaces",
                )
                continue
            self.addService(
                ServerAdvertiser(port, name=config.name, addresses=addresses, interfaces=interfaces)
            )


class DialledTerminalFactory(protocol.Factory):
    """Server protocols for a terminal thinserve dials: the session gets the
    terminal's advertised name and key, recorded, never trusted (the
    connection must prove the key; thinserve/identities.py)."""

    def __init__(self, options: ServerOptions, hub: Hub, advert: TerminalAdvert) -> None:
        self.options = options
        self.hub = hub
        self.advert = advert

    def buildProtocol(self, addr: IAddress | None) -> RFBServerProtocol:
        host = str(getattr(addr, "host", ""))
        advert = self.advert
        info = TerminalInfo(advert.instance, advert.model, host, advert.width, advert.height)
        session = self.hub.new_session(info, advert.key)
        return RFBServerProtocol(self.options, session, self.options.methods_for(host))


def terminal_options(config: Config, hub: Hub, certificate: ServerCertificate) -> ServerOptions:
    """How terminals authenticate; each call has a blacklist of its own."""
    policy = SecurityPolicy(
        allow_none=config.allow_none,
        password=bool(config.password),
        logins=config.broker.hot_desk,
    )
    broker = hub.broker
    credentials = Credentials(
        config.password,
        check_login=hub.check_credentials,
        blacklist=Blacklist(config.blacklist_threshold, config.blacklist_timeout),
        audit=lambda host, action, detail: broker.record(
            "terminal-port", action, f"from {host}", detail
        ),
    )
    return ServerOptions(
        credentials=credentials,
        password=config.password,
        cert_file=certificate.cert_file,
        key_file=certificate.key_file,
        policy=policy,
    )


def _certificate(config: Config, database: str) -> ServerCertificate:
    if config.tls_cert is not None and config.tls_key is not None:
        certificate = ServerCertificate(config.tls_cert, config.tls_key)
    else:
        certificate = ServerCertificate.for_database(database)
    try:
        fingerprint = certificate.fingerprint
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the server certificate {certificate.cert_file} cannot be read ({exc}); "
            "fix tls_cert/tls_key in [server], or remove them to use a generated one"
        ) from None
    log.info(
        "server certificate %s, key fingerprint sha256:%s (pin it in viewers)",
        certificate.cert_file,
        fingerprint,
    )
    return certificate


def _tcp_binds(ports: list[Port]) -> list[tuple[str, int]]:
    """(address, port number) of the TCP ones (a Unix socket has none to advertise)."""
    hosts = [port.getHost() for port in ports]
    binds = [(str(getattr(h, "host", "")), getattr(h, "port", None)) for h in hosts]
    return [(host, number) for host, number in binds if isinstance(number, int)]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _wanting(manager: DesktopManager) -> Callable[[str], None]:
    """What the hub calls for a desktop a terminal is given: it does not wait, the
    manager reports the desktop's progress to it."""

    def want(name: str) -> None:
        manager.want(name)

    return want


def _describe(port: Port) -> str:
    host = port.getHost()
    return f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}"
