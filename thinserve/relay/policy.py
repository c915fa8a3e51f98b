"""Which desktop a terminal that connects in gets, under a simple site policy.

``first-free``: each terminal gets the first desktop no terminal controls;
when all are taken it sees a "no desktop free" screen until one frees up.
``shared``: every terminal watches the first desktop; the earliest one is in
control, the others are view-only, and control passes on when it leaves.
"""

from __future__ import annotations

import logging

from . import screens
from .session import TerminalSession
from .source import Source
from .upstream import DEFAULT_SIZE, Mirror

log = logging.getLogger(__name__)

MODES = ("first-free", "shared")


class SimplePolicy:
    def __init__(self, desktops: list[Mirror], mode: str = "first-free") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown policy mode {mode!r}; use one of {', '.join(MODES)}")
        self.desktops = desktops
        self.mode = mode
        self.controllers: dict[int, TerminalSession] = {}  # desktop index -> session
        self.sessions: list[TerminalSession] = []
        width, height = DEFAULT_SIZE
        self.waiting_screen = Source(screens.render(screens.no_desktop_free(), width, height))

    def new_session(self) -> TerminalSession:
        return TerminalSession(self.attach, self.detach)

    def attach(self, session: TerminalSession) -> Source:
        self.sessions.append(session)
        if self.mode == "shared":
            return self._share(session)
        index = self._free_desktop()
        if index is None:
            log.info("no desktop free for a new terminal")
            session.control = False
            return self.waiting_screen
        return self._give(session, index)

    def detach(self, session: TerminalSession) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
        for index, owner in list(self.controllers.items()):
            if owner is session:
                del self.controllers[index]
                self._hand_on(index)

    def _share(self, session: TerminalSession) -> Source:
        if 0 not in self.controllers:
            self.controllers[0] = session
            session.control = True
        else:
            session.control = False
        return self.desktops[0]

    def _free_desktop(self) -> int | None:
        for index in range(len(self.desktops)):
            if index not in self.controllers:
                return index
        return None

    def _give(self, session: TerminalSession, index: int) -> Source:
        self.controllers[index] = session
        session.control = True
        return self.desktops[index]

    def _hand_on(self, index: int) -> None:
        """Desktop ``index`` lost its controller: give it to someone waiting."""
        desktop = self.desktops[index]
        for session in self.sessions:
            if self.mode == "shared" and session.source is desktop:
                self.controllers[index] = session
                session.set_control(True)
                return
            if self.mode == "first-free" and session.source is self.waiting_screen:
                self.controllers[index] = session
                session.show(desktop, control=True)
                return
