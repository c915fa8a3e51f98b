"""Every desktop's lifecycle: started on demand, watched, stopped by policy.

The desktop manager holds one ``ManagedDesktop`` per desktop: its backend
(None for a static VNC endpoint, which is always running), the Mirror that
terminals watch, the Upstream feeding that mirror once the desktop's console
is known, and its status.  It tells a listener (the Hub) what terminals
should see: ``desktop_starting(name, progress)``, ``desktop_available(name)``
and ``desktop_unavailable(name)``, which the broker turns into screens.

The broker registers every desktop READY, meaning "running, or started on
demand".  When it hands a desktop to a terminal the hub calls ``want``; the
manager starts the desktop on a later reactor turn (never inside the hub's
call), reports "starting" with a progress figure about once a second,
awaits the backend's ``ensure_running``, connects the Upstream and reports
"available" once the mirror is live.  A failed start is reported
unavailable and offered again after a back-off delay.

A mirror never keeps a stopped desktop's pixels: stopping, resetting or
losing a desktop first detaches the mirror from the old console and draws a
screen on it.

Pools get a ``PoolPolicy`` (max_running, spare, idle_stop_after,
reset_on_release), applied by ``tick`` every ``DesktopsConfig.tick``
seconds on an injectable clock.  Who uses which desktop comes from a
callable, normally ``lambda: desktops_in_use(broker.snapshot())``.

Backends are asyncio (see thinserve/backends/qemu.py); their coroutines run
as asyncio tasks bridged to Deferreds.  See docs/desktops.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import numpy as np
from twisted.internet import defer, task
from twisted.internet import reactor as default_reactor
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .backends.base import Backend, ConsoleAddress, DesktopStatus
from .broker import BrokerState, ScreenKind, ShowDesktop, ShowScreen
from .relay import screens
from .relay.upstream import DesktopAddress, Mirror, Upstream

log = logging.getLogger(__name__)

T = TypeVar("T")

BOOT_ESTIMATES = {"qemu": 20.0, "libvirt": 30.0, "xvnc": 2.0}  # seconds, until learned
DEFAULT_BOOT_ESTIMATE = 20.0
MAX_PROGRESS = 0.95  # a starting desktop never shows a full bar
ACTIVE = (DesktopStatus.STARTING, DesktopStatus.RUNNING, DesktopStatus.STOPPING)
AVAILABLE, STARTING, UNAVAILABLE = "available", "starting", "unavailable"
WAITING_SCREENS = (ScreenKind.STARTING, ScreenKind.UNAVAILABLE)

Holders = Mapping[str, Hashable] | Collection[str]  # desktop -> who holds it, or just names


# --- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class PoolPolicy:
    """How the desktops of one pool are run.

    max_running: never more than this many started at once (None: no limit).
    spare: keep this many unused desktops started ahead of demand, so a new
      terminal gets one without waiting.
    idle_stop_after: stop a desktop nobody has controlled for this many
      seconds (None: never).  Spares are kept.
    reset_on_release: a desktop nobody uses any more is reset to its template
      (backend.reset(), or a forced stop for backends without one) before it
      is handed out again: the kiosk setting.
    """

    max_running: int | None = None
    spare: int = 0
    idle_stop_after: float | None = None
    reset_on_release: bool = False

    def __post_init__(self) -> None:
        if self.max_running is not None and self.max_running < 1:
            raise ValueError("max_running: at least 1 (or leave it out for no limit)")
        if self.spare < 0:
            raise ValueError("spare: 0 or more")
        if self.max_running is not None and self.spare > self.max_running:
            raise ValueError("spare cannot be more than max_running")
        if self.idle_stop_after is not None and self.idle_stop_after <= 0:
            raise ValueError("idle_stop_after: more than 0 seconds (or leave it out)")


@dataclass(frozen=True)
class DesktopsConfig:
    """The desktop manager's settings.

    pools: policy per broker pool name; desktops in a pool not named here get
      PoolPolicy().  unpooled: the policy of all desktops in no pool, taken
      together (max_running counts them all).
    """

    pools: Mapping[str, PoolPolicy] = field(default_factory=dict)
    unpooled: PoolPolicy = field(default_factory=PoolPolicy)
    tick: float = 1.0  # seconds between policy checks
    progress_interval: float = 1.0  # seconds between progress reports while starting
    live_timeout: float = 30.0  # console address known -> first picture, at most
    retry_delay: float = 5.0  # first retry after a failure; doubles each time
    retry_max: float = 300.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", MappingProxyType(dict(self.pools)))
        for name, value in (
            ("tick", self.tick),
            ("progress_interval", self.progress_interval),
            ("live_timeout", self.live_timeout),
            ("retry_delay", self.retry_delay),
        ):
            if value <= 0:
                raise ValueError(f"{name}: more than 0 seconds")
        if self.retry_max < self.retry_delay:
            raise ValueError("retry_max cannot be less than retry_delay")


class DesktopListener(Protocol):
    """Who hears about desktops starting, coming up and going away (the Hub)."""

    def desktop_starting(self, name: str, progress: float | None = None) -> None: ...
    def desktop_available(self, name: str) -> None: ...
    def desktop_unavailable(self, name: str) -> None: ...


class _Nobody:
    def desktop_starting(self, name: str, progress: float | None = None) -> None:
        pass

    def desktop_available(self, name: str) -> None:
        pass

    def desktop_unavailable(self, name: str) -> None:
        pass


# --- one desktop --------------------------------------------------------------------------


@dataclass(eq=False)
class ManagedDesktop:
    """One desktop as the manager runs it."""

    name: str
    backend: Backend | None  # None: a static VNC endpoint, always running
    mirror: Mirror
    pool: str | None = None
    boot_estimate: float = DEFAULT_BOOT_ESTIMATE
    stop_on_release: bool = False
    address: DesktopAddress | None = None  # static desktops: where they are
    upstream: Upstream | None = None
    status: DesktopStatus = DesktopStatus.STOPPED
    detail: str = ""  # the last error, or why it is held back
    reported: str = AVAILABLE  # what the listener was told last
    holder: Hashable | None = None  # who uses it, as of the last look
    idle_since: float | None = None
    failures: int = 0
    retry_at: float | None = None
    held: bool = False  # reported unavailable only because its pool is at max_running
    spare: bool = False
    needs_reset: bool = False
    stopping: bool = False  # our own stop or reset is under way
    start: defer.Deferred[bool] | None = None
    live_waiter: defer.Deferred[None] | None = None
    lock: defer.DeferredLock = field(default_factory=defer.DeferredLock)

    @property
    def active(self) -> bool:
        """Holds resources: starting, running or still stopping."""
        return self.status in ACTIVE

    @property
    def busy(self) -> bool:
        return self.start is not None or self.lock.locked or self.stopping


# --- the manager ----------------------------------------------------------------------------


class DesktopManager:
    """Starts, watches and stops every desktop; applies the pool policies."""

    def __init__(
        self,
        config: DesktopsConfig | None = None,
        pools: Mapping[str, Sequence[str]] | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """``pools``: the broker's pools (name -> desktops in hand-out order).

        ``reactor`` runs connections and progress; ``clock`` drives the policy
        tick, idle times and retries (default: the reactor).
        """
        self.config = config or DesktopsConfig()
        self.reactor = reactor or default_reactor
        self.clock: IReactorTime = clock or self.reactor
        self.pools = {name: tuple(members) for name, members in (pools or {}).items()}
        unknown = sorted(set(self.config.pools) - set(self.pools))
        if unknown:
            raise ValueError(f"policies for pools the broker does not have: {', '.join(unknown)}")
        self._pool_of = {d: name for name, members in self.pools.items() for d in members}
        self.desktops: dict[str, ManagedDesktop] = {}
        self.mirrors: dict[str, Mirror] = {}
        self.listener: DesktopListener = _Nobody()
        self.in_use: Callable[[], Holders] = dict
        self._backends: list[Backend] = []
        self._ticker = task.LoopingCall(self.tick)
        self._ticker.clock = self.clock
        self._closed = False

    # -- building ----------------------------------------------------------------------
    def add(
        self,
        name: str,
        backend: Backend,
        *,
        boot_estimate: float | None = None,
        stop_on_release: bool | None = None,
    ) -> ManagedDesktop:
        """Manage ``name`` of ``backend`` (stopped until wanted or spare).

        ``stop_on_release`` None asks the backend's ``stop_on_release(name)``
        if it has one (XvncBackend: keep_after_logout off), else False.
        """
        if stop_on_release is None:
            ask = getattr(backend, "stop_on_release", None)
            stop_on_release = bool(ask(name)) if callable(ask) else False
        estimate = boot_estimate or BOOT_ESTIMATES.get(backend.name, DEFAULT_BOOT_ESTIMATE)
        md = self._new(name, backend, estimate, stop_on_release)
        md.mirror.show_screen(screens.starting(name, None))
        if not any(b is backend for b in self._backends):
            self._backends.append(backend)
            self._listen_to(backend)
        return md

    def _listen_to(self, backend: Backend) -> None:
        """Hear the backend's status reports (after whoever listened before)."""
        previous = backend.on_status

        def heard(desktop: str, status: DesktopStatus, detail: str) -> None:
            if previous is not None:
                previous(desktop, status, detail)
            self._on_status(backend, desktop, status, detail)

        backend.on_status = heard

    def add_static(self, address: DesktopAddress) -> ManagedDesktop:
        """A VNC endpoint that is always there: its Upstream runs from start()."""
        md = self._new(address.name, None, 0.0, False)
        md.address = address
        md.status = DesktopStatus.RUNNING
        return md

    def add_backend(
        self, backend: Backend, *, boot_estimate: float | None = None
    ) -> defer.Deferred[list[str]]:
        """Manage every desktop ``backend.list_desktops()`` names; fires with the names."""

        def added(infos: list[Any]) -> list[str]:
            for info in infos:
                md = self.desktops.get(info.name) or self.add(
                    info.name, backend, boot_estimate=boot_estimate
                )
                md.status = info.status
            return [info.name for info in infos]

        return bridge(backend.list_desktops()).addCallback(added)

    def _new(
        self, name: str, backend: Backend | None, estimate: float, stop_on_release: bool
    ) -> ManagedDesktop:
        if name in self.desktops:
            raise ValueError(f"desktop {name!r} is managed already")
        mirror = Mirror(name)
        md = ManagedDesktop(
            name, backend, mirror, self._pool_of.get(name), estimate, stop_on_release
        )
        self.desktops[name] = md
        self.mirrors[name] = mirror
        return md

    def backend_names(self) -> dict[str, str]:
        """desktop -> backend name ("vnc" for static ones): for register_desktop."""
        return {
            name: md.backend.name if md.backend is not None else "vnc"
            for name, md in self.desktops.items()
        }

    # -- running ---------------------------------------------------------------------------
    def start(self, listener: DesktopListener, in_use: Callable[[], Holders]) -> None:
        """Report to ``listener``; learn who uses what from ``in_use``; start ticking.

        ``in_use`` returns desktop -> holder (see desktops_in_use), or just
        the names in use; holders let the manager notice a desktop passing
        straight from one user to the next (reset_on_release needs that).
        """
        self.listener = listener
        self.in_use = in_use
        for md in self.desktops.values():
            if md.address is not None:
                md.upstream = Upstream(md.address, md.mirror, clock=self.reactor)
                md.upstream.start()
        self._ticker.start(self.config.tick, now=True)

    def close(self) -> defer.Deferred[None]:
        """Stop ticking, disconnect every mirror, close the backends."""
        self._closed = True
        if self._ticker.running:
            self._ticker.stop()
        for md in self.desktops.values():
            if md.upstream is not None:
                md.upstream.stop()
                md.upstream = None
        closing = [bridge(b.close()) for b in self._backends]
        return defer.gatherResults(closing, consumeErrors=True).addBoth(lambda _: None)

    # -- requests --------------------------------------------------------------------------
    def want(self, name: str) -> defer.Deferred[bool]:
        """A terminal was given ``name``: start it if needed (on a later turn).

        Safe to call from inside the hub.  Fires True once the desktop is
        running and live, False if it could not be started now.
        """
        md = self.desktops.get(name)
        if md is None or self._closed:
            return defer.succeed(False)
        if md.backend is not None:
            self._guard(md)
        return task.deferLater(self.reactor, 0, self._start, md)

    def stop(self, name: str, force: bool = False) -> defer.Deferred[None]:
        """Stop ``name`` now.  A terminal still holding it starts it again."""
        md = self.desktops[name]
        if md.backend is None:
            return defer.succeed(None)
        return self._run(md, lambda: self._stop_op(md, force)).addCallback(
            lambda _: self._after_stop(md)
        )

    def reset(self, name: str) -> defer.Deferred[None]:
        """Back to the template (or a fresh session) before its next start."""
        md = self.desktops[name]
        if md.backend is None:
            return defer.succeed(None)
        md.needs_reset = True
        self._blank(md)
        return self._run(md, lambda: self._reset_op(md)).addCallback(lambda _: self._after_stop(md))

    def running(self, pool: str | None = None) -> list[str]:
        """Desktops holding resources (starting, running, stopping), in ``pool`` if given."""
        return [
            md.name
            for md in self.desktops.values()
            if md.backend is not None and md.active and (pool is None or md.pool == pool)
        ]

    # -- the policy tick -------------------------------------------------------------------
    def tick(self) -> None:
        """Note who uses what; retry, stop idle desktops, keep spares, hold back at limits."""
        if self._closed:
            return
        try:
            self._tick()
        except Exception:
            log.exception("desktop policy tick failed")

    def _tick(self) -> None:
        now = self.clock.seconds()
        holders = self._holders()
        for md in self._managed():
            self._note_holder(md, holders.get(md.name), now)
        for pool, members in self._groups():
            policy = self._policy(pool)
            self._retry(members, policy, now)
            self._stop_idle(members, policy, now)
            self._keep_spares(members, policy, now)
            self._hold_back(members, policy)

    def _holders(self) -> dict[str, Hashable]:
        found = self.in_use()
        if isinstance(found, Mapping):
            return dict(found)
        return {name: True for name in found}

    def _managed(self) -> list[ManagedDesktop]:
        return [md for md in self.desktops.values() if md.backend is not None]

    def _groups(self) -> list[tuple[str | None, list[ManagedDesktop]]]:
        """Each pool's managed desktops in hand-out order; then the unpooled ones."""
        groups: list[tuple[str | None, list[ManagedDesktop]]] = []
        for pool, members in self.pools.items():
            found = [self.desktops[d] for d in members if d in self.desktops]
            groups.append((pool, [md for md in found if md.backend is not None]))
        groups.append((None, [md for md in self._managed() if md.pool is None]))
        return [(pool, members) for pool, members in groups if members]

    def _policy(self, pool: str | None) -> PoolPolicy:
        if pool is None:
            return self.config.unpooled
        return self.config.pools.get(pool) or PoolPolicy()

    def _members(self, md: ManagedDesktop) -> list[ManagedDesktop]:
        """The desktops sharing ``md``'s policy, in hand-out order."""
        return next((members for pool, members in self._groups() if pool == md.pool), [md])

    def _note_holder(self, md: ManagedDesktop, holder: Hashable | None, now: float) -> None:
        if holder is not None:
            if md.holder is not None and holder != md.holder:
                log.info("desktop %s passed from %s to %s", md.name, md.holder, holder)
                self._released(md)
            md.holder = holder
            md.idle_since = None
            return
        if md.holder is not None:
            log.info("desktop %s released by %s", md.name, md.holder)
            md.holder = None
            self._released(md)
        if md.idle_since is None:
            md.idle_since = now

    def _released(self, md: ManagedDesktop) -> None:
        if self._policy(md.pool).reset_on_release:
            md.needs_reset = True
            self._blank(md)
            self._run(md, lambda: self._reset_op(md)).addCallback(lambda _: self._after_stop(md))
        elif md.stop_on_release and md.active:
            self._run(md, lambda: self._stop_op(md, False))

    def _retry(self, members: list[ManagedDesktop], policy: PoolPolicy, now: float) -> None:
        """Offer failed desktops again once their delay is over."""
        full = self._full(members, policy)
        for md in members:
            if md.reported != UNAVAILABLE or md.held or md.busy:
                continue
            if md.retry_at is not None and now < md.retry_at:
                continue
            if full and md.holder is None:
                md.held = True
                continue
            md.retry_at = None
            md.mirror.show_screen(screens.starting(md.name, None))
            self._report(md, AVAILABLE)

    def _stop_idle(self, members: list[ManagedDesktop], policy: PoolPolicy, now: float) -> None:
        limit = policy.idle_stop_after
        if limit is None:
            return
        for md in members:
            idle = md.idle_since is not None and now - md.idle_since >= limit
            if idle and md.status is DesktopStatus.RUNNING and not md.spare and not md.busy:
                log.info("desktop %s unused for %.0f s: stopping it", md.name, limit)
                md.status = DesktopStatus.STOPPING
                self._run(md, lambda md=md: self._stop_op(md, False))

    def _keep_spares(self, members: list[ManagedDesktop], policy: PoolPolicy, now: float) -> None:
        free = [md for md in members if md.holder is None and md.reported != UNAVAILABLE]
        spares = free[: policy.spare]
        for md in members:
            md.spare = md in spares
        for md in spares:
            waiting = md.retry_at is not None and now < md.retry_at
            if not md.active and not md.busy and not waiting and self._room(md, members):
                log.info("desktop %s: starting it as a spare", md.name)
                self._start(md)

    def _hold_back(self, members: list[ManagedDesktop], policy: PoolPolicy) -> None:
        """At max_running with none free, stopped desktops are not offered; once
        there is room (or a free one to stop) they are offered again."""
        if policy.max_running is None:
            return
        full = self._full(members, policy)
        for md in members:
            if md.active or md.busy:
                continue
            if md.held and not full:
                md.detail = ""
                md.mirror.show_screen(screens.starting(md.name, None))
                self._report(md, AVAILABLE)
            elif full and md.holder is None and md.reported == AVAILABLE:
                md.held = True
                md.detail = f"{policy.max_running} desktops of its pool are running, all in use"
                self._report(md, UNAVAILABLE)

    def _full(self, members: list[ManagedDesktop], policy: PoolPolicy) -> bool:
        """At max_running, and no running desktop free for the next terminal."""
        if policy.max_running is None:
            return False
        active = [md for md in members if md.active]
        free = [
            md for md in active if md.holder is None and md.status is not DesktopStatus.STOPPING
        ]
        return len(active) >= policy.max_running and not free

    def _room(self, md: ManagedDesktop, members: list[ManagedDesktop]) -> bool:
        limit = self._policy(md.pool).max_running
        return limit is None or sum(m.active for m in members if m is not md) < limit

    # -- starting ----------------------------------------------------------------------------
    def _guard(self, md: ManagedDesktop) -> None:
        """Before the hub shows the mirror: never the previous user's pixels."""
        try:
            holder = self._holders().get(md.name)
        except Exception:
            log.exception("in_use failed")
            holder = None
        if holder is not None:
            self._note_holder(md, holder, self.clock.seconds())
        if md.needs_reset:
            self._blank(md)

    def _start(self, md: ManagedDesktop) -> defer.Deferred[bool]:
        if self._closed:
            return defer.succeed(False)
        if md.backend is None:
            if md.upstream is not None and not md.upstream.running:
                md.upstream.start()
            return defer.succeed(True)
        if md.start is not None:
            return _follow(md.start)
        if self._live(md) and not md.needs_reset and not md.busy:
            self._report(md, AVAILABLE)
            return defer.succeed(True)
        victim = None
        members = self._members(md)
        if not md.active and not self._room(md, members):
            victim = self._victim(md, members)
            if victim is None:
                self._refuse(md)
                return defer.succeed(False)
            victim.status = DesktopStatus.STOPPING
        md.status = DesktopStatus.STARTING
        md.start = self._run(md, lambda: self._start_op(md, victim))

        def done(result: bool) -> bool:
            md.start = None
            return result

        md.start.addCallback(done)
        return _follow(md.start)

    def _live(self, md: ManagedDesktop) -> bool:
        return (
            md.status is DesktopStatus.RUNNING
            and md.upstream is not None
            and md.mirror.state == "live"
        )

    def _victim(self, md: ManagedDesktop, members: list[ManagedDesktop]) -> ManagedDesktop | None:
        """A running desktop nobody uses, to stop so that ``md`` may start."""
        for other in reversed(members):
            if other is md or other.holder is not None or other.busy:
                continue
            if other.status is DesktopStatus.RUNNING:
                return other
        return None

    def _refuse(self, md: ManagedDesktop) -> None:
        limit = self._policy(md.pool).max_running
        md.held = True
        md.detail = f"{limit} desktops of its pool are running, all in use"
        log.info("desktop %s not started: %s", md.name, md.detail)
        md.mirror.show_screen(screens.unavailable(md.name, 0, md.detail))
        self._report(md, UNAVAILABLE)

    async def _start_op(self, md: ManagedDesktop, victim: ManagedDesktop | None) -> bool:
        assert md.backend is not None
        if victim is not None:
            log.info(
                "desktop %s: stopping unused %s to stay within max_running", md.name, victim.name
            )
            await self._run(victim, lambda: self._stop_op(victim, False))
        if md.needs_reset:
            await self._reset_op(md)
        began = self.reactor.seconds()
        md.status = DesktopStatus.STARTING
        progress = task.LoopingCall(self._progress, md, began)
        progress.clock = self.reactor
        progress.start(self.config.progress_interval, now=True)
        try:
            address = await bridge(md.backend.ensure_running(md.name))
            self._connect(md, address)
            await self._until_live(md)
        except Exception as exc:
            _stop_loop(progress)
            await self._start_failed(md, exc)
            return False
        _stop_loop(progress)
        self._started(md, self.reactor.seconds() - began)
        return True

    def _progress(self, md: ManagedDesktop, began: float) -> None:
        elapsed = self.reactor.seconds() - began
        fraction = min(elapsed / max(md.boot_estimate, 0.1), MAX_PROGRESS)
        self._report(md, STARTING, fraction)

    def _connect(self, md: ManagedDesktop, console: ConsoleAddress) -> None:
        address = DesktopAddress(
            md.name, console.endpoint, console.password, console.username, console.ca_file
        )
        old = md.upstream
        if old is not None and old.running and old.address == address:
            return
        if old is not None:
            old.stop()
        md.mirror.state = "connecting"
        md.upstream = Upstream(address, md.mirror, clock=self.reactor)
        md.upstream.start()

    def _until_live(self, md: ManagedDesktop) -> defer.Deferred[None]:
        if md.mirror.state == "live":
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        watch = _LiveWatch(md.mirror, waiter)
        md.mirror.subscribe(watch)
        md.live_waiter = waiter
        waiter.addTimeout(self.config.live_timeout, self.reactor)

        def finished(result: object) -> object:
            md.mirror.unsubscribe(watch)
            md.live_waiter = None
            return result

        return waiter.addBoth(finished)

    def _started(self, md: ManagedDesktop, took: float) -> None:
        md.boot_estimate = max((md.boot_estimate + took) / 2, 0.5)
        md.status = DesktopStatus.RUNNING
        md.failures = 0
        md.retry_at = None
        md.held = False
        md.detail = ""
        if md.holder is None:
            md.idle_since = self.clock.seconds()
        log.info("desktop %s is up (%.1f s)", md.name, took)
        self._report(md, AVAILABLE)

    async def _start_failed(self, md: ManagedDesktop, exc: BaseException) -> None:
        why = str(exc) or type(exc).__name__
        if isinstance(exc, defer.TimeoutError | defer.CancelledError):
            why = f"its console showed nothing within {self.config.live_timeout:.0f} s"
        md.failures += 1
        delay = self._backoff(md)
        md.detail = why
        md.retry_at = self.clock.seconds() + delay
        log.warning("desktop %s did not start: %s; retrying in %.0f s", md.name, why, delay)
        self._blank(md, screens.unavailable(md.name, delay, _short(why)))
        if md.backend is not None and md.status is not DesktopStatus.CRASHED:
            await self._quietly_stop(md)  # whatever half-started is ended
        md.status = DesktopStatus.CRASHED
        self._report(md, UNAVAILABLE)

    def _backoff(self, md: ManagedDesktop) -> float:
        cfg = self.config
        return min(cfg.retry_delay * 2 ** max(md.failures - 1, 0), cfg.retry_max)

    # -- stopping -------------------------------------------------------------------------------
    async def _stop_op(self, md: ManagedDesktop, force: bool) -> None:
        assert md.backend is not None
        self._blank(md)
        md.status = DesktopStatus.STOPPING
        await self._quietly_stop(md, force)
        md.status = DesktopStatus.STOPPED
        md.idle_since = None

    async def _quietly_stop(self, md: ManagedDesktop, force: bool = True) -> None:
        assert md.backend is not None
        md.stopping = True
        try:
            await bridge(md.backend.stop(md.name, force))
        except Exception as exc:
            log.warning("desktop %s: stopping failed: %s", md.name, exc)
        finally:
            md.stopping = False

    async def _reset_op(self, md: ManagedDesktop) -> None:
        if not md.needs_reset:
            return
        assert md.backend is not None
        self._blank(md)
        md.status = DesktopStatus.STOPPING
        md.stopping = True
        reset = getattr(md.backend, "reset", None)
        try:
            if callable(reset):
                await bridge(reset(md.name))
            else:
                await bridge(md.backend.stop(md.name, True))
            md.needs_reset = False
            log.info("desktop %s reset", md.name)
        except Exception as exc:
            log.warning("desktop %s: reset failed: %s", md.name, exc)
            md.detail = f"reset failed: {exc}"
        finally:
            md.stopping = False
        md.status = DesktopStatus.STOPPED
        md.idle_since = None

    def _after_stop(self, md: ManagedDesktop) -> None:
        """A terminal still on a desktop that stopped under it: offer it again."""
        if md.needs_reset:  # the reset failed: nobody may have the old state
            md.failures += 1
            md.retry_at = self.clock.seconds() + self._backoff(md)
            self._report(md, UNAVAILABLE)
        elif md.holder is not None and md.start is None and not md.active:
            self._report(md, UNAVAILABLE)
            md.retry_at = self.clock.seconds()

    # -- backend events -----------------------------------------------------------------------
    def _on_status(self, backend: Backend, name: str, status: DesktopStatus, detail: str) -> None:
        md = self.desktops.get(name)
        if md is None or md.backend is not backend or self._closed:
            return
        log.debug("desktop %s: backend says %s (%s)", name, status.value, detail)
        if status not in (DesktopStatus.STOPPED, DesktopStatus.CRASHED):
            if not md.busy:
                md.status = status
            return
        if md.stopping:
            return
        if md.live_waiter is not None:
            md.status = status
            md.live_waiter.errback(RuntimeError(detail or status.value))
            return
        if md.start is not None:
            return  # ensure_running fails by itself; the start reports it
        if md.active:
            self._went_down(md, status, detail)
        else:
            md.status = status

    def _went_down(self, md: ManagedDesktop, status: DesktopStatus, detail: str) -> None:
        """A running desktop stopped or crashed by itself."""
        md.status = status
        md.detail = detail
        crashed = status is DesktopStatus.CRASHED
        if crashed:
            md.failures += 1
        delay = self._backoff(md) if crashed else 0.0
        log.log(
            logging.WARNING if crashed else logging.INFO,
            "desktop %s %s: %s",
            md.name,
            status.value,
            detail,
        )
        self._blank(md, screens.unavailable(md.name, delay, _short(detail)))
        md.retry_at = self.clock.seconds() + delay
        try:
            in_use = md.name in self._holders()
        except Exception:
            in_use = True
        if in_use:
            self._report(md, UNAVAILABLE)

    # -- mirrors and reports ------------------------------------------------------------------
    def _blank(self, md: ManagedDesktop, text: screens.ScreenText | None = None) -> None:
        """Detach the mirror from the console and draw ``text`` (default: starting)."""
        upstream, md.upstream = md.upstream, None
        if upstream is not None:
            upstream.stop()
        mirror = md.mirror
        mirror.framebuffer = mirror.framebuffer.copy()  # the old connection keeps its own
        mirror.state, mirror.detail = "down", md.detail or "stopped"
        mirror.show_screen(text or screens.starting(md.name, None))

    def _report(self, md: ManagedDesktop, state: str, progress: float | None = None) -> None:
        if state != STARTING and state == md.reported:
            return
        md.reported = state
        if state == AVAILABLE:
            md.held = False
        try:
            if state == STARTING:
                self.listener.desktop_starting(md.name, progress)
            elif state == AVAILABLE:
                self.listener.desktop_available(md.name)
            else:
                self.listener.desktop_unavailable(md.name)
        except Exception:
            log.exception("reporting desktop %s %s failed", md.name, state)

    def _run(self, md: ManagedDesktop, op: Callable[[], Awaitable[T]]) -> defer.Deferred[T]:
        """Run ``op`` on a later turn, after the desktop's earlier operations."""

        def locked() -> defer.Deferred[T]:
            return md.lock.run(lambda: defer.ensureDeferred(op()))  # type: ignore[arg-type]

        def failed(failure: Any) -> None:
            log.error("desktop %s: %s", md.name, failure.getTraceback())
            return None

        return task.deferLater(self.reactor, 0, locked).addErrback(failed)


