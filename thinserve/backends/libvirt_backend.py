"""Desktops that are libvirt domains: KVM/QEMU, Xen, or anything a URI reaches.

The backend opens one libvirt connection (``qemu:///system``,
``xen:///system``, ``qemu+ssh://host/system``, ``test:///default``, ...),
lists its domains as desktops, starts a domain on demand, shuts it down
(ACPI first, then ``destroy`` after a timeout) and reads the VNC console
address from the running domain's graphics XML.

libvirt-python calls block, so every call runs in a small thread pool of
the backend's own; the coroutines themselves are asyncio coroutines (from
Twisted: ``Deferred.fromFuture(asyncio.ensure_future(coro))``).  Domain
lifecycle events arrive on libvirt's default event loop, which runs in one
daemon thread per process, and are handed to the asyncio loop; a driver that
cannot deliver events is polled every ``poll_interval`` seconds instead.

Domains live on without thinserve: ``close`` leaves them as they are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import libvirt

from ..desktop_state import DesktopState
from .base import BackendError, ConsoleAddress, DesktopInfo, StatusListener

log = logging.getLogger(__name__)

T = TypeVar("T")
WILDCARDS = ("", "0.0.0.0", "::")
STATE_POLL = 0.5  # seconds between state checks while waiting for a shutdown

_event_loop_lock = threading.Lock()
_event_loop_thread: threading.Thread | None = None


def start_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process).

    It must run before a connection is opened for that connection's events
    and keepalives to work.
    """
    global _event_loop_thread
    with _event_loop_lock:
        if _event_loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _event_loop_thread = threading.Thread(
            target=_run_event_loop, name="libvirt-events", daemon=True
        )
        _event_loop_thread.start()


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


@dataclass(frozen=True)
class LibvirtConfig:
    """Which libvirt to talk to and which of its domains are desktops."""

    uri: str = "qemu:///system"
    domains: tuple[str, ...] = ()  # empty: every domain the connection lists
    console_host: str | None = None  # connect consoles here instead (e.g. a tunnel)
    shutdown_timeout: float = 60.0  # then destroy
    use_events: bool = True  # False: poll even if the driver has lifecycle events
    poll_interval: float = 5.0  # when polling
    threads: int = 4

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("libvirt: uri must not be empty")
        if self.threads < 1 or self.shutdown_timeout < 0 or self.poll_interval <= 0:
            raise ValueError("libvirt: threads >= 1, shutdown_timeout >= 0, poll_interval > 0")

    @property
    def remote_host(self) -> str | None:
        """The host named in the URI (None for a local hypervisor)."""
        return urlsplit(self.uri).hostname


# --- domain states ---------------------------------------------------------------

_STOPPED_DETAIL = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shut down",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated away",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "reverted to a snapshot",
}


_RUNNING = (DesktopState.RUNNING, "")
_PAUSED = (DesktopState.STOPPED, "paused")
_SUSPENDED = (DesktopState.STOPPED, "suspended")
_SHUTTING_DOWN = (DesktopState.STOPPING, "shutting down")
_GUEST_CRASHED = (DesktopState.CRASHED, "the guest crashed")
_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: _RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: _RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: _PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: _SUSPENDED,
    libvirt.VIR_DOMAIN_SHUTDOWN: _SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_CRASHED: _GUEST_CRASHED,
}
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: _GUEST_CRASHED,
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: (DesktopState.CRASHED, "the domain failed to start"),
}
_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: _RUNNING,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: _RUNNING,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: _PAUSED,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: _SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: _SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: _GUEST_CRASHED,
    libvirt.VIR_DOMAIN_EVENT_DEFINED: (DesktopState.STOPPED, ""),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: (DesktopState.STOPPED, "removed"),
}
_STOPPED_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: _GUEST_CRASHED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: (DesktopState.CRASHED, "the hypervisor failed"),
}


def status_of_state(state: int, reason: int) -> tuple[DesktopState, str]:
    """Map a libvirt domain state and its reason to a desktop status and detail."""
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return _SHUTOFF_REASONS.get(reason, (DesktopState.STOPPED, ""))
    return _STATES.get(state, (DesktopState.STOPPED, "no state"))


def status_of_event(event: int, detail: int) -> tuple[DesktopState, str] | None:
    """Map a lifecycle event to a status, or None when it changes nothing."""
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        stopped = (DesktopState.STOPPED, _STOPPED_DETAIL.get(detail, ""))
        return _STOPPED_EVENTS.get(detail, stopped)
    return _EVENTS.get(event)


# --- console address from the domain XML --------------------------------------------


