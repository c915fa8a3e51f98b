"""The desktop manager's settings: how each pool's desktops are run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from twisted.application.internet import backoffPolicy


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

    def policy(self, pool: str | None) -> PoolPolicy:
        """The policy of ``pool`` (None: the unpooled desktops)."""
        if pool is None:
            return self.unpooled
        return self.pools.get(pool) or PoolPolicy()

    def retry_after(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row: doubling, capped.

        Twisted's backoff policy, without jitter: the delay is shown on the
        terminal's screen and in the log, and a desktop retries alone.
        """
        policy = backoffPolicy(self.retry_delay, self.retry_max, factor=2.0, jitter=lambda: 0.0)
        return policy(max(failures - 1, 0))
