"""The Xvnc backend (the shared-PC mode) with real Xvnc sessions and real Unix users.

Per-user tests create Linux users with ``useradd`` (so they need root, as in
CI) and remove them, with anything still running as them, at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import stat
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.integration.test_desktops import (
    GEOMETRY,
    FilmingTerminal,
    alive,
    need_xvnc_session,
    open_site,
    runtime_dir,
    type_into_xterm,
    xterm_shown,
    xterm_writing,
)
from tests.support.aio import as_deferred
from tests.support.console import Console
from tests.support.need import need
from tests.support.procs import spawn
from tests.support.statuslog import StatusLog
from tests.support.terminal import Terminal
from tests.support.waiting import sleep, wait_until
from thinserve.backends.base import BackendError
from thinserve.backends.xvnc import (
    Account,
    XvncBackend,
    XvncDesktopConfig,
    XvncOptions,
    xauthority_entry,
)
from thinserve.broker import BrokerConfig, ShowDesktop
from thinserve.config import Config, LocalDesktopConfig
from thinserve.desktop_state import DesktopState
from thinserve.desktops import DesktopManager
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

__all__ = ["runtime_dir"]  # a fixture, shared with test_desktops

USERS = ("tsuser1", "tsuser2")

T = TypeVar("T")


# --- Unix users ----------------------------------------------------------------------------


def processes_of(uid: int) -> list[int]:
    """Every live process (not a zombie) whose real uid is ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = proc_status(int(entry.name))
            except (OSError, ValueError):
                continue
            if int(status["Uid"].split()[0]) == uid and not status["State"].startswith("Z"):
                found.append(int(entry.name))
    return found


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def status_uids(pid: int) -> tuple[int, ...]:
    """The Uid line of /proc/PID/status: real, effective, saved, filesystem."""
    return tuple(int(x) for x in proc_status(pid)["Uid"].split())


def group_of(pgid: int) -> list[int]:
    """The processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for pid in processes_of(uid):  # only what ran as this test's own user
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@pytest.fixture
def unix_users() -> Iterator[dict[str, Account]]:
    """tsuser1 and tsuser2, made for this test with home directories."""
    need(os.geteuid() == 0, "root, to create Unix users for per-user sessions (CI runs as root)")
    need("useradd", "to create the test's Unix users")
    need("setpriv", "to run commands as the test's users (util-linux)")
    accounts = {}
    try:
        for name in USERS:
            remove_user(name)  # left over from an interrupted run
            subprocess.run(
                ["useradd", "--create-home", "--shell", "/bin/sh", name],
                check=True,
                capture_output=True,
            )
            accounts[name] = Account.of(name)
        yield accounts
    finally:
        for name in USERS:
            remove_user(name)


def as_user(account: Account, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``argv`` as ``account``; its exit status."""
    wrapped = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups"]
    result = subprocess.run(
        [*wrapped, "--", *argv],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        timeout=20,
        check=False,
    )
    return result.returncode


def per_user(runtime_dir: Path, tmp_path: Path) -> list[XvncDesktopConfig]:
    """Desktop "a" as tsuser1 and "b" as tsuser2, each an xterm writing to its home,
    and a program that leaves the session's process group as daemons do."""
    return [
        XvncDesktopConfig(
            name,
            user=user,
            geometry=GEOMETRY,
            command="setsid sleep 600 & "
            + xterm_writing(Path(pwd.getpwnam(user).pw_dir) / "typed.txt"),
        )
        for name, user in (("a", "tsuser1"), ("b", "tsuser2"))
    ]


def processes_with(file: str, entry: str, uid: int | None = None) -> list[int]:
    """Live processes of ``uid`` (default: this test's) whose /proc ``file``
    (cmdline, environ) holds ``entry`` as one item."""
    found = []
    for pid in processes_of(os.geteuid() if uid is None else uid):
        with contextlib.suppress(OSError):
            if entry.encode() in Path(f"/proc/{pid}/{file}").read_bytes().split(b"\0"):
                found.append(pid)
    return found


def local_user(request: pytest.FixtureRequest) -> Account:
    """Who a local desktop runs as here: as root tsuser1 (thinserve never runs
    a desktop as root), else this test's own user."""
    if os.geteuid() != 0:
        return Account.of(None)
    users: dict[str, Account] = request.getfixturevalue("unix_users")
    return users["tsuser1"]


