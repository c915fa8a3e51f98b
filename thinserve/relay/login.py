"""The hot-desk login screen: a form drawn by thinserve, typed into over RFB.

It is a Source whose input sink is the form itself: key events edit the
user name and PIN fields; Enter submits.  Nothing typed here ever reaches a
desktop.  Field lengths are bounded.  While a submitted login is being
checked the form says so and takes no keys, so one form never has two
logins checked at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import screens
from .source import Source

MAX_USER = 64
MAX_SECRET = 128
CHECKING = "Checking…"
KEY_BACKSPACE, KEY_TAB, KEY_RETURN, KEY_ESCAPE, KEY_KP_ENTER = (
    0xFF08,
    0xFF09,
    0xFF0D,
    0xFF1B,
    0xFF8D,
)


class LoginScreen(Source):
    def __init__(
        self,
        width: int,
        height: int,
        on_submit: Callable[[str, str], None],
        message: str = "",
        terminal_id: str = "",
    ) -> None:
        self.size = (width, height)
        self.on_submit = on_submit
        self.message = message
        self.terminal_id = terminal_id
        self.user = ""
        self.secret = ""
        self.field = "user"
        self.busy = False  # a submitted login is being checked
        super().__init__(self._render(), "thinserve login")
        self.input = self

    def _render(self) -> np.ndarray:
        message = CHECKING if self.busy else self.message
        text = screens.login_form(
            self.user, len(self.secret), self.field, message, self.terminal_id
        )
        return screens.render(text, *self.size)

    def _redraw(self) -> None:
        self.set_frame(self._render())

    def checking(self) -> None:
        """The submitted login is being checked: say so, and ignore keys."""
        self.busy = True
        self._redraw()

    def checked(self) -> None:
        """The check is over: back to the form as it was (if still shown)."""
        self.busy = False
        self._redraw()

    # -- InputSink ------------------------------------------------------------------
    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        if not down or self.busy:
            return
        if keysym in (KEY_RETURN, KEY_KP_ENTER):
            self._enter()
        elif keysym == KEY_TAB:
            self.field = "secret" if self.field == "user" else "user"
        elif keysym == KEY_BACKSPACE:
            self._edit(lambda text: text[:-1])
        elif keysym == KEY_ESCAPE:
            self.user, self.secret, self.field = "", "", "user"
        elif _printable(keysym):
            self._edit(lambda text: text + chr(keysym))
        else:
            return
        self._redraw()

    def _edit(self, change: Callable[[str], str]) -> None:
        if self.field == "user":
            self.user = change(self.user)[:MAX_USER]
        else:
            self.secret = change(self.secret)[:MAX_SECRET]

    def _enter(self) -> None:
        if self.field == "user":
            self.field = "secret"
            return
        user, secret = self.user, self.secret
        self.secret = ""
        self.on_submit(user, secret)

    def pointer(self, buttons: int, x: int, y: int) -> None:
        pass

    def clipboard(self, text: str) -> None:
        pass

    def set_desktop_size(self, width: int, height: int) -> bool:
        return False


def _printable(keysym: int) -> bool:
    """Latin-1 printable keysyms (they equal their code points)."""
    return 0x20 <= keysym <= 0x7E or 0xA0 <= keysym <= 0xFF
