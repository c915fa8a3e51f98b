"""The desktop manager with real desktops: on-demand starts, crashes, pools.

thinserve is assembled here from its parts (store, broker, hub, RFB
listener, desktop manager), as the service does, with real Xvnc sessions
and real QEMU guests as desktops.  Terminals are real RFB clients on
loopback.  The policy tick runs on a fake clock so a test decides when
desktops count as idle; starting and stopping are real processes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.interfaces import IListeningPort

from protocols.rfb.client import ClientEvent, UpdateDone
from tests.integration.test_backend_qemu import BLOCK, first_block, make_template
from tests.support.backendvm import require_qemu, tiny_linux, vm_accel
from tests.support.need import need
from tests.support.terminal import Terminal
from tests.support.waiting import sleep, wait_until
from thinserve import rfbclient
from thinserve.backends.qemu import QemuBackend, QemuDesktopConfig
from thinserve.backends.xvnc import XvncBackend, XvncDesktopConfig, XvncOptions
from thinserve.broker import Broker, BrokerConfig, ScreenKind, ShowDesktop, ShowScreen
from thinserve.desktop_state import DesktopState
from thinserve.desktops import (
    DesktopManager,
    DesktopsConfig,
    PoolPolicy,
    bridge,
    desktops_in_use,
)
from thinserve.hub import Hub
from thinserve.relay import screens
from thinserve.rfbserver import RFBServerFactory, ServerOptions
from thinserve.secrets import SecretHasher
from thinserve.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration

SIZE = (1024, 768)  # the mirrors' initial size: no terminal resizes in these tests
GEOMETRY = f"{SIZE[0]}x{SIZE[1]}"
FAST_HASHER = SecretHasher(time_cost=1, memory_cost=8192, parallelism=1)


# --- a thinserve assembled from its parts -------------------------------------------------


class Recorder:
    """The desktop manager's reports, recorded on their way to the hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.calls: list[tuple[str, str, float | None]] = []

    def desktop_state(
        self,
        name: str,
        state: DesktopState,
        progress: float | None = None,
        detail: str = "",
        failed_start: bool = False,
    ) -> None:
        self.calls.append((name, state.value, progress))
        self.hub.desktop_state(name, state, progress, detail, failed_start)

    def of(self, name: str, since: int = 0) -> list[tuple[str, float | None]]:
        return [(what, p) for n, what, p in self.calls[since:] if n == name]


@dataclass
class Site:
    manager: DesktopManager
    broker: Broker
    hub: Hub
    store: SqliteStore
    listening: IListeningPort
    reports: Recorder

    @property
    def port(self) -> int:
        return self.listening.getHost().port  # type: ignore[attr-defined,no-any-return]

    def shown(self, terminal: str) -> object:
        return self.broker.assignment(terminal)

    async def close(self) -> None:
        self.hub.stop()
        await self.manager.close()
        await self.listening.stopListening()
        self.store.close()


def open_site(manager: DesktopManager, config: BrokerConfig) -> Site:
    """Store, broker, hub and RFB listener around ``manager``, wired as the service does."""
    store = SqliteStore(":memory:")
    broker = Broker(store, config, hasher=FAST_HASHER)
    hub = Hub(
        broker,
        manager.mirrors,
        reactor,
        on_desktop_wanted=manager.want,
        address_subnets=("127.0.0.0/8",),  # keyless viewers here are viewer-127.0.0.N
    )
    for name, backend, state in manager.registrations():
        broker.register_desktop(name, backend, state)
    reports = Recorder(hub)
    manager.start(reports, lambda: desktops_in_use(broker.snapshot()))
    hub.start()
    factory = RFBServerFactory(ServerOptions(), hub.new_session)
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    return Site(manager, broker, hub, store, listening, reports)


def pool_of(*names: str) -> BrokerConfig:
    """Unknown terminals get the first free desktop of one pool "p"."""
    return BrokerConfig(unknown_terminal="pool", pools={"p": names}, default_pool="p")


def frame_key(frame: np.ndarray) -> bytes:
    return hashlib.sha1(str(frame.shape).encode() + frame.tobytes()).digest()


