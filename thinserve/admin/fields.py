"""What a request may say: checks on its JSON fields and query parameters.

Each check either returns the value, of the right type and within bounds,
or raises a 400 ApiError naming the field and what to send instead.
"""

from __future__ import annotations

from typing import Any

from ..broker.core import MAX_ID
from .errors import ApiError

MAX_SECRET = 128  # what the login screen lets a user type
MIN_SECRET = 4
MAX_LIMIT = 1000
BODY_HINT = "send a JSON object; see docs/admin.md for each endpoint's fields"


def text(body: dict[str, Any], key: str) -> str:
    """A name or id: printable, and no longer than the broker stores."""
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{key!r} must be a non-empty string", BODY_HINT)
    if len(value) > MAX_ID or not value.isprintable():
        raise ApiError(400, f"{key!r} must be 1 to {MAX_ID} printable characters", BODY_HINT)
    return value


def flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{key!r} must be true or false", BODY_HINT)
    return value


def secret(body: dict[str, Any]) -> str:
    """The PIN or password: something a user can type at the login screen."""
    value = body.get("secret")
    if not isinstance(value, str) or not _typable(value):
        raise ApiError(
            400,
            f"'secret' must be {MIN_SECRET} to {MAX_SECRET} characters a terminal can type",
            "use letters, digits, spaces and punctuation (Latin-1)",
        )
    return value


def _typable(value: str) -> bool:
    printable = all(0x20 <= ord(c) <= 0x7E or 0xA0 <= ord(c) <= 0xFF for c in value)
    return printable and MIN_SECRET <= len(value) <= MAX_SECRET


def only_keys(data: dict[str, Any], allowed: set[str], what: str) -> None:
    """Refuse keys the endpoint does not know (a typo must not be ignored)."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(
            400,
            f"unknown {what}(s) {', '.join(map(repr, unknown))}",
            f"allowed: {', '.join(sorted(allowed))}",
        )


def limit(query: dict[str, str], default: int) -> int:
    """How many rows to answer with."""
    return whole(query, "limit", default, 1, MAX_LIMIT)


def whole(query: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter from ``low`` to ``high``."""
    value = query.get(key)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or not (
        low <= int(value) <= high
    ):
        raise ApiError(400, f"{key} must be a whole number from {low} to {high}", "")
    return int(value)
