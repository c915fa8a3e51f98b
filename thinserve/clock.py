"""Timers, typed so that mypy can check their calls.

Twisted's IReactorTime and IDelayedCall are zope interfaces: mypy reads
them as classes whose methods take no ``self``, and checks every call
against the wrong signature.  These Protocols name the same methods the
way mypy understands; the reactor and ``twisted.internet.task.Clock``
(in tests) both fit them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A call scheduled by ``Clock.callLater`` (IDelayedCall)."""

    def active(self) -> bool: ...
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The reactor's time and timers (IReactorTime)."""

    def seconds(self) -> float: ...
    def callLater(
        self, delay: float, callback: Callable[..., object], *args: object, **kw: object
    ) -> Timer: ...


def reactor_clock() -> Clock:
    """The global reactor, imported only when first needed: importing it
    installs a reactor, which must be the one the program chose."""
    from twisted.internet import reactor

    return reactor