def white_corner(frame: np.ndarray) -> bool:
    """An xterm's white window is in the top left corner (the root window is black)."""
    return frame.shape[0] > 20 and bool((frame[5:20, 5:20] == 0xFFFFFF).any())


def mode_and_owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid


# --- two users on one PC ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_users_get_separate_sessions_under_their_own_uids(
    unix_users: dict[str, Account], runtime_dir: Path, tmp_path: Path
) -> None:
    need_xvnc_session()
    log = StatusLog()
    backend = XvncBackend(
        per_user(runtime_dir, tmp_path), on_status=log, options=XvncOptions(runtime_dir=runtime_dir)
    )
    a, b = unix_users["tsuser1"], unix_users["tsuser2"]
    try:
        first, _ = await as_deferred(
            _gather(backend.ensure_running("a"), backend.ensure_running("b"))
        )
        assert first.endpoint == f"unix:path={runtime_dir}/sockets/a/vnc.sock"
        assert log.statuses("a") == [DesktopState.STARTING, DesktopState.RUNNING]
        for name, account in (("a", a), ("b", b)):
            await _check_owned_by(backend, name, account, runtime_dir)
        # Neither user can reach the other's desktop: not its RFB socket ...
        socket_a = runtime_dir / "sockets" / "a" / "vnc.sock"
        assert as_user(a, ["test", "-S", str(socket_a)]) == 0
        assert as_user(b, ["test", "-S", str(socket_a)]) != 0
        # ... nor its X display, without the cookie only its own user can read.
        run_a = backend.session("a").run
        assert run_a is not None
        display_a = f":{run_a.display}"
        own = {"DISPLAY": display_a, "XAUTHORITY": str(runtime_dir / "sessions/a/Xauthority")}
        other = {**own, "XAUTHORITY": str(runtime_dir / "sessions/b/Xauthority")}
        assert as_user(a, ["xdotool", "getmouselocation"], own) == 0
        assert as_user(b, ["xdotool", "getmouselocation"], own) != 0
        assert as_user(b, ["xdotool", "getmouselocation"], other) != 0
        assert as_user(b, ["xdotool", "getmouselocation"], {"DISPLAY": display_a}) != 0

        mark = len(log.entries)
        pids = backend.session("a").processes()
        await as_deferred(backend.stop("a"))
        assert log.entries[mark:] == [
            ("a", DesktopState.STOPPING, "ending the session"),
            ("a", DesktopState.STOPPED, "stopped"),
        ]
        assert not any(alive(pid) for pid in pids)
        assert not processes_of(a.uid)  # nothing of tsuser1's session is left
        assert backend.session("b").status is DesktopState.RUNNING
    finally:
        await as_deferred(backend.close())


async def _gather(*steps: Awaitable[T]) -> list[T]:
    return list(await asyncio.gather(*steps))


async def _check_owned_by(
    backend: XvncBackend, name: str, account: Account, runtime_dir: Path
) -> None:
    session = backend.session(name)
    xvnc, program = session.processes()
    assert xvnc is not None and program is not None
    assert status_uids(xvnc) == (account.uid,) * 4  # Xvnc runs as the user too
    typed = Path(account.home) / "typed.txt"
    await wait_until(typed.exists, 20, f"{name}'s xterm")  # its cat runs: the group is complete
    group = group_of(program)
    assert len(group) >= 2  # the shell and xterm (and cat under xterm, in its own session)
    for pid in group:
        assert status_uids(pid) == (account.uid,) * 4
    assert typed.stat().st_uid == account.uid
    assert mode_and_owner(runtime_dir) == (0o711, 0)
    assert mode_and_owner(runtime_dir / "sockets" / name) == (0o700, account.uid)
    assert mode_and_owner(runtime_dir / "sockets" / name / "vnc.sock") == (0o600, account.uid)
    assert mode_and_owner(runtime_dir / "sessions" / name) == (0o700, account.uid)
    assert mode_and_owner(runtime_dir / "sessions" / name / "Xauthority") == (0o600, account.uid)
    assert mode_and_owner(runtime_dir / "sessions" / name / "runtime") == (0o700, account.uid)
    env = Path(f"/proc/{program}/environ").read_bytes().split(b"\0")
    assert f"HOME={account.home}".encode() in env
    assert f"USER={account.name}".encode() in env
    assert f"LOGNAME={account.name}".encode() in env
    assert f"SHELL={account.shell}".encode() in env
    assert f"XDG_RUNTIME_DIR={runtime_dir}/sessions/{name}/runtime".encode() in env


