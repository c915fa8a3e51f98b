"""Pairing codes: short, random, and hard to misread.

The alphabet has no 0, O, 1 or I.  Six characters give 32**6 (about 10**9)
codes; they are shown as two groups of three ("K7D-Q2M") and accepted in
either case, with or without spaces and dashes.
"""

from __future__ import annotations

import secrets

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_SEPARATORS = str.maketrans("", "", " -_.")


def new_code(length: int) -> str:
    """A fresh random code of ``length`` characters from ALPHABET."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def normalise_code(text: str, length: int) -> str | None:
    """The code ``text`` stands for, or None if it cannot be one."""
    if len(text) > 4 * length:
        return None
    code = text.translate(_SEPARATORS).upper()
    if len(code) != length or any(c not in ALPHABET for c in code):
        return None
    return code


def format_code(code: str) -> str:
    """``code`` as shown on screen: groups of three joined by dashes."""
    return "-".join(code[i : i + 3] for i in range(0, len(code), 3))
