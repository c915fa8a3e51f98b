"""How long a restart of thinserve keeps a desktop away from its terminals.

Each round starts ``thinserve serve`` on the default desktop (Xvnc with the
IceWM session) twice, interleaved:

- fresh: no desktop is running; thinserve starts Xvnc and the session;
- taken over: a first thinserve started the desktop and was stopped
  (SIGTERM, the desktop left running); a second one takes it over.

Both times are from the process's start until its log says the desktop's
link is live (from then on a terminal gets its pictures), read from the
JSON log lines as they arrive.  Also: until the server said it was ready,
and how long the stop took.  Progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .processes import free_port

TIMEOUT = 120.0


@dataclass
class Timings:
    """One server's start: seconds from its spawn to each milestone."""

    ready: float | None = None
    live: float | None = None
    stop: float | None = None


@dataclass
class Results:
    fresh: list[Timings] = field(default_factory=list)
    taken_over: list[Timings] = field(default_factory=list)


class Server:
    """``thinserve serve`` on ``config``, its JSON log read line by line."""

    def __init__(self, config: Path, state: Path, stop_desktops: bool) -> None:
        args = [sys.executable, "-m", "thinserve.cli", "--log-format", "json", "serve"]
        args += ["--config", str(config), "--state-dir", str(state)]
        if stop_desktops:
            args.append("--stop-desktops")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.timings = Timings()
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            now = time.monotonic() - self.started
            message = _message(raw)
            with self._changed:
                self.lines = [*self.lines[-50:], message]
                if "thinserve is ready" in message and self.timings.ready is None:
                    self.timings.ready = now
                if " live at " in message and self.timings.live is None:
                    self.timings.live = now
                self._changed.notify_all()

    def wait_for(self, done: Callable[[Timings], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while not done(self.timings):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"thinserve: {' | '.join(self.lines[-5:])}")
                self._changed.wait(0.5)

    def stop(self) -> Timings:
        asked = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(TIMEOUT)
        self.timings.stop = time.monotonic() - asked
        return self.timings


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("message", ""))
    except ValueError:
        return raw.decode(errors="replace").strip()


def _config(folder: Path, port: int) -> Path:
    """The embedded default desktop, on a port of its own, nothing else."""
    user = 'user = "thinserve-desktop"' if os.geteuid() == 0 else ""
    path = folder / "thinserve.toml"
    path.write_text(
        "[server]\n"
        f'listen = ["tcp:port={port}:interface=127.0.0.1"]\n'
        "web_listen = []\n\n"
        "[discovery]\nenabled = false\n\n"
        f'[[local_desktop]]\nname = "desktop-1"\n{user}\n'
    )
    return path


def _live(timings: Timings) -> bool:
    return timings.live is not None


def _fresh(config: Path, state: Path) -> Timings:
    server = Server(config, state, stop_desktops=True)
    server.wait_for(_live)
    return server.stop()


def _taken_over(config: Path, state: Path) -> Timings:
    first = Server(config, state, stop_desktops=False)
    first.wait_for(_live)
    first.stop()
    second = Server(config, state, stop_desktops=True)
    second.wait_for(_live)
    return second.stop()


def run(rounds: int, progress: Callable[[str], None]) -> Results:
    results = Results()
    folder = Path(tempfile.mkdtemp(prefix="thinserve-restart-"))
    os.chmod(folder, 0o711)  # the desktop's user passes through to its sockets
    try:
        config = _config(folder, free_port())
        for round_ in range(1, rounds + 1):
            progress(f"restart: round {round_}/{rounds}")
            results.fresh.append(_fresh(config, folder / f"fresh-{round_}"))
            results.taken_over.append(_taken_over(config, folder / f"over-{round_}"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.2f} s ({low:.2f}-{high:.2f})"


def _column(runs: list[Timings], name: str) -> list[float]:
    return [v for v in (getattr(t, name) for t in runs) if v is not None]


def render(results: Results, machine: list[str]) -> list[str]:
    out = ["", "## thinserve restart benchmark", ""]
    out += [f"- {line}" for line in machine]
    out += [
        f"- {len(results.fresh)} rounds, interleaved; the default desktop (Xvnc + IceWM)",
        "",
        "| start | ready | desktop live | stop |",
        "| --- | --- | --- | --- |",
    ]
    for label, runs in (("fresh desktop", results.fresh), ("taken over", results.taken_over)):
        cells = [_spread(_column(runs, name)) for name in ("ready", "live", "stop")]
        out.append(f"| {label} | {' | '.join(cells)} |")
    fresh, over = _column(results.fresh, "live"), _column(results.taken_over, "live")
    if fresh and over:
        ratio = statistics.median(over) / statistics.median(fresh)
        out += ["", f"Desktop live after a restart: {ratio:.2f}x the time of a fresh start."]
    return out
