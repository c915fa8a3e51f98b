"""What the dashboard's live wall costs thinserve: ``python -m bench dashboard [--quick]``.

50 real Xvnc desktops (640x480; 10 with --quick) are ``[[desktop]]`` entries
of one ``thinserve serve --config FILE --state-dir DIR`` process, which serves
the real dashboard on ``[server] dashboard_listen``.  Before measuring, an
admin and an API token are made with thinserve's own commands over its admin
socket (``thinserve admins add``, ``thinserve tokens add``); the dashboard
client sends the token with every request, as a script would.  The thinserve
process's CPU time (``utime + stime`` of all its threads, /proc/PID/stat) is
measured over a window in four conditions, interleaved over several rounds:

- idle, no dashboard: nothing changes, no one watches;
- idle, watched: a dashboard client is connected (an SSE client that fetches
  every thumbnail whose version changed, as the page does);
- changing, no dashboard: every desktop changes once a second (a clock-like
  patch drawn with PutImage), no one watches;
- changing, watched: both.

Before each window the condition settles for longer than the thumbnails'
watch window, so a client that just left costs nothing in the next one.
The dashboard's own cost is watched minus unwatched, per round.  The
desktops are painted and changed from this process (its CPU is not
thinserve's).  Every thumbnail must come back 200 (a 401 or 403 means the
token was refused: the run stops), and a watched window must have fetched
every desktop's thumbnail at least once.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .processes import Meter, ServerProcess, config_toml
from .xvnc import Xvnc, free_port, start_many

THINSERVE = [sys.executable, "-m", "thinserve.cli"]
SIZE = (640, 480)
CHANGE_EVERY = 1.0  # seconds between two changes of each desktop
PATCH = (160, 48)  # the changing patch: width, height


@dataclass(frozen=True)
class DashboardOptions:
    desktops: int
    rounds: int
    window: float  # seconds measured per condition
    settle: float  # seconds before each window (longer than the watch window)

    @classmethod
    def of(cls, quick: bool) -> DashboardOptions:
        if quick:
            return cls(desktops=10, rounds=2, window=10.0, settle=12.0)
        return cls(desktops=50, rounds=3, window=20.0, settle=12.0)


CONDITIONS = (
    ("idle", False),
    ("idle", True),
    ("changing", False),
    ("changing", True),
)


@dataclass
class Sample:
    cpu_percent: float
    fetched_per_second: float
    kbytes_per_second: float


@dataclass
class Results:
    samples: dict[tuple[str, bool], list[Sample]] = field(default_factory=dict)


# -- the desktops ---------------------------------------------------------------------------
class Painter:
    """Changes every desktop once a second, from a thread (each X connection used by it alone)."""

    def __init__(self, desktops: list[Xvnc]) -> None:
        self.desktops = desktops
        self._on = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def changing(self, on: bool) -> None:
        if on:
            self._on.set()
        else:
            self._on.clear()

    def stop(self) -> None:
        self._stop.set()
        self._on.set()
        self._thread.join(10)

    def _run(self) -> None:
        step = 0
        width, height = PATCH
        while not self._stop.is_set():
            self._on.wait()
            started = time.monotonic()
            for index, desktop in enumerate(self.desktops):
                colour = np.uint32((step * 40503 + index * 2654435761) & 0xFFFFFF)
                patch = np.full((height, width), colour, dtype=np.uint32)
                patch[height // 3 : 2 * height // 3, : (step % 10 + 1) * width // 10] = 0xFFFFFF
                assert desktop.x is not None
                gc = desktop.x.screen().root.create_gc()
                desktop.put(gc, 20, 20, patch)
                gc.free()
                desktop.x.flush()
            step += 1
            self._stop.wait(max(0.0, CHANGE_EVERY - (time.monotonic() - started)))


def start_desktops(count: int, progress: Callable[[str], None]) -> list[Xvnc]:
    progress(f"dashboard: starting {count} Xvnc desktops of {SIZE[0]}x{SIZE[1]}")
    desktops = [Xvnc(*SIZE, name=f"wall-{i}") for i in range(count)]
    start_many(desktops)
    rng = np.random.default_rng(7)
    for desktop in desktops:  # a still picture of flat blocks on each
        colours = rng.integers(0, 0x1000000, size=(15, 20), dtype=np.uint32)
        desktop.draw(np.kron(colours, np.ones((32, 32), dtype=np.uint32)))
    return desktops


# -- the dashboard client -------------------------------------------------------------------
class WallClient:
    """The page's live part: reads the event stream, fetches every changed thumbnail,
    sending the API token with each request.  Any answer but 200 stops it (``error``)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}"}
        self.fetched = 0  # thumbnails answered 200
        self.bytes = 0
        self.status = 0
        self.error = ""
        self._closing = False
        self._events = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self._images = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self._known: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._events.request("GET", "/api/v1/events", headers=self.headers)
            response = self._events.getresponse()
            self.status = response.status
            if response.status != 200:
                raise Refused("/api/v1/events", response.status, response.read(300))
            for raw in response:
                line = raw.decode()
                if line.startswith("data: "):
                    self._fetch_changed(json.loads(line[6:])["thumbnails"])
        except Refused as exc:
            self.error = str(exc)
        except Exception as exc:  # http.client fails in several ways once closed under it
            if not self._closing:
                self.error = f"{type(exc).__name__}: {exc}"

    def _fetch_changed(self, versions: dict[str, int]) -> None:
        for key, version in versions.items():
            if self._known.get(key) == version:
                continue
            kind, name = key.split("/", 1)
            path = f"/api/v1/thumbnails/{kind}s/{name}.jpg"
            self._images.request("GET", path, headers=self.headers)
            response = self._images.getresponse()
            body = response.read()
            if response.status != 200:
                raise Refused(path, response.status, body[:300])
            self._known[key] = version
            self.fetched += 1
            self.bytes += len(body)

    def check(self, desktops: int) -> None:
        """Raise RuntimeError unless every answer was 200 and every desktop's
        thumbnail arrived at least once."""
        if self.status != 200 or self.error:
            raise RuntimeError(f"the dashboard client: {self.status} {self.error}")
        if self.fetched < desktops:
            raise RuntimeError(
                f"the dashboard client got {self.fetched} thumbnails, "
                f"fewer than the {desktops} desktops"
            )

    def close(self) -> None:
        self._closing = True
        for connection in (self._events, self._images):
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(2)
            connection.close()
        self._thread.join(10)