def console_address(
    domain_xml: str, remote_host: str | None = None, console_host: str | None = None
) -> ConsoleAddress:
    """Where the VNC console of a running domain is, read from its XML.

    ``remote_host`` is the hypervisor host when the connection is remote: a
    wildcard listen address means "connect to that host", and a loopback
    address or Unix socket there is unreachable.  ``console_host``, when
    given, replaces whatever host the XML says (for a tunnel or NAT).
    """
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise BackendError(f"libvirt returned unreadable domain XML: {exc}") from exc
    name = root.findtext("name") or "?"
    graphics = root.find("./devices/graphics[@type='vnc']")
    if graphics is None:
        raise BackendError(f"domain {name} has no VNC console: add <graphics type='vnc'/>")
    password = graphics.get("passwd") or None
    socket = _socket_path(graphics)
    if socket:
        if remote_host and not console_host:
            raise BackendError(
                f"domain {name}: its VNC console is a Unix socket on {remote_host}; "
                "listen on an address instead"
            )
        return ConsoleAddress(endpoint=f"unix:path={socket}", password=password)
    port = int(graphics.get("port") or "-1")
    if port <= 0:
        raise BackendError(f"domain {name} has no VNC port yet (is it running?)")
    host = console_host or _console_host(name, _listen_address(graphics), remote_host)
    return ConsoleAddress(endpoint=tcp_endpoint(host, port), password=password)


def _socket_path(graphics: ET.Element) -> str | None:
    if graphics.get("socket"):
        return graphics.get("socket")
    for listen in graphics.findall("listen"):
        if listen.get("type") == "socket" and listen.get("socket"):
            return listen.get("socket")
    return None


def _listen_address(graphics: ET.Element) -> str:
    for listen in graphics.findall("listen"):
        if listen.get("type") in ("address", "network") and listen.get("address"):
            return str(listen.get("address"))
    return graphics.get("listen") or ""


def _console_host(name: str, address: str, remote_host: str | None) -> str:
    if address in WILDCARDS:
        return remote_host or "127.0.0.1"
    if remote_host and _is_loopback(address):
        raise BackendError(
            f"domain {name}: its VNC console listens on {address} of {remote_host}, "
            "which is not reachable from here; set console_host if you tunnel it"
        )
    return address


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def tcp_endpoint(host: str, port: int) -> str:
    """A Twisted client endpoint description (IPv6 colons escaped)."""
    return f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}"


# --- the backend ----------------------------------------------------------------------


