"""Keys: X keysyms and XT scancodes for pygame key events, key names and typed text.

RFB sends keys as X keysyms; the QEMU Extended Key Event also sends the XT
(PC scancode set 1) code of the physical key, numbered as QEMU does: a key
whose scancode has the 0xE0 prefix is ``0x80 | code`` (Up, 0xE0 0x48, is
0xC8).  A server that gets scancodes (QEMU, Xvnc) types with its own
keyboard layout, so Shift must really be pressed for ``A`` or ``!``.

SDL (and so pygame) numbers physical keys by their USB HID usage (the
``scancode`` of a key event); ``key`` is the layout's keycode: the
character for character keys, ``HID usage | 1 << 30`` for the others.
"""

from __future__ import annotations

from dataclasses import dataclass

SDLK_SCANCODE_MASK = 1 << 30
UNICODE_KEYSYM = 0x01000000  # X: keysym of a character outside Latin-1

# pygame/SDL modifier bits (stable SDL_Keymod values)
KMOD_SHIFT = 0x0003
KMOD_CTRL = 0x00C0
KMOD_ALT = 0x0300
KMOD_NUM = 0x1000
KMOD_CAPS = 0x2000


@dataclass(frozen=True)
class Key:
    keysym: int
    keycode: int | None = None  # XT scancode as QEMU numbers it, if known


# X keysyms of keys that type no character (X11 keysymdef.h).
KEYSYMS: dict[str, int] = {
    "BackSpace": 0xFF08,
    "Tab": 0xFF09,
    "Linefeed": 0xFF0A,
    "Clear": 0xFF0B,
    "Return": 0xFF0D,
    "Pause": 0xFF13,
    "Scroll_Lock": 0xFF14,
    "Sys_Req": 0xFF15,
    "Escape": 0xFF1B,
    "Delete": 0xFFFF,
    "Home": 0xFF50,
    "Left": 0xFF51,
    "Up": 0xFF52,
    "Right": 0xFF53,
    "Down": 0xFF54,
    "Prior": 0xFF55,
    "Next": 0xFF56,
    "End": 0xFF57,
    "Begin": 0xFF58,
    "Select": 0xFF60,
    "Print": 0xFF61,
    "Execute": 0xFF62,
    "Insert": 0xFF63,
    "Undo": 0xFF65,
    "Redo": 0xFF66,
    "Menu": 0xFF67,
    "Find": 0xFF68,
    "Cancel": 0xFF69,
    "Help": 0xFF6A,
    "Break": 0xFF6B,
    "Mode_switch": 0xFF7E,
    "Num_Lock": 0xFF7F,
    "KP_Enter": 0xFF8D,
    "KP_Home": 0xFF95,
    "KP_Left": 0xFF96,
    "KP_Up": 0xFF97,
    "KP_Right": 0xFF98,
    "KP_Down": 0xFF99,
    "KP_Prior": 0xFF9A,
    "KP_Next": 0xFF9B,
    "KP_End": 0xFF9C,
    "KP_Begin": 0xFF9D,
    "KP_Insert": 0xFF9E,
    "KP_Delete": 0xFF9F,
    "KP_Multiply": 0xFFAA,
    "KP_Add": 0xFFAB,
    "KP_Separator": 0xFFAC,
    "KP_Subtract": 0xFFAD,
    "KP_Decimal": 0xFFAE,
    "KP_Divide": 0xFFAF,
    **{f"KP_{n}": 0xFFB0 + n for n in range(10)},
    "KP_Equal": 0xFFBD,
    **{f"F{n}": 0xFFBE + n - 1 for n in range(1, 25)},
    "Shift_L": 0xFFE1,
    "Shift_R": 0xFFE2,
    "Control_L": 0xFFE3,
    "Control_R": 0xFFE4,
    "Caps_Lock": 0xFFE5,
    "Meta_L": 0xFFE7,
    "Meta_R": 0xFFE8,
    "Alt_L": 0xFFE9,
    "Alt_R": 0xFFEA,
    "Super_L": 0xFFEB,
    "Super_R": 0xFFEC,
    "ISO_Level3_Shift": 0xFE03,
    "space": 0x0020,
}

