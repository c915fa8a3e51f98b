"""The admin interface end to end: the real ``thinserve`` CLI, as a separate
process, talking to an in-process thinserve over its admin socket, with real
Xvnc desktops and real RFB terminals connecting from loopback addresses.

The CLI runs in a worker thread (deferToThread) so the reactor keeps serving
both the admin API and the terminals while the command waits for answers.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests.integration.test_rfb_interop import office_frame
from tests.support.need import need
from tests.support.pixels import read_image
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from thinserve import admin
from thinserve.admin.audit import latest_audit
from thinserve.admin.client import AdminClient, AdminError, UnixHTTPConnection
from thinserve.admin.handlers import AdminAPI
from thinserve.admin.http import AdminSite
from thinserve.admin.socket import AdminSocketError, listen, peer_principal, socket_path
from thinserve.broker import BrokerConfig
from thinserve.config import Config, DesktopConfig
from thinserve.paths import default_runtime_dir
from thinserve.relay import screens
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "thinserve"
THINSERVE = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "thinserve.cli"]
)
ACTOR = "admin:" + pwd.getpwuid(os.geteuid()).pw_name  # who runs the CLI


# -- helpers ----------------------------------------------------------------------------------
def desktop(name: str, server: Any) -> DesktopConfig:
    return DesktopConfig(name, f"{server.host}:{server.port}")


async def start(
    tmp_path: Path,
    desktops: list[DesktopConfig],
    broker: BrokerConfig | None = None,
    database: str = ":memory:",
    live: bool = True,
) -> tuple[ThinServe, Path]:
    """thinserve in this process, its admin socket in a new directory under tmp_path;
    with ``live``, once it shows every desktop."""
    sock = tmp_path / "admin" / "admin.sock"
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        broker=broker or BrokerConfig(),
        database=database,
        admin_socket=str(sock),
        discovery=False,
        address_pairing=("127.0.0.0/8",),  # keyless viewers here are viewer-127.0.0.N
        desktops=tuple(desktops),
        local_desktops=(),
        source="test",
    )
    ts = ThinServe(config, reactor)
    await ts.startService()
    if live:
        await wait_until(lambda: all(u.live for u in ts.upstreams), 30, "live desktops")
    return ts, sock


def run_cli(
    sock: Path, *args: str, stdin: str | None = None, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or THINSERVE), *args, "--socket", str(sock)],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


async def cli(sock: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``thinserve`` command in a thread, so the reactor keeps serving."""
    return await threads.deferToThread(run_cli, sock, *args, stdin=stdin)


async def cli_ok(sock: Path, *args: str, stdin: str | None = None) -> str:
    done = await cli(sock, *args, stdin=stdin)
    assert done.returncode == 0, f"thinserve {' '.join(args)}: {done.stderr}"
    return done.stdout


async def cli_json(sock: Path, *args: str, stdin: str | None = None) -> Any:
    return json.loads(await cli_ok(sock, *args, "--json", stdin=stdin))


async def terminal_row(sock: Path, terminal_id: str) -> dict[str, Any]:
    rows = await cli_json(sock, "terminals")
    return next(r for r in rows if r["id"] == terminal_id)


def pairing_screen(row: dict[str, Any]) -> np.ndarray:
    """What a terminal must show for the pairing screen the API reports."""
    text = screens.pairing(row["id"], row["pairing_code"], row["shows"]["message"])
    return screens.render(text, row["session"]["width"], row["session"]["height"])


def run_in_pty(argv: list[str], answers: list[tuple[bytes, bytes]]) -> tuple[int, str]:
    """Run ``argv`` on a new pseudo-terminal, typing each answer after its prompt."""
    pid, fd = os.forkpty()
    if pid == 0:  # the child: become the command at once
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + 30
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            if pending and pending[0][0] in output:
                os.write(fd, pending.pop(0)[1] + b"\n")
                output = output.replace(b"\r\n", b"\n")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


