"""``thinserve serve`` as a real process: the state lock, and what it tells systemd.

A second server on the same state directory must refuse at once and leave
the first one's sockets alone; under systemd (a datagram socket in
$NOTIFY_SOCKET) the server says READY once its port answers, RELOADING then
READY around a SIGHUP, and STOPPING at SIGTERM.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.need import need
from tests.support.ports import rfb_banner
from tests.support.procs import Spawned, spawn
from tests.support.waiting import wait_until_blocking

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "thinserve"
THINSERVE = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "thinserve.cli"]
)
START_TIMEOUT = 60.0
SERVER = """
[server]
listen = ["tcp:port=0:interface=127.0.0.1"]
web_listen = []
[discovery]
enabled = false
"""
STATIC_DESKTOP = '[[desktop]]\nname = "d1"\naddress = "127.0.0.1:1"\n'  # never answers
LOCAL_DESKTOP = '[[local_desktop]]\nname = "d1"\ncommand = "xterm"\n'
DESKTOP_USER = "thinserve-desktop"  # as root, the local desktop runs as this account


class Notifications:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def next(self, proc: Spawned, what: str) -> dict[str, str]:
        """The next message, as its NAME=value fields."""
        data = wait_until_blocking(self._receive, START_TIMEOUT, what, proc, interval=0.02)
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def _receive(self) -> bytes | None:
        try:
            return self.sock.recv(4096)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory others may pass through (pytest's own are private to root), for
    state a desktop running as another account must reach (its sockets)."""
    path = Path(tempfile.mkdtemp(prefix="thinserve-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    notes = Notifications(tmp_path / "notify.sock")
    yield notes
    notes.close()


def start_serve(
    tmp_path: Path, config: Path, state: Path, name: str, notify: Path | None = None
) -> Spawned:
    """``thinserve serve`` on ``state``; its desktops stop with it."""
    env = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "JOURNAL_STREAM"}}
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    argv = [*THINSERVE, "--log-format", "text", "serve", "--config", str(config)]
    argv += ["--state-dir", str(state), "--stop-desktops"]
    return spawn(argv, tmp_path / f"{name}.log", env=env)


