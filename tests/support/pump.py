"""Two ends of an in-memory connection, exchanging bytes until both are quiet.

Unit tests join sans-I/O connections (or a Twisted protocol on a
StringTransport) without sockets; ``pump`` plays the network between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ROUNDS = 1000  # exchanges after which a conversation that never ends is an error


@dataclass
class End:
    """One end: ``outgoing()`` takes what it has to send, ``incoming(data)`` hands it bytes."""

    outgoing: Callable[[], bytes]
    incoming: Callable[[bytes], object]


def pump(one: End, other: End, rounds: int = ROUNDS) -> None:
    """Carry bytes both ways until neither end has anything left to send.

    Each round takes what both ends have written before delivering either,
    as a full-duplex link would.
    """
    for _ in range(rounds):
        from_one, from_other = one.outgoing(), other.outgoing()
        if not from_one and not from_other:
            return
        if from_one:
            other.incoming(from_one)
        if from_other:
            one.incoming(from_other)
    raise AssertionError(f"the connection did not settle within {rounds} exchanges")