# Other names the script language accepts.
ALIASES: dict[str, str] = {
    "Page_Up": "Prior",
    "Page_Down": "Next",
    "KP_Page_Up": "KP_Prior",
    "KP_Page_Down": "KP_Next",
    "Enter": "Return",
    "Esc": "Escape",
    "Backspace": "BackSpace",
    "Del": "Delete",
    "Space": "space",
    "Shift": "Shift_L",
    "Ctrl": "Control_L",
    "Control": "Control_L",
    "Alt": "Alt_L",
    "Meta": "Meta_L",
    "Super": "Super_L",
    "AltGr": "ISO_Level3_Shift",
}

# Keys by USB HID usage (SDL scancode): X name and XT code (None: no XT code).
NAMED_KEYS: dict[int, tuple[str, int | None]] = {
    0x28: ("Return", 0x1C),
    0x29: ("Escape", 0x01),
    0x2A: ("BackSpace", 0x0E),
    0x2B: ("Tab", 0x0F),
    0x2C: ("space", 0x39),
    0x39: ("Caps_Lock", 0x3A),
    **{0x3A + n: (f"F{n + 1}", 0x3B + n) for n in range(10)},
    0x44: ("F11", 0x57),
    0x45: ("F12", 0x58),
    0x46: ("Print", 0x54),
    0x47: ("Scroll_Lock", 0x46),
    0x48: ("Pause", 0xC6),
    0x49: ("Insert", 0xD2),
    0x4A: ("Home", 0xC7),
    0x4B: ("Prior", 0xC9),
    0x4C: ("Delete", 0xD3),
    0x4D: ("End", 0xCF),
    0x4E: ("Next", 0xD1),
    0x4F: ("Right", 0xCD),
    0x50: ("Left", 0xCB),
    0x51: ("Down", 0xD0),
    0x52: ("Up", 0xC8),
    0x53: ("Num_Lock", 0x45),
    0x54: ("KP_Divide", 0xB5),
    0x55: ("KP_Multiply", 0x37),
    0x56: ("KP_Subtract", 0x4A),
    0x57: ("KP_Add", 0x4E),
    0x58: ("KP_Enter", 0x9C),
    0x59: ("KP_1", 0x4F),
    0x5A: ("KP_2", 0x50),
    0x5B: ("KP_3", 0x51),
    0x5C: ("KP_4", 0x4B),
    0x5D: ("KP_5", 0x4C),
    0x5E: ("KP_6", 0x4D),
    0x5F: ("KP_7", 0x47),
    0x60: ("KP_8", 0x48),
    0x61: ("KP_9", 0x49),
    0x62: ("KP_0", 0x52),
    0x63: ("KP_Decimal", 0x53),
    0x65: ("Menu", 0xDD),  # the PC "application" key
    0x67: ("KP_Equal", 0x59),
    **{0x68 + n: (f"F{n + 13}", None) for n in range(12)},
    0x74: ("Execute", None),
    0x75: ("Help", None),
    0x76: ("Menu", None),
    0x77: ("Select", None),
    0x7A: ("Undo", None),
    0x7E: ("Find", None),
    0x85: ("KP_Separator", None),
    0x9A: ("Sys_Req", 0x54),
    0x9C: ("Clear", None),
    0xE0: ("Control_L", 0x1D),
    0xE1: ("Shift_L", 0x2A),
    0xE2: ("Alt_L", 0x38),
    0xE3: ("Super_L", 0xDB),
    0xE4: ("Control_R", 0x9D),
    0xE5: ("Shift_R", 0x36),
    0xE6: ("Alt_R", 0xB8),
    0xE7: ("Super_R", 0xDC),
    0x101: ("Mode_switch", None),
}

