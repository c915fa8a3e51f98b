"""Find thinserve with mDNS: browse ``_rfb._tcp`` for a server named like it.

thinserve advertises its RFB port as ``_rfb._tcp`` (thinserve.discovery.
ServerAdvertiser) under an instance name and host name that hold
"thinserve"; other VNC servers on the link are ignored unless their name
holds the text asked for.  ``targets`` lists the addresses of the matching
servers in the order they were found.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence

from twisted.internet import defer
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from thinserve.discovery import RFB_SERVICE_TYPE, as_deferred, make_zeroconf

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_MS = 3000
MAX_SERVERS = 64


class ServerFinder:
    def __init__(
        self, name_part: str, interfaces: Sequence[str] = (), ipv4_only: bool = False
    ) -> None:
        self.name_part = name_part.lower()
        self.interfaces = list(interfaces)
        self.ipv4_only = ipv4_only
        self.servers: dict[str, list[tuple[str, int]]] = {}  # by service name, oldest first
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def targets(self) -> list[tuple[str, int]]:
        return [target for found in self.servers.values() for target in found]

    def start(self) -> defer.Deferred[None]:
        return as_deferred(self.async_start())

    def stop(self) -> defer.Deferred[None]:
        return as_deferred(self.async_stop())

    async def async_start(self) -> None:
        if self._zc is not None:
            return
        self._zc = make_zeroconf(self.interfaces or None, self.ipv4_only)
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, [RFB_SERVICE_TYPE], handlers=[self._changed]
        )

    async def async_stop(self) -> None:
        browser, self._browser = self._browser, None
        if browser is not None:
            await browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        zc, self._zc = self._zc, None
        if zc is not None:
            await zc.async_close()

    def _changed(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            if self.servers.pop(name, None) is not None:
                log.info("server %r went away", name)
            return
        task = asyncio.ensure_future(self._resolve(zeroconf, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(RFB_SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS) or not info.port:
            return
        if self.name_part not in f"{name} {info.server or ''}".lower():
            return
        found = [(a, info.port) for a in info.parsed_scoped_addresses() if self._usable(a)]
        if found and (name in self.servers or len(self.servers) < MAX_SERVERS):
            if self.servers.get(name) != found:
                log.info("found %r at %s", name, found)
            self.servers[name] = found

    def _usable(self, address: str) -> bool:
        try:
            parsed = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return not (self.ipv4_only and parsed.version == 6) and not parsed.is_multicast
