"""One desktop as the manager runs it: its state machine and its bookkeeping."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from twisted.internet import defer

from ..backends.base import Backend
from ..desktop_state import DesktopMachine, DesktopState
from ..relay.upstream import DesktopAddress, Mirror, Upstream

DEFAULT_BOOT_ESTIMATE = 20.0  # seconds


@dataclass(eq=False)
class ManagedDesktop:
    """A desktop, its mirror, its link, and what the pool policies need to know.

    ``machine`` holds its state (thinserve/desktop_state.py); every other
    field is bookkeeping that never decides the state by itself.
    """

    name: str
    backend: Backend | None  # None: a static VNC endpoint, always running
    mirror: Mirror
    machine: DesktopMachine
    pool: str | None = None
    boot_estimate: float = DEFAULT_BOOT_ESTIMATE
    stop_on_release: bool = False
    address: DesktopAddress | None = None  # static desktops: where they are
    upstream: Upstream | None = None
    detail: str = ""  # the last error, or why it is held back
    holder: Hashable | None = None  # who uses it, as of the last look
    idle_since: float | None = None
    failures: int = 0
    retry_at: float | None = None
    needs_reset: bool = False  # the last user's session is still in it
    start: defer.Deferred[bool] | None = None
    live_waiter: defer.Deferred[None] | None = None
    lock: defer.DeferredLock = field(default_factory=defer.DeferredLock)

    @property
    def state(self) -> DesktopState:
        return self.machine.state

    @property
    def busy(self) -> bool:
        """One of the manager's own operations (start, stop, reset) is under way."""
        return self.start is not None or self.lock.locked

    @property
    def live(self) -> bool:
        """Running, with its console's picture on the mirror."""
        return (
            self.state is DesktopState.RUNNING and self.upstream is not None and self.upstream.live
        )
