"""Every desktop's lifecycle: started on demand, watched, stopped by policy.

The desktop manager holds one ``ManagedDesktop`` per desktop: its backend
(None for a static VNC endpoint, which is always running), the Mirror that
terminals watch, the Upstream feeding that mirror once the desktop's console
is known, and its state machine (thinserve/desktop_state.py).  It tells a
listener (the Hub) every change of state, and the progress of a start about
once a second; the broker turns states into what terminals see.

A stopped desktop is offered to terminals.  When the broker hands one to a
terminal the hub calls ``want``; the manager starts it on a later reactor
turn (never inside the hub's call), awaits the backend's ``ensure_running``,
connects the Upstream and calls it RUNNING once the mirror is live.  A
failed start is CRASHED and offered again after a back-off delay.

A mirror never keeps a stopped desktop's pixels: stopping, resetting or
losing a desktop first detaches the mirror from the old console and draws a
screen on it.

Pools get a ``PoolPolicy`` (thinserve/desktops/policy.py), applied by
``tick`` every ``DesktopsConfig.tick`` seconds on an injectable clock.  Who
uses which desktop comes from a callable, normally
``lambda: desktops_in_use(broker.snapshot())``.  See docs/desktops.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from .. import logs
from ..backends.base import Backend, ConsoleAddress, Outliving
from ..clock import Clock, reactor_clock
from ..desktop_state import DesktopMachine, DesktopState, Event
from ..relay import screens
from ..relay.upstream import DesktopAddress, Mirror, Upstream
from . import policy
from .bridge import bridge, follow
from .config import DesktopsConfig, PoolPolicy
from .holders import Holders, as_mapping
from .record import DEFAULT_BOOT_ESTIMATE, ManagedDesktop

log = logging.getLogger(__name__)

T = TypeVar("T")
S, E = DesktopState, Event

BOOT_ESTIMATES = {"qemu": 20.0, "libvirt": 30.0, "xvnc": 2.0}  # seconds, until learned
MAX_PROGRESS = 0.95  # a starting desktop never shows a full bar


class DesktopListener(Protocol):
    """Who hears about desktops' states (the Hub, which tells the broker)."""

    def desktop_state(
        self,
        name: str,
        state: DesktopState,
        progress: float | None = None,
        detail: str = "",
        failed_start: bool = False,
    ) -> None:
        """``detail``: why it is held back, or its last failure ("" when all is well);
        ``failed_start``: it is crashed because it could not start (``detail`` says why)."""


class _Nobody:
    def desktop_state(
        self,
        name: str,
        state: DesktopState,
        progress: float | None = None,
        detail: str = "",
        failed_start: bool = False,
    ) -> None:
        pass


class DesktopEnded(RuntimeError):
    """The backend says the desktop stopped while it was being started."""


class CannotStart(DesktopEnded):
    """A check before the start found what the desktop lacks (desktops/checks.py)."""


