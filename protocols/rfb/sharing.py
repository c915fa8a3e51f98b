"""Encoding work done once for every connection that needs the same result.

Many terminals watching one desktop ask for the same rectangles of the same
picture, mostly with the same settings.  A :class:`SharedWork` belongs to one
picture (one version of a source's pixels) and hands every connection that
asks for the same key the same :class:`Job`: the first to ask creates it,
whoever gets to it first runs it (a worker thread, or the reactor thread
that needs it next), and the others take its result.

Jobs are kept while some update holds them (a weak mapping), and besides
in one process-wide store of the most recent jobs, bounded by the pixels
they cover (``KEPT_PIXELS``): terminals told of a change after their
neighbours' updates went out whole, a terminal that connects or asks for a
refresh while the picture is unchanged, all find the work done.  When the
picture changes its owner calls ``release``: that work can serve nobody.

Whole updates are shared too.  An update encoded for several connections
whose every rectangle gave the same bytes on any connection
(``Encoder.finish_is_shared``) is kept, by
its rectangles and the connection's settings, while the picture lasts:
the next connection that would send the same update sends those bytes,
with no planning and no encoding at all.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

from .updatestats import UpdateStats

MAX_PLANS = 1024  # rectangle plans kept per picture
MAX_UPDATES = 64  # whole updates kept per picture ...
UPDATE_BYTES = 16 << 20  # ... and their bytes in all (a few full screens)
# The pixels of the most recent jobs kept in all, beyond those updates hold:
# a few full screens (results take 0.1-4 bytes a pixel).
KEPT_PIXELS = 8 << 20

NEW, RUNNING, DONE = range(3)


class Job:
    """One piece of work, run at most once, by whichever thread gets to it first."""

    def __init__(self, work: Callable[[], object]) -> None:
        self._work: Callable[[], object] | None = work
        self._lock = threading.Lock()
        # Made only by a thread that must wait for another to finish: most
        # jobs are run by whoever first needs them, and an Event (a Condition
        # and a lock) for each would cost a typed character's update time.
        self._finished: threading.Event | None = None
        self._state = NEW
        self._result: object = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[], None]] = []
        self.seconds = 0.0  # how long the work took
        self.queued = False  # handed to a worker pool (so not again)

    @property
    def done(self) -> bool:
        return self._state == DONE

    @property
    def running_elsewhere(self) -> bool:
        """Whether another thread runs it now: waiting for it would block."""
        return self._state == RUNNING

    def run(self) -> None:
        """Do the work here, unless it is already started or done."""
        with self._lock:
            if self._state != NEW:
                return
            self._state = RUNNING
            work, self._work = self._work, None
        assert work is not None
        started = time.perf_counter()
        try:
            self._result = work()
        except BaseException as exc:  # handed to whoever takes the result
            self._error = exc
        self.seconds = time.perf_counter() - started
        with self._lock:
            self._state = DONE
            callbacks, self._callbacks = self._callbacks, []
            finished = self._finished
        if finished is not None:
            finished.set()
        for callback in callbacks:
            callback()

    def result(self) -> object:
        """The work's result: done here if nobody started it, else waited for."""
        self.run()
        self._wait()
        if self._error is not None:
            raise self._error
        return self._result

    def _wait(self) -> None:
        """Block until the thread running the work has finished it."""
        with self._lock:
            if self._state == DONE:
                return
            if self._finished is None:
                self._finished = threading.Event()
            finished = self._finished
        finished.wait()

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the work is done (at once if it is; else in
        the thread that finishes it)."""
        with self._lock:
            if self._state != DONE:
                self._callbacks.append(callback)
                return
        callback()


class _Kept:
    """The most recent jobs of every picture, up to a number of pixels in all."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.pixels = 0
        self._jobs: OrderedDict[int, tuple[Job, int]] = OrderedDict()

    def add(self, job: Job, pixels: int) -> None:
        self._jobs[id(job)] = (job, pixels)
        self.pixels += pixels
        while self.pixels > self.budget and self._jobs:
            _, (_, dropped) = self._jobs.popitem(last=False)
            self.pixels -= dropped

    def drop(self, jobs: Iterable[Job]) -> None:
        """Forget these (live) jobs."""
        for job in jobs:
            entry = self._jobs.pop(id(job), None)
            if entry is not None:
                self.pixels -= entry[1]


KEPT = _Kept(KEPT_PIXELS)


class SharedWork:
    """The jobs and rectangle plans of one picture, by key.

    Used from one thread (the reactor's); the jobs themselves may run in
    others.
    """

    def __init__(self) -> None:
        self._jobs: weakref.WeakValueDictionary[Hashable, Job] = weakref.WeakValueDictionary()
        self._plans: dict[Hashable, object] = {}
        self._updates: dict[Hashable, tuple[bytes, UpdateStats]] = {}
        self._update_bytes = 0
        self._recording: set[Hashable] = set()
        self._released = False

    def job(self, key: Hashable, work: Callable[[], object], pixels: int) -> Job:
        """The job for ``key``, made from ``work`` (over ``pixels``) if none is kept."""
        found = self._jobs.get(key)
        if found is None:
            found = self._jobs[key] = Job(work)
            KEPT.add(found, pixels)
        return found

    def release(self) -> None:
        """The picture changed: keep its jobs only while updates hold them."""
        KEPT.drop(list(self._jobs.values()))
        self._plans.clear()
        self._updates.clear()
        self._recording.clear()
        self._released = True

    def update(self, key: Hashable) -> tuple[bytes, UpdateStats] | None:
        """A whole update kept for ``key``: its bytes and what they carry (with
        no encoding time: sending them again encodes nothing)."""
        return self._updates.get(key)

    def record(self, key: Hashable) -> bool:
        """Whether an update about to be encoded for ``key`` should be kept:
        none is kept or being encoded for it already."""
        if self._released or key in self._updates or key in self._recording:
            return False
        self._recording.add(key)
        return True

    def keep_update(self, key: Hashable, data: bytes | None, stats: UpdateStats) -> None:
        """The update recorded for ``key`` is done; ``data`` None: it could not
        be shared after all."""
        self._recording.discard(key)
        if data is None or self._released or len(self._updates) >= MAX_UPDATES:
            return
        if self._update_bytes + len(data) > UPDATE_BYTES:
            return
        self._updates[key] = (data, stats.sent_again())
        self._update_bytes += len(data)

    def plan(self, key: Hashable, make: Callable[[], object]) -> object:
        """A cheap result kept for the picture's life (at most MAX_PLANS)."""
        if key in self._plans:
            return self._plans[key]
        made = make()
        if len(self._plans) < MAX_PLANS:
            self._plans[key] = made
        return made
