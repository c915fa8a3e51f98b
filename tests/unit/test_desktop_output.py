"""A desktop program's output file and the pidfd watch of a process thinserve did not start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest_twisted

from tests.support.aio import as_deferred
from thinserve.backends.outputlog import KEEP_BYTES, MAX_BYTES, last_line, open_for_output, trim
from thinserve.backends.pidwatch import start_time, watch


def test_a_program_writes_its_output_to_the_file_and_its_last_line_is_found(
    tmp_path: Path,
) -> None:
    log = tmp_path / "xvnc.log"
    fd = open_for_output(log)
    try:
        script = "echo '(II) starting'; echo '(EE) Fatal server error:' >&2; echo >&2"
        subprocess.run(["sh", "-c", script], stdout=fd, stderr=fd, check=True)
    finally:
        os.close(fd)
    assert last_line(log) == "Fatal server error:"  # X log marks and blank lines dropped
    assert (log.stat().st_mode & 0o777) == 0o600
    assert last_line(tmp_path / "missing.log") == "no error message"


def test_a_link_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do not show me\n")
    log = tmp_path / "session.log"
    log.symlink_to(secret)
    assert last_line(log) == "no error message"
    try:
        open_for_output(log)
    except OSError:
        pass
    else:
        raise AssertionError("opened an output file through a link")


def test_a_file_past_its_bound_keeps_its_tail_and_starts_again(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    fd = open_for_output(log)
    try:
        line = b"x" * 99 + b"\n"
        os.write(fd, line * (MAX_BYTES // len(line) + 10) + b"the last words\n")
        trim(log)
        assert log.stat().st_size == 0
        old = log.with_name("qemu.log.old")
        assert old.stat().st_size == KEEP_BYTES
        assert last_line(log) == "the last words"  # from the kept tail
        os.write(fd, b"written after the trim\n")  # appends at the new end
    finally:
        os.close(fd)
    assert log.read_bytes() == b"written after the trim\n"
    trim(log)  # small: left alone
    assert log.read_bytes() == b"written after the trim\n"


@pytest_twisted.ensureDeferred
async def test_the_end_of_a_process_that_is_not_a_child_is_heard_at_once() -> None:
    await as_deferred(_watch_a_stranger())


async def _watch_a_stranger() -> None:
    """sh starts sleep in the background and exits: sleep is no child of ours."""
    started = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(started.stdout)
    begun = start_time(pid)
    assert begun is not None
    assert watch(pid, begun + 1, lambda: None) is None  # not the recorded process
    ended = asyncio.Event()
    watched = watch(pid, begun, ended.set)
    assert watched is not None and watched.watching
    watched.signal(signal.SIGTERM)
    await asyncio.wait_for(ended.wait(), 5)
    assert not watched.watching
