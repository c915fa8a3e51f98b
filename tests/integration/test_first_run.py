"""The first run: thinserve on its embedded defaults shows a usable desktop.

As root (as in CI) the embedded desktop-1 runs as the unprivileged account
thinserve-desktop, made here when missing as ``make run`` does.  A plain VNC
viewer (vncdotool) is paired by its address with a pairing code, as an admin
would with ``thinserve pair --code ... --by-address``, and then sees a
managed desktop: the X server names a window manager, the terminal has a
frame with a title bar and the keyboard focus, the bottom of the screen is a
taskbar.  What the viewer types runs in that terminal as thinserve-desktop,
and neither Xvnc nor any session program runs as root.

Only the listeners, database, admin socket, discovery and directories differ
from the embedded defaults, so the test runs beside anything else on the
machine; the local desktop is the embedded one, untouched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests.support.need import need
from tests.support.terminal import Terminal
from tests.support.vncdo import vncdo, vncdo_capture
from tests.support.waiting import wait_until
from thinserve.backends.accounts import DESKTOP_ACCOUNT, MAKE_DESKTOP_ACCOUNT
from thinserve.broker import ScreenKind, ShowScreen
from thinserve.config import Config
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

DESKTOP = "desktop-1"
SESSION_TIMEOUT = 90.0  # Xvnc, IceWM and a terminal on a loaded 2-core machine
BAR_ROWS = 8  # rows at the very bottom that the taskbar covers in any theme


# --- the machine -------------------------------------------------------------------------------


def desktop_account() -> pwd.struct_passwd:
    """thinserve-desktop, made as ``make run`` makes it when missing."""
    try:
        return pwd.getpwnam(DESKTOP_ACCOUNT)
    except KeyError:
        subprocess.run(MAKE_DESKTOP_ACCOUNT.split(), check=True, capture_output=True)
        return pwd.getpwnam(DESKTOP_ACCOUNT)


def need_first_run() -> None:
    need(os.geteuid() == 0, "root, to run the default desktop as thinserve-desktop (as in CI)")
    need("Xvnc", "to run the default desktop")
    for program, package in (("icewm-session", "icewm"), ("pcmanfm", "pcmanfm")):
        need(shutil.which(program) is not None, f"{program}: apt-get install {package}")
    need("xterm", "as the default session's terminal")
    need("xwininfo", "to read window positions (x11-utils)")
    need(shutil.which("xprop") is not None, "xprop: apt-get install x11-utils")


@pytest.fixture
def short_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short runtime directory others may pass through, as /run is
    (a Unix socket path is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tsf-"))
    path.chmod(0o711)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def drop_box() -> Iterator[Path]:
    """A directory the desktop's user may write what the viewer types into."""
    need_first_run()
    account = desktop_account()
    path = Path(tempfile.mkdtemp(prefix="tsf-out-"))
    os.chown(path, account.pw_uid, account.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- the session, seen from /proc and from its X server ---------------------------------------


@dataclass(frozen=True)
class Session:
    xvnc: int
    programs: tuple[int, ...]  # processes with the session's X cookie in their environment
    display: str
    xauthority: str


def proc_items(pid: int, name: str) -> list[str]:
    return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace").split("\0")


def real_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError(f"no Uid line for pid {pid}")


def pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def argument(argv: list[str], option: str) -> str | None:
    return argv[argv.index(option) + 1] if option in argv[:-1] else None


def find_session(runtime: Path) -> Session | None:
    """desktop-1's Xvnc under ``runtime`` and its session's programs, once they all run."""
    for pid in pids():
        with contextlib.suppress(OSError):
            argv = proc_items(pid, "cmdline")
            socket = argument(argv, "-rfbunixpath") or ""
            auth = argument(argv, "-auth")
            if argument(argv, "-desktop") == DESKTOP and socket.startswith(f"{runtime}/") and auth:
                programs = [
                    p for p in pids() if p != pid and environ_of(p).get("XAUTHORITY") == auth
                ]
                displays = {environ_of(p).get("DISPLAY") for p in programs} - {None}
                if programs and len(displays) == 1:
                    return Session(pid, tuple(programs), str(displays.pop()), auth)
    return None


def program_name(pid: int) -> str:
    try:
        return Path(proc_items(pid, "cmdline")[0]).name
    except (OSError, IndexError):
        return "(ended)"


def environ_of(pid: int) -> dict[str, str]:
    try:
        items = proc_items(pid, "environ")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in items if "=" in item)


