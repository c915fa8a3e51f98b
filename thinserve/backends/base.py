"""The one small interface every desktop backend implements.

A backend knows a set of desktops (VMs, Xvnc sessions, static endpoints),
can make sure one is running and say where its VNC console is, and can stop
it.  Status changes are reported through ``on_status`` so the relay can show
progress ("starting") and notice crashes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class DesktopStatus(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    CRASHED = "crashed"


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
    status: DesktopStatus
    detail: str = ""  # e.g. "KVM, 2 CPUs, 2048 MiB" or the last error


StatusListener = Callable[[str, DesktopStatus, str], None]  # desktop, status, detail


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

    async def close(self) -> None:
        """Release everything the backend holds (processes, connections)."""
        ...


class BackendError(Exception):
    """A backend could not do what was asked; the message says what to do."""
