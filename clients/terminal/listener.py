"""Listen mode (the default): wait for thinserve to connect, and say where.

The terminal listens like a VNC listening viewer (port 5500 by default) and
advertises itself as ``_thinserve-term._tcp`` (docs/terminal-advert.md);
thinserve finds the advert and dials in.  It keeps listening and
advertising during a session (a second server is turned away by the
connection itself), and withdraws the advert when it stops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from protocols.terminal import TerminalAdvert
from thinserve.discovery import local_addresses

from .advert import TerminalAdvertiser

log = logging.getLogger(__name__)

WAITING = "Waiting for thinserve..."


class ListenMode:
    def __init__(
        self,
        reactor: Any,
        factory: Factory,
        key: str,  # the fingerprint of the terminal's key
        shown_id: str,  # the terminal id as the status screen shows it
        port: int,
        interfaces: Sequence[str],
        ipv4_only: bool,
        instance: str,
        model: str,
        screen: tuple[int, int],
    ) -> None:
        self.reactor = reactor
        self.factory = factory
        self.key = key
        self.shown_id = shown_id
        self.port = port
        self.interfaces = list(interfaces)
        self.ipv4_only = ipv4_only
        self.instance = instance
        self.model = model
        self.screen = screen
        self.listening: list[IListeningPort] = []
        self.addresses: list[str] = []
        self.advertiser: TerminalAdvertiser | None = None
        self.advert_state = "not advertised"

    def start(self) -> None:
        """Listen now (errors raise); the advert follows in the background."""
        self._listen()
        self.addresses = self.interfaces or local_addresses(self.ipv4_only)
        for address in self.addresses or ["*"]:
            log.info("listening on %s:%d", address, self.port)
        if not self.addresses:
            log.warning("no network address to advertise; thinserve cannot find this terminal")
            return
        advert = TerminalAdvert.keyed(
            self.instance,
            self.key,
            self.model,
            *self.screen,
            self.port,
            tuple(self.addresses),
        )
        self.advertiser = TerminalAdvertiser(advert, self.interfaces, self.ipv4_only)
        self.advert_state = "advertising..."
        started = self.advertiser.start()
        started.addCallbacks(self._advertised, self._advert_failed)

    def _listen(self) -> None:
        binds = self.interfaces or ["" if self.ipv4_only else "::"]
        for interface in binds:
            try:
                port = self.reactor.listenTCP(self.port, self.factory, interface=interface)
            except Exception:
                if interface != "::":
                    raise
                port = self.reactor.listenTCP(self.port, self.factory, interface="")
            self.listening.append(port)
            self.port = port.getHost().port  # port 0: the rest bind the one chosen

    def _advertised(self, _: object) -> None:
        name = self.advertiser.registered_name if self.advertiser else None
        self.advert_state = f"advertised as {name}"

    def _advert_failed(self, failure: Any) -> None:
        self.advert_state = "not advertised (mDNS failed)"
        log.error("cannot advertise the terminal: %s", failure.getErrorMessage())

    def stop(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        advertiser, self.advertiser = self.advertiser, None
        if advertiser is not None:
            try:
                await advertiser.stop()
            except Exception:
                log.exception("withdrawing the advert failed")
        ports, self.listening = self.listening, []
        for port in ports:
            await port.stopListening()

    def session_ended(self, lasted: float, why: str = "") -> None:
        """Nothing to do: thinserve dials again."""

    def server_name(self) -> None:
        """Servers dial in: known_servers names them by their certificate."""
        return None

    def status(self) -> tuple[str, list[str]]:
        where = ", ".join(f"{a}:{self.port}" for a in self.addresses) or f"port {self.port}"
        return WAITING, [
            f"Terminal id: {self.shown_id}",
            f"Listening on {where}",
            f"{self.instance}: {self.advert_state}",
        ]
