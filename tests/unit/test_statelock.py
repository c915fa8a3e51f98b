"""The state lock: one thinserve per state directory (thinserve.statelock)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinserve import statelock

HOLD = """
import sys
from pathlib import Path
from thinserve import statelock
lock = statelock.acquire(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def holding(state_dir: Path) -> subprocess.Popen[str]:
    """Another process holding the lock, once it says so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert statelock.holder(state) is None  # nothing there yet
    proc = holding(state)
    try:
        assert statelock.holder(state) == proc.pid
        with pytest.raises(statelock.StateLocked) as refused:
            statelock.acquire(state)
        assert refused.value.pid == proc.pid
        assert str(refused.value) == (
            f"another thinserve (pid {proc.pid}) is running on {state}; "
            "stop it (systemctl stop thinserve) or use --state-dir"
        )
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    assert statelock.holder(state) is None  # the kernel let it go with the process
    with statelock.acquire(state) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        assert statelock.holder(state) is not None  # seen held from the holder itself too
    assert statelock.holder(state) is None


def test_the_state_directory_is_made_closed_to_others(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    with statelock.acquire(state):
        assert state.stat().st_mode & 0o777 == (0o711 if os.geteuid() == 0 else 0o700)
        assert (state / "lock").stat().st_mode & 0o777 == 0o600


def test_a_lock_file_planted_as_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep")
    state = tmp_path / "state"
    state.mkdir()
    (state / "lock").symlink_to(elsewhere)
    with pytest.raises(OSError, match="cannot open the state lock"):
        statelock.acquire(state)
    assert elsewhere.read_text() == "keep"
