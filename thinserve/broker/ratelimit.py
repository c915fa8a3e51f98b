"""Counting failures per key (terminal, user, administrator) in a sliding window."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """At most ``failures`` failures within any ``window`` seconds."""

    failures: int
    window: float

    def __post_init__(self) -> None:
        if self.failures < 1 or self.window <= 0:
            raise ValueError(f"{self}: failures must be >= 1 and window > 0")


class FailureLimiter:
    """Remembers recent failures per key and says how long a key must wait.

    A key that has had ``limit.failures`` failures within the last
    ``limit.window`` seconds is blocked until the oldest of them leaves the
    window.  Memory is bounded: each key keeps at most ``limit.failures``
    times, and beyond ``max_keys`` keys the least recently failed is dropped.
    """

    def __init__(self, limit: RateLimit, max_keys: int = 50_000) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0.0 when it may now."""
        times = self._recent(key, now)
        if times is None or len(times) < self.limit.failures:
            return 0.0
        return max(times[0] + self.limit.window - now, 0.0)

    def failed(self, key: str, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit.failures)
        times.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)

    def prune(self, now: float) -> None:
        """Forget keys whose failures have all left the window."""
        for key in list(self._failures):
            self._recent(key, now)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.limit.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times
