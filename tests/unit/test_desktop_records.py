"""The records of running desktops: written whole, read back exactly, never trusted blindly."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest

from thinserve.backends.pidwatch import boot_id, same_process, start_time
from thinserve.backends.records import (
    MAX_RECORD_BYTES,
    DesktopRecord,
    RecordedProcess,
    RecordStore,
    records_in,
)


def record_of(pid: int, name: str = "desk-1") -> DesktopRecord:
    started = start_time(pid)
    assert started is not None
    return DesktopRecord(
        name=name,
        backend="xvnc",
        processes=(RecordedProcess("xvnc", pid, started),),
        vnc_socket="/run/thinserve/local/sockets/desk-1/vnc.sock",
        summary="user alice, display :3, 1280x800x24",
        display=3,
        user="alice",
        uid=1000,
        run_dirs=("/run/thinserve/local/sockets/desk-1",),
    )


def test_a_record_reads_back_exactly_and_only_its_owner_may_read_it(tmp_path: Path) -> None:
    store = records_in(tmp_path / "state")
    record = record_of(os.getpid())
    store.save(record)
    path = tmp_path / "state" / "desktops" / "desk-1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.load("desk-1") == record
    assert record.boot == boot_id() != ""
    assert store.names() == ["desk-1"]
    assert [p.name for p in path.parent.iterdir()] == ["desk-1.json"]  # no temporary left
    store.remove("desk-1")
    assert store.load("desk-1") is None


def test_saving_again_replaces_the_record_whole(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.save(record_of(os.getpid()))
    newer = record_of(os.getppid())
    store.save(newer)
    assert store.load("desk-1") == newer


def test_a_pid_used_again_by_another_process_is_not_the_recorded_one() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = start_time(child.pid)
        assert started is not None and same_process(child.pid, started)
        # The same number with another start time: what a reused pid looks like.
        assert not RecordedProcess("xvnc", child.pid, started + 1).alive()
    finally:
        child.kill()
        child.wait()
    assert not RecordedProcess("xvnc", child.pid, started).alive()
    assert not same_process(child.pid, started)


def test_a_zombie_has_ended() -> None:
    # The child waits for its input to close, so it is surely alive when first read.
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    started = start_time(child.pid)
    assert child.stdin is not None
    child.stdin.close()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
    assert started is not None and start_time(child.pid) is None
    child.wait()


BAD_RECORDS = {
    "garbage": b"\x00\xffnot json at all",
    "not an object": b"[1, 2, 3]",
    "deeply nested": b"[" * 50000 + b"]" * 50000,
    "wrong version": json.dumps({"version": 99}).encode(),
    "pid as text": None,  # filled below from a good record
    "no processes": None,
    "pid 1": None,
    "bool for an int": None,
}


def bad_record(kind: str) -> bytes:
    raw = BAD_RECORDS[kind]
    if raw is not None:
        return raw
    data = record_of(os.getpid()).to_json()
    if kind == "pid as text":
        data["processes"][0]["pid"] = str(data["processes"][0]["pid"])
    elif kind == "no processes":
        data["processes"] = []
    elif kind == "pid 1":
        data["processes"][0]["pid"] = 1
    elif kind == "bool for an int":
        data["display"] = True
    return json.dumps(data).encode()


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_an_unusable_record_is_logged_removed_and_ignored(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path)
    path = store.path("desk-1")
    path.write_bytes(bad_record(kind))
    with caplog.at_level(logging.WARNING, logger="thinserve.backends.records"):
        assert store.load("desk-1") is None
    assert not path.exists()
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"desktop desk-1: ignoring and removing its record {path} (")
    assert message.endswith("the desktop starts afresh")


def test_an_oversized_record_is_refused_before_it_is_parsed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path)
    data = record_of(os.getpid()).to_json()
    data["summary"] = "x" * MAX_RECORD_BYTES
    store.path("desk-1").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        assert store.load("desk-1") is None
    assert f"larger than {MAX_RECORD_BYTES} bytes" in caplog.text


def test_a_link_or_a_record_of_another_name_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path)
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(record_of(os.getpid()).to_json()))
    store.path("desk-1").symlink_to(target)
    store.path("desk-2").write_text(target.read_text())  # names desk-1
    with caplog.at_level(logging.WARNING):
        assert store.load("desk-1") is None
        assert store.load("desk-2") is None
    assert not store.path("desk-1").is_symlink() and target.exists()
    assert "names desk-1" in caplog.text
