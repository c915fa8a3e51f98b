"""What a terminal id says about how it was earned (see thinserve/identities.py).

Standard library only: the admin command imports this, and it runs with
any python3.
"""

from __future__ import annotations

from protocols.terminal_ids import is_key_id

ONE_CONNECTION = "~"  # marks the ids that last one connection
ADDRESS_PREFIX = "viewer-"


def kind_of(terminal: str) -> str:
    """How a terminal id was earned: "key", "address" or "connection"."""
    if ONE_CONNECTION in terminal:
        return "connection"
    if is_key_id(terminal):
        return "key"
    if terminal.startswith(ADDRESS_PREFIX):
        return "address"
    return "claimed"  # ids from before keys, kept only in old pairings


def lasts_one_connection(terminal: str) -> bool:
    return ONE_CONNECTION in terminal


def address_of(terminal: str) -> str | None:
    """The address a ``viewer-ADDR`` (or ``viewer-ADDR~…``) id names."""
    if not terminal.startswith(ADDRESS_PREFIX):
        return None
    return terminal[len(ADDRESS_PREFIX) :].split(ONE_CONNECTION)[0]
