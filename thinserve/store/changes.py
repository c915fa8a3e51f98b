"""Change notifications: what a write told the other nodes sharing its database.

A store on PostgreSQL sends ``NOTIFY thinserve, '<kind>:<subject>'`` in the
same transaction as every write that changes what a terminal should show, so
the notice arrives only if the write was committed.  The kinds are
``pairing`` (subject: a terminal id), ``user`` (a user name) and ``desktop``
(a desktop name); ``lease`` (a desktop name) is sent by a node taking or
giving up control of a desktop (thinserve/cluster/claims.py), and ``kick``
(a terminal id) by a node whose admin kicked a terminal connected to another
node, and ``state`` (``STATE:DESKTOP``, e.g. ``running:d1``) by the node that
runs a desktop when its state changes.  A store on SQLite has one node and
sends nothing.

``resync`` is never sent by a store: a listener makes it up after its
connection dropped, to say "re-read everything".
"""

from __future__ import annotations

from dataclasses import dataclass

CHANNEL = "thinserve"

# The kinds a store (or a node's control claims) sends; "resync" is made by a listener, not sent.
KINDS = frozenset({"pairing", "user", "desktop", "lease", "kick", "state"})

# PostgreSQL refuses payloads of 8000 bytes or more; ours stay far below.
MAX_PAYLOAD = 1000


@dataclass(frozen=True)
class Change:
    """Something about ``subject`` changed; ``kind`` says what sort of thing it is."""

    kind: str
    subject: str


def payload(change: Change) -> str:
    """The NOTIFY payload for ``change``: ``kind:subject``.

    ValueError for an unknown kind or a payload that would be too long, so a
    bad notice is caught where it is made rather than dropped by listeners.
    """
    if change.kind not in KINDS:
        raise ValueError(f"unknown change kind {change.kind!r}; use one of {sorted(KINDS)}")
    text = f"{change.kind}:{change.subject}"
    if len(text) > MAX_PAYLOAD:
        raise ValueError(f"change payload of {len(text)} characters; at most {MAX_PAYLOAD}")
    return text


def parse_change(text: str) -> Change | None:
    """The change a payload names, or None if it is not one we know.

    A listener drops (and logs) a None: it may come from a newer thinserve
    sending a kind this one does not know.
    """
    if len(text) > MAX_PAYLOAD:
        return None
    kind, colon, subject = text.partition(":")
    if not colon or kind not in KINDS:
        return None
    return Change(kind, subject)
