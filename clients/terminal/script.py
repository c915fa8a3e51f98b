"""Scripted input (``--script FILE``, or ``-`` for standard input).

One command a line; blank lines and lines starting with ``#`` are skipped:

``type TEXT``         type TEXT as a keyboard would (Shift held for ``A``,
                      ``!``...); ``\\n`` is Return, ``\\t`` Tab, ``\\\\`` a backslash
``key NAME[+NAME...]`` press the keys in order, release them in reverse
                      (``key Return``, ``key Control_L+c``, ``key F5``)
``keydown NAME``      press and hold a key; ``keyup NAME`` releases it
``move X Y``          move the pointer to X, Y (framebuffer pixels)
``click [N]``         press and release button N (1 left, 2 middle, 3
                      right, 4/5 wheel up/down, 6/7 wheel left/right)
``mousedown [N]``     hold button N; ``mouseup [N]`` releases it
``clipboard TEXT``    put TEXT (same escapes as type) on the server's clipboard
``wait SECONDS``      pause
``wait-update``       wait for the next completed framebuffer update
``quit``              end the terminal

Key names are X keysym names (``Return``, ``BackSpace``, ``Left``,
``Page_Up``, ``KP_Enter``, ``F1``, ``Shift_L``, ``Control_L``, ``Alt_L``,
``Super_L``...), a few aliases (``Enter``, ``Esc``, ``Ctrl``, ``Shift``,
``Alt``), one character (``a``, ``A``, ``!``), or a keysym as ``0x...`` or
``U+...``.  Input commands wait until a session is showing the server's
screen.  A line that does not parse is logged and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from .input import BUTTON_BITS, Keyboard, Pointer
from .keys import SHIFT, Key, key_by_name

log = logging.getLogger(__name__)

MAX_WAIT = 3600.0
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


class ScriptError(ValueError):
    """A script line that cannot be run."""


@dataclass(frozen=True)
class Command:
    verb: str
    text: str = ""  # type, clipboard
    keys: tuple[tuple[str, Key, bool], ...] = ()  # key, keydown, keyup: (name, key, shift)
    numbers: tuple[float, ...] = ()  # move, click..., wait


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\``; any other backslash stays as it is."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in ESCAPES:
            out.append(ESCAPES[text[index + 1]])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def parse_line(line: str) -> Command | None:
    """One script line as a Command; None for a blank line or comment."""
    stripped = line.rstrip("\r\n")
    if not stripped.strip() or stripped.lstrip().startswith("#"):
        return None
    verb, _, rest = stripped.lstrip().partition(" ")
    if verb in ("type", "clipboard"):
        return Command(verb, text=unescape(rest))
    args = rest.split()
    if verb in ("key", "keydown", "keyup"):
        return Command(verb, keys=_parse_keys(verb, args))
    if verb == "move":
        return Command(verb, numbers=tuple(_integers(verb, args, 2)))
    if verb in ("click", "mousedown", "mouseup"):
        return Command(verb, numbers=(_button(verb, args),))
    if verb == "wait":
        return Command(verb, numbers=(_seconds(args),))
    if verb in ("wait-update", "quit"):
        if args:
            raise ScriptError(f"{verb} takes no arguments")
        return Command(verb)
    raise ScriptError(f"unknown command {verb!r}")


def _parse_keys(verb: str, args: list[str]) -> tuple[tuple[str, Key, bool], ...]:
    if len(args) != 1:
        raise ScriptError(f"{verb} takes one key or keys joined by +, e.g. Control_L+c")
    spec = args[0]
    names = [spec] if spec == "+" else spec.split("+")
    if verb != "key" and len(names) != 1:
        raise ScriptError(f"{verb} takes one key")
    keys = []
    for name in names:
        try:
            key, shift = key_by_name(name)
        except ValueError as exc:
            raise ScriptError(str(exc)) from None
        keys.append((name, key, shift))
    return tuple(keys)


def _integers(verb: str, args: list[str], count: int) -> list[int]:
    if len(args) != count or not all(a.lstrip("-").isdigit() for a in args):
        raise ScriptError(f"{verb} takes {count} whole numbers")
    return [int(a) for a in args]


def _button(verb: str, args: list[str]) -> int:
    (button,) = _integers(verb, args or ["1"], 1)
    if button not in BUTTON_BITS:
        raise ScriptError(f"{verb}: button {button} is not 1-7")
    return button


def _seconds(args: list[str]) -> float:
    try:
        (seconds,) = [float(a) for a in args]
    except ValueError:
        raise ScriptError("wait takes a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:
        raise ScriptError(f"wait takes 0-{MAX_WAIT:.0f} seconds")
    return seconds


# -- running ---------------------------------------------------------------------------------
class ScriptHost(Protocol):
    """What a script acts on (the terminal app)."""

    keyboard: Keyboard
    pointer: Pointer

    def when_ready(self) -> defer.Deferred[None]: ...
    def next_update(self) -> defer.Deferred[None]: ...
    def send_clipboard(self, text: str) -> None: ...
    def quit(self) -> None: ...


class ScriptRunner:
    def __init__(self, reactor: Any, host: ScriptHost) -> None:
        self.reactor = reactor
        self.host = host
        self.lines: defer.DeferredQueue[str | None] = defer.DeferredQueue()
        self.done: defer.Deferred[None] = defer.ensureDeferred(self._run())

    def feed(self, line: str | None) -> None:
        """The next line; None ends the script."""
        self.lines.put(line)

    async def _run(self) -> None:
        number = 0
        while (line := await self.lines.get()) is not None:
            number += 1
            try:
                command = parse_line(line)
            except ScriptError as exc:
                log.error("script line %d: %s", number, exc)
                continue
            if command is not None:
                await self.execute(command)

    async def execute(self, command: Command) -> None:
        verb = command.verb
        if verb == "wait":
            await task.deferLater(self.reactor, command.numbers[0])
        elif verb == "wait-update":
            await self.host.next_update()
        elif verb == "quit":
            self.host.quit()
        else:
            await self.host.when_ready()
            self._input(command)

    def _input(self, command: Command) -> None:
        host, verb = self.host, command.verb
        if verb == "type":
            missing = host.keyboard.type_text(command.text)
            if missing:
                log.warning("script: %d characters have no key and were skipped", missing)
        elif verb == "clipboard":
            host.send_clipboard(command.text)
        elif verb == "key":
            self._chord(command.keys)
        elif verb == "keydown":
            name, key, _shift = command.keys[0]
            host.keyboard.press(("script", name), key)
        elif verb == "keyup":
            name, key, _shift = command.keys[0]
            host.keyboard.release(("script", name), key)
        else:
            self._pointer(verb, [int(n) for n in command.numbers])

    def _chord(self, keys: tuple[tuple[str, Key, bool], ...]) -> None:
        """Press keys in order and release them in reverse; Shift first if one needs it."""
        pressed = [key for _name, key, _shift in keys]
        if any(shift for *_, shift in keys) and SHIFT.keysym not in {k.keysym for k in pressed}:
            pressed.insert(0, SHIFT)
        for index, key in enumerate(pressed):
            self.host.keyboard.press(("chord", index), key)
        for index in reversed(range(len(pressed))):
            self.host.keyboard.release(("chord", index))

    def _pointer(self, verb: str, numbers: list[int]) -> None:
        pointer = self.host.pointer
        if verb == "move":
            pointer.move(numbers[0], numbers[1])
        elif verb == "click":
            pointer.click(numbers[0])
        elif verb == "mousedown":
            pointer.press(numbers[0])
        else:
            pointer.release(numbers[0])


class LineFeeder(LineReceiver):
    """Standard input, line by line, into a ScriptRunner."""

    delimiter = b"\n"

    def __init__(self, feed: Callable[[str | None], None]) -> None:
        self.feed = feed

    def lineReceived(self, line: bytes) -> None:
        self.feed(line.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.feed(None)


def feed_file(runner: ScriptRunner, path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            runner.feed(line)
    runner.feed(None)
