"""The software terminal's key mapping, checked against independent tables.

Keysyms are checked against python-xlib's X11 keysym names; scancodes
against the Linux input header (SDL scancode -> evdev code) and QEMU's own
en-us keymap (evdev code -> QEMU's XT number, and keysym name -> XT number
plus Shift), so no expected value here comes from the code under test.
Events are real pygame events.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from Xlib import XK

from clients.terminal import keys
from clients.terminal.input import Keyboard
from clients.terminal.keys import Key
from clients.terminal.script import ScriptError, parse_line
from tests.support.need import need

try:
    import pygame
except ImportError:  # the fixture below fails (CI) or skips the tests that need it
    pygame = None  # type: ignore[assignment]

EVDEV_HEADER = Path("/usr/include/linux/input-event-codes.h")
QEMU_KEYMAP = Path("/usr/share/qemu/keymaps/en-us")

# pygame KSCAN_* names whose Linux KEY_* name differs (the rest are equal).
EVDEV_NAMES = {
    "RETURN": "ENTER",
    "ESCAPE": "ESC",
    "EQUALS": "EQUAL",
    "LEFTBRACKET": "LEFTBRACE",
    "RIGHTBRACKET": "RIGHTBRACE",
    "NONUSHASH": "BACKSLASH",
    "PERIOD": "DOT",
    "PRINTSCREEN": "SYSRQ",
    "SYSREQ": "SYSRQ",
    "SCROLLLOCK": "SCROLLLOCK",
    "PAUSE": "PAUSE",
    "KP_DIVIDE": "KPSLASH",
    "KP_MULTIPLY": "KPASTERISK",
    "KP_MINUS": "KPMINUS",
    "KP_PLUS": "KPPLUS",
    "KP_ENTER": "KPENTER",
    "KP_PERIOD": "KPDOT",
    "KP_EQUALS": "KPEQUAL",
    **{f"KP_{n}": f"KP{n}" for n in range(10)},
    "NONUSBACKSLASH": "102ND",
    "APPLICATION": "COMPOSE",
    "LCTRL": "LEFTCTRL",
    "LSHIFT": "LEFTSHIFT",
    "LALT": "LEFTALT",
    "LGUI": "LEFTMETA",
    "RCTRL": "RIGHTCTRL",
    "RSHIFT": "RIGHTSHIFT",
    "RALT": "RIGHTALT",
    "RGUI": "RIGHTMETA",
}
SDL_SCANCODE_APPLICATION = 0x65  # pygame has no constant for it
for _group in ("latin1", "miscellany", "xkb"):
    XK.load_keysym_group(_group)


@pytest.fixture
def pg() -> Iterator[Any]:
    need(pygame is not None, "the Python package pygame-ce: pip install pygame-ce (or make venv)")
    yield pygame


@pytest.fixture
def events(pg: Any) -> ModuleType:
    return importlib.import_module("clients.terminal.events")


# -- the independent tables ----------------------------------------------------------------
@cache
def evdev_codes() -> dict[str, int]:
    need(EVDEV_HEADER.exists(), f"{EVDEV_HEADER}: apt-get install -y linux-libc-dev")
    text = EVDEV_HEADER.read_text()
    pattern = r"#define KEY_(\w+)\s+(0x[0-9a-fA-F]+|\d+)"
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(pattern, text)}


@cache
def qemu_keymap() -> tuple[dict[int, int], dict[str, set[tuple[int, str]]]]:
    """QEMU's evdev -> XT numbers, and keysym name -> {(XT number, modifiers)}."""
    need(QEMU_KEYMAP.exists(), f"{QEMU_KEYMAP}: apt-get install -y qemu-system-x86")
    text = QEMU_KEYMAP.read_text()
    numbers = {
        int(m.group(1)): int(m.group(2), 16)
        for m in re.finditer(r'# evdev (\d+) \(0x\w+\), QKeyCode "\w+", number (0x\w+)', text)
    }
    by_name: dict[str, set[tuple[int, str]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and parts[1].startswith("0x"):
            by_name.setdefault(parts[0], set()).add((int(parts[1], 16), " ".join(parts[2:])))
    return numbers, by_name


def x_names(keysym: int) -> list[str]:
    """Every X11 name python-xlib knows for a keysym."""
    for group in ("latin1", "miscellany", "xkb"):
        XK.load_keysym_group(group)
    return [
        name[3:] for name, value in vars(XK).items() if name.startswith("XK_") and value == keysym
    ]


def qemu_codes(keysym: int) -> set[tuple[int, str]]:
    _numbers, by_name = qemu_keymap()
    return {entry for name in x_names(keysym) for entry in by_name.get(name, set())}


def sdl_scancodes(pg: Any) -> dict[int, str]:
    """pygame's scancode names by value; of several names, one this test can look up."""
    found = {SDL_SCANCODE_APPLICATION: "APPLICATION"}
    for constant in sorted(dir(pg)):
        if constant.startswith("KSCAN_"):
            value, name = getattr(pg, constant), constant[6:]
            if value not in found or name in EVDEV_NAMES:
                found[value] = name
    return found


# -- keysyms --------------------------------------------------------------------------------
def test_every_key_name_has_its_x11_keysym() -> None:
    for name, keysym in keys.KEYSYMS.items():
        assert XK.string_to_keysym(name) == keysym, name


def test_aliases_that_x11_knows_agree_with_it() -> None:
    for alias, name in keys.ALIASES.items():
        known = XK.string_to_keysym(alias)
        if known:
            assert known == keys.KEYSYMS[name], alias


def test_characters_use_latin1_keysyms_or_the_unicode_range() -> None:
    for char in "aZ!~ é÷ÿ":
        assert keys.char_keysym(char) == XK.string_to_keysym(x_names(ord(char))[0])
    assert keys.char_keysym("€") == 0x01000000 + 0x20AC
    assert keys.char_keysym("✓") == 0x01000000 + 0x2713
    assert keys.char_keysym("\x00") is None and keys.char_keysym("\x7f") is None


# -- scancodes ------------------------------------------------------------------------------
def test_every_physical_key_has_qemus_xt_number(pg: Any) -> None:
    evdev = evdev_codes()
    qemu_numbers, _by_name = qemu_keymap()
    names = sdl_scancodes(pg)
    assert keys.XT_BY_USAGE, "no scancodes mapped"
    for usage, xt in keys.XT_BY_USAGE.items():
        name = names[usage]
        code = evdev[EVDEV_NAMES.get(name, name)]
        assert qemu_numbers[code] == xt, f"{name}: {xt:#x} != {qemu_numbers[code]:#x}"


def test_named_keys_have_the_xt_numbers_of_qemus_us_keymap() -> None:
    _numbers, by_name = qemu_keymap()
    checked = 0
    for name, xt in keys.XT_BY_NAME.items():
        if name in by_name:
            checked += 1
            assert xt in {code for code, _mods in by_name[name]}, name
    assert checked >= 60


def test_typed_characters_press_the_keys_of_a_us_keyboard() -> None:
    for code in range(0x20, 0x7F):
        char = chr(code)
        found = keys.keys_for_char(char)
        assert found is not None, char
        key, shift = found
        assert key.keysym == code
        assert (key.keycode, "shift" if shift else "") in qemu_codes(code), repr(char)


def test_typing_holds_shift_only_around_shifted_characters() -> None:
    sent: list[tuple[bool, int, int | None]] = []

    class Target:
        def key(self, down: bool, keysym: int, keycode: int | None) -> None:
            sent.append((down, keysym, keycode))

        def pointer(self, buttons: int, x: int, y: int) -> None:
            raise AssertionError("no pointer events")

    target = Target()
    assert Keyboard(lambda: target).type_text("aB!\né") == 0
    shift = (XK.string_to_keysym("Shift_L"), evdev_codes()["LEFTSHIFT"])
    b_key = (XK.string_to_keysym("B"), evdev_codes()["B"])
    a_key = (XK.string_to_keysym("a"), evdev_codes()["A"])
    bang = (XK.string_to_keysym("exclam"), evdev_codes()["1"])
    enter = (XK.string_to_keysym("Return"), evdev_codes()["ENTER"])
    e_acute = (XK.string_to_keysym("eacute"), None)  # no key on a US keyboard
    expected = [(True, *a_key), (False, *a_key)]
    for key in (b_key, bang):
        expected += [(True, *shift), (True, *key), (False, *key), (False, *shift)]
    expected += [(True, *enter), (False, *enter), (True, *e_acute), (False, *e_acute)]
    assert sent == expected


# -- pygame events ------------------------------------------------------------------------------
def key_event(pg: Any, key: int, scancode: int, mod: int = 0, text: str = "") -> Any:
    return pg.event.Event(pg.KEYDOWN, key=key, scancode=scancode, mod=mod, unicode=text)


def expect(name: str, evdev_name: str | None) -> Key:
    keycode = None
    if evdev_name is not None:
        keycode = qemu_keymap()[0][evdev_codes()[evdev_name]]
    return Key(XK.string_to_keysym(name), keycode)


def test_printable_keys_send_the_character_typed(pg: Any, events: ModuleType) -> None:
    cases = [
        (key_event(pg, pg.K_a, pg.KSCAN_A, 0, "a"), expect("a", "A")),
        (key_event(pg, pg.K_a, pg.KSCAN_A, pg.KMOD_LSHIFT, "A"), expect("A", "A")),
        (key_event(pg, pg.K_1, pg.KSCAN_1, pg.KMOD_LSHIFT, "!"), expect("exclam", "1")),
        (
            key_event(pg, pg.K_SLASH, pg.KSCAN_SLASH, pg.KMOD_RSHIFT, "?"),
            expect("question", "SLASH"),
        ),
        (key_event(pg, pg.K_SPACE, pg.KSCAN_SPACE, 0, " "), expect("space", "SPACE")),
        # A German keyboard: the key right of 0 types ß; the scancode stays the same.
        (key_event(pg, ord("ß"), pg.KSCAN_MINUS, 0, "ß"), expect("ssharp", "MINUS")),
    ]
    for event, key in cases:
        assert events.key_of(event) == key, event


def test_control_combinations_send_the_letter_not_the_control_code(
    pg: Any, events: ModuleType
) -> None:
    ctrl_c = key_event(pg, pg.K_c, pg.KSCAN_C, pg.KMOD_LCTRL, "\x03")
    assert events.key_of(ctrl_c) == expect("c", "C")
    ctrl_shift_c = key_event(pg, pg.K_c, pg.KSCAN_C, pg.KMOD_LCTRL | pg.KMOD_LSHIFT, "")
    assert events.key_of(ctrl_shift_c) == expect("C", "C")
    caps_ctrl_c = key_event(pg, pg.K_c, pg.KSCAN_C, pg.KMOD_LCTRL | pg.KMOD_CAPS, "")
    assert events.key_of(caps_ctrl_c) == expect("C", "C")


def test_keys_that_type_nothing_send_their_x11_keysyms(pg: Any, events: ModuleType) -> None:
    cases = [
        ("Return", "RETURN", "ENTER", "\r"),
        ("BackSpace", "BACKSPACE", "BACKSPACE", "\b"),
        ("Tab", "TAB", "TAB", "\t"),
        ("Escape", "ESCAPE", "ESC", "\x1b"),
        ("Delete", "DELETE", "DELETE", "\x7f"),
        ("Insert", "INSERT", "INSERT", ""),
        ("Home", "HOME", "HOME", ""),
        ("End", "END", "END", ""),
        ("Page_Up", "PAGEUP", "PAGEUP", ""),
        ("Page_Down", "PAGEDOWN", "PAGEDOWN", ""),
        ("Left", "LEFT", "LEFT", ""),
        ("Right", "RIGHT", "RIGHT", ""),
        ("Up", "UP", "UP", ""),
        ("Down", "DOWN", "DOWN", ""),
        ("Print", "PRINTSCREEN", "SYSRQ", ""),
        ("Pause", "PAUSE", "PAUSE", ""),
        ("Scroll_Lock", "SCROLLLOCK", "SCROLLLOCK", ""),
        ("Caps_Lock", "CAPSLOCK", "CAPSLOCK", ""),
        ("Num_Lock", "NUMLOCKCLEAR", "NUMLOCK", ""),
        ("Shift_L", "LSHIFT", "LEFTSHIFT", ""),
        ("Shift_R", "RSHIFT", "RIGHTSHIFT", ""),
        ("Control_L", "LCTRL", "LEFTCTRL", ""),
        ("Control_R", "RCTRL", "RIGHTCTRL", ""),
        ("Alt_L", "LALT", "LEFTALT", ""),
        ("Alt_R", "RALT", "RIGHTALT", ""),
        ("Super_L", "LGUI", "LEFTMETA", ""),
        ("Super_R", "RGUI", "RIGHTMETA", ""),
        *[(f"F{n}", f"F{n}", f"F{n}", "") for n in range(1, 13)],
    ]
    for x_name, sdl_name, evdev_name, text in cases:
        event = key_event(pg, getattr(pg, f"K_{sdl_name}"), getattr(pg, f"KSCAN_{sdl_name}"))
        event.unicode = text
        assert events.key_of(event) == expect(x_name, evdev_name), x_name


def test_keypad_keys_follow_num_lock(pg: Any, events: ModuleType) -> None:
    digits = {
        7: "KP_Home", 8: "KP_Up", 9: "KP_Prior", 4: "KP_Left", 5: "KP_Begin",
        6: "KP_Right", 1: "KP_End", 2: "KP_Down", 3: "KP_Next", 0: "KP_Insert",
    }  # fmt: skip
    for digit, navigation in digits.items():
        key, scancode = getattr(pg, f"K_KP_{digit}"), getattr(pg, f"KSCAN_KP_{digit}")
        on = key_event(pg, key, scancode, pg.KMOD_NUM, str(digit))
        off = key_event(pg, key, scancode, 0, "")
        assert events.key_of(on) == expect(f"KP_{digit}", f"KP{digit}")
        assert events.key_of(off) == expect(navigation, f"KP{digit}")
    period = (pg.K_KP_PERIOD, pg.KSCAN_KP_PERIOD)
    assert events.key_of(key_event(pg, *period, pg.KMOD_NUM, ".")) == expect("KP_Decimal", "KPDOT")
    assert events.key_of(key_event(pg, *period, 0, "")) == expect("KP_Delete", "KPDOT")
    for x_name, sdl_name, evdev_name in [
        ("KP_Enter", "KP_ENTER", "KPENTER"),
        ("KP_Divide", "KP_DIVIDE", "KPSLASH"),
        ("KP_Multiply", "KP_MULTIPLY", "KPASTERISK"),
        ("KP_Subtract", "KP_MINUS", "KPMINUS"),
        ("KP_Add", "KP_PLUS", "KPPLUS"),
        ("KP_Equal", "KP_EQUALS", "KPEQUAL"),
    ]:
        event = key_event(pg, getattr(pg, f"K_{sdl_name}"), getattr(pg, f"KSCAN_{sdl_name}"))
        assert events.key_of(event) == expect(x_name, evdev_name), x_name


def test_keys_beyond_latin1_and_unknown_keys(pg: Any, events: ModuleType) -> None:
    euro = key_event(pg, 0x20AC, pg.KSCAN_E, pg.KMOD_RALT, "€")
    assert events.key_of(euro) == Key(0x010020AC, qemu_keymap()[0][evdev_codes()["E"]])
    power = key_event(pg, pg.K_POWER, 0x66)  # no keysym for it
    assert events.key_of(power) is None


def test_a_release_sends_what_the_press_sent(pg: Any, events: ModuleType) -> None:
    sent: list[tuple[bool, int, int | None]] = []

    class Target:
        def key(self, down: bool, keysym: int, keycode: int | None) -> None:
            sent.append((down, keysym, keycode))

        def pointer(self, buttons: int, x: int, y: int) -> None:
            pass

    target = Target()
    keyboard = Keyboard(lambda: target)
    press = key_event(pg, pg.K_1, pg.KSCAN_1, pg.KMOD_LSHIFT, "!")
    keyboard.press(events.ident_of(press), events.key_of(press))
    release = pg.event.Event(pg.KEYUP, key=pg.K_1, scancode=pg.KSCAN_1, mod=0, unicode="")
    keyboard.release(events.ident_of(release), events.key_of(release))  # Shift already up
    bang = expect("exclam", "1")
    assert sent == [(True, bang.keysym, bang.keycode), (False, bang.keysym, bang.keycode)]
    keyboard.press(("held", 1), expect("a", "A"))
    keyboard.release_all()
    assert sent[-1] == (False, XK.string_to_keysym("a"), evdev_codes()["A"])
    assert keyboard.pressed == {}


def test_ctrl_alt_shift_q_is_the_quit_key(pg: Any, events: ModuleType) -> None:
    mods = pg.KMOD_LCTRL | pg.KMOD_LALT | pg.KMOD_LSHIFT
    assert events.is_quit_key(key_event(pg, pg.K_q, pg.KSCAN_Q, mods, ""))
    assert not events.is_quit_key(key_event(pg, pg.K_q, pg.KSCAN_Q, pg.KMOD_LCTRL, ""))


# -- script key names ------------------------------------------------------------------------
def test_script_key_names_resolve_to_x11_keysyms() -> None:
    for name in ["Return", "Page_Up", "KP_Enter", "F11", "Shift_L", "Control_L", "BackSpace"]:
        key, shift = keys.key_by_name(name)
        assert key.keysym == XK.string_to_keysym(name) and not shift
    key, shift = keys.key_by_name("A")
    assert (key.keysym, key.keycode, shift) == (XK.string_to_keysym("A"), evdev_codes()["A"], True)
    assert keys.key_by_name("0xff0d")[0].keysym == XK.string_to_keysym("Return")
    assert keys.key_by_name("U+20AC")[0].keysym == 0x010020AC
    assert keys.key_by_name("Enter") == keys.key_by_name("Return")
    for bad in ["NoSuchKey", "0x", "0x0", "U+zz", ""]:
        with pytest.raises(ValueError):
            keys.key_by_name(bad)


def test_script_lines_parse_or_fail_clearly() -> None:
    typed = parse_line("type hello\\nworld \\\\ \\x")
    assert typed is not None and typed.text == "hello\nworld \\ \\x"
    chord = parse_line("key Control_L+c")
    assert chord is not None and [name for name, _k, _s in chord.keys] == ["Control_L", "c"]
    assert parse_line("key +") is not None
    assert parse_line("move 10 20").numbers == (10, 20)  # type: ignore[union-attr]
    assert parse_line("click").numbers == (1,)  # type: ignore[union-attr]
    assert parse_line("wait 0.25").numbers == (0.25,)  # type: ignore[union-attr]
    assert parse_line("   # a comment") is None and parse_line("") is None
    for bad in [
        "dance",
        "key NoSuchKey",
        "keydown Control_L+c",
        "move 10",
        "move a b",
        "click 9",
        "wait -1",
        "wait soon",
        "quit now",
    ]:
        with pytest.raises(ScriptError):
            parse_line(bad)