class FilmingTerminal(Terminal):
    """A terminal that remembers every picture it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []

    def _on_event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        super()._on_event(proto, event)
        if isinstance(event, UpdateDone):
            self.frames.append(frame_key(proto.conn.framebuffer))

    async def wait_mirror(self, site: Site, desktop: str, timeout: float = 30) -> None:
        """Until this terminal shows exactly what the live mirror of ``desktop`` holds."""
        mirror = site.manager.mirrors[desktop]
        await wait_until(
            lambda: (
                site.manager.desktops[desktop].live
                and self.framebuffer.shape == mirror.framebuffer.shape
                and np.array_equal(self.framebuffer, mirror.framebuffer)
            ),
            timeout,
            f"the terminal to show {desktop}",
        )


def drawn(text: screens.ScreenText, size: tuple[int, int] = SIZE) -> np.ndarray:
    return screens.render(text, *size)


def screen_of(shown: object) -> np.ndarray:
    """What the hub draws for a broker screen (as thinserve.hub does)."""
    assert isinstance(shown, ShowScreen), shown
    if shown.kind is ScreenKind.STARTING:
        return drawn(screens.starting(shown.desktop or "", shown.progress))
    if shown.kind is ScreenKind.FAILED:
        return drawn(screens.could_not_start(shown.desktop or "", shown.message))
    assert shown.kind is ScreenKind.UNAVAILABLE, shown.kind
    return drawn(screens.unavailable(shown.desktop or "the desktop", 0, shown.message))


# --- Xvnc desktops for the tests ------------------------------------------------------------


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short directory for session sockets (a Unix socket path is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tsx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def need_xvnc_session() -> None:
    need("Xvnc", "to run desktop sessions")
    need("xterm", "as the sessions' program")
    need("setsid", "to give each session its own process group (util-linux)")


def xterm_writing(out: Path) -> str:
    """A session program: one xterm at the top left; what is typed goes to ``out``."""
    return f"xterm -geometry 80x10+0+0 -e sh -c 'cat > {out}'"


def xvnc_desktops(
    runtime_dir: Path, names: list[str], tmp_path: Path, **settings: object
) -> XvncBackend:
    need_xvnc_session()
    configs = [
        XvncDesktopConfig(
            name,
            geometry=GEOMETRY,
            command=xterm_writing(tmp_path / f"{name}.typed"),
            **settings,  # type: ignore[arg-type]
        )
        for name in names
    ]
    return XvncBackend(configs, options=XvncOptions(runtime_dir=runtime_dir))


def alive(pid: int | None) -> bool:
    return pid is not None and Path(f"/proc/{pid}").exists()


def xvnc_pid(backend: XvncBackend, name: str) -> int | None:
    return backend.session(name).processes()[0]


def xterm_shown(frame: np.ndarray, typed: Path) -> bool:
    """Whether the session's xterm runs and is drawn: its shell made ``typed``,
    and its white window is in the top left corner (the root window is black)."""
    return typed.exists() and frame.shape[0] > 20 and bool((frame[5:20, 5:20] == 0xFFFFFF).any())


async def type_into_xterm(term: Terminal, text: str) -> None:
    term.pointer(60, 40)  # over the xterm: without a window manager focus follows the pointer
    await sleep(0.3)
    term.type_text(text)


@dataclass
class ProcessWatch:
    """Counts live Xvnc processes of a backend every 20 ms; remembers the most seen."""

    backend: XvncBackend
    most: int = 0
    loop: task.LoopingCall | None = field(default=None)

    def start(self) -> ProcessWatch:
        self.loop = task.LoopingCall(self._look)
        self.loop.start(0.02)
        return self

    def _look(self) -> None:
        pids = [s.run.xvnc_pid for s in self.backend.sessions.values() if s.run is not None]
        self.most = max(self.most, sum(alive(pid) for pid in pids))

    def stop(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()


# --- on-demand start ---------------------------------------------------------------------------
def gated_hypervisor(tmp_path: Path) -> tuple[Path, Path]:
    """The real QEMU, started only once the test creates the returned file: a
    warm QEMU is on its console in tens of milliseconds, too soon for any
    terminal to see a starting screen (a real host with a VM image on a busy
    disk is much slower).  The gate waits 60 s at most."""
    gate = tmp_path / "go"
    wrapper = tmp_path / "gated-qemu-system-x86_64"
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'i=0; while [ ! -e "{gate}" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n'
        f'exec {qemu} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, gate


class StartingScreens:
    """The starting screens the manager has reported so far, as frame keys."""

    def __init__(self, site: Site, desktop: str) -> None:
        self.site, self.desktop = site, desktop
        self.keys: dict[float, bytes] = {}

    def shown_by(self, term: FilmingTerminal) -> bool:
        """Whether ``term``'s last picture is a starting screen with a progress bar."""
        for what, p in self.site.reports.of(self.desktop):
            if what == "starting" and p and p not in self.keys:
                self.keys[p] = frame_key(drawn(screens.starting(self.desktop, p)))
        return bool(term.frames) and term.frames[-1] in self.keys.values()


