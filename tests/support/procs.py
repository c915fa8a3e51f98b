"""Start real programs in their own process groups, wait on them, and always stop them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies without cleaning up."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_setup() -> Callable[[], None] | None:
    # The death signal follows the thread that forks, so only the main thread (which
    # lives as long as the test process) asks for it; worker threads come and go.
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


@dataclass
class Spawned:
    """A program started in a process group of its own, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-chars:]

    def describe_exit(self) -> str:
        return (
            f"{self.name} (pid {self.pid}) exited with code {self.popen.returncode}; "
            f"its log {self.log_path} ends with:\n{self.log_tail()}"
        )

    def wait(self, timeout: float) -> int:
        """Wait for the program to end by itself, or raise TimeoutError."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still running after {timeout} s") from None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        _signal_group(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        _signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> Spawned:
    """Start argv in a new session (so its process group can be killed), no stdin."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=_child_setup(),
        )
    return Spawned(Path(argv[0]).name, popen, log_path)


def start_x_server(
    argv: Sequence[str], log_path: Path, timeout: float = 20.0
) -> tuple[Spawned, int]:
    """Start an X server (Xvnc, Xvfb) that picks a free display itself (-displayfd).

    Returns the process and the display number, once the server accepts clients.
    """
    read_end, write_end = os.pipe()
    try:
        proc = spawn(
            [argv[0], "-displayfd", str(write_end), *argv[1:]], log_path, None, [write_end]
        )
    finally:
        os.close(write_end)
    try:
        text = _read_line(read_end, timeout, proc)
    except BaseException:
        proc.stop()
        raise
    finally:
        os.close(read_end)
    return proc, int(text)


def _read_line(fd: int, timeout: float, proc: Spawned) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{proc.name} gave no display number within {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            proc.popen.wait(5)
            raise RuntimeError(f"{proc.name} did not start: {proc.describe_exit()}")
        data += chunk
    return data.decode().strip()