# -- pairing by code, snapshot, unpair, kick --------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_pair_by_code_snapshot_unpair_and_kick(
    xvnc, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="thinserve.hub")
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    ts, sock = await start(tmp_path, [desktop("d1", server)])
    term = Terminal()
    try:
        # Only thinserve's user (and root) can reach the socket.
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700

        await term.connect(ts.port_numbers[0], source="127.0.0.2")
        tid = "viewer-127.0.0.2"
        row = await terminal_row(sock, tid)
        assert row["connected"] and row["address"] == "127.0.0.2"
        assert row["shows"]["kind"] == "pairing" and row["paired_desktop"] is None
        code = row["pairing_code"]
        assert row["shows"]["code"] == code and len(code.replace("-", "")) == 6
        await term.wait_screen(pairing_screen(row))  # the code the CLI reports is on screen

        table = (await cli_ok(sock, "terminals")).splitlines()
        assert table[0].split()[:4] == ["TERMINAL", "IDENTITY", "CONNECTED", "ADDRESS"]
        line = next(x for x in table if x.startswith(tid))
        assert "pairing screen" in line and code in line and " yes " in line
        assert " address-bound " in line  # known by address: this suite's explicit choice
        assert table[0].index("SHOWS") == line.index("pairing screen")  # aligned columns

        said = await cli_ok(sock, "pair", "--code", code, "d1")
        assert said.strip() == f"paired {tid} with d1 by address; it now shows d1 (control)"
        await term.wait_screen(frame)

        shot = tmp_path / "shot.png"
        assert (await cli_ok(sock, "snapshot", tid, str(shot))).startswith(f"wrote {shot}")
        assert np.array_equal(read_image(shot), frame)
        assert np.array_equal(read_image(shot), term.framebuffer)

        (d1,) = await cli_json(sock, "desktops")
        assert d1["name"] == "d1" and d1["mirror"] == "live" and d1["state"] == "running"
        assert d1["size"] == {"width": 320, "height": 240}
        assert d1["controlled_by"] == tid and d1["paired_terminal"] == tid and d1["watchers"] == []
        assert "d1" in (await cli_ok(sock, "desktops")).splitlines()[1]

        said = await cli_ok(sock, "unpair", tid)
        assert said.strip() == f"unpaired {tid}; it now shows pairing screen"
        row = await terminal_row(sock, tid)
        assert row["paired_desktop"] is None and row["pairing_code"] not in (None, code)
        await term.wait_screen(pairing_screen(row))  # back to a pairing screen, new code

        await cli_ok(sock, "kick", tid)
        await wait_until(lambda: term.closed, 15, "the kicked terminal's connection to close")
        await wait_until(lambda: tid not in ts.hub.terminals, 15, "thinserve to see it go")  # type: ignore[union-attr]
        said = [r.getMessage() for r in caplog.records]
        assert f"terminal {tid} disconnected: kicked by the administrator" in said
        row = await terminal_row(sock, tid)
        assert not row["connected"] and row["shows"] is None and row["last_seen"] > 0

        done = await cli(sock, "snapshot", tid, str(shot))
        assert done.returncode == 1 and "is not connected" in done.stderr

        entries = await cli_json(sock, "audit", "--limit", "20")
        mine = [(e["action"], e["subject"]) for e in entries if e["actor"] == ACTOR]
        assert mine == [("pair", tid), ("unpair", tid), ("kick", tid)]
        assert "with a pairing code" in next(e["detail"] for e in entries if e["action"] == "pair")
        audit_lines = (await cli_ok(sock, "audit")).splitlines()
        assert audit_lines[0].split() == ["TIME", "ACTOR", "ACTION", "SUBJECT", "DETAIL"]
        assert any(ACTOR in x and " kick " in x for x in audit_lines)
    finally:
        term.close()
        await ts.stopService()
    assert not sock.exists()  # removed when thinserve stops