@pytest_twisted.ensureDeferred
async def test_on_demand_start_shows_progress_then_the_desktop(tmp_path: Path) -> None:
    """A QEMU guest starts when its terminal arrives: progress, then the guest's console."""
    require_qemu()
    linux = tiny_linux()
    hypervisor, gate = gated_hypervisor(tmp_path)
    config = QemuDesktopConfig(
        name="vm",
        state_dir=tmp_path / "state",
        kernel=linux.kernel,
        initrd=linux.initrd,
        append=linux.append,
        memory_mib=128,
        cpus=1,
        accel=vm_accel(),
        nic=None,
        boot_timeout=60.0,
        shutdown_timeout=2.0,
        qemu_binary=str(hypervisor),
    )
    backend = QemuBackend([config])
    broker_config = pool_of("vm")
    manager = DesktopManager(
        DesktopsConfig(progress_interval=0.05), pools=broker_config.pools, clock=task.Clock()
    )
    manager.add("vm", backend, boot_estimate=3.0)
    site = open_site(manager, broker_config)
    term = FilmingTerminal()
    try:
        assert backend.vms["vm"].status is DesktopState.STOPPED  # nothing runs before it is wanted
        await term.connect(site.port, "127.0.0.2")
        starting = StartingScreens(site, "vm")
        await wait_until(lambda: starting.shown_by(term), 60, "the starting screen's progress")
        gate.touch()  # now QEMU may start
        await term.wait_mirror(site, "vm", timeout=60)
        assert isinstance(site.shown("viewer-127.0.0.2"), ShowDesktop)
    finally:
        term.close()
        await bridge(backend.stop("vm", force=True))
        await site.close()
    reports = site.reports.of("vm")
    assert ("running", None) in reports
    reports = reports[: reports.index(("running", None))]  # the start (the stop came after)
    progress = [p for what, p in reports if what == "starting"]
    assert len(progress) >= 2 and progress[0] < 0.05  # reported from the first moment
    assert all(a < b for a, b in itertools.pairwise(progress))  # it moves
    assert all(0.0 <= p < 1.0 for p in progress)  # type: ignore[operator]
    starting = {frame_key(drawn(screens.starting("vm", p))): p for p in progress}
    seen = [starting[k] for k in term.frames if k in starting]
    assert seen, "the terminal never showed the starting screen"
    assert any(p for p in seen), "the terminal never showed the progress bar moving"