class LibvirtBackend:
    """Desktops that are the domains of one libvirt connection."""

    name = "libvirt"

    def __init__(self, config: LibvirtConfig, on_status: StatusListener | None = None) -> None:
        self.config = config
        self.on_status = on_status
        self.known: dict[str, tuple[DesktopState, str]] = {}
        self._conn: libvirt.virConnect | None = None
        self._conn_lock = threading.Lock()
        self._event_id: int | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._confirming: set[asyncio.Task[None]] = set()  # events being checked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.threads, thread_name_prefix="libvirt"
        )

    # --- plumbing ---------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking libvirt call in the pool; libvirt errors become BackendError."""
        self._loop = asyncio.get_running_loop()
        try:
            return await self._loop.run_in_executor(self._pool, fn, *args)
        except libvirt.libvirtError as exc:
            raise BackendError(f"libvirt ({self.config.uri}): {exc.get_error_message()}") from exc

    def _connection(self) -> libvirt.virConnect:
        """The open connection, reopened after it dropped (called in a pool thread)."""
        with self._conn_lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            start_event_loop()
            conn = libvirt.open(self.config.uri)
            if self.config.remote_host:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.setKeepAlive(5, 3)
            self._event_id = self._register_events(conn)
            self._conn = conn
            return conn

    def _register_events(self, conn: libvirt.virConnect) -> int | None:
        if not self.config.use_events:
            return None
        try:
            return conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
        except libvirt.libvirtError as exc:
            log.info("libvirt %s: no lifecycle events (%s); polling", self.config.uri, exc)
            return None

    def _lifecycle(self, conn: object, dom: Any, event: int, detail: int, opaque: object) -> None:
        """Runs on libvirt's event thread: hand the event to the asyncio loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_event, dom.name(), event, detail)

    def _on_event(self, name: str, event: int, detail: int) -> None:
        mapped = status_of_event(event, detail)
        if mapped is not None and self._wanted(name):
            task = asyncio.ensure_future(self._confirm(name, *mapped))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)

    async def _confirm(self, name: str, status: DesktopState, detail: str) -> None:
        """Report an event's status only if the domain is still in it.  On a busy
        machine an event arrives late, after a stop or start this backend has
        already reported; taken as it comes it would replay the past."""
        try:
            state, reason = await self._call(self._state_after_stop, name)
        except BackendError:
            return
        if status_of_state(state, reason)[0] is status:
            self._report(name, status, detail)

    def _wanted(self, name: str) -> bool:
        return not self.config.domains or name in self.config.domains

    def _report(self, name: str, status: DesktopState, detail: str) -> None:
        """Tell ``on_status`` when a desktop's status changes (the detail alone: no)."""
        previous = self.known.get(name)
        self.known[name] = (status, detail)
        if self.on_status is not None and (previous is None or previous[0] is not status):
            self.on_status(name, status, detail)

    async def open(self) -> None:
        """Connect now (otherwise the first call connects); start polling if needed."""
        await self._call(self._connection)
        if self._event_id is None and self._poll_task is None:
            self._poll_task = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(BackendError):
                await self.list_desktops()
            await asyncio.sleep(self.config.poll_interval)

    # --- reading ------------------------------------------------------------------------

    def _states(self) -> list[tuple[str, int, int]]:
        domains = self._connection().listAllDomains(0)
        found = []
        for dom in domains:
            with contextlib.suppress(libvirt.libvirtError):  # it may vanish meanwhile
                state, reason = dom.state()
                found.append((dom.name(), state, reason))
        return found

    async def list_desktops(self) -> list[DesktopInfo]:
        await self.open()
        desktops = []
        for name, state, reason in sorted(await self._call(self._states)):
            if self._wanted(name):
                status, detail = status_of_state(state, reason)
                self._report(name, status, detail)
                desktops.append(DesktopInfo(name, self.name, status, detail))
        return desktops

    def _domain(self, name: str) -> libvirt.virDomain:
        if not self._wanted(name):
            raise BackendError(f"{name!r} is not one of the libvirt desktops")
        try:
            return self._connection().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise BackendError(f"no domain named {name!r} on {self.config.uri}") from exc
            raise

    def _state(self, name: str) -> tuple[int, int]:
        state, reason = self._domain(name).state()
        return state, reason

    def _state_after_stop(self, name: str) -> tuple[int, int]:
        """The state, or shut off when a transient domain went away on stopping."""
        try:
            return self._state(name)
        except BackendError:
            return libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED

    def _live_xml(self, name: str) -> str:
        return self._domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)

    async def console(self, desktop: str) -> ConsoleAddress:
        """The console address of a running desktop."""
        xml = await self._call(self._live_xml, desktop)
        return console_address(xml, self.config.remote_host, self.config.console_host)

    # --- starting and stopping ------------------------------------------------------------

    async def ensure_running(self, desktop: str) -> ConsoleAddress:
        await self.open()
        state, _ = await self._call(self._state, desktop)
        if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            self._report(desktop, DesktopState.STARTING, "")
            try:
                await self._call(self._start, desktop)
            except BackendError as exc:
                self._report(desktop, DesktopState.CRASHED, str(exc))
                raise
        address = await self.console(desktop)
        self._report(desktop, DesktopState.RUNNING, "")
        return address

    def _start(self, name: str) -> None:
        """Bring the domain to running, whatever state it is in (in a pool thread)."""
        dom = self._domain(name)
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_SHUTDOWN:
            self._wait_inactive(dom, self.config.shutdown_timeout)
            state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
            dom.pMWakeup(0)
        elif state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            if dom.isActive():  # crashed but kept for inspection
                dom.destroy()
            dom.create()

    @staticmethod
    def _wait_inactive(dom: libvirt.virDomain, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while dom.isActive():
            if time.monotonic() > deadline:
                return False
            time.sleep(STATE_POLL)
        return True

    async def stop(self, desktop: str, force: bool = False) -> None:
        await self.open()
        self._report(desktop, DesktopState.STOPPING, "destroying" if force else "shutting down")
        how = await self._call(self._stop, desktop, force)
        state, reason = await self._call(self._state_after_stop, desktop)
        status, detail = status_of_state(state, reason)
        self._report(desktop, status, how if status is DesktopState.STOPPED else detail)

    async def reset(self, desktop: str) -> None:
        """A domain has no template here: a forced stop ends the last user's session."""
        await self.stop(desktop, force=True)

    def stop_on_release(self, desktop: str) -> bool:
        return False

    def _stop(self, name: str, force: bool) -> str:
        """ACPI shutdown, then destroy after shutdown_timeout (in a pool thread).

        Returns how it went: "shut down", "destroyed", or "" if it was not running.
        """
        dom = self._domain(name)
        if not dom.isActive():
            return ""
        if not force:
            with contextlib.suppress(libvirt.libvirtError):  # e.g. no ACPI: destroy below
                dom.shutdown()
            if self._wait_inactive(dom, self.config.shutdown_timeout):
                return "shut down"
            log.warning("libvirt domain %s did not shut down; destroying it", name)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        return "destroyed"

    async def close(self) -> None:
        """Stop listening and disconnect; the domains keep running."""
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        await asyncio.get_running_loop().run_in_executor(self._pool, self._disconnect)
        self._pool.shutdown(wait=False)

    def _disconnect(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            if self._event_id is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(self._event_id)
                self._event_id = None
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
