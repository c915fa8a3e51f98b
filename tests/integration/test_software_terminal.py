"""thinserve-terminal, run as a real headless child process, against real servers.

Everything is on loopback: mDNS between this process and the terminal on
127.0.0.1 (IPv4 only), thinserve's RFB server (TerminalSession showing a
fixed picture) dialling the listening terminal or listening for it, and a
real Xvnc desktop with an xterm.  The terminal records a PNG after each
update (``--record``) and takes scripted input on its standard input.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, threads
from twisted.internet.interfaces import IListeningPort

from clients.terminal.keys import Key
from protocols.rfb.constants import Encoding
from protocols.terminal import TerminalAdvert
from tests.support.children import Child
from tests.support.need import need
from tests.support.pixels import diff_summary, read_image, u32_to_rgb
from tests.support.waiting import wait_until
from tests.unit.content import desktop_frame
from tests.unit.test_terminal_keys import expect
from thinserve.discovery import ServerAdvertiser, TerminalBrowser
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.reverse import ReverseConnector, connect_to_terminal
from thinserve.rfbserver import RFBServerFactory, ServerOptions

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
PICTURE = "fixed picture"
LISTENING = rf"listening on {LOOPBACK.replace('.', '[.]')}:(\d+)"


@pytest.fixture
def pygame_installed() -> None:
    need(
        importlib.util.find_spec("pygame") is not None,
        "the Python package pygame-ce: pip install pygame-ce (or make venv)",
    )


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "SDL_VIDEODRIVER": "dummy",
    }


class Terminal:
    """thinserve-terminal --headless in a child process, scripted through its stdin."""

    def __init__(self, tmp_path: Path, *args: str, wrap: Sequence[str] = ()) -> None:
        """``wrap``: a command prefix (``ip netns exec NS``: a host of a test LAN)."""
        self.frames = tmp_path / "frames"
        argv = [*wrap, sys.executable, "-m", "clients.terminal", "--headless"]
        argv += ["--record", str(self.frames), "--script", "-", *args]
        self.child = Child.spawn(argv, environment(tmp_path))

    def send(self, *lines: str) -> None:
        for line in lines:
            self.child.write(line)

    async def port(self) -> int:
        return int((await self.child.wait_for(LISTENING, timeout=20)).group(1))

    def latest(self) -> np.ndarray | None:
        try:
            return read_image(self.frames / "latest.png")
        except FileNotFoundError:
            return None

    async def wait_for_frame(self, want: np.ndarray, timeout: float = 20.0) -> None:
        """Until the newest recorded PNG equals ``want`` pixel for pixel."""
        got: np.ndarray | None = None

        def shows() -> bool:
            nonlocal got
            got = self.latest()
            return got is not None and got.shape == want.shape and np.array_equal(got, want)

        def seen() -> str:
            shown = "no frame" if got is None else diff_summary(got, want)
            return f"the terminal to show the picture ({shown}):\n{self.log}"

        await wait_until(shows, timeout, seen, self.child, interval=0.1)

    @property
    def log(self) -> str:
        return self.child.text[-4000:]

    async def stop(self) -> None:
        await self.child.stop()


@pytest_twisted.async_yield_fixture
async def terminals(pygame_installed: None) -> AsyncIterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for terminal in started:
        await terminal.stop()


class Recorder:
    """An input sink: what the terminal's input made of the server's calls."""

    def __init__(self) -> None:
        self.keys: list[tuple[bool, int, int | None]] = []
        self.pointer_events: list[tuple[int, int, int]] = []
        self.clipboards: list[str] = []
        self.sizes: list[tuple[int, int]] = []

    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        self.keys.append((down, keysym, keycode))

    def pointer(self, buttons: int, x: int, y: int) -> None:
        self.pointer_events.append((buttons, x, y))

    def clipboard(self, text: str) -> None:
        self.clipboards.append(text)

    def set_desktop_size(self, width: int, height: int) -> bool:
        self.sizes.append((width, height))
        return False


class Server:
    """thinserve's RFB server with a fixed picture, and the sessions it runs."""

    def __init__(self, frame: np.ndarray, control: bool = False) -> None:
        self.frame = frame
        self.control = control
        self.sink = Recorder()
        self.sessions: list[TerminalSession] = []
        self.sources: list[Source] = []
        self.factory = RFBServerFactory(ServerOptions(), self._session)

    def _session(self) -> TerminalSession:
        return TerminalSession(on_attach=self._attach)

    def _attach(self, session: TerminalSession) -> Source:
        self.sessions.append(session)
        session.control = self.control
        source = Source(self.frame.copy(), PICTURE)
        source.input = self.sink if self.control else None
        self.sources.append(source)
        return source

    def disconnect_all(self) -> None:
        for session in self.sessions:
            if session.proto is not None and session.proto.transport is not None:
                session.proto.transport.loseConnection()


