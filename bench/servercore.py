"""The servers under test on one core, the measuring terminals on the others.

The full-screen and fan-out benchmarks compare Xvnc serving terminals
itself with thinserve serving them from its copy of Xvnc's screen.  Both
servers share core 0, where ``bench/processes.py`` already pins thinserve
(the relay core), and the benchmark's own process (painting, decoding,
its terminals) keeps the other cores: on the direct path Xvnc gets core 0
to itself, on the thinserve path thinserve and Xvnc share it, and neither
path's server ever waits for the terminals' decoding.
"""

from __future__ import annotations

import contextlib
import os

from .processes import RELAY_CORE
from .xvnc import Xvnc


def pin(xvnc: Xvnc) -> bool:
    """Move a started Xvnc to the relay core; False where that is not possible."""
    if xvnc.process is None or (os.cpu_count() or 1) < 2:
        return False
    with contextlib.suppress(OSError):
        os.sched_setaffinity(xvnc.process.pid, {RELAY_CORE})
        return True
    return False
