"""Keeping the cyclic garbage collector's pauses off the terminals' updates.

CPython's collector walks every tracked object on a full collection: in a
running server that is the whole of Twisted, zeroconf, numpy and the
configuration, about 30 ms on a small machine, taken in the middle of
whatever update is going out.  None of what exists once the server has
started is ever garbage, so it is moved out of the collector's sight
(``gc.freeze``): full collections then walk only what came later.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once the server has started: what exists now lives as long as it."""
    gc.collect()
    gc.freeze()
