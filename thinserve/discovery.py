"""Zeroconf (mDNS/DNS-SD): find terminals, and let VNC viewers find thinserve.

Both classes are Twisted services (children of thinserve.service's tree)
that run python-zeroconf in the asyncio loop that Twisted's asyncio reactor
drives, so they must be started while the reactor runs.  ``startService``
and ``stopService`` return Deferreds; ``start`` and ``stop`` are the same,
for use outside a service tree; ``async_start`` and ``async_stop`` do the
work, for asyncio code.

``TerminalBrowser`` watches ``_thinserve-term._tcp`` adverts and reports
terminals by service name::

    browser = TerminalBrowser(on_added, on_updated, on_removed)
    await browser.start()

``on_added(advert)`` fires when a terminal first resolves to a valid advert
(again after it went away), ``on_updated(advert)`` when its port,
addresses or TXT fields change, ``on_removed(advert)`` with the last advert
when it withdraws or stops being valid.  Adverts that break the contract are
logged and ignored.  No callback fires after ``stop``.

``ServerAdvertiser`` registers thinserve's RFB port as ``_rfb._tcp`` so
Avahi/Bonjour VNC viewers list it, at the addresses ``advertised_addresses``
chooses: only those the port really listens on, and never loopback on the
LAN (a viewer there could not connect to it).

Pass ``interfaces`` (a list of local IP addresses) and ``ipv4_only`` to
limit where mDNS runs, or ``zeroconf`` to share one AsyncZeroconf (then it
is left open on stop).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import ifaddr
from twisted.application import service
from twisted.internet import defer
from zeroconf import (
    DNSRecord,
    DNSService,
    InterfaceChoice,
    IPVersion,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from protocols.terminal import (
    SERVICE_TYPE,
    AdvertError,
    TerminalAdvert,
    UnsupportedVersion,
    check_instance,
)

log = logging.getLogger(__name__)

RFB_SERVICE_TYPE = "_rfb._tcp.local."
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # a port listening on every address
DNS_A, DNS_TXT, DNS_AAAA, DNS_SRV, DNS_IN = 1, 16, 28, 33, 1  # RFC 1035, 3596, 2782
RESOLVE_PASSES = 5  # now, then 1.5, 4.5, 10.5, 22.5 s later by default
TerminalCallback = Callable[[TerminalAdvert], None]


def make_zeroconf(
    interfaces: Sequence[str] | None = None, ipv4_only: bool = False
) -> AsyncZeroconf:
    """An AsyncZeroconf on these local addresses (all interfaces by default).

    Call it from inside the running event loop: created elsewhere, zeroconf
    would start a loop of its own in a thread.
    """
    asyncio.get_running_loop()  # raises RuntimeError outside the loop
    chosen: InterfaceChoice | list[str] = list(interfaces) if interfaces else InterfaceChoice.All
    version = IPVersion.V4Only if ipv4_only else IPVersion.All
    return AsyncZeroconf(interfaces=chosen, ip_version=version)


def as_deferred(coro: Coroutine[Any, Any, None]) -> defer.Deferred[None]:
    """Run an asyncio coroutine in the reactor's loop; a Deferred of its end."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro, loop=asyncio.get_event_loop()))


class _Stack:
    """An AsyncZeroconf that is either shared (left open) or owned (closed on release)."""

    def __init__(
        self, interfaces: Sequence[str] | None, ipv4_only: bool, shared: AsyncZeroconf | None
    ) -> None:
        self.interfaces = interfaces
        self.ipv4_only = ipv4_only
        self.shared = shared
        self.zc: AsyncZeroconf | None = None

    def open(self) -> AsyncZeroconf:
        if self.zc is None:
            self.zc = self.shared or make_zeroconf(self.interfaces, self.ipv4_only)
        return self.zc

    async def release(self) -> None:
        zc, self.zc = self.zc, None
        if zc is not None and zc is not self.shared:
            await zc.async_close()


class _AsyncService(service.Service):
    """A service whose start and stop are zeroconf's asyncio coroutines."""

    async def async_start(self) -> None:
        raise NotImplementedError

    async def async_stop(self) -> None:
        raise NotImplementedError

    def startService(self) -> defer.Deferred[None]:
        super().startService()
        return as_deferred(self.async_start())

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return as_deferred(self.async_stop())

    start = startService  # outside a service tree: tests, the software terminal
    stop = stopService


