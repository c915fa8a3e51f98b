"""The one exception type the RFB core raises for anything a peer got wrong."""

from __future__ import annotations


class ProtocolError(Exception):
    """A peer broke the protocol or a limit.

    ``reason`` is a short sentence fit to log and, where the protocol allows
    (security failure reasons), to send to the peer.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def require(condition: bool, reason: str) -> None:
    """Raise ProtocolError(reason) unless condition holds."""
    if not condition:
        raise ProtocolError(reason)
