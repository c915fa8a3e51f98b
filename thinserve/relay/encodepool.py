"""Worker threads that prepare the large rectangles of updates.

numpy, libjpeg-turbo and zlib release the GIL while they work, but only
part of the time (Tight's analysis holds it about 40% of the time on text,
25% on photos): a worker competes with the reactor thread, which prepares
the rectangle it sends next itself and sends.  Measured on two cores
(``python -m bench fullscreen``), one worker made a full screen slower
(Tight on a desktop of terminals: 25.0 ms to the last byte, 20.5 without),
the desktop's own VNC server needing the other core; so workers start
from the third core on: one per core beyond two (at most MAX_THREADS).
``THINSERVE_ENCODE_THREADS`` sets the number (0: none).  The GIL's switch
interval is shortened while workers run, so that the reactor thread gets
the GIL back soon from a worker that holds it.  A job's end is brought
back to the reactor thread with ``callFromThread``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from twisted.internet.interfaces import IReactorFromThreads

from protocols.rfb.sharing import Job

MAX_THREADS = 3
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits (Python: 0.005)


class EncodeWorkers:
    """A pool of threads and the way back to the reactor thread."""

    def __init__(self, threads: int, call_from_thread: Callable[[Callable[[], None]], object]):
        self.threads = threads
        self._call_from_thread = call_from_thread
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, job: Job) -> None:
        """Run ``job`` in a worker (unless another thread gets to it first)."""
        if self._executor is None:
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="encode")
        self._executor.submit(job.run)

    def when_done(self, job: Job, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the reactor thread once ``job`` is done."""

        def back() -> None:
            self._call_from_thread(callback)

        job.when_done(back)


_shared: EncodeWorkers | None = None


def shared() -> EncodeWorkers | None:
    """The process's workers (None: everything on the reactor thread): one
    thread per core beyond two (at most MAX_THREADS), or as many as
    THINSERVE_ENCODE_THREADS says."""
    global _shared
    if _shared is None:
        from twisted.internet import reactor

        threads = min(MAX_THREADS, max(0, len(os.sched_getaffinity(0)) - 2))
        threads = int(os.environ.get("THINSERVE_ENCODE_THREADS", threads))
        if threads <= 0:
            return None
        _shared = EncodeWorkers(threads, cast(IReactorFromThreads, reactor).callFromThread)
    return _shared
