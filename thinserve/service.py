"""Wires thinserve together as a Twisted service.

Desktops (local Xvnc sessions, configured VNC endpoints) each get a mirror
fed by an upstream link; the broker, over the store, decides what each
terminal shows; the hub applies its decisions to terminal sessions.
Terminals arrive three ways: connecting in over RFB, connecting in from a
browser (WebSocket), or being discovered over zeroconf and connected to.
"""

from __future__ import annotations

import logging

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.internet import reactor as default_reactor
from twisted.internet.interfaces import IListeningPort

from protocols.terminal import TerminalAdvert

from .admin import api as admin_api
from .admission import Admission
from .backends.qemu import QemuBackend
from .backends.xvnc import LocalXvncDesktop, XvncBackend
from .blacklist import Blacklist
from .broker import Broker, TerminalInfo
from .config import Config, ConfigError, LocalDesktopConfig, address_to_endpoint
from .credentials import Credentials
from .desktops import DesktopManager, desktops_in_use
from .hub import Hub
from .linksecurity import SecurityPolicy, ServerCertificate, https_description, is_loopback
from .relay.upstream import DesktopAddress, Upstream
from .rfbserver import RFBServerFactory, RFBServerProtocol, ServerOptions
from .store.sqlite import SqliteStore, default_path
from .viewers import listening_viewer

log = logging.getLogger(__name__)


class ThinServe(service.Service):
    def __init__(self, config: Config, reactor: object | None = None) -> None:
        self.config = config
        self.reactor = reactor or default_reactor
        self.local: list[LocalXvncDesktop] = []
        self.desktops: DesktopManager | None = None
        self.ports: list[IListeningPort] = []
        self.store: SqliteStore | None = None
        self.hub: Hub | None = None
        self.discovery: object | None = None
        self.connector: object | None = None
        self.admin_port: IListeningPort | None = None
        self.certificate: ServerCertificate | None = None

    def startService(self) -> defer.Deferred[None]:  # type: ignore[override]
        super().startService()
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        database = str(self.config.database or default_path())
        self.store = SqliteStore(database)
        self.certificate = self._certificate(database)
        broker = Broker(self.store, self.config.broker)
        manager = await self._desktop_manager()
        self.hub = Hub(
            broker,
            manager.mirrors,
            self.reactor,
            on_desktop_wanted=manager.want,
            address_subnets=self.config.address_pairing,
            max_unpaired=self.config.max_unpaired,
        )
        for name, backend in manager.backend_names().items():
            broker.register_desktop(name, backend)
        manager.start(self.hub, lambda: desktops_in_use(broker.snapshot()))
        self.hub.start()
        self.admin_port = await admin_api.start(
            self.reactor, self.hub, self.config.admin_socket, self._admin_info
        )
        admission = Admission(self.config.max_connections, self.config.max_per_address)
        factory = RFBServerFactory(self._terminal_options(), self.hub.new_session, admission)
        for description in self.config.listen:
            port = await self._listen(description, factory)
            log.info("terminals connect to %s", _describe(port))
            self._warn_if_plain(port)
        await self._start_web(factory)
        self._start_reverse()
        if self.config.discovery:
            await self._start_discovery()
        for address in self.config.dial:
            self.reverse_factory.wrap(self.connector.terminal_added)(listening_viewer(address))
            log.info("dialling the listening viewer at %s", address)

    def _start_reverse(self) -> None:
        """Outgoing connections: discovered terminals and listening viewers."""
        from .reverse import ReverseConnector

        assert self.hub is not None
        self.reverse_factory = ReverseFactory(self._terminal_options(), self.hub)
        self.connector = ReverseConnector(self.reactor, self.reverse_factory)

    async def _desktop_manager(self) -> DesktopManager:
        """Every configured desktop, under one manager (docs/desktops.md)."""
        setup = self.config.setup
        pools = self.config.broker.pools
        manager = DesktopManager(setup.manager, pools=pools, reactor=self.reactor)
        self.desktops = manager
        for local in self.config.local_desktops:
            manager.add_static(self._start_local(local))
        for d in self.config.desktops:
            manager.add_static(
                DesktopAddress(d.name, d.endpoint, d.password, d.username, d.ca_file, d.encodings)
            )
        if setup.xvnc_desktops:
            configs = [c for c, _ in setup.xvnc_desktops]
            xvnc = XvncBackend(configs, options=setup.xvnc, reactor=self.reactor)
            for config, estimate in setup.xvnc_desktops:
                manager.add(config.name, xvnc, boot_estimate=estimate)
        if setup.qemu_desktops:
            qemu = QemuBackend([c for c, _ in setup.qemu_desktops])
            for config, estimate in setup.qemu_desktops:
                manager.add(config.name, qemu, boot_estimate=estimate)
        if setup.libvirt:  # libvirt-python is optional: imported only when used
            from .backends.libvirt_backend import LibvirtBackend

            for libvirt in setup.libvirt:
                await manager.add_backend(LibvirtBackend(libvirt))
        return manager

    @property
    def upstreams(self) -> list[Upstream]:
        """The live links to desktops, in configuration order."""
        if self.desktops is None:
            return []
        return [md.upstream for md in self.desktops.desktops.values() if md.upstream is not None]

    def _start_local(self, config: LocalDesktopConfig) -> DesktopAddress:
        desktop = LocalXvncDesktop(config, self.reactor)
        desktop.start()
        self.local.append(desktop)
        return DesktopAddress(desktop.config.name, address_to_endpoint(desktop.address))

    def _certificate(self, database: str) -> ServerCertificate:
        config = self.config
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

    def _terminal_options(self) -> ServerOptions:
        assert self.hub is not None
        policy = SecurityPolicy(
            allow_none=self.config.allow_none,
            password=bool(self.config.password),
            logins=self.config.broker.hot_desk,
        )
        broker = self.hub.broker
        credentials = Credentials(
            self.config.password,
            check_login=self.hub.check_credentials,
            blacklist=Blacklist(self.config.blacklist_threshold, self.config.blacklist_timeout),
            audit=lambda host, action, detail: broker.record(
                "terminal-port", action, f"from {host}", detail
            ),
        )
        return ServerOptions(
            credentials=credentials,
            password=self.config.password,
            cert_file=self.certificate.cert_file if self.certificate else None,
            key_file=self.certificate.key_file if self.certificate else None,
            policy=policy,
        )

    def _warn_if_plain(self, port: IListeningPort) -> None:
        host = str(getattr(port.getHost(), "host", ""))
        if self.config.allow_none == "all" and not is_loopback(host):
            log.warning(
                "terminals on %s may connect unencrypted (security type None): "
                'set allow_none = "loopback" in [server] to require TLS beyond this machine',
                _describe(port),
            )

    async def _listen(self, description: str, factory: protocol.Factory) -> IListeningPort:
        endpoint = endpoints.serverFromString(self.reactor, with_backlog(description))
        port = await endpoint.listen(factory)
        self.ports.append(port)
        return port

    async def _start_web(self, factory: RFBServerFactory) -> None:
        """The browser terminal, on the same sessions as the RFB listener."""
        if not self.config.web_listen:
            return
        from .web import NoVNCMissing, WebOptions, WebSocketOptions, terminal_site

        origins = self.config.web_allowed_origins
        options = WebOptions(WebSocketOptions(same_origin=not origins, allowed_origins=origins))
        try:
            site = terminal_site(factory, options)
        except NoVNCMissing as exc:
            log.warning("browser terminal off: %s", exc)
            return
        assert self.certificate is not None
        for description in self.config.web_listen:
            secure = https_description(description, self.certificate)
            port = await self._listen(secure or description, site)
            scheme = "https" if secure else "http"
            log.info("browser terminal at %s://%s/", scheme, _describe(port))

    async def _start_discovery(self) -> None:
        from .discovery import ServerAdvertiser, TerminalBrowser

        interfaces = list(self.config.discovery_interfaces) or None
        browser = TerminalBrowser(
            on_added=self.reverse_factory.wrap(self.connector.terminal_added),
            on_updated=self.reverse_factory.wrap(self.connector.terminal_updated),
            on_removed=self.connector.terminal_removed,
            interfaces=interfaces,
        )
        await browser.start()
        advertisers = []
        for port in self.ports[: len(self.config.listen)]:
            advertiser = ServerAdvertiser(
                port.getHost().port, name=self.config.name, interfaces=interfaces
            )
            await advertiser.start()
            advertisers.append(advertiser)
        self.discovery = (browser, advertisers)
        log.info("looking for terminals over zeroconf")

    def stopService(self) -> defer.Deferred[None]:  # type: ignore[override]
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.admin_port is not None:
            await self.admin_port.stopListening()
            self.admin_port = None
        if self.connector is not None:
            self.connector.stop(disconnect=True)
        if self.discovery is not None:
            browser, advertisers = self.discovery  # type: ignore[misc]
            for advertiser in advertisers:
                await advertiser.stop()
            await browser.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.desktops is not None:
            await self.desktops.close()
        for desktop in self.local:
            desktop.stop()
        await defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])
        if self.store is not None:
            self.store.close()

    def _admin_info(self) -> dict[str, object]:
        assert self.certificate is not None
        return {
            "name": self.config.name,
            "listening": [_describe(p) for p in self.ports],
            "certificate": self.certificate.cert_file,
            "fingerprint": f"sha256:{self.certificate.fingerprint}",
        }

    @property
    def port_numbers(self) -> list[int]:
        return [p.getHost().port for p in self.ports]


