"""What exists once the server has started is kept out of full collections."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest

from thinserve import heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite runs as before


def test_settle_takes_what_exists_out_of_full_collections(unfrozen: None) -> None:
    kept = [{"cycle": [i]} for i in range(200_000)]  # a long-lived heap, as a server's
    heap.settle()
    assert gc.get_freeze_count() >= len(kept)  # full collections no longer walk them
    garbage = [[]]
    garbage[0].append(garbage)  # a cycle made later is still collected
    del garbage
    assert gc.collect() >= 1


# Run in a process of its own: malloc's thresholds are process-wide.
MALLOC_PROBE = """
import resource, sys
import numpy as np
from thinserve import heap

assert heap.tune_malloc()

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

np.ones(1 << 17, np.uint32).sum()
before = faults()
for _ in range(50):  # a full screen's working array (512 KiB), made and dropped
    np.ones(1 << 17, np.uint32).sum()
print(faults() - before)
for _ in range(2):  # a frame (16 MiB), the second after the first was freed
    base = rss()
    frame = np.ones((1080, 3840), np.uint32)
    grown = rss() - base
    del frame
    print(grown, rss() - base)
"""


def test_working_arrays_are_reused_and_frames_go_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", MALLOC_PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    faults, frames = int(out[0]), [int(n) for n in out[1:]]
    # Faulted in afresh each time, 50 arrays would take 50 x 128 pages;
    # reused, none after the first.
    assert faults < 32, faults
    for grown, kept in zip(frames[::2], frames[1::2], strict=True):
        assert grown >= 15 << 20  # the frame was really there ...
        assert kept < 1 << 20  # ... and went back once freed, the second time too
