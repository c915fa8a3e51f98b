"""Keeping the heap out of the terminals' way: the garbage collector's
pauses, and page faults on the encoders' working arrays.

CPython's collector walks every tracked object on a full collection: in a
running server that is the whole of Twisted, zeroconf, numpy and the
configuration, about 30 ms on a small machine, taken in the middle of
whatever update is going out.  None of what exists once the server has
started is ever garbage, so it is moved out of the collector's sight
(``gc.freeze``): full collections then walk only what came later.
"""

from __future__ import annotations

import ctypes
import gc

# glibc's mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Buffers from this size on (frames, drawn screens) are mapped on their own
# and go back to the system when freed ...
MMAP_THRESHOLD = 1 << 20
# ... and this much free memory stays at the heap's top for the next
# update's working arrays (a full screen's pieces: 256-512 KiB each).
TRIM_THRESHOLD = 8 << 20


def settle() -> None:
    """Call once the server has started: what exists now lives as long as it."""
    gc.collect()
    gc.freeze()


def tune_malloc() -> bool:
    """Set glibc's thresholds for giving memory back (False elsewhere).

    Left alone, glibc raises its mmap threshold to 32 MiB after the first
    large buffer is freed, and a server that draws many screens keeps
    hundreds of MiB it no longer uses: large buffers are mapped on their
    own from ``MMAP_THRESHOLD`` on.  Fixing that threshold also fixes the
    trim threshold, at 128 KiB unless set: every working array of an
    encoder would then be faulted in afresh, page by page, each time it is
    made.  With both at 128 KiB a full screen of text took 4,000 (Tight) to
    11,500 (ZRLE) page faults and twice the time to encode; now none.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False