# --- crashes ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_crash_shows_unavailable_and_the_next_want_restarts(
    tmp_path: Path, runtime_dir: Path
) -> None:
    backend = xvnc_desktops(runtime_dir, ["d1"], tmp_path)
    clock = task.Clock()
    manager = DesktopManager(DesktopsConfig(retry_delay=5.0), clock=clock)
    manager.add("d1", backend)
    site = open_site(manager, BrokerConfig())
    site.broker.pair("viewer-127.0.0.2", "d1", "admin:test")
    term = FilmingTerminal()
    try:
        await term.connect(site.port, "127.0.0.2")
        await term.wait_mirror(site, "d1")
        first = xvnc_pid(backend, "d1")
        assert alive(first)

        os.kill(first, signal.SIGKILL)  # type: ignore[arg-type]
        await wait_until(
            lambda: (
                isinstance(shown := site.shown("viewer-127.0.0.2"), ShowScreen)
                and shown.kind is ScreenKind.UNAVAILABLE
            ),
            20,
            "the broker to take the desktop away",
        )
        await term.wait_screen(screen_of(site.shown("viewer-127.0.0.2")))
        md = manager.desktops["d1"]
        assert md.state is DesktopState.CRASHED
        assert md.detail == "Xvnc ended unexpectedly (killed by SIGKILL)"
        assert site.hub.desktop_details["d1"] == md.detail  # what the admin API shows
        assert md.upstream is None  # nothing keeps knocking on a dead socket
        mirror = manager.mirrors["d1"]
        assert mirror.feed is None  # its picture is drawn, not the dead console's

        clock.advance(4.0)  # the retry delay is not over: still unavailable
        assert md.state is DesktopState.CRASHED and not md.busy  # the tick runs at once
        assert isinstance(site.shown("viewer-127.0.0.2"), ShowScreen)
        assert xvnc_pid(backend, "d1") is None

        mark = len(site.reports.calls)
        clock.advance(1.0)  # offered again: the hub wants it, the manager starts it
        await term.wait_mirror(site, "d1")
        second = xvnc_pid(backend, "d1")
        assert alive(second) and second != first
        assert [what for what, _ in site.reports.of("d1", mark)][::-1][:1] == ["running"]
        assert "starting" in [what for what, _ in site.reports.of("d1", mark)]
        assert md.failures == 0 and md.state is DesktopState.RUNNING
    finally:
        term.close()
        await site.close()


@pytest_twisted.ensureDeferred
async def test_a_desktop_that_cannot_start_is_retried_later_and_later(
    tmp_path: Path, runtime_dir: Path
) -> None:
    backend = xvnc_desktops(runtime_dir, ["d1"], tmp_path, extra_args=("-no-such-option",))
    clock = task.Clock()
    manager = DesktopManager(DesktopsConfig(retry_delay=5.0, retry_max=8.0), clock=clock)
    manager.add("d1", backend)
    site = open_site(manager, BrokerConfig())
    site.broker.pair("viewer-127.0.0.2", "d1", "admin:test")
    try:
        term = await FilmingTerminal().connect(site.port, "127.0.0.2")
        md = manager.desktops["d1"]
        await wait_until(lambda: md.state is DesktopState.CRASHED, 20, "the failed start")
        assert md.failures == 1 and md.retry_at == clock.seconds() + 5.0
        assert md.detail.startswith("Xvnc exited before it could report its display")
        assert md.detail.endswith("Unrecognized option: -no-such-option")  # Xvnc's own words
        shown = site.shown("viewer-127.0.0.2")  # the terminal is told why
        assert shown == ShowScreen(ScreenKind.FAILED, md.detail, desktop="d1")
        await term.wait_screen(screen_of(shown))

        clock.advance(5.0)  # offered again: the terminal wants it, it fails again
        await wait_until(lambda: md.failures == 2 and not md.busy, 20, "the second try")
        assert md.retry_at == clock.seconds() + 8.0  # 10 s, capped by retry_max
        assert md.state is DesktopState.CRASHED
        assert [w for w, _ in site.reports.of("d1")].count("starting") >= 2
        term.close()
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_a_desktop_lacking_what_it_needs_is_failed_at_once_and_starts_once_fixed(
    tmp_path: Path, runtime_dir: Path
) -> None:
    backend = xvnc_desktops(runtime_dir, ["d1"], tmp_path)
    clock = task.Clock()
    manager = DesktopManager(DesktopsConfig(retry_delay=5.0, retry_max=8.0), clock=clock)
    lacking = ["its template /nowhere/office.qcow2 does not exist"]
    manager.add("d1", backend, check=lambda: lacking[0])
    site = open_site(manager, BrokerConfig())  # start: the check fails, nobody asked yet
    site.broker.pair("viewer-127.0.0.2", "d1", "admin:test")
    try:
        md = manager.desktops["d1"]
        assert md.state is DesktopState.CRASHED and md.detail == lacking[0]
        assert site.hub.desktop_details["d1"] == lacking[0]  # what the admin API shows
        term = await FilmingTerminal().connect(site.port, "127.0.0.2")
        shown = site.shown("viewer-127.0.0.2")
        assert shown == ShowScreen(ScreenKind.FAILED, lacking[0], desktop="d1")
        await term.wait_screen(screen_of(shown))

        for _ in range(3):  # still lacking: it stays failed, and the backend is never asked
            clock.advance(8.0)
            assert md.state is DesktopState.CRASHED and not md.busy
        assert xvnc_pid(backend, "d1") is None
        assert "starting" not in [w for w, _ in site.reports.of("d1")]

        lacking[0] = ""  # fixed: offered at the next retry, started for its terminal
        clock.advance(8.0)
        await term.wait_mirror(site, "d1")
        assert md.state is DesktopState.RUNNING and alive(xvnc_pid(backend, "d1"))
        term.close()
    finally:
        await site.close()