def x_tool(session: Session, *argv: str) -> str:
    """An X client's output on the session's display, with its cookie; "" if it failed."""
    env = {"DISPLAY": session.display, "XAUTHORITY": session.xauthority, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout if done.returncode == 0 else ""


def window_property(session: Session, window: str, name: str) -> str:
    """The value of an X property ("" when unset): after "= " or "# "."""
    where = ["-root"] if window == "root" else ["-id", window]
    line = x_tool(session, "xprop", *where, name).strip()
    match = re.match(rf"{re.escape(name)}\([A-Z_0-9]+\)\s*[=:#]\s*(?:window id # )?(.*)", line)
    return match.group(1).strip() if match else ""


@dataclass(frozen=True)
class Window:
    id: str
    wm_class: str
    x: int
    y: int
    width: int
    height: int
    frame_top: int


def focused_window(session: Session) -> Window | None:
    """The window with the keyboard focus, as the window manager reports it, with its frame."""
    active = window_property(session, "root", "_NET_ACTIVE_WINDOW")
    if not active.startswith("0x") or int(active, 16) == 0:
        return None
    extents = window_property(session, active, "_NET_FRAME_EXTENTS")
    info = x_tool(session, "xwininfo", "-id", active)
    numbers = {
        key: int(value)
        for key, value in re.findall(r"(Absolute upper-left [XY]|Width|Height):\s+(-?\d+)", info)
    }
    if not extents or len(numbers) < 4:
        return None
    return Window(
        active,
        window_property(session, active, "WM_CLASS"),
        numbers["Absolute upper-left X"],
        numbers["Absolute upper-left Y"],
        numbers["Width"],
        numbers["Height"],
        int(extents.split(",")[2]),
    )


def window_manager(session: Session) -> str | None:
    """The window manager's name, from the root window's _NET_SUPPORTING_WM_CHECK."""
    check = window_property(session, "root", "_NET_SUPPORTING_WM_CHECK")
    if not check.startswith("0x"):
        return None
    return window_property(session, check, "_NET_WM_NAME") or "unnamed"


def ready(session: Session) -> Window | None:
    """The terminal, once a window manager runs and the terminal has the focus in its frame."""
    if window_manager(session) is None:
        return None
    window = focused_window(session)
    return window if window is not None and "xterm" in window.wm_class.lower() else None


# --- what the viewer sees ----------------------------------------------------------------------


def background(frame: np.ndarray) -> int:
    """The root window's colour: the commonest colour in the middle of the
    screen's right half, where the default session opens nothing."""
    height, width = frame.shape
    middle = frame[height // 4 : 3 * height // 4, width // 2 :]
    colours, counts = np.unique(middle, return_counts=True)
    return int(colours[counts.argmax()])


def managed_look(frame: np.ndarray, terminal: Window) -> str | None:
    """What is missing from a managed desktop in ``frame`` (None: nothing):
    a taskbar across the bottom rows, a title bar over the terminal."""
    root = background(frame)
    bar = frame[-BAR_ROWS:]
    if (bar == root).mean() > 0.1:
        return f"no taskbar: the bottom {BAR_ROWS} rows are mostly the background #{root:06x}"
    colours, counts = np.unique(bar, return_counts=True)
    if len(colours) < 3:
        return "no taskbar: the bottom rows are one or two colours, not buttons and text"
    face = int(colours[counts.argmax()])
    red, green, blue = face >> 16, (face >> 8) & 0xFF, face & 0xFF
    if not (red == green == blue and 0x80 <= red <= 0xF0):
        return f"no taskbar: the bottom rows are mostly #{face:06x}, not IceWM's light grey"
    if terminal.frame_top < 10 or terminal.y < terminal.frame_top:
        return f"no title bar over the terminal (frame top {terminal.frame_top} px)"
    title = frame[
        terminal.y - terminal.frame_top : terminal.y, terminal.x : terminal.x + terminal.width
    ]
    if (title == root).mean() > 0.1 or len(np.unique(title)) < 2:
        return "the terminal's title bar is not drawn above it"
    return None


async def capture(port: int, path: Path) -> np.ndarray:
    """The screen as vncdotool sees it through thinserve (in a thread: thinserve
    serves it from this test's reactor)."""
    frame: np.ndarray = await threads.deferToThread(vncdo_capture, "127.0.0.1", port, path)
    return frame


async def pair_by_address(server: ThinServe) -> None:
    """Connect a keyless viewer from 127.0.0.1, read its pairing code and pair
    its address with desktop-1, as ``thinserve pair --code C --by-address`` does."""
    assert server.hub is not None
    hub = server.hub
    term = await Terminal().connect(server.port_numbers[0], "127.0.0.1")
    try:

        def code() -> str | None:
            for tid in hub.terminals:
                shown = hub.broker.assignment(tid)
                if isinstance(shown, ShowScreen) and shown.kind is ScreenKind.PAIRING:
                    return shown.code
            return None

        found = await wait_until(code, 30, "the viewer's pairing code")
        hub.pair_code(found, DESKTOP, actor="admin:test", by_address=True)
    finally:
        term.close()


def first_run_config(state: Path, runtime: Path) -> Config:
    """The embedded defaults, on ports and directories of this test's own."""
    defaults = Config()
    return replace(
        defaults,
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        database=":memory:",
        admin_socket="",
        discovery=False,
        state_dir=state,
        runtime_dir=runtime,
        stop_desktops=True,
    )


# --- the test ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_embedded_desktop_is_a_managed_session_of_an_unprivileged_user(
    short_runtime_dir: Path, drop_box: Path, tmp_path: Path
) -> None:
    need_first_run()
    account = desktop_account()
    runtime = short_runtime_dir / "thinserve"
    config = first_run_config(tmp_path / "state", runtime)
    [local] = config.local_desktops
    assert (local.name, local.user, local.command) == (DESKTOP, DESKTOP_ACCOUNT, None)
    server = ThinServe(config, reactor)
    await server.startService()
    session: Session | None = None
    try:
        started: Session = await wait_until(
            lambda: find_session(short_runtime_dir), SESSION_TIMEOUT, "desktop-1's Xvnc and session"
        )
        session = started
        terminal: Window = await wait_until(
            lambda: ready(started), SESSION_TIMEOUT, "a window manager and a focused terminal"
        )
        assert "icewm" in (window_manager(started) or "").lower()

        # Who runs what: the desktop's account, never root.
        session = find_session(short_runtime_dir)  # now with IceWM and the terminal
        assert session is not None
        assert real_uid(session.xvnc) == account.pw_uid != 0
        programs = {pid: program_name(pid) for pid in session.programs}
        assert {"icewm-session", "icewm"} <= set(programs.values()), programs
        assert any("xterm" in name for name in programs.values()), programs
        owners = {real_uid(pid) for pid in programs if Path(f"/proc/{pid}").exists()}
        assert owners == {account.pw_uid}

        # What the viewer sees: a taskbar, and a title bar over the terminal.
        await pair_by_address(server)
        port = server.port_numbers[0]
        shot = tmp_path / "desktop.png"
        last: list[np.ndarray] = []

        async def managed() -> bool:
            last[:] = [await capture(port, shot)]
            return managed_look(last[0], terminal) is None

        try:
            await wait_until(managed, SESSION_TIMEOUT, "the viewer to see a managed desktop")
        except AssertionError:
            problem = managed_look(last[0], terminal) if last else "no capture"
            raise AssertionError(f"{problem} (the last capture: {shot})") from None

        # What the viewer types reaches the terminal, which runs as the desktop's account.
        out = drop_box / "uid"
        typed = ["type", f" id -u > {out}", "key", "enter"]  # a leading space: not in history
        await threads.deferToThread(vncdo, "127.0.0.1", port, typed)
        text = await wait_until(
            lambda: out.read_text() if out.exists() and out.read_text().endswith("\n") else None,
            30,
            f"the typed command to write {out}",
        )
        assert int(text) == account.pw_uid != 0
    finally:
        await server.stopService()
    if session is not None:
        left = session
        await wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in (left.xvnc, *left.programs)),
            30,
            "the desktop's processes to end",
        )