class Refused(Exception):
    """The dashboard answered a request with something else than 200."""

    def __init__(self, path: str, status: int, body: bytes) -> None:
        hint = " (the API token was refused)" if status in (401, 403) else ""
        super().__init__(f"GET {path}: {status}{hint}: {body.decode(errors='replace').strip()}")


# -- measuring ------------------------------------------------------------------------------
def measure(
    server: ServerProcess,
    token: str,
    painter: Painter,
    condition: tuple[str, bool],
    options: DashboardOptions,
) -> Sample:
    changing, watched = condition[0] == "changing", condition[1]
    painter.changing(changing)
    client = WallClient(server.port, token) if watched else None
    try:
        time.sleep(options.settle)  # the condition's start-up is not its steady cost
        fetched = client.fetched if client else 0
        sent = client.bytes if client else 0
        meter = Meter(server.pid).start()
        time.sleep(options.window)
        cpu, wall = meter.read()
        if client is not None:
            client.check(options.desktops)
        return Sample(
            100.0 * cpu / wall,
            ((client.fetched - fetched) / wall) if client else 0.0,
            ((client.bytes - sent) / 1024 / wall) if client else 0.0,
        )
    finally:
        if client is not None:
            client.close()


def run(options: DashboardOptions, progress: Callable[[str], None]) -> Results:
    folder = Path(tempfile.mkdtemp(prefix="thinserve-dashboard-"))
    desktops: list[Xvnc] = []
    server: ServerProcess | None = None
    painter: Painter | None = None
    try:
        desktops = start_desktops(options.desktops, progress)
        server = start_thinserve(folder, [(d.name, d.port) for d in desktops], progress)
        token = make_token(folder / "state")
        painter = Painter(desktops)
        results = Results()
        for round_ in range(options.rounds):
            order = CONDITIONS[round_ % 4 :] + CONDITIONS[: round_ % 4]
            for condition in order:
                progress(f"dashboard: round {round_ + 1}/{options.rounds}: {_label(condition)}")
                sample = measure(server, token, painter, condition, options)
                results.samples.setdefault(condition, []).append(sample)
        return results
    finally:
        if painter is not None:
            painter.stop()
        if server is not None:
            server.stop()
        for desktop in desktops:
            desktop.stop()
        shutil.rmtree(folder, ignore_errors=True)