# --- pools ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_unused_desktop_stops_after_the_idle_timeout(
    tmp_path: Path, runtime_dir: Path
) -> None:
    backend = xvnc_desktops(runtime_dir, ["d1"], tmp_path)
    clock = task.Clock()
    manager = DesktopManager(DesktopsConfig(unpooled=PoolPolicy(idle_stop_after=60.0)), clock=clock)
    manager.add("d1", backend)
    site = open_site(manager, BrokerConfig())
    site.broker.pair("viewer-127.0.0.2", "d1", "admin:test")
    try:
        term = await FilmingTerminal().connect(site.port, "127.0.0.2")
        await term.wait_mirror(site, "d1")
        pid = xvnc_pid(backend, "d1")
        clock.advance(600.0)  # in use: never idle however long
        md = manager.desktops["d1"]
        assert md.state is DesktopState.RUNNING and not md.busy  # the tick runs at once
        assert xvnc_pid(backend, "d1") == pid and alive(pid)
        last = manager.mirrors["d1"].framebuffer.copy()

        term.close()
        await wait_until(lambda: not site.broker.is_connected("viewer-127.0.0.2"), 10, "goodbye")
        clock.advance(1.0)  # the tick sees it unused from now
        clock.advance(59.0)
        assert md.state is DesktopState.RUNNING and not md.busy  # 59 s idle: no stop begun
        assert alive(pid)
        clock.advance(1.0)
        await wait_until(lambda: not alive(pid), 20, "the idle desktop to stop")
        await wait_until(
            lambda: backend.session("d1").status is DesktopState.STOPPED, 10, "stopped"
        )
        mirror = manager.mirrors["d1"]
        assert not np.array_equal(mirror.framebuffer, last)  # not one of its old pixels
        assert np.array_equal(mirror.framebuffer, drawn(screens.starting("d1", None)))
        assert manager.desktops["d1"].state is DesktopState.STOPPED  # offered: started on demand

        again = await FilmingTerminal().connect(site.port, "127.0.0.2")  # started on demand
        await again.wait_mirror(site, "d1")
        assert alive(xvnc_pid(backend, "d1"))
        again.close()
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_spares_are_ready_ahead_and_max_running_is_never_exceeded(
    tmp_path: Path, runtime_dir: Path
) -> None:
    backend = xvnc_desktops(runtime_dir, ["p-1", "p-2", "p-3"], tmp_path)
    broker_config = pool_of("p-1", "p-2", "p-3")
    clock = task.Clock()
    policy = PoolPolicy(max_running=2, spare=1)
    manager = DesktopManager(
        DesktopsConfig(pools={"p": policy}), pools=broker_config.pools, clock=clock
    )
    for name in ("p-1", "p-2", "p-3"):
        manager.add(name, backend)
    watch = ProcessWatch(backend).start()
    site = open_site(manager, broker_config)  # the first tick starts one spare
    terms: list[FilmingTerminal] = []
    try:
        assert manager.running("p") == ["p-1"]
        await wait_until(lambda: manager.desktops["p-1"].live, 20, "the spare")
        mark = len(site.reports.calls)
        terms.append(await FilmingTerminal().connect(site.port, "127.0.0.2"))
        await terms[0].wait_mirror(site, "p-1")
        assert "starting" not in [w for w, _ in site.reports.of("p-1", mark)]

        clock.advance(1.0)  # the next spare
        assert manager.running("p") == ["p-1", "p-2"]
        await wait_until(lambda: manager.desktops["p-2"].live, 20, "the second spare")
        mark = len(site.reports.calls)
        terms.append(await FilmingTerminal().connect(site.port, "127.0.0.3"))
        await terms[1].wait_mirror(site, "p-2")
        assert "starting" not in [w for w, _ in site.reports.of("p-2", mark)]
        starting_screens = {frame_key(drawn(screens.starting(n, None))) for n in ("p-1", "p-2")}
        assert not starting_screens & {k for t in terms for k in t.frames}

        clock.advance(1.0)  # two run, both in use: p-3 is neither started nor offered
        assert manager.running("p") == ["p-1", "p-2"]
        assert manager.desktops["p-3"].state is DesktopState.HELD
        terms.append(await FilmingTerminal().connect(site.port, "127.0.0.4"))
        waiting = site.shown("viewer-127.0.0.4")
        assert isinstance(waiting, ShowScreen) and waiting.kind is ScreenKind.NO_DESKTOP_FREE
        assert await manager.want("p-3") is False  # asked directly: refused, not started
        assert manager.running("p") == ["p-1", "p-2"]

        terms[1].close()  # p-2 is free again: the waiting terminal gets it at once
        await terms[2].wait_mirror(site, "p-2")
        terms[2].close()
        await wait_until(lambda: not site.broker.is_connected("viewer-127.0.0.4"), 10, "goodbye")
        clock.advance(1.0)  # p-2 runs unused: p-3 may be offered, stopping p-2 for it
        assert manager.desktops["p-3"].state is DesktopState.STOPPED
        p2 = xvnc_pid(backend, "p-2")
        assert await manager.want("p-3") is True
        assert not alive(p2) and alive(xvnc_pid(backend, "p-3"))
        assert sorted(manager.running("p")) == ["p-1", "p-3"]
        assert watch.most == 2
    finally:
        watch.stop()
        for term in terms:
            term.close()
        await site.close()