@pytest_twisted.ensureDeferred
async def test_a_terminal_logged_in_as_one_user_types_only_into_that_users_desktop(
    unix_users: dict[str, Account], runtime_dir: Path, tmp_path: Path
) -> None:
    """alice's terminal types into tsuser1's xterm; bob's desktop (tsuser2) sees nothing."""
    need_xvnc_session()
    backend = XvncBackend(per_user(runtime_dir, tmp_path), options=XvncOptions(runtime_dir))
    manager = DesktopManager()
    manager.add("a", backend)
    manager.add("b", backend)
    site = open_site(manager, BrokerConfig(unknown_terminal="login", hot_desk=True))
    site.broker.add_user("alice", "1111", actor="admin:test", desktop="a")
    site.broker.add_user("bob", "2222", actor="admin:test", desktop="b")
    typed_a = Path(unix_users["tsuser1"].home) / "typed.txt"
    typed_b = Path(unix_users["tsuser2"].home) / "typed.txt"
    terms: list[FilmingTerminal] = []
    try:
        assert backend.session("a").status is DesktopState.STOPPED  # nobody asked for it yet
        for source, user, secret, desktop in (
            ("127.0.0.2", "alice", "1111", "a"),
            ("127.0.0.3", "bob", "2222", "b"),
        ):
            term = FilmingTerminal()
            await term.connect(site.port, source)
            terms.append(term)
            term.type_text(f"{user}\t{secret}\n")
            await term.wait_mirror(site, desktop)  # started on demand at the login
            assert isinstance(site.shown(f"viewer-{source}"), ShowDesktop)
        await wait_until(lambda: typed_a.exists() and typed_b.exists(), 20, "both xterms")
        alice, bob = terms
        console_b = await Console.open(await as_deferred(backend.ensure_running("b")))
        try:
            await sleep(0.5)
            screen_b = console_b.frame()
            seen_by_bob = bob.framebuffer.copy()
            before_a = alice.framebuffer.copy()
            await type_into_xterm(alice, "only for alice\n")
            await wait_until(lambda: typed_a.read_text() == "only for alice\n", 20, "A's text")
            await wait_until(
                lambda: not np.array_equal(alice.framebuffer, before_a), 10, "A's echo"
            )
            await sleep(0.5)
            assert typed_b.read_text() == ""  # not one key reached B's xterm
            assert np.array_equal(console_b.frame(), screen_b)  # nor B's screen
            assert np.array_equal(bob.framebuffer, seen_by_bob)
            await type_into_xterm(bob, "bob here\n")
            await wait_until(lambda: typed_b.read_text() == "bob here\n", 20, "B's text")
            assert typed_a.read_text() == "only for alice\n"
        finally:
            console_b.close()
    finally:
        for term in terms:
            term.close()
        await site.close()