class TerminalBrowser(_AsyncService):
    def __init__(
        self,
        on_added: TerminalCallback,
        on_updated: TerminalCallback,
        on_removed: TerminalCallback,
        interfaces: Sequence[str] | None = None,
        ipv4_only: bool = False,
        zeroconf: AsyncZeroconf | None = None,
        resolve_timeout: float = 3.0,
        settle_delay: float = 1.5,
        max_terminals: int = 1024,
    ) -> None:
        self.on_added = on_added
        self.on_updated = on_updated
        self.on_removed = on_removed
        self.resolve_timeout = resolve_timeout
        self.settle_delay = settle_delay  # re-read after cache-flushed records expire
        self.max_terminals = max_terminals
        self.terminals: dict[str, TerminalAdvert] = {}  # by lower-case service name
        self._stack = _Stack(interfaces, ipv4_only, zeroconf)
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rejected: dict[str, str] = {}  # last reason logged, by service name

    async def async_start(self) -> None:
        if self._browser is not None:
            return
        zc = self._stack.open()
        self._browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE_TYPE], handlers=[self._changed])

    async def async_stop(self) -> None:
        browser, self._browser = self._browser, None
        if browser is not None:
            await browser.async_cancel()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.terminals.clear()
        self._rejected.clear()
        await self._stack.release()

    # -- browser events --------------------------------------------------------------
    def _changed(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if self._browser is None:
            return
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            self._cancel(key)
            self._rejected.pop(key, None)
            self._drop(key, "withdrawn")
            return
        self._cancel(key)
        self._tasks[key] = asyncio.ensure_future(self._follow(key, name, zeroconf))

    def _cancel(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def _follow(self, key: str, name: str, zeroconf: Zeroconf) -> None:
        """Resolve until two passes agree on a valid advert, at growing intervals.

        One pass is not enough: superseded records stay in the cache for a
        second after a change, and a record that comes back to an earlier
        value while that one is still cached raises no browser event.
        """
        try:
            previous: TerminalAdvert | None = None
            delay = self.settle_delay
            for attempt in range(RESOLVE_PASSES):
                if attempt:
                    await asyncio.sleep(delay)
                    delay *= 2
                advert = await self._resolve(key, name, zeroconf)
                if advert is not None and advert == previous:
                    return
                previous = advert
        except asyncio.CancelledError:
            raise
        except Exception:  # a hostile advert must not stop the browser
            log.exception("terminal %r: resolving failed", name)
        finally:
            if self._tasks.get(key) is asyncio.current_task():
                del self._tasks[key]

    async def _resolve(self, key: str, name: str, zeroconf: Zeroconf) -> TerminalAdvert | None:
        """Resolve and act on the result: the valid advert, or None."""
        drop_superseded_records(zeroconf, name)
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, int(self.resolve_timeout * 1000)):
            log.info("terminal %r did not resolve in %.1f s", name, self.resolve_timeout)
            return None
        try:
            advert = TerminalAdvert.parse(info, ipv6=not self._stack.ipv4_only)
        except AdvertError as exc:
            self._reject(key, name, exc)
            return None
        self._rejected.pop(key, None)
        self._store(key, advert)
        return advert

    def _reject(self, key: str, name: str, exc: AdvertError) -> None:
        """Log why an advert is ignored, once per reason; forget the terminal."""
        if self._rejected.get(key) != exc.reason:
            if len(self._rejected) >= self.max_terminals:
                self._rejected.clear()
            self._rejected[key] = exc.reason
            level = logging.INFO if isinstance(exc, UnsupportedVersion) else logging.WARNING
            log.log(level, "ignoring terminal %r: %s", name, exc.reason)
        self._drop(key, "unsupported" if isinstance(exc, UnsupportedVersion) else "invalid")

    # -- what is known -------------------------------------------------------------------
    def _store(self, key: str, advert: TerminalAdvert) -> None:
        old = self.terminals.get(key)
        if old == advert:
            return
        if old is None and len(self.terminals) >= self.max_terminals:
            log.warning("ignoring terminal %r: %d terminals known", key, self.max_terminals)
            return
        self.terminals[key] = advert
        if old is None:
            log.info("terminal %s (%s) at %s", advert.instance, advert.terminal_id, _where(advert))
            _call(self.on_added, advert)
        else:
            log.info(
                "terminal %s (%s) now at %s", advert.instance, advert.terminal_id, _where(advert)
            )
            _call(self.on_updated, advert)

    def _drop(self, key: str, why: str) -> None:
        old = self.terminals.pop(key, None)
        if old is not None:
            log.info("terminal %s (%s) gone: %s", old.instance, old.terminal_id, why)
            _call(self.on_removed, old)


class ServiceAdvertiser(_AsyncService):
    """One DNS-SD service, registered in the reactor's loop and withdrawn on stop.

    Zeroconf renames the instance on a clash (``registered_name`` says how);
    ``stop`` sends the goodbye.  The zeroconf instance is shared if given,
    else opened on ``interfaces`` and closed on stop.
    """

    def __init__(
        self,
        info: ServiceInfo,
        interfaces: Sequence[str] | None = None,
        ipv4_only: bool = False,
        zeroconf: AsyncZeroconf | None = None,
    ) -> None:
        self.info = info
        self._stack = _Stack(interfaces, ipv4_only, zeroconf)
        self._registered: ServiceInfo | None = None

    @property
    def registered_name(self) -> str | None:
        """The full service name, once registered (zeroconf renames it on a clash)."""
        return self._registered.name if self._registered is not None else None

    async def async_start(self) -> None:
        if self._registered is not None:
            return
        info = self.info
        if not info.parsed_addresses():
            log.warning("advertising %r without addresses: peers cannot resolve it", info.name)
        zc = self._stack.open()
        announced = await zc.async_register_service(info, allow_name_change=True)
        self._registered = info
        await announced
        log.info("advertised %r on port %d at %s", info.name, info.port, info.parsed_addresses())

    async def async_stop(self) -> None:
        info, self._registered = self._registered, None
        zc = self._stack.zc
        try:
            if info is not None and zc is not None:
                await (await zc.async_unregister_service(info))
        finally:
            await self._stack.release()


class ServerAdvertiser(ServiceAdvertiser):
    """Registers thinserve's RFB listening port as ``_rfb._tcp``."""

    def __init__(
        self,
        port: int,
        name: str = "thinserve",
        addresses: Sequence[str] | None = None,
        interfaces: Sequence[str] | None = None,
        ipv4_only: bool = False,
        zeroconf: AsyncZeroconf | None = None,
        host: str | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not 1-65535")
        try:
            check_instance(name)
        except AdvertError as exc:
            raise ValueError(f"cannot advertise as {name!r}: {exc.reason}") from None
        self.port = port
        self.addresses = list(addresses or interfaces or local_addresses(ipv4_only))
        self.host = host or default_host()
        info = ServiceInfo(
            RFB_SERVICE_TYPE,
            f"{name}.{RFB_SERVICE_TYPE}",
            port=port,
            parsed_addresses=self.addresses,
            server=self.host,
            properties={},
        )
        super().__init__(info, interfaces, ipv4_only, zeroconf)


def drop_superseded_records(zeroconf: Zeroconf, name: str) -> None:
    """Leave a service's newest SRV and TXT, and its addresses that are still valid.

    A service has one SRV and one TXT record; when either changes, the cache
    may hold the old one too, and zeroconf may read it instead of the new:
    RFC 6762 section 10.2 keeps an old record that arrived less than a
    second before the new one, and keeps a flushed record a second longer
    with a TTL of 1 (which python-zeroconf re-arms on every later packet).
    The record received last is the current one.
    """
    cache = zeroconf.cache
    stale: list[DNSRecord] = []
    current: list[DNSRecord] = []
    for type_ in (DNS_SRV, DNS_TXT):
        records = cache.get_all_by_details(name, type_, DNS_IN)
        live = [r for r in records if r.ttl > 1]
        newest = max(live, key=lambda r: r.created, default=None)
        stale += [r for r in records if r is not newest]
        current += [newest] if newest is not None else []
    for server in {r.server for r in current if isinstance(r, DNSService)}:
        for type_ in (DNS_A, DNS_AAAA):
            stale += [r for r in cache.get_all_by_details(server, type_, DNS_IN) if r.ttl <= 1]
    if stale:
        cache.async_remove_records(stale)


def default_host() -> str:
    """``<hostname>-thinserve.local.``: distinct from the host's own mDNS name."""
    label = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]).strip("-")
    return f"{label[:40] or 'host'}-thinserve.local."