# Keypad keys without Num Lock: the same physical keys, other keysyms.
KEYPAD_NAVIGATION: dict[str, str] = {
    "KP_0": "KP_Insert",
    "KP_1": "KP_End",
    "KP_2": "KP_Down",
    "KP_3": "KP_Next",
    "KP_4": "KP_Left",
    "KP_5": "KP_Begin",
    "KP_6": "KP_Right",
    "KP_7": "KP_Home",
    "KP_8": "KP_Up",
    "KP_9": "KP_Prior",
    "KP_Decimal": "KP_Delete",
}

# XT codes by name: the keys above, and names that share their physical keys.
_NAMED_XT = {name: xt for name, xt in NAMED_KEYS.values() if xt is not None}
_SHARED_XT: dict[str, int] = {
    **{navigation: _NAMED_XT[digit] for digit, navigation in KEYPAD_NAVIGATION.items()},
    "Meta_L": 0x38,
    "Meta_R": 0xB8,
    "ISO_Level3_Shift": 0xB8,
    "Mode_switch": 0xB8,
    "Linefeed": 0x5B,
}

# The character keys of a US PC keyboard: HID usage, XT code, plain, shifted.
_LETTER_ROWS = ((0x10, "qwertyuiop"), (0x1E, "asdfghjkl"), (0x2C, "zxcvbnm"))
_SYMBOL_KEYS: tuple[tuple[int, int, str, str], ...] = (
    (0x1E, 0x02, "1", "!"),
    (0x1F, 0x03, "2", "@"),
    (0x20, 0x04, "3", "#"),
    (0x21, 0x05, "4", "$"),
    (0x22, 0x06, "5", "%"),
    (0x23, 0x07, "6", "^"),
    (0x24, 0x08, "7", "&"),
    (0x25, 0x09, "8", "*"),
    (0x26, 0x0A, "9", "("),
    (0x27, 0x0B, "0", ")"),
    (0x2D, 0x0C, "-", "_"),
    (0x2E, 0x0D, "=", "+"),
    (0x2F, 0x1A, "[", "{"),
    (0x30, 0x1B, "]", "}"),
    (0x31, 0x2B, "\\", "|"),
    (0x32, 0x2B, "\\", "|"),  # the ISO key left of Return; same code
    (0x33, 0x27, ";", ":"),
    (0x34, 0x28, "'", '"'),
    (0x35, 0x29, "`", "~"),
    (0x36, 0x33, ",", "<"),
    (0x37, 0x34, ".", ">"),
    (0x38, 0x35, "/", "?"),
    (0x64, 0x56, "<", ">"),  # the ISO key right of left Shift
)


def _character_keys() -> tuple[dict[int, int], dict[str, tuple[int, bool]]]:
    """XT codes by HID usage, and (XT code, needs Shift) by character, for a US layout."""
    by_usage: dict[int, int] = {}
    by_char: dict[str, tuple[int, bool]] = {" ": (0x39, False)}
    for first, letters in _LETTER_ROWS:
        for offset, letter in enumerate(letters):
            xt = first + offset
            by_usage[0x04 + ord(letter) - ord("a")] = xt
            by_char[letter] = (xt, False)
            by_char[letter.upper()] = (xt, True)
    for usage, xt, plain, shifted in _SYMBOL_KEYS:
        by_usage[usage] = xt
        by_char.setdefault(plain, (xt, False))
        by_char.setdefault(shifted, (xt, True))
    return by_usage, by_char


_CHAR_XT_BY_USAGE, US_CHARACTERS = _character_keys()
XT_BY_USAGE: dict[int, int] = {
    **_CHAR_XT_BY_USAGE,
    **{usage: xt for usage, (_name, xt) in NAMED_KEYS.items() if xt is not None},
}
XT_BY_NAME: dict[str, int] = {**_NAMED_XT, **_SHARED_XT}
SHIFT = Key(KEYSYMS["Shift_L"], XT_BY_NAME["Shift_L"])