def press(key: Key) -> tuple[bool, int, int | None]:
    return True, key.keysym, key.keycode


def release(key: Key) -> tuple[bool, int, int | None]:
    return False, key.keysym, key.keycode


# -- the key and the id -------------------------------------------------------------------------
def show_id(tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "clients.terminal", "--show-id", *args],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def key_path(tmp_path: Path, name: str = "key.pem") -> Path:
    return tmp_path / "config" / "thinserve-terminal" / name


def key_fingerprint(path: Path) -> str:
    """The key's fingerprint, computed here: SHA-256 of its SPKI, base32, lower case."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b32encode(hashlib.sha256(spki).digest()).decode().rstrip("=").lower()


def test_the_key_is_made_once_kept_private_and_gives_the_id(tmp_path: Path) -> None:
    first = show_id(tmp_path)
    key_file = key_path(tmp_path)
    fingerprint = key_fingerprint(key_file)
    assert first == "key-" + fingerprint[:26]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    TerminalAdvert.keyed("t", fingerprint, "m", 1, 1, 1, ("192.0.2.1",)).build()  # fits
    assert show_id(tmp_path) == first
    # --id names another key beside it: another terminal, just as stable.
    named = show_id(tmp_path, "--id", "Lab-3")
    assert named != first and named == show_id(tmp_path, "--id", "lab-3")
    assert named == "key-" + key_fingerprint(key_path(tmp_path, "key-lab-3.pem"))[:26]
    assert key_fingerprint(key_file) == fingerprint  # --id leaves the default key alone
    # A damaged key is never replaced behind the administrator's back.
    key_file.write_text("not a key!\n")
    broken = subprocess.run(
        [sys.executable, "-m", "clients.terminal", "--show-id"],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert broken.returncode == 1 and "move it away" in broken.stderr
    assert key_file.read_text() == "not a key!\n"


# -- listen mode: mDNS, and thinserve dialling in ----------------------------------------------
@pytest_twisted.ensureDeferred
async def test_thinserve_finds_the_advert_and_the_terminal_shows_its_picture(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    frame = desktop_frame(320, 240)
    token = secrets.token_hex(4)
    terminal_id, name = show_id(tmp_path, "--id", f"test-{token}"), f"ts terminal {token}"
    terminal = Terminal(
        tmp_path, "--interfaces", LOOPBACK, "--port", "0", "--id", f"test-{token}",
        "--name", name, "--window", "320x240",
    )  # fmt: skip
    terminals.append(terminal)
    server = Server(frame)
    connector = ReverseConnector(
        reactor, lambda _advert: server.factory, initial_delay=0.2, max_delay=1.0
    )
    connector.startService()
    seen: list[tuple[str, TerminalAdvert]] = []

    def report(kind: str) -> Callable[[TerminalAdvert], None]:
        def record(advert: TerminalAdvert) -> None:
            if advert.terminal_id == terminal_id:
                seen.append((kind, advert))
                getattr(connector, f"terminal_{kind}")(advert)

        return record

    browser = TerminalBrowser(
        report("added"), report("updated"), report("removed"), [LOOPBACK], ipv4_only=True
    )
    await browser.start()
    try:
        port = await terminal.port()
        await wait_until(lambda: seen, 20, "the terminal's advert")
        kind, advert = seen[0]
        assert kind == "added"
        assert (advert.instance, advert.model, advert.screen) == (
            name,
            "thinserve-terminal",
            "320x240",
        )
        assert (advert.port, advert.addresses, advert.proto) == (port, (LOOPBACK,), 2)
        assert advert.key == key_fingerprint(key_path(tmp_path, f"key-test-{token}.pem"))
        await terminal.wait_for_frame(frame)
        assert len(server.sessions) == 1

        await terminal.stop()  # it says goodbye: the advert goes at once
        await wait_until(lambda: seen[-1][0] == "removed", 10, "the advert's withdrawal")
    finally:
        connector.stopService()
        await browser.stop()


@pytest_twisted.ensureDeferred
async def test_scripted_keys_pointer_and_clipboard_reach_thinserve(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    frame = desktop_frame(320, 240, seed=3)
    clip = tmp_path / "clipboard.txt"
    terminal = Terminal(
        tmp_path, "--interfaces", LOOPBACK, "--port", "0", "--window", "320x240",
        "--clipboard-file", str(clip),
    )  # fmt: skip
    terminals.append(terminal)
    server = Server(frame, control=True)
    await connect_to_terminal(reactor, LOOPBACK, await terminal.port(), server.factory)
    await terminal.wait_for_frame(frame)

    terminal.send("move 100 200", "click 1", "click 4", "type Hi!", "key Control_L+c")
    terminal.send("key KP_Enter", "clipboard Grüße ✓\\n")
    await wait_until(lambda: server.sink.clipboards, 20, "the clipboard")
    assert server.sink.pointer_events == [
        (0, 100, 200),
        (1, 100, 200),
        (0, 100, 200),
        (8, 100, 200),  # button 4, the wheel turned up
        (0, 100, 200),
    ]
    shift, ctrl = expect("Shift_L", "LEFTSHIFT"), expect("Control_L", "LEFTCTRL")
    big_h, small_i, bang = expect("H", "H"), expect("i", "I"), expect("exclam", "1")
    small_c, kp_enter = expect("c", "C"), expect("KP_Enter", "KPENTER")
    assert server.sink.keys == [
        press(shift), press(big_h), release(big_h), release(shift),
        press(small_i), release(small_i),
        press(shift), press(bang), release(bang), release(shift),
        press(ctrl), press(small_c), release(small_c), release(ctrl),
        press(kp_enter), release(kp_enter),
    ]  # fmt: skip
    assert server.sink.clipboards == ["Grüße ✓\n"]
    assert server.sink.sizes == []  # the terminal's screen is the picture's size

    # The desktop's clipboard reaches the terminal's.
    server.sources[0].clipboard("from the server: café ☕")
    await wait_until(lambda: clip.exists(), 10, "the clipboard file")
    assert clip.read_text(encoding="utf-8") == "from the server: café ☕"

    # One server at a time: another connection is turned away, the first goes on.
    turned_away: list[object] = []
    await connect_to_terminal(
        reactor, LOOPBACK, await terminal.port(), Server(frame).factory,
        on_lost=lambda proto, reason: turned_away.append(proto),
    )  # fmt: skip
    await wait_until(lambda: turned_away, 10, "the second server turned away")
    terminal.send("move 5 6")
    await wait_until(lambda: server.sink.pointer_events[-1] == (0, 5, 6), 10, "a move")


# -- connect and find modes --------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_connect_mode_shows_the_server_and_reconnects_by_itself(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    first, second = desktop_frame(256, 192, seed=11), desktop_frame(256, 192, seed=12)
    server = Server(first)
    listening: IListeningPort = reactor.listenTCP(0, server.factory, interface=LOOPBACK)
    port = listening.getHost().port
    terminal = Terminal(tmp_path, "--connect", f"{LOOPBACK}:{port}", "--window", "256x192")
    terminals.append(terminal)
    try:
        await terminal.wait_for_frame(first)
        # The server goes away; the terminal waits and dials again with backoff.
        await listening.stopListening()
        server.disconnect_all()
        await terminal.child.wait_for("session ended", timeout=10)
        await terminal.child.wait_for("Connection refused", timeout=10)
        replacement = Server(second)
        listening = reactor.listenTCP(port, replacement.factory, interface=LOOPBACK)
        await terminal.wait_for_frame(second, timeout=20)
        assert len(replacement.sessions) == 1
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_terminal_asks_for_its_encodings_a_jpeg_quality_and_continuous_updates(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    frame = desktop_frame(320, 240, seed=8)
    server = Server(frame)
    listening: IListeningPort = reactor.listenTCP(0, server.factory, interface=LOOPBACK)
    address = f"{LOOPBACK}:{listening.getHost().port}"
    terminal = Terminal(tmp_path, "--connect", address, "--window", "320x240", "--quality", "4")
    terminals.append(terminal)
    try:
        await wait_until(lambda: terminal.latest() is not None, 20, "a first frame")
        conn = server.sessions[0].proto.conn  # type: ignore[union-attr]
        await wait_until(lambda: conn.continuous_updates, 10, "continuous updates")
        settings = conn.settings
        assert settings.rect_encodings == (
            Encoding.TIGHT, Encoding.ZRLE, Encoding.HEXTILE, Encoding.ZLIB, Encoding.RRE,
            Encoding.RAW, Encoding.COPYRECT,
        )  # fmt: skip
        assert settings.quality == 4
        for pseudo in (
            Encoding.CURSOR, Encoding.DESKTOP_SIZE, Encoding.EXTENDED_DESKTOP_SIZE,
            Encoding.LAST_RECT, Encoding.QEMU_EXTENDED_KEY_EVENT, Encoding.EXTENDED_CLIPBOARD,
            Encoding.FENCE, Encoding.CONTINUOUS_UPDATES,
        ):  # fmt: skip
            assert pseudo in settings.pseudo, pseudo
        # JPEG is lossy, but the picture is the picture.
        got = terminal.latest()
        assert got is not None and got.shape == frame.shape
        error = np.abs(u32_to_rgb(got).astype(int) - u32_to_rgb(frame).astype(int))
        assert error.mean() < 4, error.mean()
        # Continuous updates: a change arrives without the terminal asking.
        changed = frame.copy()
        changed[10:40, 10:90] = 0x00FF8000
        server.sources[0].set_frame(changed)
        await wait_until(
            lambda: (latest := terminal.latest()) is not None and int(latest[25, 50]) == 0x00FF8000,
            10,
            "the change",
        )
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_find_mode_connects_to_the_thinserve_it_finds(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    frame = desktop_frame(200, 150, seed=5)
    server = Server(frame)
    listening: IListeningPort = reactor.listenTCP(0, server.factory, interface=LOOPBACK)
    token = secrets.token_hex(4)
    advertiser = ServerAdvertiser(
        listening.getHost().port, f"thinserve {token}", interfaces=[LOOPBACK], ipv4_only=True
    )
    await advertiser.start()
    try:
        terminal = Terminal(
            tmp_path, "--find", "--find-name", token, "--interfaces", LOOPBACK,
            "--window", "200x150",
        )  # fmt: skip
        terminals.append(terminal)
        await terminal.wait_for_frame(frame, timeout=30)
    finally:
        await advertiser.stop()
        await listening.stopListening()


# -- a real desktop ----------------------------------------------------------------------------
@pytest.fixture
def xvnc_desktop(xvnc: Callable[..., object], pygame_installed: None) -> Iterator[object]:
    need("xterm", "to type into a real X program")
    yield xvnc(size=(640, 480))


def script_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


@pytest_twisted.ensureDeferred
async def test_a_real_xvnc_desktop_shows_exactly_and_takes_typed_text(
    xvnc_desktop: object, tmp_path: Path, terminals: list[Terminal]
) -> None:
    server = xvnc_desktop
    server.paint(desktop_frame(640, 480, seed=9))  # type: ignore[attr-defined]
    want = await threads.deferToThread(server.grab)  # type: ignore[attr-defined]
    address = f"{server.host}:{server.port}"  # type: ignore[attr-defined]
    terminal = Terminal(tmp_path, "--connect", address, "--window", "640x480")
    terminals.append(terminal)
    await terminal.wait_for_frame(want)

    out = tmp_path / "typed.txt"
    server.run(["xterm", "-geometry", "80x10+0+0", "-e", "sh", "-c", f"cat > {out}"])  # type: ignore[attr-defined]
    await wait_until(out.exists, 20, "xterm to start")
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    terminal.send("move 60 40", "wait 0.5", f"type {script_text(printable)}\\n")
    terminal.send("key Up", "key Down", "key Right", "key Left", "key KP_Enter")
    cursor_keys = "".join(f"\x1b[{c}" for c in "ABCD")  # what xterm sends for them
    expected = f"{printable}\n{cursor_keys}\n"
    await wait_until(lambda: out.read_text(errors="replace") == expected, 20, "the typed text")
