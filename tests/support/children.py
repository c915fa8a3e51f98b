"""Child processes under the test's reactor: their output lines awaited without blocking."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path

from twisted.internet import protocol
from twisted.python.failure import Failure

from .reactor import running_reactor, transport_of
from .waiting import WaitTimeout, wait_until

STOP_SECONDS = 5.0


class Child(protocol.ProcessProtocol):
    """A child process whose output lines the test can wait for without blocking the reactor."""

    def __init__(self, name: str = "child") -> None:
        self.name = name
        self.output = b""
        self.pid: int | None = None
        self.ended = False
        self.code: int | None = None

    @classmethod
    def spawn(cls, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        child = cls(Path(args[0]).name)
        process = running_reactor().spawnProcess(
            child, args[0], list(args), env=env if env is not None else dict(os.environ)
        )
        child.pid = process.pid
        return child

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.pid = None
        self.ended = True
        self.code = getattr(reason.value, "exitCode", None)

    def write(self, line: str) -> None:
        transport_of(self).write(line.encode() + b"\n")

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    # -- what a wait watches (waiting.Watched) ---------------------------------------------
    def alive(self) -> bool:
        return not self.ended

    def describe_exit(self) -> str:
        return f"{self.name} ended with code {self.code}; its output:\n{self.log_tail()}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.text[-chars:]

    async def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output, once there."""
        return await wait_until(
            lambda: re.search(pattern, self.text), timeout, f"{pattern!r} from {self.name}", self
        )

    async def stop(self, timeout: float = STOP_SECONDS) -> None:
        """End the child by its pid (TERM, then KILL) and wait for it."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.pid is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            with contextlib.suppress(WaitTimeout):
                await wait_until(lambda: self.pid is None, timeout, f"{self.name} to end")


async def run(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 20.0) -> str:
    """Run a command to its end under the reactor; its output, or an error if it failed."""
    child = Child.spawn(args, env)
    try:
        await wait_until(lambda: child.ended, timeout, f"{args[0]} to finish")
        if child.code != 0:
            raise RuntimeError(f"{' '.join(args)} exited with {child.code}:\n{child.text}")
        return child.text
    finally:
        await child.stop()
