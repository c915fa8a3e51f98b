"""A desktop's state: one enum, one transition table, one writer.

Everything that asks whether a desktop is running, starting or usable reads
``DesktopState``: the desktop manager, the broker (what a terminal given the
desktop sees), the admin API and the CLI.  Backends report their desktops'
processes in the same words (``STOPPED``, ``STARTING``, ``RUNNING``,
``STOPPING``, ``CRASHED``); the manager turns those reports into events.

Only ``DesktopMachine.handle`` changes a state, and only along
``TRANSITIONS`` (the table h11 keeps for HTTP connections is the model): an
event the table does not allow in the current state is a bug, raised as
``BadTransition`` before anything changes.  docs/architecture.md draws it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class DesktopState(enum.Enum):
    STOPPED = "stopped"  # not running; started when a terminal is given it
    STARTING = "starting"  # being started: booting, or waiting for its console's first picture
    RUNNING = "running"  # running; its console feeds its mirror
    STOPPING = "stopping"  # being stopped or reset
    HELD = "held"  # not started: its pool runs max_running desktops, all in use
    CRASHED = "crashed"  # failed to start, or crashed while in use; offered again after a delay

    @property
    def offered(self) -> bool:
        """A terminal given the desktop gets it (a stopped one is started for it)."""
        return self in _OFFERED

    @property
    def active(self) -> bool:
        """Holds resources: counts against its pool's max_running."""
        return self in _ACTIVE


_OFFERED = frozenset({DesktopState.STOPPED, DesktopState.RUNNING, DesktopState.STOPPING})
_ACTIVE = frozenset({DesktopState.STARTING, DesktopState.RUNNING, DesktopState.STOPPING})


class Event(enum.Enum):
    START = "start"  # the manager begins starting it
    UP = "up"  # it runs: its console showed a picture, or its backend says it runs
    STOP = "stop"  # a stop or reset begins (ours, or the backend reports one)
    ENDED = "ended"  # it stopped: our stop is done, or it stopped by itself
    FAILED = "failed"  # a start failed, or it crashed while someone used it
    HOLD = "hold"  # not started: its pool is at max_running with every desktop in use
    OFFER = "offer"  # held back or failed before: offered to terminals again


S, E = DesktopState, Event

TRANSITIONS: dict[DesktopState, dict[Event, DesktopState]] = {
    S.STOPPED: {
        E.START: S.STARTING,
        E.UP: S.RUNNING,  # found running (started before thinserve, or by hand)
        E.STOP: S.STOPPING,
        E.HOLD: S.HELD,
    },
    S.STARTING: {
        E.UP: S.RUNNING,
        E.STOP: S.STOPPING,  # the start first stops it to reset it
        E.FAILED: S.CRASHED,
    },
    S.RUNNING: {
        E.START: S.STARTING,  # running, but its console is not connected: connect it
        E.STOP: S.STOPPING,
        E.ENDED: S.STOPPED,
        E.FAILED: S.CRASHED,
    },
    S.STOPPING: {
        E.ENDED: S.STOPPED,
        E.FAILED: S.CRASHED,  # a reset that failed: nobody may have the old state
        E.START: S.STARTING,  # a start waiting behind the stop
    },
    S.HELD: {
        E.START: S.STARTING,
        E.OFFER: S.STOPPED,
        E.UP: S.RUNNING,
        E.STOP: S.STOPPING,
    },
    S.CRASHED: {
        E.START: S.STARTING,
        E.OFFER: S.STOPPED,
        E.HOLD: S.HELD,
        E.UP: S.RUNNING,
        E.STOP: S.STOPPING,
    },
}

Observer = Callable[[str, DesktopState, DesktopState], None]  # desktop, old, new


class BadTransition(RuntimeError):
    """An event the transition table does not allow in the current state."""


class DesktopMachine:
    """One desktop's state; ``handle`` is the only way to change it."""

    def __init__(
        self,
        name: str,
        state: DesktopState = DesktopState.STOPPED,
        observer: Observer | None = None,
    ) -> None:
        self.name = name
        self._state = state
        self.observer = observer

    @property
    def state(self) -> DesktopState:
        return self._state

    def can(self, event: Event) -> bool:
        return event in TRANSITIONS[self._state]

    def handle(self, event: Event) -> DesktopState:
        """Apply ``event``; the observer hears of every change of state."""
        new = TRANSITIONS[self._state].get(event)
        if new is None:
            raise BadTransition(f"desktop {self.name}: {event.value} while {self._state.value}")
        old, self._state = self._state, new
        if new is not old and self.observer is not None:
            self.observer(self.name, old, new)
        return new
