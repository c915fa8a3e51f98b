"""Whether a desktop can be shown right now, as the relay reports it."""

from __future__ import annotations

import enum


class DesktopState(enum.Enum):
    READY = "ready"  # running (or started on demand by the relay): show it
    STARTING = "starting"  # show the starting screen, with progress if known
    UNAVAILABLE = "unavailable"  # down or not configured: nobody gets it
