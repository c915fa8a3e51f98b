"""Child processes of a desktop session: starting, signalling, and making sure they end.

Twisted's process interfaces are zope interfaces, which mypy reads as
functions without ``self``; ``ProcessReactor`` and ``ProcessTransport`` say
the part of IReactorProcess and IProcessTransport used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, cast

from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

PF_EXITING = 0x4  # a task flag in /proc/PID/stat: the process is in its exit


class ProcessTransport(Protocol):
    """A spawned process (IProcessTransport)."""

    @property
    def pid(self) -> int | None: ...

    def signalProcess(self, _signal: str | int, /) -> None: ...


class ProcessReactor(Protocol):
    """The reactor's ``spawnProcess`` (IReactorProcess)."""

    def spawnProcess(
        self,
        _protocol: ProcessProtocol,
        _executable: str,
        _args: Sequence[str],
        /,
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        childFDs: Mapping[int, str | int] | None = None,
    ) -> ProcessTransport: ...


def returncode(reason: Failure) -> int:
    """How a process ended, as asyncio says it: the exit status, or minus the signal."""
    value = reason.value
    if isinstance(value, ProcessTerminated):
        return -int(value.signal) if value.signal is not None else int(value.exitCode)
    return 0


def wrapper() -> list[str]:
    """setsid, when available: its own session and process group, so nothing of
    thinserve's (its terminal, its group's signals) reaches it and it outlives
    thinserve.  No parent-death signal: a desktop is ended only when asked."""
    if shutil.which("setsid"):
        return ["setsid"]
    return []


def pid_of(transport: ProcessTransport | None) -> int | None:
    return None if transport is None else transport.pid


def signal_group(transport: ProcessTransport | None, signum: int) -> None:
    """Signal a process's whole group (it is a group leader), else just the process."""
    pid = pid_of(transport)
    if transport is None or pid is None:
        return
    try:
        os.killpg(pid, signum)
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessExitedAlready, OSError):
        transport.signalProcess(signum)


def ending(pid: int) -> bool:
    """True when the child ``pid`` has ended or is ending: in its exit, a zombie, or gone.

    A process closes its files (sockets, pipes) in its exit, before it is a
    zombie and its parent hears of it; its flags say so from the start of the exit.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    fields = stat.rsplit(")", 1)[1].split()  # the name, in parentheses, may hold anything
    state, flags = fields[0], int(fields[6])
    return state in ("Z", "X", "x") or bool(flags & PF_EXITING)


def session_processes(uid: int, marker: str) -> list[int]:
    """Processes of ``uid`` whose environment holds ``marker`` (``NAME=value``).

    A session's programs inherit its private XDG_RUNTIME_DIR, so this finds
    what escaped its process group (a terminal's shell, a forked daemon).
    """
    wanted = marker.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry.path).st_uid != uid:
                continue
            with open(os.path.join(entry.path, "environ"), "rb") as file:
                environ = file.read(1 << 20).split(b"\0")
        except OSError:
            continue
        if wanted in environ:
            found.append(int(entry.name))
    return found


async def sweep(uid: int, marker: str) -> None:
    """End what is left of a session: SIGTERM, then SIGKILL after a second."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        pids = session_processes(uid, marker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        for _ in range(20):
            if not pids:
                return
            await asyncio.sleep(0.05)
            pids = session_processes(uid, marker)


async def until_execed(pid: int | None, timeout: float = 10.0) -> None:
    """Until the forked child ``pid`` has become its program and, started through
    the wrapper, leads its own process group (or is gone): only then does a
    signal to its group reach it.  setsid execs first and leaves thinserve's
    group a moment later, a moment that grows on a busy machine."""
    if pid is None:
        return
    me = os.path.realpath(f"/proc/{os.getpid()}/exe")
    grouped = bool(wrapper())
    for _ in range(int(timeout / 0.005)):
        try:
            execed = os.path.realpath(f"/proc/{pid}/exe") != me
            leads = os.getpgid(pid) == pid
        except OSError:
            return
        if execed and (leads or not grouped):
            return
        await asyncio.sleep(0.005)


def global_reactor() -> ProcessReactor:
    """The global reactor, which provides IReactorProcess."""
    from twisted.internet import reactor

    return cast(ProcessReactor, reactor)