def local_addresses(ipv4_only: bool = False) -> list[str]:
    """This host's addresses to publish: no loopback, link-local or multicast ones."""
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


def advertised_addresses(
    host: str, interfaces: Sequence[str] | None = None, ipv4_only: bool = False
) -> list[str]:
    """Where viewers can reach a port listening on ``host``: the addresses to advertise.

    A wildcard port (``0.0.0.0``, ``::``) is reachable at the machine's
    addresses (``interfaces`` when discovery is limited to them; IPv4 ones
    only for ``0.0.0.0``).  A port bound to one address is reachable there
    only, and only if mDNS runs there: one of ``interfaces`` when given, else
    any address but loopback, which no other machine can reach.  [] means do
    not advertise it.
    """
    host = host.strip("[]").split("%")[0]
    if host in WILDCARD_HOSTS:
        found = list(interfaces) if interfaces else local_addresses(ipv4_only)
        if host == "0.0.0.0":
            found = [a for a in found if ipaddress.ip_address(a).version == 4]
        return found
    if interfaces:
        return [host] if host in interfaces else []
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        return []
    return [] if loopback else [host]


def _where(advert: TerminalAdvert) -> str:
    return ", ".join(f"{a}:{advert.port}" for a in advert.addresses)


def _call(callback: TerminalCallback, advert: TerminalAdvert) -> None:
    try:
        callback(advert)
    except Exception:
        log.exception("terminal callback %r failed", callback)
