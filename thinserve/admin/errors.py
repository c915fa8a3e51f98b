"""How the admin API says no: an HTTP status and a JSON body that says what
went wrong and what to do.

Every error body is ``{"code": ..., "message": ..., "error": ..., "hint": ...}``:
``code`` is one of CODES and never changes meaning (scripts branch on it),
``message`` says what went wrong (``error`` repeats it, for older clients),
``hint`` what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from ..broker import BrokerError, NotConnectedError, PairingCodeError
from ..store.base import CorruptError, DiskFullError, StoreError, StoreFault

HINT_NAMES = 10  # known names listed in a hint; the answer's "known" has more
MAX_KNOWN = 100
NOT_CONNECTED_HINT = "it must be connected for this; see `thinserve terminals`"


# The stable error codes, by the HTTP status they usually come with.
CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    414: "too_large",
    415: "unsupported_media_type",
    423: "locked",
    431: "too_large",
    429: "rate_limited",
    500: "internal",
    503: "store_unavailable",
    507: "store_unavailable",
}
CSRF = "csrf"  # a 403 for a missing or wrong X-CSRF-Token


class ApiError(Exception):
    """An answer other than success: HTTP ``status`` and a JSON body."""

    def __init__(
        self, status: int, message: str, hint: str = "", code: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "internal" if status >= 500 else "bad_request")
        self.payload: dict[str, Any] = {
            "code": self.code,
            "message": message,
            "error": message,
            "hint": hint,
            **extra,
        }


def not_found(kind: str, name: str, known: Iterable[str], hint: str) -> ApiError:
    """404 for an unknown ``name``, listing the known ones closest first."""
    ordered = closest_first(name, known)[:MAX_KNOWN]
    if ordered:
        listed = ", ".join(ordered[:HINT_NAMES])
        more = f" and {len(ordered) - HINT_NAMES} more" if len(ordered) > HINT_NAMES else ""
        hint = f"known {kind}s, closest first: {listed}{more}; {hint}"
    else:
        hint = f"no {kind}s are known yet; {hint}"
    return ApiError(404, f"no {kind} {name!r}", hint, known=ordered)


def closest_first(name: str, known: Iterable[str]) -> list[str]:
    """``known`` ordered by likeness to ``name`` (difflib ratio), then by name."""
    return sorted(known, key=lambda k: (-difflib.SequenceMatcher(None, name, k).ratio(), k))


def broker_error(exc: BrokerError) -> ApiError:
    """The HTTP answer for a request the broker refused, with its message."""
    text = str(exc)
    if isinstance(exc, NotConnectedError):
        return ApiError(409, text, NOT_CONNECTED_HINT)
    if isinstance(exc, PairingCodeError):
        if text.startswith("too many"):
            return ApiError(429, text, "wait, then type the code again")
        return ApiError(
            404, text, "read the code again from the terminal's screen; codes are single use"
        )
    if "not registered" in text or text.startswith("no user"):
        return ApiError(404, text, "see `thinserve desktops` and `thinserve users list`")
    conflicts = ("exists already", "belongs to", "is paired with", "already connected")
    if any(word in text for word in conflicts):
        return ApiError(409, text, "free it first (unpair, or change the user's desktop)")
    return ApiError(400, text, "")


def store_error(exc: StoreError) -> ApiError:
    """The HTTP answer when the store failed: 507 Insufficient Storage for a
    full disk, 500 for a damaged database, 503 while it is locked, read-only
    or failing (retry once the hint is followed); 409 for a conflict."""
    if not isinstance(exc, StoreFault):
        return ApiError(409, str(exc), "check thinserve's log")
    if isinstance(exc, DiskFullError):
        status = 507
    elif isinstance(exc, CorruptError):
        status = 500
    else:
        status = 503
    return ApiError(status, exc.problem, exc.hint, code="store_unavailable")