# -- errors, shadowing, who may connect --------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_errors_say_what_to_do_and_shadowing_is_view_only(xvnc, tmp_path: Path) -> None:
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    ts, sock = await start(tmp_path, [desktop("d1", server)])
    near, far = "viewer-127.45.67.89", "viewer-127.0.0.2"
    term, watcher = Terminal(), Terminal()
    try:
        await term.connect(ts.port_numbers[0], source="127.0.0.2")
        await watcher.connect(ts.port_numbers[0], source="127.45.67.89")
        await cli_ok(sock, "pair", "--by-address", far, "d1")
        await term.wait_screen(frame)

        # Shadowing: the watcher sees the desktop, view-only; the paired terminal keeps control.
        said = await cli_ok(sock, "shadow", near, "d1")
        assert said.strip() == f"{near} watches d1; it now shows d1 (view-only)"
        await watcher.wait_screen(frame)
        (d1,) = await cli_json(sock, "desktops")
        assert d1["controlled_by"] == far and d1["watchers"] == [near]
        await cli_ok(sock, "unshadow", near)
        row = await terminal_row(sock, near)
        assert row["shows"]["kind"] == "pairing" and row["watching"] is None
        await watcher.wait_screen(pairing_screen(row))

        # An unknown terminal: the known ones are listed, the closest first.
        done = await cli(sock, "kick", "viewer-127.45.67.8")
        assert done.returncode == 1 and done.stdout == ""
        assert "no terminal 'viewer-127.45.67.8'" in done.stderr
        assert f"closest first: {near}, {far}" in done.stderr
        done = await cli(sock, "kick", "viewer-127.45.67.8", "--json")
        error = json.loads(done.stdout)
        assert done.returncode == 1 and error["known"] == [near, far] and error["hint"]
        assert not term.closed and not watcher.closed

        # An unknown desktop, a wrong code: the same kind of answer.
        done = await cli(sock, "pair", "--by-address", far, "d2")
        assert done.returncode == 1 and "no desktop 'd2'" in done.stderr
        assert "known desktops, closest first: d1" in done.stderr
        done = await cli(sock, "pair", "--code", "ABC-DEF", "d1")
        assert done.returncode == 1 and "no such pairing code" in done.stderr

        # Usage errors exit 2.
        assert (await cli(sock, "pair", far)).returncode == 2
        assert (await cli(sock, "pair", "--code", "ABC-DEF", far, "d1")).returncode == 2
        done = await cli(sock, "users", "add", "carol")  # stdin is not a terminal
        assert done.returncode == 2 and "--secret-stdin" in done.stderr
        assert (await cli(sock, "no-such-command")).returncode == 2

        # Nothing listening: say how to start it, and where we looked.
        nowhere = tmp_path / "nowhere.sock"
        done = await cli(nowhere, "terminals")
        assert done.returncode == 1
        assert f"is `thinserve serve` running? socket {nowhere}" in done.stderr

        # Another user cannot use the socket, and is told whom to run as.
        need(os.geteuid() == 0, "root, to run the CLI as another user")
        need("setpriv", "to run the CLI as another user")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        system_python = "/usr/bin/python3"  # the CLI needs only the standard library
        need(Path(system_python).exists(), "Debian's python3")
        done = await threads.deferToThread(
            run_cli,
            sock,
            "terminals",
            command=[*as_nobody, system_python, "-m", "thinserve.cli"],
        )
        assert done.returncode == 1, done.stderr
        assert f"permission denied on {sock}" in done.stderr
        assert "run this as the user running thinserve, or as root" in done.stderr

        # Even on a socket someone opened up, the API answers only its user and root.
        open_dir = Path(tempfile.mkdtemp(prefix="thinserve-admin-"))
        try:
            open_dir.chmod(0o755)
            loose = open_dir / "admin.sock"
            site = AdminSite(AdminAPI(ts.hub), peer_principal)
            port = listen(reactor, loose, site)
            loose.chmod(0o666)
            done = await threads.deferToThread(
                run_cli,
                loose,
                "terminals",
                command=[*as_nobody, system_python, "-m", "thinserve.cli"],
            )
            await port.stopListening()
        finally:
            shutil.rmtree(open_dir)
        assert done.returncode == 1 and "uid 65534 may not administer thinserve" in done.stderr
    finally:
        term.close()
        watcher.close()
        await ts.stopService()


# -- users and hot-desking --------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_users_add_then_hot_desk_login_reaches_the_desktop(xvnc, tmp_path: Path) -> None:
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    broker = BrokerConfig(unknown_terminal="login", hot_desk=True)
    ts, sock = await start(tmp_path, [desktop("d1", server)], broker)
    term = Terminal()
    tid = "viewer-127.0.0.3"
    secret = "pin-4711"
    try:
        await term.connect(ts.port_numbers[0], source="127.0.0.3")
        assert (await terminal_row(sock, tid))["shows"]["kind"] == "login"

        added = await cli_json(
            sock, "users", "add", "alice", "--desktop", "d1", "--secret-stdin", stdin=secret + "\n"
        )
        assert added["user"] == {
            "name": "alice",
            "desktop": "d1",
            "created": added["user"]["created"],
            "disabled": False,
            "logged_in_at": None,
        }
        # Asked twice on a terminal; entries that differ change nothing.
        argv = [*THINSERVE, "users", "add", "bob", "--socket", str(sock)]
        answers = [(b"PIN or password for bob: ", b"7391"), (b"again: ", b"7391")]
        code, shown = await threads.deferToThread(run_in_pty, argv, answers)
        assert code == 0 and "added user bob" in shown and "7391" not in shown
        argv[3] = "dave"
        answers = [(b"PIN or password for dave: ", b"1111"), (b"again: ", b"2222")]
        code, shown = await threads.deferToThread(run_in_pty, argv, answers)
        assert code == 1 and "the two entries differ" in shown

        users = await cli_json(sock, "users", "list")
        assert [(u["name"], u["desktop"]) for u in users] == [("alice", "d1"), ("bob", None)]
        listing = await cli_ok(sock, "users", "list")
        assert listing.splitlines()[1].split()[:2] == ["alice", "d1"]

        term.type_text("alice\t" + secret + "\n")
        await term.wait_screen(frame)
        users = await cli_json(sock, "users", "list")
        assert users[0]["logged_in_at"] == tid
        (d1,) = await cli_json(sock, "desktops")
        assert d1["controlled_by"] == tid and d1["controlling_user"] == "alice"
        assert d1["owner"] == "alice"
        (record,) = await cli_json(sock, "sessions")
        assert (record["terminal"], record["desktop"], record["user"]) == (tid, "d1", "alice")
        assert record["ended"] is None
        assert "running" in (await cli_ok(sock, "sessions")).splitlines()[1]

        said = await cli_ok(sock, "users", "delete", "alice")
        assert said.strip() == "deleted user alice"
        await wait_until(
            lambda: not np.array_equal(term.framebuffer, frame), 15, "the login screen again"
        )
        assert (await terminal_row(sock, tid))["shows"]["kind"] == "login"
        (record,) = await cli_json(sock, "sessions")
        assert record["ended"] is not None

        done = await cli(sock, "users", "delete", "alice")
        assert done.returncode == 1 and "no user 'alice'" in done.stderr and "bob" in done.stderr

        # The secret is never echoed: not in any answer, not in the audit log.
        entries = await cli_json(sock, "audit", "--limit", "100")
        assert ("user-add", "alice", ACTOR) in {
            (e["action"], e["subject"], e["actor"]) for e in entries
        }
        assert secret not in json.dumps(entries) and secret not in json.dumps(added)
    finally:
        term.close()
        await ts.stopService()


