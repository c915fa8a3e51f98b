"""Announce the terminal with mDNS/DNS-SD, as docs/terminal-advert.md describes.

``TerminalAdvertiser`` registers one ``_thinserve-term._tcp`` service with
python-zeroconf, in the asyncio loop that Twisted's asyncio reactor runs,
and withdraws it (a DNS-SD goodbye) on ``stop``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Sequence

import ifaddr
from twisted.internet import defer
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from protocols.terminal import SERVICE_TYPE, TerminalAdvert
from thinserve.discovery import as_deferred, make_zeroconf

log = logging.getLogger(__name__)


class TerminalAdvertiser:
    def __init__(
        self,
        advert: TerminalAdvert,
        interfaces: Sequence[str] = (),
        ipv4_only: bool = False,
    ) -> None:
        advert.build()  # raises AdvertError now rather than on the network
        self.advert = advert
        self.interfaces = list(interfaces)
        self.ipv4_only = ipv4_only
        self._zc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None

    @property
    def registered_name(self) -> str | None:
        """The service name as registered (zeroconf renames it on a clash)."""
        return self._info.name if self._info is not None else None

    def start(self) -> defer.Deferred[None]:
        return as_deferred(self.async_start())

    def stop(self) -> defer.Deferred[None]:
        return as_deferred(self.async_stop())

    async def async_start(self) -> None:
        if self._zc is not None:
            return
        advert = self.advert
        info = ServiceInfo(
            SERVICE_TYPE,
            advert.service_name,
            port=advert.port,
            properties=advert.build(),
            parsed_addresses=list(advert.addresses),
            server=host_name(advert.terminal_id),
        )
        self._zc = make_zeroconf(self.interfaces or None, self.ipv4_only)
        announced = await self._zc.async_register_service(info, allow_name_change=True)
        self._info = info
        await announced
        log.info("advertised as %r at %s, port %d", info.name, advert.addresses, advert.port)

    async def async_stop(self) -> None:
        zc, self._zc = self._zc, None
        info, self._info = self._info, None
        if zc is None:
            return
        try:
            if info is not None:
                await (await zc.async_unregister_service(info))
        finally:
            await zc.async_close()


def host_name(terminal_id: str) -> str:
    """A host name of the terminal's own: ``thinserve-terminal-<id>.local.``."""
    label = re.sub(r"[^a-z0-9-]", "-", terminal_id.lower()).strip("-")[:40]
    return f"thinserve-terminal-{label or 'x'}.local."


def local_addresses(ipv4_only: bool = False) -> list[str]:
    """This host's addresses thinserve can dial: no loopback, no link-local."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str) and ipv4_only:
                continue
            address = ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
            usable = not (address.is_loopback or address.is_link_local or address.is_multicast)
            if usable and str(address) not in found:
                found.append(str(address))
    return found


def default_instance_name() -> str:
    """``Terminal <host name>``, cut to one DNS label."""
    name = f"Terminal {socket.gethostname().split('.')[0]}"
    return name.encode("utf-8")[:63].decode("utf-8", "ignore")
