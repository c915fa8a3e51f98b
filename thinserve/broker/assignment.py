"""What a terminal must show: a desktop, or a screen thinserve draws.

``Assignment`` is ``ShowDesktop | ShowScreen``.  The relay renders a
``ShowScreen`` itself and only ever connects a terminal to desktop pixels
when it holds a ``ShowDesktop``, which only the broker can make: its
constructor refuses callers without the broker's private key, so a screen
can never turn into a desktop by mistake elsewhere in the code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class ScreenKind(enum.Enum):
    PAIRING = "pairing"  # unknown terminal: its id and a pairing code
    LOGIN = "login"  # hot-desking: user name and PIN/password
    NO_DESKTOP_FREE = "no-desktop-free"  # waiting for a pool desktop
    STARTING = "starting"  # the desktop is starting; progress if known
    UNAVAILABLE = "unavailable"  # the desktop is down or unknown
    FAILED = "failed"  # the desktop could not start; the message says why
    IN_USE = "in-use"  # the desktop is controlled at another terminal
    KICKED = "kicked"  # shown once, then the relay closes the connection


# Screens a terminal shows when nothing grants it a desktop; they may carry
# the terminal's pairing code.
FALLBACK_SCREENS = frozenset({ScreenKind.PAIRING, ScreenKind.LOGIN, ScreenKind.NO_DESKTOP_FREE})


class _Key:
    """The broker's private capability for making ShowDesktop values."""

    __slots__ = ()


_KEY = _Key()


class ShowDesktop:
    """Show ``desktop``; keyboard and mouse go to it only when ``control``."""

    __slots__ = ("_control", "_desktop")
    _desktop: str
    _control: bool

    def __init__(self, desktop: str, control: bool, *, _key: object = None) -> None:
        if _key is not _KEY:
            raise TypeError("only the broker grants desktops; ask Broker.assignment()")
        object.__setattr__(self, "_desktop", desktop)
        object.__setattr__(self, "_control", bool(control))

    @property
    def desktop(self) -> str:
        return self._desktop

    @property
    def control(self) -> bool:
        return self._control

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ShowDesktop is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShowDesktop):
            return NotImplemented
        return (self._desktop, self._control) == (other._desktop, other._control)

    def __hash__(self) -> int:
        return hash((ShowDesktop, self._desktop, self._control))

    def __repr__(self) -> str:
        return f"ShowDesktop({self._desktop!r}, control={self._control})"


def _grant(desktop: str, control: bool) -> ShowDesktop:
    """Make a ShowDesktop.  For thinserve.broker.core only."""
    return ShowDesktop(desktop, control, _key=_KEY)


@dataclass(frozen=True)
class ShowScreen:
    """A screen thinserve draws; never any desktop's pixels.

    ``message`` is a line for the user (e.g. why a login failed); ``code``
    the pairing code to show (formatted, e.g. "K7D-Q2M") with the terminal's
    ``terminal_id`` (required on PAIRING, shown in a corner of LOGIN and
    NO_DESKTOP_FREE when pairing codes are on); ``desktop`` and ``progress``
    (0..1) describe a desktop being waited for.  FAILED, and NO_DESKTOP_FREE
    naming a ``desktop``, say that desktop could not start, ``message`` why.
    """

    kind: ScreenKind
    message: str = ""
    code: str | None = None
    terminal_id: str | None = None
    desktop: str | None = None
    progress: float | None = None

    def __post_init__(self) -> None:
        if self.kind is ScreenKind.PAIRING and self.code is None:
            raise ValueError("the pairing screen needs a code")
        if self.code is not None and self.kind not in FALLBACK_SCREENS:
            raise ValueError(f"a pairing code does not belong on the {self.kind.value} screen")
        if self.progress is not None and not 0.0 <= self.progress <= 1.0:
            raise ValueError(f"progress {self.progress} is outside 0..1")


Assignment = ShowDesktop | ShowScreen


class Change(NamedTuple):
    """Terminal ``terminal_id`` must show ``assignment`` from now on."""

    terminal_id: str
    assignment: Assignment