# -- restarts ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_restart_thinserve_pairings_remain_terminals_reconnect_and_see_their_desktops(
    xvnc, tmp_path: Path
) -> None:
    """Restart thinserve: pairings remain; terminals reconnect and see their desktops."""
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    database = str(tmp_path / "thinserve.db")
    tid = "viewer-127.0.0.4"
    ts, sock = await start(tmp_path, [desktop("d1", server)], database=database)
    term = Terminal()
    try:
        await term.connect(ts.port_numbers[0], source="127.0.0.4")
        await cli_ok(sock, "pair", "--by-address", tid, "d1")
        await term.wait_screen(frame)
        # A second thinserve cannot take over the live socket.
        with pytest.raises(AdminSocketError, match="another thinserve answers"):
            listen(reactor, sock, AdminSite(AdminAPI(ts.hub), peer_principal))
    finally:
        term.close()
        await ts.stopService()
    await wait_until(lambda: term.closed, 10, "the terminal to see thinserve go")

    # A socket left behind by a thinserve that died does not stop the next one.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    ts, sock = await start(tmp_path, [desktop("d1", server)], database=database)
    term = Terminal()
    try:
        await term.connect(ts.port_numbers[0], source="127.0.0.4")
        await term.wait_screen(frame)  # no pairing this time: it was remembered
        row = await terminal_row(sock, tid)
        assert row["paired_desktop"] == "d1" and row["shows"]["desktop"] == "d1"
        entries = await cli_json(sock, "audit")
        assert [e["subject"] for e in entries if e["actor"] == ACTOR] == [tid]  # the first run's
    finally:
        term.close()
        await ts.stopService()