@pytest_twisted.ensureDeferred
async def test_reset_on_release_gives_the_next_user_a_fresh_session(
    tmp_path: Path, runtime_dir: Path
) -> None:
    """Kiosk: the desktop passes straight from one terminal to the next, never
    showing the first one's session to the second."""
    backend = xvnc_desktops(runtime_dir, ["k-1"], tmp_path)
    broker_config = pool_of("k-1")
    policy = PoolPolicy(reset_on_release=True)
    manager = DesktopManager(
        DesktopsConfig(pools={"p": policy}), pools=broker_config.pools, clock=task.Clock()
    )
    manager.add("k-1", backend)
    site = open_site(manager, broker_config)
    typed = tmp_path / "k-1.typed"
    try:
        first = await FilmingTerminal().connect(site.port, "127.0.0.2")
        await wait_until(
            lambda: xterm_shown(manager.mirrors["k-1"].framebuffer, typed), 20, "xterm"
        )
        await first.wait_mirror(site, "k-1")
        fresh = manager.mirrors["k-1"].framebuffer.copy()  # the session as it starts, xterm up
        await type_into_xterm(first, "private notes\n")
        await wait_until(lambda: typed.read_text() == "private notes\n", 20, "typed text")
        mirror = manager.mirrors["k-1"]
        await wait_until(lambda: not np.array_equal(mirror.framebuffer, fresh), 10, "the echo")
        used = mirror.framebuffer.copy()
        old = xvnc_pid(backend, "k-1")

        first.close()
        await wait_until(lambda: not site.broker.is_connected("viewer-127.0.0.2"), 10, "goodbye")
        second = await FilmingTerminal().connect(site.port, "127.0.0.3")  # before any tick
        await wait_until(lambda: alive(xvnc_pid(backend, "k-1")), 20, "a new session")
        assert xvnc_pid(backend, "k-1") != old and not alive(old)
        await second.wait_mirror(site, "k-1")
        await second.wait_screen(fresh)  # the new session looks like a fresh one ...
        await wait_until(lambda: typed.read_text() == "", 10, "a new xterm")  # ... and is one
        assert frame_key(used) not in second.frames  # never a pixel of the first session
        second.close()
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_reset_on_release_gives_a_qemu_desktop_a_fresh_overlay(tmp_path: Path) -> None:
    require_qemu()
    linux = tiny_linux()
    config = QemuDesktopConfig(
        name="k-1",
        state_dir=tmp_path / "state",
        template=make_template(tmp_path / "template.qcow2", 0x11),
        template_format="qcow2",
        kernel=linux.kernel,
        initrd=linux.initrd,
        append=linux.append,
        memory_mib=128,
        cpus=1,
        accel=vm_accel(),
        nic=None,
        shutdown_timeout=2.0,
    )
    backend = QemuBackend([config])
    broker_config = pool_of("k-1")
    clock = task.Clock()
    manager = DesktopManager(
        DesktopsConfig(pools={"p": PoolPolicy(reset_on_release=True)}),
        pools=broker_config.pools,
        clock=clock,
    )
    manager.add("k-1", backend)
    site = open_site(manager, broker_config)
    try:
        term = await FilmingTerminal().connect(site.port, "127.0.0.2")
        await wait_until(lambda: manager.desktops["k-1"].live, 60, "the guest")
        # What the user changed: written to the running guest's disk.
        await bridge(
            backend.execute(
                "k-1",
                "human-monitor-command",
                {"command-line": f'qemu-io virtio0 "write -P 0x5a 0 {BLOCK}"'},
            )
        )
        before = config.overlay.stat().st_ino
        term.close()
        await wait_until(lambda: not site.broker.is_connected("viewer-127.0.0.2"), 10, "goodbye")
        clock.advance(1.0)  # the tick sees the release
        md = manager.desktops["k-1"]
        await wait_until(lambda: not md.needs_reset and not md.busy, 30, "the reset")
        assert backend.vms["k-1"].status is DesktopState.STOPPED
        assert config.overlay.stat().st_ino != before  # a new overlay ...
        assert first_block(config.overlay, tmp_path) == b"\x11" * BLOCK  # ... of the template
    finally:
        await bridge(backend.stop("k-1", force=True))
        await site.close()


