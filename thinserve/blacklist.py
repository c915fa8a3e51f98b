"""Guessing costs time: sources that keep failing to authenticate wait, longer each time.

The shape of TigerVNC's blacklist (``BlacklistThreshold``,
``BlacklistTimeout``): a source may fail ``threshold`` times; then it is
blocked for ``timeout`` seconds, and each failure after a block doubles the
next block (up to ``longest``).  A success clears the source.  Unlike
TigerVNC, only failures count, not every connection, so terminals that need
no password are never slowed down.  Other sources are not affected: the
right password from another address still works at once.

The table is bounded: sources whose block is over and that have not failed
for a while are forgotten first, and at ``capacity`` the oldest entry goes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

THRESHOLD = 5
TIMEOUT = 10.0
LONGEST = 3600.0
CAPACITY = 10_000


@dataclass
class _Marks:
    failures: int = 0
    blocked_until: float = 0.0
    next_block: float = TIMEOUT
    last_failure: float = 0.0


class Blacklist:
    def __init__(
        self,
        threshold: int = THRESHOLD,
        timeout: float = TIMEOUT,
        longest: float = LONGEST,
        capacity: int = CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.timeout = timeout
        self.longest = longest
        self.capacity = capacity
        self._clock = clock
        self._marks: OrderedDict[str, _Marks] = OrderedDict()

    def wait(self, source: str) -> int:
        """Whole seconds ``source`` must still wait before it may try again (0: now)."""
        marks = self._marks.get(source)
        if marks is None:
            return 0
        return max(0, math.ceil(marks.blocked_until - self._clock()))

    def failed(self, source: str) -> int:
        """Count a failure; return how long ``source`` is now blocked (0: not)."""
        now = self._clock()
        marks = self._marks.pop(source, None) or _Marks(next_block=self.timeout)
        self._marks[source] = marks  # most recent last
        marks.failures += 1
        marks.last_failure = now
        if marks.failures >= self.threshold:
            marks.blocked_until = now + marks.next_block
            marks.next_block = min(marks.next_block * 2, self.longest)
        self._prune(now)
        return self.wait(source)

    def succeeded(self, source: str) -> None:
        self._marks.pop(source, None)

    def __len__(self) -> int:
        return len(self._marks)

    def _prune(self, now: float) -> None:
        """Forget sources whose block ended and that were quiet as long again;
        past ``capacity``, the least recently failing."""
        for source, marks in list(self._marks.items()):
            quiet = now - marks.last_failure > max(marks.next_block, self.timeout)
            if marks.blocked_until <= now and quiet:
                del self._marks[source]
            else:
                break  # ordered by last failure: the rest failed more recently
        while len(self._marks) > self.capacity:
            self._marks.popitem(last=False)
