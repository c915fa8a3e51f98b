"""The pool policies' decisions, apart from carrying them out.

Each function looks at the desktops sharing one policy (in hand-out order)
and says which of them to start, stop or hold back; DesktopManager acts.
"""

from __future__ import annotations

from ..desktop_state import DesktopState
from .config import PoolPolicy
from .record import ManagedDesktop


def full(members: list[ManagedDesktop], policy: PoolPolicy) -> bool:
    """At max_running, and no running desktop free for the next terminal."""
    if policy.max_running is None:
        return False
    active = [md for md in members if md.state.active]
    free = [md for md in active if md.holder is None and md.state is not DesktopState.STOPPING]
    return len(active) >= policy.max_running and not free


def room(md: ManagedDesktop, members: list[ManagedDesktop], policy: PoolPolicy) -> bool:
    """Whether ``md`` may start without going over max_running."""
    limit = policy.max_running
    return limit is None or sum(m.state.active for m in members if m is not md) < limit


def victim(md: ManagedDesktop, members: list[ManagedDesktop]) -> ManagedDesktop | None:
    """A running desktop nobody uses, to stop so that ``md`` may start."""
    for other in reversed(members):
        if other is md or other.holder is not None or other.busy:
            continue
        if other.state is DesktopState.RUNNING:
            return other
    return None


def spares(members: list[ManagedDesktop], policy: PoolPolicy) -> list[ManagedDesktop]:
    """The desktops kept started for the next terminals: the first free ones."""
    free = [
        md
        for md in members
        if md.holder is None and (md.state.offered or md.state is DesktopState.STARTING)
    ]
    return free[: policy.spare]


def idle(
    members: list[ManagedDesktop], policy: PoolPolicy, now: float, kept: list[ManagedDesktop]
) -> list[ManagedDesktop]:
    """Running desktops unused for idle_stop_after seconds, spares (``kept``) aside."""
    limit = policy.idle_stop_after
    if limit is None:
        return []
    return [
        md
        for md in members
        if md.idle_since is not None
        and now - md.idle_since >= limit
        and md.state is DesktopState.RUNNING
        and md not in kept
        and not md.busy
    ]