def stop_leftovers(marker: Path) -> None:
    """End the process groups of whatever still runs with ``marker`` in its command
    line: the desktop sessions a server started, should they outlive it."""
    own = os.getpgid(0)
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(marker).encode() in (entry / "cmdline").read_bytes():
                group = os.getpgid(int(entry.name))
                if group != own:
                    os.killpg(group, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def terminal_port(status: str) -> int:
    match = re.search(r"terminals on 127\.0\.0\.1:(\d+)", status)
    assert match, f"STATUS names no terminal port: {status!r}"
    return int(match[1])


def unix_banner(path: Path) -> bytes | None:
    """The RFB banner of the VNC server at a Unix socket, or None."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        try:
            sock.connect(str(path))
            return sock.recv(12)
        except OSError:
            return None


def xvnc_socket_of(pid: int) -> Path | None:
    """The -rfbunixpath of an Xvnc started (directly or not) by process ``pid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-rfbunixpath" in argv and _descends_from(int(entry.name), pid):
            return Path(argv[argv.index(b"-rfbunixpath") + 1].decode())
    return None


def _descends_from(child: int, ancestor: int) -> bool:
    while child > 1:
        if child == ancestor:
            return True
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            return False
        child = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: ppid
    return False


def has_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def admin_answers(state: Path) -> bool:
    done = subprocess.run(
        [*THINSERVE, "desktops", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode == 0 and '"d1"' in done.stdout


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: its inode and modification time."""
    return {str(path): (path.lstat().st_ino, path.lstat().st_mtime_ns) for path in root.rglob("*")}


def test_a_second_serve_on_the_same_state_dir_refuses_and_touches_nothing(
    tmp_path: Path, open_dir: Path, notifications: Notifications
) -> None:
    need("Xvnc", "for the first server's local desktop")
    need("xterm", "as the local desktop's session")
    local = LOCAL_DESKTOP
    if os.geteuid() == 0:
        need(has_account(DESKTOP_USER), f"the account {DESKTOP_USER} (make it with make run)")
        local += f'user = "{DESKTOP_USER}"\n'
    config = tmp_path / "thinserve.toml"
    config.write_text(SERVER + local)
    state = open_dir / "state"
    first = start_serve(tmp_path, config, state, "first", notifications.path)
    try:
        ready = notifications.next(first, "the first server's READY=1")
        assert ready["READY"] == "1"
        port = terminal_port(ready["STATUS"])
        desktop = wait_until_blocking(
            lambda: xvnc_socket_of(first.pid), START_TIMEOUT, "the local desktop's Xvnc", first
        )
        wait_until_blocking(
            lambda: unix_banner(desktop), START_TIMEOUT, "the desktop's socket answering", first
        )
        admin = state / "run" / "admin.sock"
        assert admin_answers(state)
        before = files_under(state)

        began = time.monotonic()
        second = subprocess.run(
            [*THINSERVE, "serve", "--config", str(config), "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
        )
        assert second.returncode == 1, second.stderr
        assert (
            f"thinserve: another thinserve (pid {first.pid}) is running on {state}; "
            "stop it (systemctl stop thinserve) or use --state-dir"
        ) in second.stderr
        assert time.monotonic() - began < 30  # at once: it did not start anything first

        assert files_under(state) == before
        assert admin.exists() and admin_answers(state)
        assert unix_banner(desktop) == b"RFB 003.008\n"
        assert rfb_banner("127.0.0.1", port) is not None
        assert first.alive()
    finally:
        first.stop()
        stop_leftovers(state)


def test_systemd_hears_ready_reloading_and_stopping(
    tmp_path: Path, notifications: Notifications
) -> None:
    config = tmp_path / "thinserve.toml"
    config.write_text(SERVER + STATIC_DESKTOP)
    state = tmp_path / "state"
    server = start_serve(tmp_path, config, state, "server", notifications.path)
    try:
        ready = notifications.next(server, "READY=1")
        assert ready["READY"] == "1"
        port = terminal_port(ready["STATUS"])
        assert rfb_banner("127.0.0.1", port) is not None  # READY came once the port answers

        os.kill(server.pid, signal.SIGHUP)
        reloading = notifications.next(server, "RELOADING=1 after SIGHUP")
        assert reloading["RELOADING"] == "1"
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < now - int(reloading["MONOTONIC_USEC"]) < 60_000_000
        again = notifications.next(server, "READY=1 after the reload")
        assert again["READY"] == "1" and terminal_port(again["STATUS"]) == port

        config.write_text(SERVER + STATIC_DESKTOP + "[server\n")  # broken TOML
        os.kill(server.pid, signal.SIGHUP)
        assert notifications.next(server, "RELOADING=1")["RELOADING"] == "1"
        assert notifications.next(server, "READY=1 after a bad file")["READY"] == "1"
        assert "not valid TOML" in server.log_tail()
        assert rfb_banner("127.0.0.1", port) is not None  # nothing changed
        assert server.alive()

        os.kill(server.pid, signal.SIGTERM)
        assert notifications.next(server, "STOPPING=1")["STOPPING"] == "1"
        assert server.wait(START_TIMEOUT) == 0
    finally:
        server.stop()


def test_a_failed_start_tells_systemd_why(tmp_path: Path, notifications: Notifications) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "thinserve.toml"
        config.write_text(SERVER.replace("tcp:port=0:", f"tcp:port={port}:") + STATIC_DESKTOP)
        server = start_serve(tmp_path, config, tmp_path / "state", "server", notifications.path)
        try:
            assert server.wait(START_TIMEOUT) == 1
            stopping = notifications.next(server, "STOPPING=1")
        finally:
            server.stop()
    assert stopping["STOPPING"] == "1"
    assert stopping["STATUS"].startswith("could not start: ")
    assert "READY" not in stopping
