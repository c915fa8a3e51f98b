"""Security methods: what a handshake may negotiate, and what each one needs.

A *method* is one int: either a top-level :class:`SecurityType` (``NONE``,
``VNC_AUTH``) or a :class:`VeNCryptSubtype` (values >= 256), which travels
inside the top-level ``VENCRYPT`` type.  Handshake ``methods`` lists use
this one space, in order of preference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..constants import SecurityType, VeNCryptSubtype
from .vencrypt import SUBTYPES, InnerAuth

PLAIN_TOP_LEVEL = (SecurityType.NONE, SecurityType.VNC_AUTH)


def is_method(method: int) -> bool:
    """True for every method the handshake implements."""
    return method in PLAIN_TOP_LEVEL or method in SUBTYPES


def top_level_type(method: int) -> SecurityType:
    """The security type sent on the wire for ``method``."""
    if method in SUBTYPES:
        return SecurityType.VENCRYPT
    return SecurityType(method)


def inner_auth(method: int) -> InnerAuth:
    """The authentication a method performs (inside TLS for TLS subtypes)."""
    if method in SUBTYPES:
        return SUBTYPES[method].inner
    if method == SecurityType.VNC_AUTH:
        return InnerAuth.VNC
    return InnerAuth.NONE


def needs_password(method: int) -> bool:
    return inner_auth(method) is not InnerAuth.NONE


def needs_username(method: int) -> bool:
    return inner_auth(method) is InnerAuth.PLAIN


def check_methods(methods: Iterable[int]) -> tuple[int, ...]:
    """Validate a preference list and drop duplicates (first one wins).

    Raises ValueError for an empty list or an unknown method: that is a
    configuration mistake, not something a peer did.
    """
    unique = tuple(dict.fromkeys(int(m) for m in methods))
    unknown = [m for m in unique if not is_method(m)]
    if unknown:
        raise ValueError(f"unknown security methods: {unknown}")
    if not unique:
        raise ValueError("at least one security method is needed")
    return unique


def top_level_types(methods: Sequence[int]) -> tuple[SecurityType, ...]:
    """Top-level types for ``methods``, in order of first appearance."""
    return tuple(dict.fromkeys(top_level_type(m) for m in methods))


def vencrypt_subtypes(methods: Sequence[int]) -> tuple[VeNCryptSubtype, ...]:
    """The VeNCrypt subtypes among ``methods``, in order."""
    return tuple(VeNCryptSubtype(m) for m in methods if m in SUBTYPES)


def default_client_methods(has_username: bool, has_password: bool) -> tuple[int, ...]:
    """Every method a client with these credentials can use, safest first.

    TLS-protected methods come first (X.509 before anonymous TLS, and
    password-carrying ones before the ones without), then VNC
    Authentication, then None.  VeNCrypt Plain without TLS would send the
    password in clear, so it is only used when asked for explicitly.
    """
    order = (
        VeNCryptSubtype.X509_PLAIN,
        VeNCryptSubtype.TLS_PLAIN,
        VeNCryptSubtype.X509_VNC,
        VeNCryptSubtype.TLS_VNC,
        VeNCryptSubtype.X509_NONE,
        VeNCryptSubtype.TLS_NONE,
        SecurityType.VNC_AUTH,
        SecurityType.NONE,
    )
    return tuple(
        int(m)
        for m in order
        if (has_password or not needs_password(m)) and (has_username or not needs_username(m))
    )
