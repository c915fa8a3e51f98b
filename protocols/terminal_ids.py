"""Terminal ids that only a key proof can give (protocols/identity.py makes them).

Standard library only, so that light tools (the admin command) can tell
them apart without the cryptography package.
"""

from __future__ import annotations

KEY_ID_PREFIX = "key-"
ID_CHARS = 26  # base32 characters of the key's fingerprint in a terminal id (130 bits)
_BASE32 = set("abcdefghijklmnopqrstuvwxyz234567")


def is_key_id(terminal: str) -> bool:
    """Whether ``terminal`` is ``key-`` and 26 base32 characters."""
    rest = terminal[len(KEY_ID_PREFIX) :]
    return terminal.startswith(KEY_ID_PREFIX) and len(rest) == ID_CHARS and set(rest) <= _BASE32
