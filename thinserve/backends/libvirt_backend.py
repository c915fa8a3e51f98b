"""Desktops that are libvirt domains: KVM/QEMU, Xen, or anything a URI reaches.

The backend talks to one libvirt host (``uri``: ``qemu:///system``,
``xen:///system``, ``qemu+ssh://host/system``, ``test:///default``, ...) or
to several (``hosts``, thinserve/backends/libvirt_hosts.py).  It lists their
domains as desktops, starts a domain on demand, shuts it down (ACPI first,
then ``destroy`` after a timeout) and reads the VNC console address from
the running domain's graphics XML (thinserve/backends/libvirt_xml.py).

A desktop defined on one host runs there.  One defined on several hosts
(shared storage), or on none and made from the ``template``, is placed when
it starts: each candidate host is measured then (running domains, free
memory) and the rule of thinserve/backends/libvirt_placement.py picks one.
A host that cannot be reached is skipped, its desktops are reported
unavailable with the reason, and it is tried again every ``poll_interval``.

libvirt-python calls block, so every call runs in a small thread pool of
the backend's own; the coroutines themselves are asyncio coroutines (from
Twisted: ``Deferred.fromFuture(asyncio.ensure_future(coro))``).  Domain
lifecycle events arrive on libvirt's default event loop, which runs in one
daemon thread per process, and are handed to the asyncio loop; a host whose
driver cannot deliver events is polled every ``poll_interval`` seconds.

Domains live on without thinserve: ``close`` leaves them as they are.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import libvirt

from ..desktop_state import DesktopState
from .base import BackendError, ConsoleAddress, DesktopInfo, StatusListener
from .libvirt_hosts import Host, HostDown, domain_state, domain_states, measure
from .libvirt_hosts import start_event_loop as start_event_loop
from .libvirt_placement import (
    LEAST_LOADED,
    PLACEMENTS,
    HostConfig,
    HostLoad,
    choose_host,
    describe,
    why_full,
)
from .libvirt_states import RUNNING_STATES, desktop_status, status_of_event
from .libvirt_states import status_of_state as status_of_state
from .libvirt_xml import console_address as console_address
from .libvirt_xml import domain_from_template, read_template

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_URI = "qemu:///system"
STATE_POLL = 0.5  # seconds between state checks while waiting for a shutdown


@dataclass(frozen=True)
class LibvirtConfig:
    """Which libvirt hosts to talk to and which of their domains are desktops."""

    uri: str = DEFAULT_URI  # one host; or:
    domains: tuple[str, ...] = ()  # empty: every domain the hosts list
    console_host: str | None = None  # connect consoles here instead (e.g. a tunnel)
    shutdown_timeout: float = 60.0  # then destroy
    use_events: bool = True  # False: poll even if the driver has lifecycle events
    poll_interval: float = 5.0  # when polling, and between tries of a host that is down
    threads: int = 4
    hosts: tuple[HostConfig, ...] = ()  # several hosts, instead of uri and console_host
    placement: str = LEAST_LOADED  # or "first"
    template: Path | None = None  # domain XML for desktops defined on no host

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("libvirt: uri must not be empty")
        if self.threads < 1 or self.shutdown_timeout < 0 or self.poll_interval <= 0:
            raise ValueError("libvirt: threads >= 1, shutdown_timeout >= 0, poll_interval > 0")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"libvirt: placement must be one of {', '.join(PLACEMENTS)}")
        if self.hosts and (self.uri != DEFAULT_URI or self.console_host is not None):
            raise ValueError(
                "libvirt: give either uri (one host) or hosts, not both; "
                "with hosts, console_host goes into each host"
            )
        uris = [host.uri for host in self.hosts]
        twice = sorted({uri for uri in uris if uris.count(uri) > 1})
        if twice:
            raise ValueError(f"libvirt: host {twice[0]} is listed twice in hosts")
        if self.template is not None and not self.domains:
            raise ValueError("libvirt: template needs domains, the desktops made from it")

    @property
    def remote_host(self) -> str | None:
        """The host named in ``uri`` (None for a local hypervisor)."""
        return urlsplit(self.uri).hostname

    @property
    def connections(self) -> tuple[HostConfig, ...]:
        """Every host: ``hosts``, or the one ``uri`` names."""
        return self.hosts or (HostConfig(self.uri, self.console_host),)


# --- the backend ----------------------------------------------------------------------


class LibvirtBackend:
    """Desktops that are the domains of one or more libvirt hosts."""

    name = "libvirt"

    def __init__(self, config: LibvirtConfig, on_status: StatusListener | None = None) -> None:
        self.config = config
        self.on_status = on_status
        self.known: dict[str, tuple[DesktopState, str]] = {}
        handler = self._lifecycle if config.use_events else None
        self.hosts = [Host(host, handler) for host in config.connections]
        self._poll_task: asyncio.Task[None] | None = None
        self._confirming: set[asyncio.Task[None]] = set()  # events being checked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starts: dict[str, asyncio.Lock] = {}  # one start of a desktop at a time
        self._placing = asyncio.Lock()  # one measure-and-choose at a time
        self._starting: collections.Counter[str] = collections.Counter()  # host -> starts
        self._started: collections.Counter[str] = collections.Counter()  # desktop -> starts
        self._stops: collections.Counter[str] = collections.Counter()  # desktop -> stops begun
        self._stopping: collections.Counter[str] = collections.Counter()  # ... not yet ended
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.threads, thread_name_prefix="libvirt"
        )

    # --- plumbing ---------------------------------------------------------------------

    async def _on(self, host: Host, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on ``host``, in the pool.

        A host that cannot be reached is remembered as down (and not asked
        again for half a poll interval); other libvirt errors become
        BackendError.
        """
        self._loop = asyncio.get_running_loop()
        if host.resting():
            raise HostDown(host.error)
        try:
            result = await self._loop.run_in_executor(self._pool, host.run, fn, *args)
        except HostDown as exc:
            host.went_down(str(exc), self.config.poll_interval / 2)
            raise
        except libvirt.libvirtError as exc:
            host.came_back()
            raise BackendError(f"libvirt ({host.name}): {exc.get_error_message()}") from exc
        host.came_back()
        return result

    async def _each(self, fn: Callable[..., T], *args: Any) -> list[T | BackendError]:
        """``fn`` on every host at once: its result, or the BackendError it raised."""
        results = await asyncio.gather(
            *(self._on(host, fn, *args) for host in self.hosts), return_exceptions=True
        )
        answers: list[T | BackendError] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, BackendError):
                raise result
            answers.append(result)
        return answers

    def _lifecycle(self, name: str, event: int, detail: int) -> None:
        """Runs on libvirt's event thread: hand the event to the asyncio loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_event, name, event, detail)

    def _on_event(self, name: str, event: int, detail: int) -> None:
        mapped = status_of_event(event, detail)
        if mapped is not None and self._wanted(name):
            task = asyncio.ensure_future(self._confirm(name, *mapped))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)

    async def _confirm(self, name: str, status: DesktopState, detail: str) -> None:
        """Report an event's status only if the desktop is still in it.  On a busy
        machine an event arrives late, after a stop or start this backend has
        already reported; taken as it comes it would replay the past.  While this
        backend starts the desktop itself (defining it from the template, then
        creating it, QEMU paused then resumed), the start reports the outcome and
        events that overlap it are left out; so do a stop's (the domain runs on
        for a moment after "stopping" is reported)."""
        starts, stops = self._started[name], self._stops[name]
        if self._busy(name):
            return
        await self._find(name)
        if self._busy(name) or self._started[name] != starts or self._stops[name] != stops:
            return
        if self._status(name)[0] is status:
            self._report(name, status, detail)

    def _starting_now(self, name: str) -> bool:
        lock = self._starts.get(name)
        return lock is not None and lock.locked()

    def _busy(self, name: str) -> bool:
        """This backend is starting or stopping ``name``: it reports the outcome."""
        return self._starting_now(name) or self._stopping[name] > 0

    def _wanted(self, name: str) -> bool:
        return not self.config.domains or name in self.config.domains

    def _check_wanted(self, name: str) -> None:
        if not self._wanted(name):
            raise BackendError(f"{name!r} is not one of the libvirt desktops")

    def _report(self, name: str, status: DesktopState, detail: str) -> None:
        """Tell ``on_status`` when a desktop's status changes (the detail alone: no)."""
        previous = self.known.get(name)
        self.known[name] = (status, detail)
        if self.on_status is not None and (previous is None or previous[0] is not status):
            self.on_status(name, status, detail)

    async def open(self) -> None:
        """Connect to every host now (otherwise the first call connects) and watch them.
        A host that cannot be reached is logged and tried again later."""
        await self._each(_nothing)
        self._watch()

    def _watch(self) -> None:
        if self._poll_task is None:
            self._poll_task = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        """List the desktops every poll_interval while a host is down, lost its
        connection, or sends no events; otherwise events tell what changes."""
        while True:
            await asyncio.sleep(self.config.poll_interval)
            with contextlib.suppress(BackendError):
                if not await self._all_watched():
                    await self.list_desktops()

    async def _all_watched(self) -> bool:
        if any(host.error for host in self.hosts):
            return False
        loop = asyncio.get_running_loop()
        watched = [loop.run_in_executor(self._pool, host.watched) for host in self.hosts]
        return all(await asyncio.gather(*watched))

    # --- reading ------------------------------------------------------------------------

    async def list_desktops(self) -> list[DesktopInfo]:
        self._watch()
        starts, stops = collections.Counter(self._started), collections.Counter(self._stops)
        results = await self._each(domain_states)
        for host, result in zip(self.hosts, results, strict=True):
            if not isinstance(result, BackendError):
                host.seen = result
        names = self._names()
        failures = [str(r) for r in results if isinstance(r, BackendError)]
        if not names and len(failures) == len(self.hosts):
            raise BackendError("; ".join(failures))
        desktops = []
        for name in sorted(names):
            status, detail = self._status(name)
            if (
                self._busy(name)
                or self._started[name] != starts[name]
                or self._stops[name] != stops[name]
            ):
                status, detail = self.known.get(name, (status, detail))  # the start/stop reports
            else:
                self._report(name, status, detail)
            desktops.append(DesktopInfo(name, self.name, status, detail))
        return desktops

    def _names(self) -> set[str]:
        """The desktops: wanted domains of every host (of a host that is down, those
        it had), and the listed domains when a template makes them or a host is down."""
        names = {name for host in self.hosts for name in host.seen if self._wanted(name)}
        if self.config.template is not None or any(host.error for host in self.hosts):
            names.update(self.config.domains)
        return names

    def _status(self, name: str) -> tuple[DesktopState, str]:
        found = desktop_status(name, self.hosts)
        if found is not None:
            return found
        down = [host.error for host in self.hosts if host.error]
        if down and self.config.template is None:
            return DesktopState.CRASHED, f"no host that answers defines it; {down[0]}"
        return DesktopState.STOPPED, ""  # gone (a transient domain that stopped), or to be made

    async def _find(self, name: str) -> None:
        """Ask every host now whether it defines ``name``, and in which state."""
        for host, result in zip(self.hosts, await self._each(domain_state, name), strict=True):
            if isinstance(result, BackendError):
                continue
            if result is None:
                host.seen.pop(name, None)
            else:
                host.seen[name] = result

    def _active_on(self, name: str, states: tuple[int, ...] = ()) -> Host | None:
        """The host that answers where the domain is active (in one of ``states``)."""
        for host in self.hosts:
            state = host.seen.get(name) if not host.error else None
            if state is None or state[0] == libvirt.VIR_DOMAIN_SHUTOFF:
                continue
            if not states or state[0] in states:
                return host
        return None

    def _where(self) -> str:
        if len(self.hosts) == 1:
            return self.hosts[0].name
        return f"any host ({', '.join(host.name for host in self.hosts)})"

    async def console(self, desktop: str) -> ConsoleAddress:
        """The console address of a running desktop."""
        await self._find(desktop)
        host = self._active_on(desktop) or next(
            (h for h in self.hosts if not h.error and desktop in h.seen), None
        )
        if host is None:
            raise BackendError(f"no domain named {desktop!r} on {self._where()}")
        return await self._console_on(host, desktop)

    async def _console_on(self, host: Host, desktop: str) -> ConsoleAddress:
        xml = await self._on(host, _live_xml, desktop)
        return console_address(xml, host.config.remote_host, host.config.console_host)

    # --- starting ---------------------------------------------------------------------------

    async def ensure_running(self, desktop: str) -> ConsoleAddress:
        self._check_wanted(desktop)
        self._watch()
        async with self._starts.setdefault(desktop, asyncio.Lock()):
            self._started[desktop] += 1
            await self._find(desktop)
            host = self._active_on(desktop, RUNNING_STATES)
            if host is None:
                candidates = self._candidates(desktop)
                self._report(desktop, DesktopState.STARTING, "")
                try:
                    host = await self._start(desktop, candidates)
                except BackendError as exc:
                    self._report(desktop, DesktopState.CRASHED, str(exc))
                    raise
            address = await self._console_on(host, desktop)
        self._report(desktop, DesktopState.RUNNING, "")
        return address

    def _candidates(self, desktop: str) -> list[Host]:
        """The hosts ``desktop`` may start on; an error says why there is none."""
        active = self._active_on(desktop)
        if active is not None:  # paused, shutting down, crashed: bring it up there
            return [active]
        lost = [host for host in self.hosts if host.error and desktop in host.seen]
        for host in lost:
            if host.seen[desktop][0] != libvirt.VIR_DOMAIN_SHUTOFF:
                raise BackendError(
                    f"{desktop} was running on {host.name}, which is down ({host.error}); "
                    "it is not started elsewhere while its disks may be in use there"
                )
        defined = [host for host in self.hosts if not host.error and desktop in host.seen]
        if defined:
            return defined
        if lost:
            raise BackendError(f"{desktop} is defined only on a host that is down: {lost[0].error}")
        up = [host for host in self.hosts if not host.error]
        if self.config.template is None:
            down = "".join(f"; {host.error}" for host in self.hosts if host.error)
            raise BackendError(
                f"no domain named {desktop!r} on {self._where()}{down}: define it on a host "
                "(virsh define), or set template so thinserve defines it where it starts it"
            )
        if not up:
            reasons = "; ".join(host.error for host in self.hosts)
            raise BackendError(f"no libvirt host can be reached: {reasons}")
        return up

    async def _start(self, desktop: str, candidates: list[Host]) -> Host:
        """Bring ``desktop`` up on one of ``candidates``: the one it is active on,
        else the one placement picks (defined there from the template if needed)."""
        if self._active_on(desktop) is not None:
            host = candidates[0]
            host.seen[desktop] = await self._on(host, self._bring_up, desktop, None)
            return host
        host = await self._place(desktop, candidates)
        try:
            xml = None if desktop in host.seen else await self._template_xml(desktop)
            host.seen[desktop] = await self._on(host, self._bring_up, desktop, xml)
        finally:
            self._starting[host.name] -= 1
        return host

    async def _place(self, desktop: str, candidates: list[Host]) -> Host:
        """Measure the candidates now and pick one; it counts one start more until
        the caller is done, so concurrent starts see each other."""
        async with self._placing:
            measured = await asyncio.gather(
                *(self._on(host, measure) for host in candidates), return_exceptions=True
            )
            loads: list[HostLoad] = []
            skipped: list[str] = []
            for host, result in zip(candidates, measured, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, BackendError):
                        raise result
                    log.info("libvirt: %s not placed on %s: %s", desktop, host.name, result)
                    skipped.append(str(result))
                    continue
                loads.append(host.load(*result, self._starting[host.name]))
            chosen = choose_host(loads, self.config.placement)
            if chosen is None:
                why = why_full(loads) if loads else "; ".join(skipped)
                raise BackendError(f"cannot start {desktop}: {why}")
            self._starting[chosen.name] += 1
        log.info("libvirt: %s starts on %s (%s)", desktop, chosen.name, describe(chosen))
        return next(host for host in candidates if host.name == chosen.name)

    async def _template_xml(self, desktop: str) -> str:
        if self.config.template is None:
            raise BackendError(f"no domain named {desktop!r} on the chosen host")
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._pool, read_template, self.config.template)
        return domain_from_template(text, desktop)

    def _bring_up(self, conn: libvirt.virConnect, name: str, xml: str | None) -> tuple[int, int]:
        """Bring the domain to running, whatever state it is in (in a pool thread);
        with ``xml``, define it from that first (and undefine it if it fails to start).
        Returns its state then."""
        if xml is None:
            dom = conn.lookupByName(name)
            self._resume_or_create(dom)
        else:
            dom = conn.defineXML(xml)
            try:
                dom.create()
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
                raise
        state, reason = dom.state()
        return state, reason

    def _resume_or_create(self, dom: libvirt.virDomain) -> None:
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_SHUTDOWN:
            self._wait_inactive(dom, self.config.shutdown_timeout)
            state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
            dom.pMWakeup(0)
        elif state not in RUNNING_STATES:
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

    # --- stopping ---------------------------------------------------------------------------

    async def stop(self, desktop: str, force: bool = False) -> None:
        self._check_wanted(desktop)
        self._watch()
        self._stops[desktop] += 1
        self._stopping[desktop] += 1
        self._report(desktop, DesktopState.STOPPING, "destroying" if force else "shutting down")
        how = ""
        try:
            await self._find(desktop)
            how = await self._stop_where_active(desktop, force)
        finally:
            try:
                await self._find(desktop)
                status, detail = self._status(desktop)
                self._report(desktop, status, how if status is DesktopState.STOPPED else detail)
            finally:
                self._stopping[desktop] -= 1

    async def _stop_where_active(self, desktop: str, force: bool) -> str:
        host = self._active_on(desktop)
        if host is not None:
            return await self._on(host, self._stop, desktop, force)
        for lost in self.hosts:
            state = lost.seen.get(desktop) if lost.error else None
            if state is not None and state[0] != libvirt.VIR_DOMAIN_SHUTOFF:
                raise BackendError(f"cannot stop {desktop}: {lost.error}")
        known = any(desktop in host.seen for host in self.hosts)
        if not known and self.config.template is None:
            raise BackendError(f"no domain named {desktop!r} on {self._where()}")
        return ""

    async def reset(self, desktop: str) -> None:
        """A forced stop ends the last user's session (a domain keeps its disks)."""
        await self.stop(desktop, force=True)

    def stop_on_release(self, desktop: str) -> bool:
        return False

    def _stop(self, conn: libvirt.virConnect, name: str, force: bool) -> str:
        """ACPI shutdown, then destroy after shutdown_timeout (in a pool thread).

        Returns how it went: "shut down", "destroyed", or "" if it was not running.
        """
        dom = conn.lookupByName(name)
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
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, host.disconnect) for host in self.hosts)
        )
        self._pool.shutdown(wait=False)


def _nothing(conn: libvirt.virConnect) -> None:
    """A call that only connects."""


def _live_xml(conn: libvirt.virConnect, name: str) -> str:
    return str(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
