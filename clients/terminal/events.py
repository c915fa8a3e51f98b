"""pygame events to keyboard, pointer and clipboard actions.

Pointer motion is coalesced: of several moves in one poll only the last is
sent, but always before a button or key event, so order is kept.
Ctrl+Alt+Shift+Q quits the terminal (a full-screen terminal has no close
button); the keys are released at the server first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pygame

from .display import Display
from .input import Keyboard, Pointer
from .keys import KMOD_ALT, KMOD_CTRL, KMOD_SHIFT, Key, key_for_event

QUIT_MODS = (KMOD_CTRL, KMOD_ALT, KMOD_SHIFT)


def key_of(event: pygame.event.Event) -> Key | None:
    return key_for_event(
        int(getattr(event, "key", 0)),
        int(getattr(event, "scancode", 0)),
        int(getattr(event, "mod", 0)),
        str(getattr(event, "unicode", "")),
    )


def ident_of(event: pygame.event.Event) -> tuple[str, int]:
    """The physical key of a key event (its scancode when there is one)."""
    scancode = int(getattr(event, "scancode", 0))
    return ("scancode", scancode) if scancode else ("key", int(getattr(event, "key", 0)))


def is_quit_key(event: pygame.event.Event) -> bool:
    mod = int(getattr(event, "mod", 0))
    return event.key == pygame.K_q and all(mod & bits for bits in QUIT_MODS)


class EventRouter:
    def __init__(
        self,
        display: Display,
        keyboard: Keyboard,
        pointer: Pointer,
        on_quit: Callable[[], None],
        on_clipboard_changed: Callable[[], None],
    ) -> None:
        self.display = display
        self.keyboard = keyboard
        self.pointer = pointer
        self.on_quit = on_quit
        self.on_clipboard_changed = on_clipboard_changed
        self._motion: tuple[int, int] | None = None

    def handle(self, events: Iterable[pygame.event.Event]) -> None:
        for event in events:
            if event.type != pygame.MOUSEMOTION:
                self._flush_motion()
            self._dispatch(event)
        self._flush_motion()

    def _dispatch(self, event: pygame.event.Event) -> None:
        kind = event.type
        if kind == pygame.KEYDOWN:
            self._key_down(event)
        elif kind == pygame.KEYUP:
            self.keyboard.release(ident_of(event), key_of(event))
        elif kind == pygame.MOUSEMOTION:
            self._motion = event.pos
        elif kind in (pygame.MOUSEBUTTONDOWN, pygame.MOUSEBUTTONUP):
            self._button(event)
        elif kind == pygame.MOUSEWHEEL:
            flip = -1 if getattr(event, "flipped", False) else 1
            self.pointer.wheel(int(event.x) * flip, int(event.y) * flip)
        elif kind == pygame.WINDOWFOCUSLOST:
            self.keyboard.release_all()
            self.pointer.release_all()
        elif kind in (pygame.CLIPBOARDUPDATE, pygame.WINDOWFOCUSGAINED):
            self.on_clipboard_changed()
        elif kind == pygame.QUIT:
            self.on_quit()

    def _key_down(self, event: pygame.event.Event) -> None:
        if is_quit_key(event):
            self.keyboard.release_all()
            self.on_quit()
            return
        key = key_of(event)
        if key is not None:
            self.keyboard.press(ident_of(event), key)

    def _button(self, event: pygame.event.Event) -> None:
        if event.button > 3:
            return  # the wheel arrives as MOUSEWHEEL; extra buttons are not sent
        self._move_to(event.pos)
        if event.type == pygame.MOUSEBUTTONDOWN:
            self.pointer.press(event.button)
        else:
            self.pointer.release(event.button)

    def _flush_motion(self) -> None:
        if self._motion is not None:
            position, self._motion = self._motion, None
            self._move_to(position)

    def _move_to(self, position: tuple[int, int]) -> None:
        mapped = self.display.to_framebuffer(position)
        if mapped is not None and mapped != (self.pointer.x, self.pointer.y):
            self.pointer.move(*mapped)
