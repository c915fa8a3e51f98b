"""What exists once the server has started is kept out of full collections."""

from __future__ import annotations

import gc
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
