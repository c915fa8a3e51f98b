"""The one small interface every desktop backend implements.

A backend knows a set of desktops (VMs, Xvnc sessions, static endpoints),
can make sure one is running and say where its VNC console is, and can stop
it.  Status changes are reported through ``on_status`` so the relay can show
progress ("starting") and notice crashes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

from ..desktop_state import DesktopState

if TYPE_CHECKING:
    from .records import RecordStore


@dataclass(frozen=True)
class ConsoleAddress:
    """Where a running desktop's VNC console is and how to log in to it."""

    endpoint: str  # Twisted client endpoint: tcp:host=...:port=... or unix:path=...
    password: str | None = None
    username: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class DesktopInfo:
    name: str
    backend: str  # the backend's name, e.g. "qemu", "libvirt", "xvnc", "vnc"
    status: DesktopState
    detail: str = ""  # e.g. "KVM, 2 CPUs, 2048 MiB" or the last error


StatusListener = Callable[[str, DesktopState, str], None]  # desktop, status, detail


class Backend(Protocol):
    name: str
    on_status: StatusListener | None

    async def list_desktops(self) -> list[DesktopInfo]:
        """Every desktop this backend knows, with its current status."""
        ...

    async def ensure_running(self, desktop: str) -> ConsoleAddress:
        """Start ``desktop`` if needed; return its console once it accepts VNC."""
        ...

    async def stop(self, desktop: str, force: bool = False) -> None:
        """Shut ``desktop`` down (gracefully unless ``force``)."""
        ...

    async def reset(self, desktop: str) -> None:
        """Back to a fresh desktop (a template, a new session) before its next start."""
        ...

    def stop_on_release(self, desktop: str) -> bool:
        """Whether ``desktop`` is stopped as soon as nobody uses it."""
        ...

    async def close(self) -> None:
        """Release everything the backend holds (processes, connections)."""
        ...


@runtime_checkable
class Outliving(Protocol):
    """A backend whose desktops outlive thinserve (docs/desktops.md)."""

    def keep_records(self, records: RecordStore) -> None:
        """Record running desktops in ``records``, so a later thinserve finds them."""
        ...

    async def adopt(self) -> list[str]:
        """Take over the recorded desktops still running; their names."""
        ...

    async def release(self) -> None:
        """Let go of every desktop, leaving the recorded ones running."""
        ...


class BackendError(Exception):
    """A backend could not do what was asked; the message says what to do."""


class DesktopUnit(Protocol):
    """What a backend of one object per desktop asks of that object."""

    records: RecordStore | None

    def info(self) -> DesktopInfo: ...

    async def ensure_running(self) -> ConsoleAddress: ...

    async def stop(self, force: bool = False) -> None: ...

    async def reset(self) -> None: ...

    async def adopt(self) -> bool: ...

    async def release(self) -> None: ...


U = TypeVar("U", bound=DesktopUnit)


class UnitBackend(Generic[U]):
    """A backend that keeps one object per desktop and hands each call to it.

    Subclasses fill ``units`` and set ``name`` and ``kind`` (the word for
    their desktops in error messages).
    """

    name = "units"
    kind = "such"

    def __init__(
        self, on_status: StatusListener | None, records: RecordStore | None = None
    ) -> None:
        self.on_status = on_status
        self.records = records
        self.units: dict[str, U] = {}

    def _report(self, desktop: str, status: DesktopState, detail: str) -> None:
        if self.on_status is not None:
            self.on_status(desktop, status, detail)

    def unit(self, desktop: str) -> U:
        try:
            return self.units[desktop]
        except KeyError:
            raise BackendError(f"no {self.kind} desktop named {desktop!r}") from None

    async def list_desktops(self) -> list[DesktopInfo]:
        return [unit.info() for unit in self.units.values()]

    async def ensure_running(self, desktop: str) -> ConsoleAddress:
        return await self.unit(desktop).ensure_running()

    async def stop(self, desktop: str, force: bool = False) -> None:
        await self.unit(desktop).stop(force)

    async def reset(self, desktop: str) -> None:
        """Back to a fresh desktop, as the desktop's own ``reset`` defines it."""
        await self.unit(desktop).reset()

    def stop_on_release(self, desktop: str) -> bool:
        return False

    async def close(self) -> None:
        """Stop every desktop (each within its own timeout)."""
        await asyncio.gather(*(u.stop() for u in self.units.values()), return_exceptions=True)

    def keep_records(self, records: RecordStore) -> None:
        self.records = records
        for unit in self.units.values():
            unit.records = records

    async def adopt(self) -> list[str]:
        """Take over the desktops a previous thinserve left running (reported RUNNING)."""
        names = list(self.units)
        taken = await asyncio.gather(*(self.units[n].adopt() for n in names))
        return [name for name, took in zip(names, taken, strict=True) if took]

    async def release(self) -> None:
        """Let go of every desktop: recorded ones keep running, the others stop."""
        await asyncio.gather(*(u.release() for u in self.units.values()), return_exceptions=True)
