"""The adaptive-quality benchmark: the JPEG quality a terminal gets, and what it shows.

One Xvnc desktop showing photos that change every 0.1 s, relayed by
thinserve to one terminal asking for Tight at JPEG quality level 9
(thinserve's own client), in two settings:

* loopback, the terminal's CPU saturated: the terminal is a process of its
  own (bench/adaptiveterm.py) on the last core at nice 10, beside a CPU hog
  at nice 0: it gets about a tenth of the core and reads and decodes
  slowly; thinserve and Xvnc keep the other cores;
* a 2 Mbit/s link: the terminal in a network namespace of its own, behind
  a veth link shaped each way by ``tc`` (netem's rate where the kernel has
  it, else a token bucket filter), thinserve's terminal port in the
  server's namespace (needs root, ``ip`` and ``tc``; skipped otherwise).

Each setting runs twice: with thinserve's estimator, which reads the
socket's TCP_INFO, and with TCP_INFO hidden from the session, which then
times the terminal's answers (the estimator's fallback).  Per run: when
the level first changed, the levels over the run, frames per second the
terminal decoded and bytes per frame.  ``--quick``: 640x480, 8 s per run
(under a minute in all); else 1024x768, 30 s per run.  The table goes to
stdout, progress to stderr; bench/adaptiverun.py runs it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

QUICK = ((640, 480), 8.0)  # screen size, seconds per run
FULL = ((1024, 768), 30.0)


def main(quick: bool) -> int:
    """``python -m bench adaptive [--quick]``; 0 once the table is printed."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import defer, task

    from .adaptiverun import Bench, render
    from .report import load, machine_lines
    from .xvnc import Xvnc, XvncError, xvnc_path, xvnc_version

    if xvnc_path() is None:
        print("error: Xvnc is not installed (make deps)", file=sys.stderr)
        return 2
    (width, height), seconds = QUICK if quick else FULL
    status = [1]

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    async def body() -> None:
        cores = os.sched_getaffinity(0)
        terminal_cpu = max(cores)
        if len(cores) > 1:  # the busy terminal and its hog get the last core to themselves
            os.sched_setaffinity(0, cores - {terminal_cpu})
        started, machine = time.monotonic(), machine_lines(xvnc_version())  # load before
        with tempfile.TemporaryDirectory(prefix="thinserve-bench-adaptive-") as folder:
            workdir = Path(folder)
            unix = ("-rfbunixpath", str(workdir / "xvnc.sock"))
            xvnc = Xvnc(width, height, name="bench-adaptive", extra_args=unix)
            try:
                xvnc.start()
                bench = Bench(xvnc, workdir, seconds, terminal_cpu, progress)
                await bench.run()
            except (XvncError, RuntimeError, OSError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return
            finally:
                xvnc.stop()
                os.sched_setaffinity(0, cores)
        print("\n".join([*machine, "", *render(bench)]))
        print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end {load()})")
        status[0] = 0

    try:
        task.react(lambda _reactor: defer.Deferred.fromCoroutine(body()))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return 1
    return status[0]