# -- the API's own rules ----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_api_rejects_bad_requests_with_json_errors(tmp_path: Path) -> None:
    assert admin.runtime_socket_path() == default_runtime_dir() / "admin.sock"
    gone = socket.socket()
    gone.bind(("127.0.0.1", 0))
    port = gone.getsockname()[1]
    gone.close()  # a desktop that never answers: the API still works
    ts, sock = await start(tmp_path, [DesktopConfig("d1", f"127.0.0.1:{port}")], live=False)
    client = AdminClient(sock)

    def status_of(method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        try:
            return 200, client.call(method, path, **kwargs)
        except AdminError as exc:
            assert exc.payload["error"] and "hint" in exc.payload
            return exc.status, exc.payload

    def raw(method: str, path: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        conn = UnixHTTPConnection(str(sock), 10)
        conn.request(method, "/api/v1" + path, body=body, headers={"Content-Type": content_type})
        reply = conn.getresponse()
        payload = json.loads(reply.read())
        conn.close()
        return reply.status, payload

    async def in_thread(func: Any, *args: Any, **kwargs: Any) -> Any:
        return await threads.deferToThread(func, *args, **kwargs)

    try:
        assert (await in_thread(status_of, "GET", "/nothing"))[0] == 404
        assert (await in_thread(status_of, "DELETE", "/terminals"))[0] == 405
        assert (await in_thread(status_of, "GET", "/audit", query={"limit": "0"}))[0] == 400
        assert (await in_thread(status_of, "GET", "/audit", query={"limt": "5"}))[0] == 400
        status, error = await in_thread(status_of, "POST", "/pair", body={"terminal": "x"})
        assert status == 400 and "'desktop'" in error["error"]
        status, error = await in_thread(
            status_of, "POST", "/pair", body={"terminal": "x", "desktop": "d1", "colour": 1}
        )
        assert status == 400 and "colour" in error["error"] and "allowed" in error["hint"]
        assert (await in_thread(raw, "POST", "/kick", b"{}", "text/plain"))[0] == 415
        assert (await in_thread(raw, "POST", "/kick", b"{nope", "application/json"))[0] == 400
        assert (await in_thread(raw, "POST", "/kick", b"[]", "application/json"))[0] == 400
        big = json.dumps({"terminal": "x" * 70000}).encode()
        assert (await in_thread(raw, "POST", "/kick", big, "application/json"))[0] == 413
        status, error = await in_thread(
            status_of, "POST", "/users", body={"name": "eve", "secret": "x!q"}
        )
        assert status == 400 and "x!q" not in json.dumps(error)
        status, error = await in_thread(
            status_of, "POST", "/users", body={"name": "bad name", "secret": "123456"}
        )
        assert status == 400 and "user name" in error["error"]

        # A terminal paired before it ever connected is listed; the newest audit
        # entries come back in order.
        status, error = await in_thread(
            status_of, "POST", "/pair", body={"terminal": "viewer-10.0.0.9", "desktop": "d1"}
        )
        assert status == 409 and "--by-address" in error["hint"]  # an address is no proof
        for _ in range(4):
            await in_thread(client.pair, "viewer-10.0.0.9", "d1", new=True, by_address=True)
            await in_thread(client.unpair, "viewer-10.0.0.9")
        rows = await in_thread(client.terminals)
        assert [r["id"] for r in rows] == []  # unpaired and never seen: forgotten
        await in_thread(client.pair, "viewer-10.0.0.9", "d1", new=True, by_address=True)
        kick = {"terminal": "viewer-10.0.0.9"}
        status, error = await in_thread(status_of, "POST", "/kick", body=kick)
        assert status == 409 and "not connected" in error["error"]
        rows = await in_thread(client.terminals)
        assert [(r["id"], r["paired_desktop"], r["connected"]) for r in rows] == [
            ("viewer-10.0.0.9", "d1", False)
        ]
        everything = ts.store.list_audit()  # type: ignore[union-attr]
        newest = await in_thread(client.audit, 3)
        assert [e["id"] for e in newest] == [e.id for e in everything[-3:]]
        assert [e["id"] for e in await in_thread(client.audit, 1000)] == [e.id for e in everything]
        state = await in_thread(client.state)
        assert state["pairings"] == {"viewer-10.0.0.9": "d1"} and state["connected"] == []
    finally:
        await ts.stopService()


def test_admin_socket_setting_is_checked() -> None:
    from thinserve.config import ConfigError, from_dict

    desktops = {"desktop": [{"name": "d1", "address": "127.0.0.1:5901"}]}
    assert from_dict(desktops).admin_socket is None  # the runtime directory's admin.sock
    assert from_dict({**desktops, "server": {"admin_socket": ""}}).admin_socket == ""  # off
    chosen = from_dict({**desktops, "server": {"admin_socket": "/run/ts/admin.sock"}})
    assert chosen.admin_socket == "/run/ts/admin.sock"
    with pytest.raises(ConfigError, match="absolute path"):
        from_dict({**desktops, "server": {"admin_socket": "admin.sock"}})
    with pytest.raises(ConfigError, match="at most 107 bytes"):
        from_dict({**desktops, "server": {"admin_socket": "/" + "x" * 120}})
    assert socket_path("") is None
    assert socket_path(None) == default_runtime_dir() / "admin.sock"


def test_latest_audit_returns_the_newest_entries_in_order() -> None:
    from thinserve.store.sqlite import SqliteStore

    store = SqliteStore()
    assert latest_audit(store, 10) == []
    for i in range(1234):
        store.append_audit(float(i), "admin:test", "note", f"t{i % 3}", str(i))
    everything = store.list_audit(limit=5000)
    for limit in (1, 2, 7, 50, 1000, 1234):
        assert latest_audit(store, limit) == everything[-limit:]
    about_t1 = [e for e in everything if e.subject == "t1"]
    assert latest_audit(store, 20, "t1") == about_t1[-20:]
    store.close()