# --- who uses what, and settings ---------------------------------------------------------------


def test_desktops_in_use_names_who_holds_each_desktop() -> None:
    config = BrokerConfig(
        unknown_terminal="pool", pools={"p": ("d3",)}, default_pool="p", hot_desk=True
    )
    broker = Broker(SqliteStore(":memory:"), config, hasher=FAST_HASHER)
    for name in ("d1", "d2", "d3", "d4", "d5"):
        broker.register_desktop(name, "xvnc")
    broker.pair("t1", "d1", "admin")
    broker.pair("t5", "d4", "admin")
    broker.add_user("alice", "1234", "admin", desktop="d2")
    for terminal in ("t1", "t2", "t3", "t4", "t5"):
        broker.terminal_connected(terminal)
    broker.login("t2", "alice", "1234")
    broker.shadow("t4", "d5", "admin")  # watching is not using
    broker.desktop_state("d4", DesktopState.CRASHED)  # t5 waits for it: still in use
    assert desktops_in_use(broker.snapshot()) == {
        "d1": "terminal:t1",
        "d2": "user:alice",
        "d3": "terminal:t3",
        "d4": "terminal:t5",
    }


def test_policies_are_checked() -> None:
    with pytest.raises(ValueError, match="spare cannot be more than max_running"):
        PoolPolicy(max_running=2, spare=3)
    with pytest.raises(ValueError, match="idle_stop_after"):
        PoolPolicy(idle_stop_after=0)
    with pytest.raises(ValueError, match="retry_max"):
        DesktopsConfig(retry_delay=10, retry_max=5)
    with pytest.raises(ValueError, match="pools the broker does not have: typo"):
        DesktopManager(DesktopsConfig(pools={"typo": PoolPolicy()}), pools={"p": ("d",)})