# Keys whose SDL keycode is an ASCII control character, not usage | mask.
_CONTROL_KEYCODES = {8: "BackSpace", 9: "Tab", 13: "Return", 27: "Escape", 127: "Delete"}


# -- characters ------------------------------------------------------------------------------
def char_keysym(char: str) -> int | None:
    """The X keysym that types one character, or None for a control character."""
    code = ord(char)
    if 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xFF:
        return code  # Latin-1 keysyms equal their code points
    if code < 0x20 or 0x7F <= code < 0xA0 or code > 0x10FFFF:
        return None
    return UNICODE_KEYSYM | code


def keys_for_char(char: str) -> tuple[Key, bool] | None:
    """The key that types ``char`` and whether Shift must be held; None if none does."""
    if char == "\n":
        return Key(KEYSYMS["Return"], XT_BY_NAME["Return"]), False
    if char == "\t":
        return Key(KEYSYMS["Tab"], XT_BY_NAME["Tab"]), False
    keysym = char_keysym(char)
    if keysym is None:
        return None
    xt, shift = US_CHARACTERS.get(char, (None, False))
    return Key(keysym, xt), shift


# -- names --------------------------------------------------------------------------------------
def key_by_name(name: str) -> tuple[Key, bool]:
    """A key by X keysym name, alias, single character, ``0x...`` or ``U+...``.

    Returns the key and whether it needs Shift (for characters on shifted
    keys).  Raises ValueError for an unknown name.
    """
    canonical = ALIASES.get(name, name)
    if canonical in KEYSYMS:
        return Key(KEYSYMS[canonical], XT_BY_NAME.get(canonical)), False
    if len(name) == 1:
        found = keys_for_char(name)
        if found is not None:
            return found
    return Key(_numeric_keysym(name)), False


def _numeric_keysym(name: str) -> int:
    lowered = name.lower()
    try:
        if lowered.startswith("0x"):
            value = int(lowered[2:], 16)
            if 0 < value <= 0x1FFFFFFF:
                return value
        elif lowered.startswith("u+"):
            keysym = char_keysym(chr(int(lowered[2:], 16)))
            if keysym is not None:
                return keysym
    except (ValueError, OverflowError):
        pass
    raise ValueError(f"unknown key name {name!r}")


# -- pygame key events -----------------------------------------------------------------------
def key_for_event(key: int, scancode: int, mod: int, text: str) -> Key | None:
    """The key of a pygame KEYDOWN (its key, scancode, mod and unicode); None if unknown."""
    keycode = XT_BY_USAGE.get(scancode)
    name = _name_of(key, mod)
    if name is not None:
        return Key(KEYSYMS[name], keycode)
    if len(text) == 1 and (keysym := char_keysym(text)) is not None:
        return Key(keysym, keycode)
    if 0x20 <= key < SDLK_SCANCODE_MASK and (keysym := char_keysym(_cased(chr(key), mod))):
        return Key(keysym, keycode)  # e.g. Ctrl+C, whose text is a control code
    return None


def _name_of(key: int, mod: int) -> str | None:
    """The X name of a key that types no character (or of a keypad key)."""
    if key in _CONTROL_KEYCODES:
        return _CONTROL_KEYCODES[key]
    if not key & SDLK_SCANCODE_MASK:
        return None
    entry = NAMED_KEYS.get(key & ~SDLK_SCANCODE_MASK)
    if entry is None:
        return None
    name = entry[0]
    if name in KEYPAD_NAVIGATION and not mod & KMOD_NUM:
        return KEYPAD_NAVIGATION[name]
    return name


def _cased(char: str, mod: int) -> str:
    """A letter as Shift and Caps Lock make it."""
    upper = bool(mod & KMOD_SHIFT) != bool(mod & KMOD_CAPS)
    return char.upper() if upper else char