class ReverseFactory(protocol.Factory):
    """Builds server protocols for terminals thinserve dialled after discovery.

    The peer's address says which advert it answered, so the session gets
    the terminal's advertised name and key: recorded, never trusted (the
    connection must prove the key; thinserve/identities.py).
    """

    def __init__(self, options: ServerOptions, hub: Hub) -> None:
        self.options = options
        self.hub = hub
        self.adverts: dict[tuple[str, int], TerminalAdvert] = {}

    def wrap(self, callback):  # type: ignore[no-untyped-def]
        def remember(advert: TerminalAdvert) -> None:
            for host in advert.addresses:
                self.adverts[(host, advert.port)] = advert
            callback(advert)

        return remember

    def buildProtocol(self, addr: object) -> RFBServerProtocol:
        key = (str(getattr(addr, "host", "")), int(getattr(addr, "port", 0)))
        advert = self.adverts.get(key)
        if advert is None:
            session = self.hub.new_session()
        else:
            info = TerminalInfo(advert.instance, advert.model, key[0], advert.width, advert.height)
            session = self.hub.new_session(info, getattr(advert, "key", None))
        return RFBServerProtocol(self.options, session, self.options.methods_for(key[0]))


LISTEN_BACKLOG = 1024  # Twisted's 50 overflows in a burst of connections, which then hang


def with_backlog(description: str) -> str:
    """A TCP or TLS listening endpoint with room for a burst of connections,
    unless the description sets its own ``backlog``."""
    if description.split(":", 1)[0] in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def _describe(port: IListeningPort) -> str:
    host = port.getHost()
    return f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}"