class _LiveWatch:
    """Fires ``waiter`` once the mirror's upstream is live."""

    def __init__(self, mirror: Mirror, waiter: defer.Deferred[None]) -> None:
        self.mirror = mirror
        self.waiter = waiter

    def _check(self) -> None:
        if self.mirror.state == "live" and not self.waiter.called:
            self.waiter.callback(None)

    def on_damage(self, grid: np.ndarray) -> None:
        self._check()

    def on_resize(self) -> None:
        self._check()

    def on_cursor(self, cursor: object) -> None:
        pass

    def on_clipboard(self, text: str) -> None:
        pass

    def on_bell(self) -> None:
        pass

    def on_resize_refused(self) -> None:
        pass


# --- helpers ------------------------------------------------------------------------------------


def desktops_in_use(state: BrokerState) -> dict[str, str]:
    """desktop -> holder from a broker snapshot: what DesktopManager.start wants.

    A desktop is in use while a terminal controls it, waits for it (its
    starting or unavailable screen), or a pool lease holds it.  The holder is
    "user:NAME" for a logged-in user (their desktop follows them), else
    "terminal:ID".  Watching view-only does not count.
    """
    holders: dict[str, str] = {}
    for terminal, shown in state.shown.items():
        desktop = _desktop_of(shown)
        if desktop is not None:
            user = state.logins.get(terminal)
            holders[desktop] = f"user:{user}" if user else f"terminal:{terminal}"
    for desktop, (kind, who) in state.leases.items():
        holders[desktop] = f"{kind}:{who}"
    return holders


def _desktop_of(shown: object) -> str | None:
    if isinstance(shown, ShowDesktop):
        return shown.desktop if shown.control else None
    if isinstance(shown, ShowScreen) and shown.kind in WAITING_SCREENS:
        return shown.desktop
    return None


def bridge(result: Awaitable[T] | defer.Deferred[T]) -> defer.Deferred[T]:
    """A Deferred for a backend call: asyncio coroutines run as asyncio tasks."""
    if isinstance(result, defer.Deferred):
        return result
    return defer.Deferred.fromFuture(asyncio.ensure_future(result))


def _follow(d: defer.Deferred[T]) -> defer.Deferred[T]:
    """A new Deferred with ``d``'s result, leaving ``d``'s own chain alone."""
    follower: defer.Deferred[T] = defer.Deferred()

    def pass_on(result: Any) -> Any:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(result)
        return result

    d.addBoth(pass_on)
    return follower


def _stop_loop(loop: task.LoopingCall) -> None:
    if loop.running:
        loop.stop()


def _short(why: str) -> str:
    return why if len(why) <= 80 else why[:77] + "..."