# --- crashes, logouts and errors ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_killed_xvnc_is_crashed_and_starts_again_cleanly(
    runtime_dir: Path, tmp_path: Path
) -> None:
    need_xvnc_session()
    log = StatusLog()
    config = XvncDesktopConfig("d", command=xterm_writing(tmp_path / "typed"))
    backend = XvncBackend([config], on_status=log, options=XvncOptions(runtime_dir))
    try:
        await as_deferred(backend.ensure_running("d"))
        session = backend.session("d")
        assert session.run is not None
        display = session.run.display
        xvnc, program = session.processes()
        assert xvnc is not None and program is not None
        await wait_until((tmp_path / "typed").exists, 20, "the xterm")
        members = group_of(program)
        mark = len(log.entries)
        os.kill(xvnc, signal.SIGKILL)
        detail = await as_deferred(log.wait_for("d", DesktopState.CRASHED, 20, mark))
        assert detail == "Xvnc ended unexpectedly (killed by SIGKILL)"
        await wait_until(lambda: not any(alive(p) for p in [xvnc, *members]), 10, "the session")
        assert not Path(f"/tmp/.X{display}-lock").exists()  # no stale lock left behind
        assert session.processes() == (None, None)

        mark = len(log.entries)
        await as_deferred(backend.ensure_running("d"))
        assert log.statuses("d")[-2:] == [DesktopState.STARTING, DesktopState.RUNNING]
        again, _ = session.processes()
        assert alive(again) and again != xvnc
        console = await Console.open(session.console)  # a working desktop again
        console.close()
    finally:
        await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_xvnc_is_blamed_even_when_its_session_program_is_seen_ending_first(
    runtime_dir: Path, tmp_path: Path
) -> None:
    """Xvnc dying takes its session program's display, so the program dies too.

    Xvnc runs at idle priority on a CPU kept busy, beside its session program:
    once Xvnc has closed the display's connections (waking the program), the
    program preempts it and ends while Xvnc is still exiting, so thinserve
    usually notices the program's end first (nearly always: five tries).  The
    reason must still be Xvnc's.
    """
    need_xvnc_session()
    cpu = min(os.sched_getaffinity(0))
    log = StatusLog()
    typed = tmp_path / "typed"
    config = XvncDesktopConfig("d", command=xterm_writing(typed))
    backend = XvncBackend([config], on_status=log, options=XvncOptions(runtime_dir))
    hog = spawn([sys.executable, "-c", "while True: pass"], tmp_path / "hog.log")
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        for attempt in range(5):
            typed.unlink(missing_ok=True)
            await as_deferred(backend.ensure_running("d"))
            xvnc, program = backend.session("d").processes()
            assert xvnc is not None and program is not None
            await wait_until(typed.exists, 20, "the xterm")
            for pid in [xvnc, *group_of(program)]:
                os.sched_setaffinity(pid, {cpu})
            os.sched_setscheduler(xvnc, os.SCHED_IDLE, os.sched_param(0))
            mark = len(log.entries)
            os.kill(xvnc, signal.SIGKILL)
            detail = await as_deferred(log.wait_for("d", DesktopState.CRASHED, 20, mark))
            assert detail == "Xvnc ended unexpectedly (killed by SIGKILL)", f"try {attempt + 1}"
    finally:
        hog.stop()
        await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_a_local_desktop_is_served_at_once_and_comes_back_after_xvnc_dies(
    runtime_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """A ``[[local_desktop]]``: thinserve starts its Xvnc and session program by
    itself, a terminal sees the session, a killed Xvnc comes back without anyone
    asking, and stopping thinserve ends both."""
    need_xvnc_session()
    account = local_user(request)
    runtime_dir.chmod(0o711)  # as /run: the desktop's user passes through to its session
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))  # thinserve's runtime directory
    typed = tmp_path / "typed" if account.is_me else Path(account.home) / "typed"
    socket = runtime_dir / "thinserve" / "local" / "sockets" / "here" / "vnc.sock"
    session = f"XDG_RUNTIME_DIR={runtime_dir}/thinserve/local/sessions/here/runtime"
    user = None if account.is_me else account.name
    local = LocalDesktopConfig("here", geometry=GEOMETRY, command=xterm_writing(typed), user=user)
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        broker=BrokerConfig(unknown_terminal="pool", pools={"all": ("here",)}, default_pool="all"),
        database=":memory:",
        admin_socket="",
        discovery=False,
        local_desktops=(local,),
        state_dir=tmp_path / "state",
        runtime_dir=runtime_dir / "thinserve",
        stop_desktops=True,
        source="test",
    )

    def left() -> list[int]:
        mine = processes_with("cmdline", str(socket), account.uid)
        return mine + processes_with("environ", session, account.uid)

    server = ThinServe(config, reactor)
    await server.startService()
    terms: list[Terminal] = []
    try:
        term = await Terminal().connect(server.port_numbers[0])
        terms.append(term)
        await wait_until(lambda: xterm_shown(term.framebuffer, typed), 30, "the session's xterm")
        assert mode_and_owner(socket) == (0o600, account.uid)
        [xvnc] = processes_with("cmdline", str(socket), account.uid)
        programs = processes_with("environ", session, account.uid)
        assert programs  # the session program (xterm) with the session's environment
        typed.unlink()
        os.kill(xvnc, signal.SIGKILL)
        await wait_until(lambda: not white_corner(term.framebuffer), 20, "the xterm gone")
        await wait_until(lambda: xterm_shown(term.framebuffer, typed), 30, "a new session's xterm")
        assert not any(alive(pid) for pid in [xvnc, *programs])
        [again] = processes_with("cmdline", str(socket), account.uid)
        assert again != xvnc
    finally:
        for term in terms:
            term.close()
        await server.stopService()
    await wait_until(lambda: not left(), 20, "the local desktop's processes to end")