# -- the server -----------------------------------------------------------------------------
def start_thinserve(
    folder: Path, desktops: list[tuple[str, int]], progress: Callable[[str], None]
) -> ServerProcess:
    """``thinserve serve`` on ``desktops``, its dashboard on a free loopback port;
    started once that port listens."""
    port = free_port()
    config = folder / "thinserve.toml"
    dashboard = f'dashboard_listen = ["tcp:port={port}:interface=127.0.0.1"]'
    server_lines = ("web_listen = []", dashboard)
    config.write_text(config_toml(free_port(), desktops, server_lines, database=None))
    state = folder / "state"
    state.mkdir()
    progress(f"dashboard: thinserve serve, its dashboard on 127.0.0.1:{port}")
    server = ServerProcess(
        [*THINSERVE, "serve", "--config", str(config), "--state-dir", str(state)], port
    )
    try:
        server.start()
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{server.errors()[-1000:]}") from None
    return server


def make_token(state: Path) -> str:
    """An admin ``bench`` and an API token acting as it, made with thinserve's
    own commands over the admin socket of the server using ``state``."""
    where = ["--state-dir", str(state)]
    password = secrets.token_urlsafe(24)
    command([*THINSERVE, "admins", "add", "bench", *where, "--password-stdin"], password + "\n")
    token = command([*THINSERVE, "tokens", "add", "bench", "--label", "bench", *where]).strip()
    if not token:
        raise RuntimeError("thinserve tokens add printed no token")
    return token


def command(args: list[str], stdin: str = "") -> str:
    """Run a thinserve command; its standard output (RuntimeError when it fails)."""
    name = " ".join(args[3:5])
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"thinserve {name} did not finish within 60 s") from None
    if done.returncode != 0:
        raise RuntimeError(f"thinserve {name} failed: {done.stderr.strip()}")
    return done.stdout


# -- the report -----------------------------------------------------------------------------
def _label(condition: tuple[str, bool]) -> str:
    return f"{condition[0]}, {'watched' if condition[1] else 'no dashboard'}"


def _spread(values: list[float], unit: str = "") -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f}{unit} ({min(values):.1f}-{max(values):.1f})"


def render(options: DashboardOptions, results: Results, machine: list[str]) -> list[str]:
    out = ["", "## thinserve dashboard benchmark", ""]
    out += [f"- {line}" for line in machine]
    out += [
        f"- {options.desktops} Xvnc desktops of {SIZE[0]}x{SIZE[1]} mirrored by one thinserve "
        f"process; {options.rounds} rounds, interleaved; {options.window:.0f} s windows after "
        f"{options.settle:.0f} s to settle",
        f"- changing: each desktop redraws a {PATCH[0]}x{PATCH[1]} patch every "
        f"{CHANGE_EVERY:g} s; watched: one SSE client fetching every changed thumbnail",
        "",
        "| condition | thinserve CPU, % of one core | thumbnails fetched / s | KiB / s |",
        "| --- | --- | --- | --- |",
    ]
    for condition in CONDITIONS:
        samples = results.samples.get(condition, [])
        cells = (
            _spread([s.cpu_percent for s in samples], " %"),
            _spread([s.fetched_per_second for s in samples]),
            _spread([s.kbytes_per_second for s in samples]),
        )
        out.append(f"| {_label(condition)} | {' | '.join(cells)} |")
    out += ["", "The dashboard's own cost (watched minus no dashboard, per round):", ""]
    for screens in ("idle", "changing"):
        watched = results.samples.get((screens, True), [])
        alone = results.samples.get((screens, False), [])
        costs = [w.cpu_percent - a.cpu_percent for w, a in zip(watched, alone, strict=False)]
        out.append(f"- {screens} screens: {_spread(costs, ' points')} of one core")
    return out
