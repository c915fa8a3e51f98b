"""The hypervisor hosts of a libvirt backend: one connection each.

A ``Host`` opens its libvirt connection on first use, reopens it after it
dropped, and registers for lifecycle events on it.  Its blocking calls run
in the backend's thread pool through ``Host.run``; a connection that cannot
be opened, or that died under a call, becomes ``HostDown`` so the backend
can skip that host and report its desktops unavailable with the reason,
while the other hosts carry on.  What the backend last learnt of a host
(``seen``, ``error``) is kept here but written only on the asyncio loop.

libvirt's default event loop runs in one daemon thread per process
(``start_event_loop``); events and keepalives need it before a connection
is opened.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from .base import BackendError
from .libvirt_placement import HostConfig, HostLoad

log = logging.getLogger(__name__)

T = TypeVar("T")
KIB = 1024
MIB = 1024 * 1024
KEEPALIVE = (5, 3)  # seconds between probes, probes missed: a dead remote host is noticed

# Called on libvirt's event thread: domain name, event, detail.
EventHandler = Callable[[str, int, int], None]

_event_loop_lock = threading.Lock()
_event_loop_thread: threading.Thread | None = None


def start_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process).

    It must run before a connection is opened for that connection's events
    and keepalives to work.  libvirt's own printing of every error to stderr
    is turned off: each error reaches the caller as an exception, and the
    backend logs the ones that matter (a host retried every few seconds
    would otherwise fill the journal).
    """
    global _event_loop_thread
    with _event_loop_lock:
        if _event_loop_thread is not None:
            return
        libvirt.registerErrorHandler(_quiet, None)
        libvirt.virEventRegisterDefaultImpl()
        _event_loop_thread = threading.Thread(
            target=_run_event_loop, name="libvirt-events", daemon=True
        )
        _event_loop_thread.start()


def _quiet(context: object, error: object) -> None:
    """libvirt's error callback: say nothing (the exception says it)."""


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class HostDown(BackendError):
    """A host's libvirt cannot be reached now; the message says why."""


class Host:
    """One hypervisor host: its connection, events, and what was last seen there."""

    def __init__(self, config: HostConfig, on_event: EventHandler | None) -> None:
        self.config = config
        self.name = config.name
        self.on_event = on_event
        # Written on the asyncio loop only:
        self.error = ""  # why it could not be reached, "" while it answers
        self.retry_at = 0.0  # time.monotonic() before which it is not asked again
        self.seen: dict[str, tuple[int, int]] = {}  # its domains: (state, reason)
        # Used in pool threads, under the lock:
        self._conn: libvirt.virConnect | None = None
        self._event_id: int | None = None
        self._lock = threading.Lock()

    # --- in a pool thread ---------------------------------------------------------------

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)``; an unreachable or lost host is HostDown."""
        try:
            conn = self.connection()
        except libvirt.libvirtError as exc:
            raise HostDown(f"{self.name} cannot be reached: {_message(exc)}") from exc
        try:
            return fn(conn, *args)
        except libvirt.libvirtError as exc:
            if not _alive(conn):
                raise HostDown(f"the connection to {self.name} dropped: {_message(exc)}") from exc
            raise

    def connection(self) -> libvirt.virConnect:
        """The open connection, reopened after it dropped."""
        with self._lock:
            if self._conn is not None and _alive(self._conn):
                return self._conn
            self._forget()
            start_event_loop()
            conn = libvirt.open(self.config.uri)
            if self.config.remote_host:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.setKeepAlive(*KEEPALIVE)
            self._event_id = self._register(conn)
            self._conn = conn
            return conn

    def watched(self) -> bool:
        """Connected, alive, and sending lifecycle events (else it must be polled)."""
        with self._lock:
            return self._conn is not None and self._event_id is not None and _alive(self._conn)

    def _register(self, conn: libvirt.virConnect) -> int | None:
        if self.on_event is None:
            return None
        try:
            return conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
        except libvirt.libvirtError as exc:
            log.info("libvirt %s: no lifecycle events (%s); polling", self.name, _message(exc))
            return None

    def _lifecycle(self, conn: object, dom: Any, event: int, detail: int, opaque: object) -> None:
        if self.on_event is not None:
            self.on_event(dom.name(), event, detail)

    def disconnect(self) -> None:
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        """Drop the connection (under the lock): deregister, close, quietly."""
        conn, self._conn = self._conn, None
        event_id, self._event_id = self._event_id, None
        if conn is None:
            return
        if event_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(event_id)
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    # --- on the asyncio loop --------------------------------------------------------------

    def went_down(self, reason: str, retry_after: float) -> None:
        """Remember why it is unreachable; log it once, not at every retry."""
        if reason != self.error:
            log.warning("libvirt host %s: %s; its desktops are unavailable", self.name, reason)
        self.error = reason
        self.retry_at = time.monotonic() + retry_after

    def came_back(self) -> None:
        if self.error:
            log.warning("libvirt host %s answers again", self.name)
        self.error = ""
        self.retry_at = 0.0

    def resting(self) -> bool:
        """Down, and not to be asked again yet: calls fail at once with the reason."""
        return bool(self.error) and time.monotonic() < self.retry_at

    def load(self, running: int, free_memory: int, starting: int) -> HostLoad:
        return HostLoad(self.name, running + starting, free_memory, self.config.max_domains)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _message(exc: libvirt.libvirtError) -> str:
    return " ".join(str(exc.get_error_message() or exc).split())


# --- blocking queries, each given a host's connection -------------------------------------


def domain_states(conn: libvirt.virConnect) -> dict[str, tuple[int, int]]:
    """Every domain of the host: name -> (state, reason)."""
    found = {}
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):  # it may vanish meanwhile
            state, reason = dom.state()
            found[dom.name()] = (state, reason)
    return found


def domain_state(conn: libvirt.virConnect, name: str) -> tuple[int, int] | None:
    """The domain's (state, reason) on this host, None when it is not defined here."""
    try:
        state, reason = conn.lookupByName(name).state()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
    return state, reason


def measure(conn: libvirt.virConnect) -> tuple[int, int]:
    """(active domains, free memory in bytes) of the host, now."""
    return conn.numOfDomains(), free_memory(conn)


def free_memory(conn: libvirt.virConnect) -> int:
    """The host's free memory; when the driver cannot say (getFreeMemory gives
    0 or fails), its total memory less what its active domains were given."""
    with contextlib.suppress(libvirt.libvirtError):
        free = int(conn.getFreeMemory())
        if free > 0:
            return free
    total = int(conn.getInfo()[1]) * MIB
    used = 0
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        with contextlib.suppress(libvirt.libvirtError):
            used += int(dom.info()[2]) * KIB
    return max(0, total - used)
