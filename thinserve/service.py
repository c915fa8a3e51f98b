"""Wires thinserve together as a Twisted service: desktops, relay, listeners."""

from __future__ import annotations

import logging

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet import reactor as default_reactor
from twisted.internet.interfaces import IListeningPort

from protocols.rfb.constants import SecurityType

from .backends.xvnc import LocalXvncDesktop
from .config import Config, address_to_endpoint
from .relay.policy import SimplePolicy
from .relay.upstream import DesktopAddress, Mirror, Upstream
from .rfbserver import RFBServerFactory, ServerOptions

log = logging.getLogger(__name__)


class ThinServe(service.Service):
    def __init__(self, config: Config, reactor: object | None = None) -> None:
        self.config = config
        self.reactor = reactor or default_reactor
        self.local: list[LocalXvncDesktop] = []
        self.upstreams: list[Upstream] = []
        self.ports: list[IListeningPort] = []
        self.policy: SimplePolicy | None = None

    def startService(self) -> defer.Deferred[None]:  # type: ignore[override]
        super().startService()
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        addresses = [self._start_local(c) for c in self.config.local_desktops]
        addresses += [
            DesktopAddress(d.name, d.endpoint, d.password, d.username, d.ca_file, d.encodings)
            for d in self.config.desktops
        ]
        mirrors = []
        for address in addresses:
            upstream = Upstream(address, Mirror(address.name), clock=self.reactor)  # type: ignore[arg-type]
            upstream.start()
            self.upstreams.append(upstream)
            mirrors.append(upstream.mirror)
        self.policy = SimplePolicy(mirrors, self.config.policy)
        factory = RFBServerFactory(self._terminal_options(), self.policy.new_session)
        for description in self.config.listen:
            port = await self._listen(description, factory)
            log.info("terminals connect to %s", _describe(port))
        await self._start_web(factory)

    async def _listen(self, description: str, factory: object) -> IListeningPort:
        endpoint = endpoints.serverFromString(self.reactor, description)
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
        for description in self.config.web_listen:
            port = await self._listen(description, site)
            log.info("browser terminal at http://%s/", _describe(port))

    def _start_local(self, config: object) -> DesktopAddress:
        desktop = LocalXvncDesktop(config, self.reactor)  # type: ignore[arg-type]
        desktop.start()
        self.local.append(desktop)
        return DesktopAddress(desktop.config.name, address_to_endpoint(desktop.address))

    def _terminal_options(self) -> ServerOptions:
        if self.config.password:
            return ServerOptions(methods=(SecurityType.VNC_AUTH,), password=self.config.password)
        return ServerOptions(methods=(SecurityType.NONE,))

    def stopService(self) -> defer.Deferred[None]:  # type: ignore[override]
        super().stopService()
        for upstream in self.upstreams:
            upstream.stop()
        for desktop in self.local:
            desktop.stop()
        return defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in self.ports]
        ).addCallback(lambda _: None)

    @property
    def port_numbers(self) -> list[int]:
        return [p.getHost().port for p in self.ports]


def _describe(port: IListeningPort) -> str:
    host = port.getHost()
    return f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}"
