"""A full disk under thinserve's database, for real.

The test mounts a small tmpfs, starts thinserve in this process with its
database there (real Xvnc desktops, real RFB terminals on loopback, the real
``thinserve`` CLI in a separate process), then fills the tmpfs with a file
until writes fail.  A new terminal must be told so on its screen, the CLI
must say "disk full" with what to do, and the log must say it once however
many terminals knock.  Terminals already connected keep working.  Deleting
the file must be enough for everything to work again, without a restart,
and nothing written before may be lost.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.integration.test_admin import (
    cli,
    cli_ok,
    desktop,
    pairing_screen,
    start,
    terminal_row,
)
from tests.integration.test_rfb_interop import office_frame
from tests.support.need import need
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from thinserve.admin.client import AdminClient, AdminError
from thinserve.relay import screens
from thinserve.store import DiskFullError

pytestmark = pytest.mark.integration

TMPFS_SIZE = "1m"  # the database, its WAL and the server certificate fit; little else


@contextmanager
def small_tmpfs(where: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE mounted at ``where`` (root only), unmounted afterwards."""
    where.mkdir(mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    reason = mounted.stderr.strip() or f"exit status {mounted.returncode}"
    need(mounted.returncode == 0, f"mounting a tmpfs needs root (CAP_SYS_ADMIN): {reason}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)  # even if still open


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its file system has no room left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    chunk = bytes(64 * 1024)
    try:
        while True:
            os.write(fd, chunk)  # a short write when nearly full, then ENOSPC
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return filler


def errors(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    """The ERROR lines ``logger`` wrote."""
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= 40]


def stored(ts: Any) -> dict[str, Any]:
    """Everything the store holds that a full disk must not touch."""
    store = ts.store
    return {
        "pairings": store.list_pairings(),
        "users": store.list_users(),
        "hashes": {u.name: store.user_secret_hash(u.name) for u in store.list_users()},
        "audit": store.list_audit(),
        "terminals": {t.id: t for t in store.list_terminals()},
        "desktops": store.list_desktops(),
    }


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_reported_clearly_and_thinserve_recovers_by_itself(
    xvnc, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server1, server2 = xvnc(size=(320, 240)), xvnc(size=(320, 240))
    frame1, frame2 = office_frame(320, 240), office_frame(320, 240)
    frame2[: 240 // 3] = 0x00306090  # tell the desktops apart
    server1.paint(frame1)
    server2.paint(frame2)
    with small_tmpfs(tmp_path / "state") as state:
        database = state / "thinserve.db"
        ts, sock = await start(
            tmp_path, [desktop("d1", server1), desktop("d2", server2)], database=str(database)
        )
        paired, waiting = Terminal(), Terminal()
        knocking = [Terminal() for _ in range(4)]
        later: list[Terminal] = []
        try:
            # Before: one terminal paired and working, one showing its pairing code, a user.
            await paired.connect(ts.port_numbers[0], source="127.0.0.2")
            await cli_ok(sock, "pair", "--by-address", "viewer-127.0.0.2", "d1")
            await paired.wait_screen(frame1)
            await waiting.connect(ts.port_numbers[0], source="127.0.0.3")
            row = await terminal_row(sock, "viewer-127.0.0.3")
            code = row["pairing_code"]
            await waiting.wait_screen(pairing_screen(row))
            await cli_ok(sock, "users", "add", "alice", "--secret-stdin", stdin="4711-pin\n")
            before = stored(ts)

            filler = fill(state)

            # New terminals, a small flood of them: each is told why, on its screen.
            await defer.gatherResults(
                [
                    defer.ensureDeferred(t.connect(ts.port_numbers[0], source=f"127.0.1.{n}"))
                    for n, t in enumerate(knocking, start=1)
                ]
            )
            height, width = knocking[0].framebuffer.shape[:2]
            refusal = screens.render(screens.cannot_accept("its disk is full"), width, height)
            assert DiskFullError.reason == "its disk is full"
            for term in knocking:
                await term.wait_screen(refusal)
                assert not np.array_equal(term.framebuffer[:240, :320], frame1)
                assert not np.array_equal(term.framebuffer[:240, :320], frame2)
            await wait_until(
                lambda: all(t.closed for t in knocking), 20, "refused terminals closed"
            )
            problem = f"disk full at {state}: cannot write the database {database}"
            hint = "free space there; a running thinserve recovers by itself, no restart needed"
            # One ERROR line with the cause, not one per connection.
            (logged,) = errors(caplog, "thinserve.hub")
            assert logged.startswith("cannot accept terminals (refused viewer-127.0.1.")
            assert logged.endswith(f"): {problem}; {hint}")
            connected = ts.hub.broker.snapshot().connected
            assert sorted(connected) == ["viewer-127.0.0.2", "viewer-127.0.0.3"]
            assert not any(t.startswith("viewer-127.0.1.") for t in ts.hub.terminals)

            # The terminals already connected keep working.
            moved = frame1.copy()
            moved[100:140, 40:280] = 0x00C03020
            server1.paint(moved)
            await paired.wait_screen(moved)
            assert not paired.closed and not waiting.closed

            # The CLI says what happened and what to do; the code stays valid.
            done = await cli(sock, "pair", "--code", code, "--by-address", "d2")
            assert done.returncode == 1 and done.stdout == ""
            assert done.stderr == f"thinserve: {problem}\n  {hint}\n"
            client = AdminClient(sock)
            with pytest.raises(AdminError) as refused:
                await threads.deferToThread(client.pair_code, code, "d2", by_address=True)
            assert refused.value.status == 507
            assert refused.value.payload == {
                "code": "store_unavailable",
                "message": problem,
                "error": problem,
                "hint": hint,
            }
            failed = f"admin request POST /api/v1/pair-code failed: {problem}; {hint}"
            assert errors(caplog, "thinserve.admin.api") == [failed, failed]  # CLI, then client
            assert (await terminal_row(sock, "viewer-127.0.0.3"))["pairing_code"] == code
            assert stored(ts) == before  # nothing half-written, nothing lost

            # Room again: everything works, without a restart.
            filler.unlink()
            said = await cli_ok(sock, "pair", "--code", code, "--by-address", "d2")
            tid = "viewer-127.0.0.3"
            assert said.strip() == f"paired {tid} with d2 by address; it now shows d2 (control)"
            await waiting.wait_screen(frame2)
            again = Terminal()
            later.append(again)
            await again.connect(ts.port_numbers[0], source="127.0.1.1")  # refused before
            row = await terminal_row(sock, "viewer-127.0.1.1")
            await again.wait_screen(pairing_screen(row))
            await cli_ok(sock, "pair", "--code", row["pairing_code"], "--by-address", "d1")
            await again.wait_screen(moved)  # d1 moved to it from viewer-127.0.0.2
            assert errors(caplog, "thinserve.hub") == [logged]
            assert not [r for r in caplog.records if r.exc_info]  # no bare tracebacks

            # What was written before the disk filled is all there.
            after = stored(ts)
            assert after["users"] == before["users"] and after["hashes"] == before["hashes"]
            assert after["audit"][: len(before["audit"])] == before["audit"]
            assert after["desktops"] == before["desktops"]
            for terminal_id, record in before["terminals"].items():
                assert after["terminals"][terminal_id].name == record.name
            new = [e.subject for e in after["audit"] if e.action == "terminal-new"]
            refused_then = [t for t in new if t.startswith("viewer-127.0.1.")]
            assert refused_then == ["viewer-127.0.1.1"]  # only once accepted: no trace before
        finally:
            for term in (paired, waiting, *knocking, *later):
                term.close()
            await ts.stopService()
        check = sqlite3.connect(database)
        try:
            assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            check.close()
