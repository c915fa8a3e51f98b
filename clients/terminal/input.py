"""Keyboard and pointer state, sent to whichever session is current.

Both the pygame event loop and the headless script drive these.  The
keyboard remembers what it pressed, so a release sends the keysym the
press sent (whatever the modifiers are by then) and ``release_all`` lets go
of everything when the window loses focus or the session changes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol

from .keys import SHIFT, Key, keys_for_char

MAX_WHEEL_STEPS = 10  # clicks sent for one wheel event at most

# pygame button numbers -> RFB button mask bits (left, middle, right, wheel up/down/left/right)
BUTTON_BITS = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}
WHEEL_UP, WHEEL_DOWN, WHEEL_LEFT, WHEEL_RIGHT = 4, 5, 6, 7


class InputTarget(Protocol):
    def key(self, down: bool, keysym: int, keycode: int | None) -> None: ...
    def pointer(self, buttons: int, x: int, y: int) -> None: ...


Target = Callable[[], InputTarget | None]


class Keyboard:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.pressed: dict[Hashable, Key] = {}

    def press(self, ident: Hashable, key: Key) -> None:
        """Key ``ident`` (a physical key, or anything unique) went down as ``key``."""
        self.pressed[ident] = key
        self._send(True, key)

    def release(self, ident: Hashable, key: Key | None = None) -> None:
        """Key ``ident`` went up; ``key`` is used only if its press was not seen."""
        pressed = self.pressed.pop(ident, None) or key
        if pressed is not None:
            self._send(False, pressed)

    def release_all(self) -> None:
        for ident in list(self.pressed):
            self.release(ident)

    def tap(self, key: Key, shift: bool = False) -> None:
        """Press and release ``key``, holding Shift around it if asked."""
        if shift:
            self._send(True, SHIFT)
        self._send(True, key)
        self._send(False, key)
        if shift:
            self._send(False, SHIFT)

    def type_text(self, text: str) -> int:
        """Type each character as a keyboard would; returns how many had no key."""
        missing = 0
        for char in text:
            found = keys_for_char(char)
            if found is None:
                missing += 1
                continue
            self.tap(*found)
        return missing

    def _send(self, down: bool, key: Key) -> None:
        target = self.target()
        if target is not None:
            target.key(down, key.keysym, key.keycode)


class Pointer:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.buttons = 0
        self.x = 0
        self.y = 0

    def move(self, x: int, y: int) -> None:
        self.x, self.y = x, y
        self._send()

    def press(self, button: int) -> None:
        if button in BUTTON_BITS:
            self.buttons |= 1 << BUTTON_BITS[button]
            self._send()

    def release(self, button: int) -> None:
        if button in BUTTON_BITS:
            self.buttons &= ~(1 << BUTTON_BITS[button])
            self._send()

    def click(self, button: int) -> None:
        self.press(button)
        self.release(button)

    def wheel(self, dx: int, dy: int) -> None:
        """Wheel steps as clicks of buttons 4-7 (up, down, left, right)."""
        axes = ((dy, WHEEL_DOWN, WHEEL_UP), (dx, WHEEL_LEFT, WHEEL_RIGHT))
        for amount, negative, positive in axes:
            button = positive if amount > 0 else negative
            for _ in range(min(abs(amount), MAX_WHEEL_STEPS)):
                self.click(button)

    def release_all(self) -> None:
        if self.buttons:
            self.buttons = 0
            self._send()

    def _send(self) -> None:
        target = self.target()
        if target is not None:
            target.pointer(self.buttons, self.x, self.y)
