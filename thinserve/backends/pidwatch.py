"""Processes a desktop runs: who they are, and noticing at once when one ends.

A pid alone names a process only while it lives: once it is gone the
kernel may give the number to another.  A process is therefore known by its
pid and its start time (field 22 of /proc/PID/stat, clock ticks after boot)
on this boot (/proc/sys/kernel/random/boot_id).

A process thinserve did not start, or a previous thinserve started, is not
thinserve's child: no SIGCHLD, no exit status.  ``watch`` opens a pidfd for
it (which names exactly that process, whatever happens to the number) and
registers it with the asyncio loop's reader, so its end is heard as soon as
a child's would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
START_FIELD = 19  # starttime (field 22) counted from the state (field 3), after the name


def boot_id() -> str:
    """This boot's id: start times from another boot mean nothing."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None once it has ended.

    A zombie has ended: it is only waiting for its parent to hear of it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name, in parentheses, may hold anything
    if fields[0] in ("Z", "X", "x"):
        return None
    return int(fields[START_FIELD])


def same_process(pid: int, started: int) -> bool:
    """True when ``pid`` is alive and is the process that started at ``started``."""
    return pid > 0 and start_time(pid) == started


class PidWatch:
    """One process's end, heard through a pidfd on the asyncio loop."""

    def __init__(self, pid: int, fd: int, on_end: Callable[[], None]) -> None:
        self.pid = pid
        self._fd: int | None = fd
        self._on_end = on_end
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._ended)

    @property
    def watching(self) -> bool:
        return self._fd is not None

    def _ended(self) -> None:
        self.cancel()
        self._on_end()

    def cancel(self) -> None:
        """Stop watching (the process itself is left alone)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def signal(self, signum: int) -> None:
        """Signal exactly the watched process, never a later one with its pid."""
        if self._fd is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(self._fd, signum)


def watch(pid: int, started: int, on_end: Callable[[], None]) -> PidWatch | None:
    """Watch ``pid`` if it is still the process that started at ``started``; else None.

    The start time is checked after the pidfd is open: from then on the
    pidfd names that process even if it ends and its number is reused.
    """
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    if start_time(pid) != started:
        os.close(fd)
        return None
    return PidWatch(pid, fd, on_end)


def end_group(pid: int, started: int, signum: int) -> bool:
    """Signal the process group led by ``pid`` if ``pid`` is still that process."""
    if not same_process(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
    return True


async def end_recorded(pid: int, started: int, timeout: float = 5.0) -> None:
    """End a recorded process (and its group): SIGTERM, then SIGKILL after ``timeout``."""
    if not end_group(pid, started, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while same_process(pid, started) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if end_group(pid, started, signal.SIGKILL):
        log.warning("pid %d did not end on SIGTERM within %.0f s: killed", pid, timeout)