@pytest_twisted.ensureDeferred
async def test_the_session_ending_ends_the_desktop(runtime_dir: Path) -> None:
    """Logging out of the session (its program ends) stops Xvnc; a failing program is a crash."""
    need_xvnc_session()
    log = StatusLog()
    configs = [
        XvncDesktopConfig("out", command="sleep 1"),
        XvncDesktopConfig("bad", command="sleep 1; echo 'no such thing' >&2; exit 3"),
    ]
    backend = XvncBackend(configs, on_status=log, options=XvncOptions(runtime_dir))
    try:
        await as_deferred(_gather(backend.ensure_running("out"), backend.ensure_running("bad")))
        xvnc, _ = backend.session("out").processes()
        detail = await as_deferred(log.wait_for("out", DesktopState.STOPPED, 20))
        assert detail == "the session ended (logged out)"
        assert not alive(xvnc)
        detail = await as_deferred(log.wait_for("bad", DesktopState.CRASHED, 20))
        assert detail == "the session program failed (exit status 3): no such thing"
        [out, bad] = await as_deferred(backend.list_desktops())
        assert (out.status, bad.status) == (DesktopState.STOPPED, DesktopState.CRASHED)
    finally:
        await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_errors_say_what_to_do(unix_users: dict[str, Account], runtime_dir: Path) -> None:
    need_xvnc_session()
    log = StatusLog()
    missing = XvncOptions(runtime_dir, xvnc_binary="Xvnc-not-installed")
    backend = XvncBackend([XvncDesktopConfig("d")], on_status=log, options=missing)
    with pytest.raises(BackendError, match="apt-get install tigervnc-standalone-server"):
        await as_deferred(backend.ensure_running("d"))
    [info] = await as_deferred(backend.list_desktops())
    assert info.status is DesktopState.CRASHED and info.detail.startswith("Xvnc-not-installed")
    with pytest.raises(BackendError, match="no xvnc desktop named 'e'"):
        await as_deferred(backend.ensure_running("e"))
    with pytest.raises(BackendError, match="useradd --create-home nosuchuser"):
        XvncBackend([XvncDesktopConfig("d", user="nosuchuser")])
    assert XvncBackend([XvncDesktopConfig("k", keep_after_logout=False)]).stop_on_release("k")
    # Not root, yet configured to run a session as another user: refused at once.
    script = (
        "from thinserve.backends.xvnc import XvncBackend, XvncDesktopConfig\n"
        "from thinserve.backends.base import BackendError\n"
        "try:\n"
        "    XvncBackend([XvncDesktopConfig('d', user='tsuser2')])\n"
        "except BackendError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        ["setpriv", f"--reuid={unix_users['tsuser1'].uid}",
         f"--regid={unix_users['tsuser1'].gid}", "--init-groups", "--",
         sys.executable, "-c", script],
        cwd=Path(__file__).parents[2],
        env={"PATH": "/usr/bin:/bin", "HOME": unix_users["tsuser1"].home},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.stdout.strip() == (
        "desktop d runs as user tsuser2, but thinserve runs as tsuser1 without CAP_SETUID and "
        "CAP_SETGID: only root (or the packaged service) can start sessions for other users "
        "(run thinserve as root, or drop the desktop's user setting to run it as yourself)"
    ), result.stderr


def test_configs_are_validated() -> None:
    for bad, match in (
        ({"name": "../x"}, "desktop name"),
        ({"name": "x", "geometry": "big"}, "geometry"),
        ({"name": "x", "depth": 12}, "depth"),
        ({"name": "x", "user": "no body"}, "Unix user name"),
        ({"name": "x", "command": " "}, "command"),
    ):
        with pytest.raises(ValueError, match=match):
            XvncDesktopConfig(**bad)


def test_the_cookie_file_is_what_xauth_reads(tmp_path: Path) -> None:
    need("xauth", "to read X authority files (apt-get install -y xauth)")
    cookie = bytes(range(16))
    path = tmp_path / "Xauthority"
    path.write_bytes(xauthority_entry(cookie))
    listed = subprocess.run(
        ["xauth", "-f", str(path), "list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listed == ["#ffff##:", "MIT-MAGIC-COOKIE-1", cookie.hex()]