class DesktopManager:
    """Starts, watches and stops every desktop; applies the pool policies."""

    def __init__(
        self,
        config: DesktopsConfig | None = None,
        pools: Mapping[str, Sequence[str]] | None = None,
        reactor: Any = None,
        clock: Clock | None = None,
    ) -> None:
        """``pools``: the broker's pools (name -> desktops in hand-out order).

        ``reactor`` runs connections and progress; ``clock`` drives the policy
        tick, idle times and retries (default: the reactor).
        """
        self.config = config or DesktopsConfig()
        self.reactor: Any = reactor or reactor_clock()  # connections, progress, later turns
        self.clock: Clock = clock or self.reactor
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
        self._checks: dict[str, Callable[[], str]] = {}  # desktop -> what it lacks, or ""
        self._failed_starts: set[str] = set()  # crashed because they could not start
        self._begun = False
        self._ticker = task.LoopingCall(self.tick)
        self._ticker.clock = cast(IReactorTime, self.clock)
        self._closed = False

    # -- building ----------------------------------------------------------------------
    def add(
        self,
        name: str,
        backend: Backend,
        *,
        boot_estimate: float | None = None,
        stop_on_release: bool | None = None,
        check: Callable[[], str] | None = None,
    ) -> ManagedDesktop:
        """Manage ``name`` of ``backend`` (stopped until wanted or spare).

        ``stop_on_release`` None asks the backend's ``stop_on_release(name)``
        (XvncBackend: keep_after_logout off; others: False).  ``check`` says
        what the desktop lacks to start ("" when nothing): run by ``start``
        and before every start (desktops/checks.py).
        """
        if stop_on_release is None:
            stop_on_release = backend.stop_on_release(name)
        estimate = boot_estimate or BOOT_ESTIMATES.get(backend.name, DEFAULT_BOOT_ESTIMATE)
        md = self._new(name, backend, estimate, stop_on_release, S.STOPPED)
        if check is not None:
            self._checks[name] = check
        md.mirror.show_screen(screens.starting(name, None))
        if not any(b is backend for b in self._backends):
            self._backends.append(backend)
            self._listen_to(backend)
        return md

    def _listen_to(self, backend: Backend) -> None:
        """Hear the backend's status reports (after whoever listened before)."""
        previous = backend.on_status

        def heard(desktop: str, status: DesktopState, detail: str) -> None:
            if previous is not None:
                previous(desktop, status, detail)
            self._on_status(backend, desktop, status, detail)

        backend.on_status = heard

    def add_static(self, address: DesktopAddress) -> ManagedDesktop:
        """A VNC endpoint that is always there: its Upstream runs from start()."""
        md = self._new(address.name, None, 0.0, False, S.RUNNING)
        md.address = address
        if self._begun and not self._closed:  # added by a reload: link it now
            md.upstream = Upstream(address, md.mirror, clock=self.reactor)
            md.upstream.start()
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
                if info.status.active and md.machine.can(E.UP):
                    md.machine.handle(E.UP)  # found running: it counts against max_running
            return [info.name for info in infos]

        return bridge(backend.list_desktops()).addCallback(added)

    def _new(
        self,
        name: str,
        backend: Backend | None,
        estimate: float,
        stop_on_release: bool,
        state: DesktopState,
    ) -> ManagedDesktop:
        if name in self.desktops:
            raise ValueError(f"desktop {name!r} is managed already")
        mirror = Mirror(name)
        machine = DesktopMachine(name, state, self._changed)
        md = ManagedDesktop(
            name, backend, mirror, machine, self._pool_of.get(name), estimate, stop_on_release
        )
        self.desktops[name] = md
        self.mirrors[name] = mirror
        return md

    def registrations(self) -> list[tuple[str, str, DesktopState]]:
        """(desktop, backend name, state) for the broker's register_desktop: static
        desktops are "vnc" and running already."""
        return [
            (name, md.backend.name if md.backend is not None else "vnc", md.state)
            for name, md in self.desktops.items()
        ]

    # -- running ---------------------------------------------------------------------------
    def start(self, listener: DesktopListener, in_use: Callable[[], Holders]) -> None:
        """Report to ``listener``; learn who uses what from ``in_use``; start ticking.

        ``in_use`` returns desktop -> holder (see desktops_in_use), or just
        the names in use; holders let the manager notice a desktop passing
        straight from one user to the next (reset_on_release needs that).
        """
        self.listener = listener
        self.in_use = in_use
        self._begun = True
        for md in self.desktops.values():
            if md.address is not None:
                md.upstream = Upstream(md.address, md.mirror, clock=self.reactor)
                md.upstream.start()
        for name in list(self._checks):
            self.check(name)
        self._ticker.start(self.config.tick, now=True)

    def check(self, name: str) -> str:
        """Run ``name``'s check now: a problem is logged once and the desktop is
        failed at once, with the problem as its reason.  Returns the problem."""
        md = self.desktops[name]
        problem = self._problem(md)
        if not problem or md.busy or md.state.active:
            return problem
        log.warning("desktop %s cannot start: %s", name, problem)
        md.detail = problem
        md.failures += 1
        md.retry_at = self.clock.seconds() + self.config.retry_after(md.failures)
        self._failed_starts.add(name)
        self._blank(md, screens.could_not_start(name, problem))
        if md.state is S.CRASHED:
            self._tell(md)
        else:  # stopped or held: a start that fails before it begins
            md.machine.handle(E.START)
            md.machine.handle(E.FAILED)
        return problem

    def _problem(self, md: ManagedDesktop) -> str:
        check = self._checks.get(md.name)
        if check is None:
            return ""
        try:
            return check()
        except Exception as exc:  # a check must never stop the manager
            log.exception("checking desktop %s failed", md.name)
            return f"checking it failed: {exc}"

    def remove(self, name: str) -> defer.Deferred[str]:
        """Stop managing ``name``, no longer configured; fires with what became of it.

        Nobody hears of it any more (its terminals were given other screens
        first).  A desktop thinserve runs is stopped, gently: nobody can be
        given it again, and a desktop left running unmanaged would hold its
        memory and disk for good.  A static desktop's link is closed.
        """
        md = self.desktops.pop(name)
        self.mirrors.pop(name, None)
        self._checks.pop(name, None)
        self._failed_starts.discard(name)
        md.machine.observer = None
        if md.backend is None:
            return self._disconnect(md).addCallback(lambda _: "its link is closed")
        if not (md.state.active or md.busy):
            return self._disconnect(md).addCallback(lambda _: "it was not running")

        async def stop() -> None:
            if md.state.active or md.state is S.CRASHED:
                await self._stop_op(md, False)
            else:
                await self._disconnect(md)

        return self._run(md, stop).addCallback(lambda _: "it is stopped")

    def let_go(self, name: str) -> defer.Deferred[None]:
        """Stop managing ``name`` without touching the desktop itself: another
        node of the site runs it.  Only this node's console link is closed."""
        md = self.desktops.pop(name)
        self.mirrors.pop(name, None)
        self._checks.pop(name, None)
        self._failed_starts.discard(name)
        md.machine.observer = None
        return self._disconnect(md)

    def reconfigure(self, config: DesktopsConfig, pools: Mapping[str, Sequence[str]]) -> None:
        """New pool policies and pools (a reload), for the desktops managed now and later."""
        unknown = sorted(set(config.pools) - set(pools))
        if unknown:
            raise ValueError(f"policies for pools the broker does not have: {', '.join(unknown)}")
        tick = self.config.tick
        self.config = config
        self.pools = {name: tuple(members) for name, members in pools.items()}
        self._pool_of = {d: name for name, members in self.pools.items() for d in members}
        for md in self.desktops.values():
            md.pool = self._pool_of.get(md.name)
        if self._ticker.running and config.tick != tick:
            self._ticker.stop()
            self._ticker.start(config.tick, now=False)

    def close(self, stop_desktops: bool = False) -> defer.Deferred[None]:
        """Stop ticking, disconnect every mirror, let go of the backends.

        Desktops thinserve started keep running (recorded, for the next start
        to take over) unless ``stop_desktops``: then the backends stop them.
        """
        self._closed = True
        if self._ticker.running:
            self._ticker.stop()
        closing = [self._disconnect(md) for md in self.desktops.values()]
        closing += [bridge(_let_go(b, stop_desktops)) for b in self._backends]
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
        return self._later(lambda: self._start(md))

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
            if md.backend is not None and md.state.active and (pool is None or md.pool == pool)
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
            rules = self.config.policy(pool)
            self._retry(members, rules, now)
            kept = policy.spares(members, rules)
            for md in policy.idle(members, rules, now, kept):
                self._stop_idle(md, rules)
            self._keep_spares(members, rules, kept, now)
            self._hold_back(members, rules)

    def _stop_idle(self, md: ManagedDesktop, rules: PoolPolicy) -> None:
        log.info("desktop %s unused for %.0f s: stopping it", md.name, rules.idle_stop_after)
        md.machine.handle(E.STOP)
        self._run(md, lambda: self._stop_op(md, False))

    def _holders(self) -> dict[str, Hashable]:
        return as_mapping(self.in_use())

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
        if self.config.policy(md.pool).reset_on_release:
            md.needs_reset = True
            self._blank(md)
            self._run(md, lambda: self._reset_op(md)).addCallback(lambda _: self._after_stop(md))
        elif md.stop_on_release and md.state.active:
            self._run(md, lambda: self._stop_op(md, False))

    def _retry(self, members: list[ManagedDesktop], rules: PoolPolicy, now: float) -> None:
        """Offer failed desktops again once their delay is over."""
        full = policy.full(members, rules)
        for md in members:
            if md.state is not S.CRASHED or md.busy:
                continue
            if md.retry_at is not None and now < md.retry_at:
                continue
            if self._still_lacking(md, now):
                continue
            if full and md.holder is None:
                md.machine.handle(E.HOLD)
                continue
            md.retry_at = None
            md.mirror.show_screen(screens.starting(md.name, None))
            md.machine.handle(E.OFFER)

    def _still_lacking(self, md: ManagedDesktop, now: float) -> bool:
        """A failed desktop whose check still fails stays failed, quietly, and is
        looked at again later; one whose problem changed says the new one."""
        problem = self._problem(md)
        if not problem:
            return False
        md.retry_at = now + self.config.retry_after(md.failures)
        if problem != md.detail:
            md.detail = problem
            self._failed_starts.add(md.name)
            log.warning("desktop %s cannot start: %s", md.name, problem)
            self._blank(md, screens.could_not_start(md.name, problem))
            self._tell(md)
        return True

    def _keep_spares(
        self,
        members: list[ManagedDesktop],
        rules: PoolPolicy,
        kept: list[ManagedDesktop],
        now: float,
    ) -> None:
        for md in kept:
            waiting = md.retry_at is not None and now < md.retry_at
            if (
                not md.state.active
                and not md.busy
                and not waiting
                and policy.room(md, members, rules)
            ):
                log.info("desktop %s: starting it as a spare", md.name)
                self._start(md)

    def _hold_back(self, members: list[ManagedDesktop], rules: PoolPolicy) -> None:
        """At max_running with none free, stopped desktops are not offered; once
        there is room (or a free one to stop) they are offered again."""
        if rules.max_running is None:
            return
        full = policy.full(members, rules)
        for md in members:
            if md.state.active or md.busy:
                continue
            if md.state is S.HELD and not full:
                md.detail = ""
                md.mirror.show_screen(screens.starting(md.name, None))
                md.machine.handle(E.OFFER)
            elif full and md.holder is None and md.state is S.STOPPED:
                md.detail = f"{rules.max_running} desktops of its pool are running, all in use"
                md.machine.handle(E.HOLD)

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
            return follow(md.start)
        if md.live and not md.needs_reset and not md.busy:
            return defer.succeed(True)
        victim = None
        members = self._members(md)
        if not md.state.active and not policy.room(md, members, self.config.policy(md.pool)):
            victim = policy.victim(md, members)
            if victim is None:
                self._refuse(md)
                return defer.succeed(False)
            victim.machine.handle(E.STOP)
        if md.state is not S.STARTING:
            md.machine.handle(E.START)

        def done(result: bool | None) -> bool:
            md.start = None
            return result is True

        md.start = self._run(md, lambda: self._start_op(md, victim)).addCallback(done)
        return follow(md.start)

    def _refuse(self, md: ManagedDesktop) -> None:
        limit = self.config.policy(md.pool).max_running
        md.detail = f"{limit} desktops of its pool are running, all in use"
        log.info("desktop %s not started: %s", md.name, md.detail)
        md.mirror.show_screen(screens.unavailable(md.name, 0, md.detail))
        if md.state is not S.HELD:
            md.machine.handle(E.HOLD)

    async def _start_op(self, md: ManagedDesktop, victim: ManagedDesktop | None) -> bool:
        assert md.backend is not None
        if victim is not None:
            log.info(
                "desktop %s: stopping unused %s to stay within max_running", md.name, victim.name
            )
            await self._run(victim, lambda: self._stop_op(victim, False))
        began = self.reactor.seconds()
        progress = task.LoopingCall(self._progress, md, began)
        progress.clock = self.reactor
        try:
            if md.needs_reset:
                await self._reset_op(md)
                if md.needs_reset:
                    raise RuntimeError(md.detail)  # never hand out the last user's session
            if md.state is not S.STARTING:
                md.machine.handle(E.START)
            progress.start(self.config.progress_interval, now=True)
            problem = self._problem(md)
            if problem:
                raise CannotStart(problem)
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
        self._tell(md, fraction)

    def _connect(self, md: ManagedDesktop, console: ConsoleAddress) -> None:
        address = DesktopAddress(
            md.name, console.endpoint, console.password, console.username, console.ca_file
        )
        old = md.upstream
        if old is not None and old.running and old.address == address:
            return
        if old is not None:
            old.stop()
        md.upstream = Upstream(address, md.mirror, clock=self.reactor, listener=self)
        md.upstream.start()

    def _until_live(self, md: ManagedDesktop) -> defer.Deferred[None]:
        if md.upstream is not None and md.upstream.live:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        md.live_waiter = waiter
        waiter.addTimeout(self.config.live_timeout, self.reactor)

        def finished(result: object) -> object:
            md.live_waiter = None
            return result

        return waiter.addBoth(finished)

    # -- the link to a desktop's console (LinkListener) --------------------------------------------
    def link_live(self, name: str) -> None:
        md = self.desktops.get(name)
        if md is not None and md.live_waiter is not None and not md.live_waiter.called:
            md.live_waiter.callback(None)

    def link_down(self, name: str, why: str) -> None:
        """The Upstream shows the outage on the mirror and reconnects by itself."""

    def _started(self, md: ManagedDesktop, took: float) -> None:
        md.boot_estimate = max((md.boot_estimate + took) / 2, 0.5)
        md.failures = 0
        md.retry_at = None
        md.detail = ""
        self._failed_starts.discard(md.name)
        if md.holder is None:
            md.idle_since = self.clock.seconds()
        log.info(
            "desktop %s is up (%.1f s)",
            md.name,
            took,
            extra=logs.fields(desktop=md.name, event="up"),
        )
        md.machine.handle(E.UP)

    async def _start_failed(self, md: ManagedDesktop, exc: BaseException) -> None:
        why = str(exc) or type(exc).__name__
        if isinstance(exc, defer.TimeoutError | defer.CancelledError):
            why = f"its console showed nothing within {self.config.live_timeout:.0f} s"
        md.failures += 1
        delay = self.config.retry_after(md.failures)
        md.detail = why
        md.retry_at = self.clock.seconds() + delay
        self._failed_starts.add(md.name)
        log.warning(
            "desktop %s did not start: %s; retrying in %.0f s",
            md.name,
            why,
            delay,
            extra=logs.fields(desktop=md.name, event="start-failed"),
        )
        self._blank(md, screens.unavailable(md.name, delay, _short(why)))
        if not isinstance(exc, DesktopEnded):
            await self._quietly_stop(md)  # whatever half-started is ended
        if md.state is not S.CRASHED:
            md.machine.handle(E.FAILED)

    # -- stopping -------------------------------------------------------------------------------
    async def _stop_op(self, md: ManagedDesktop, force: bool) -> None:
        assert md.backend is not None
        self._blank(md)
        if md.state is not S.STOPPING:
            md.machine.handle(E.STOP)
        await self._quietly_stop(md, force)
        md.machine.handle(E.ENDED)
        md.idle_since = None

    async def _quietly_stop(self, md: ManagedDesktop, force: bool = True) -> None:
        assert md.backend is not None
        try:
            await bridge(md.backend.stop(md.name, force))
        except Exception as exc:
            log.warning("desktop %s: stopping failed: %s", md.name, exc)

    async def _reset_op(self, md: ManagedDesktop) -> None:
        if not md.needs_reset:
            return
        assert md.backend is not None
        self._blank(md)
        if md.state is not S.STOPPING:
            md.machine.handle(E.STOP)
        md.idle_since = None
        try:
            await bridge(md.backend.reset(md.name))
        except Exception as exc:
            log.warning("desktop %s: reset failed: %s", md.name, exc)
            md.detail = f"reset failed: {exc}"
            md.machine.handle(E.FAILED)
            return
        md.needs_reset = False
        log.info("desktop %s reset", md.name)
        md.machine.handle(E.ENDED)

    def _after_stop(self, md: ManagedDesktop) -> None:
        """A failed reset waits; a desktop stopped under its user starts again for them."""
        if md.needs_reset:  # the reset failed: nobody may have the old state
            md.failures += 1
            md.retry_at = self.clock.seconds() + self.config.retry_after(md.failures)
        elif md.holder is not None and md.start is None and not md.state.active:
            self.want(md.name)

    # -- backend events -----------------------------------------------------------------------
    def _on_status(self, backend: Backend, name: str, status: DesktopState, detail: str) -> None:
        md = self.desktops.get(name)
        if md is None or md.backend is not backend or self._closed:
            return
        log.debug("desktop %s: backend says %s (%s)", name, status.value, detail)
        if status.active:
            if not md.busy:
                self._follow_backend(md, status)
            return
        if md.live_waiter is not None and not md.live_waiter.called:
            md.live_waiter.errback(DesktopEnded(detail or status.value))
            return
        if md.busy:
            return  # our own start or stop: it reports the outcome
        if md.state.active:
            self._went_down(md, status, detail)

    def _follow_backend(self, md: ManagedDesktop, status: DesktopState) -> None:
        """It was started or is being stopped from outside thinserve."""
        if status is S.STOPPING and md.state is S.RUNNING:
            md.machine.handle(E.STOP)
        elif status is not S.STOPPING and md.state is not S.RUNNING and md.machine.can(E.UP):
            md.machine.handle(E.UP)

    def _went_down(self, md: ManagedDesktop, status: DesktopState, detail: str) -> None:
        """A running desktop stopped or crashed by itself."""
        crashed = status is S.CRASHED
        md.detail = detail
        self._failed_starts.discard(md.name)
        if crashed:
            md.failures += 1
        delay = self.config.retry_after(md.failures) if crashed else 0.0
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
        if crashed and in_use:
            md.machine.handle(E.FAILED)  # its user waits out the delay
            return
        md.machine.handle(E.ENDED)
        if in_use:
            self.want(md.name)  # it stopped under its user: start it again for them

    # -- mirrors and reports ------------------------------------------------------------------
    def _blank(self, md: ManagedDesktop, text: screens.ScreenText | None = None) -> None:
        """Detach the mirror from the console and draw ``text`` (default: starting)."""
        self._disconnect(md)
        mirror = md.mirror
        mirror.framebuffer = mirror.framebuffer.copy()  # the old connection keeps its own
        mirror.show_screen(text or screens.starting(md.name, None))

    def _disconnect(self, md: ManagedDesktop) -> defer.Deferred[None]:
        upstream, md.upstream = md.upstream, None
        if upstream is None:
            return defer.succeed(None)
        return upstream.stop()

    def _changed(self, name: str, old: DesktopState, new: DesktopState) -> None:
        """The machine's observer: the listener hears every change but STARTING,
        which the start reports itself, with its progress."""
        log.debug(
            "desktop %s: %s -> %s",
            name,
            old.value,
            new.value,
            extra=logs.fields(desktop=name, event=new.value),
        )
        if new is not S.STARTING:
            self._tell(self.desktops[name])

    def _tell(self, md: ManagedDesktop, progress: float | None = None) -> None:
        if self._closed:  # the hub and the store may be gone: nobody listens any more
            return
        failed_start = md.state is S.CRASHED and md.name in self._failed_starts
        try:
            self.listener.desktop_state(md.name, md.state, progress, md.detail, failed_start)
        except Exception:
            log.exception("reporting desktop %s %s failed", md.name, md.state.value)

    def _run(self, md: ManagedDesktop, op: Callable[[], Awaitable[T]]) -> defer.Deferred[T | None]:
        """Run ``op`` on a later turn, after the desktop's earlier operations;
        a failure is logged (and the result is None)."""

        async def locked() -> T | None:
            await md.lock.acquire()
            try:
                return await op()
            except Exception:
                log.exception("desktop %s", md.name)
                return None
            finally:
                md.lock.release()

        return self._later(lambda: defer.ensureDeferred(locked()))

    def _later(self, call: Callable[[], defer.Deferred[T]]) -> defer.Deferred[T]:
        """``call``'s result, on a later reactor turn (never inside the caller's)."""
        result: defer.Deferred[T] = defer.Deferred()

        def run() -> None:
            call().chainDeferred(result)

        self.reactor.callLater(0, run)
        return result


def _let_go(backend: Backend, stop_desktops: bool) -> Awaitable[None]:
    """A backend's desktops left running (when they can outlive thinserve), or stopped."""
    if not stop_desktops and isinstance(backend, Outliving):
        return backend.release()
    return backend.close()


def _stop_loop(loop: task.LoopingCall) -> None:
    if loop.running:
        loop.stop()


def _short(why: str) -> str:
    return why if len(why) <= 80 else why[:77] + "..."
