"""The stream driver hands its reader exactly the bytes it asked for, however they arrive."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.rfb.errors import ProtocolError
from protocols.rfb.stream import Reader, StreamDriver


def recording_reader(sizes: list[int], got: list[bytes]) -> Reader:
    """Asks for ``sizes`` in turn (over and over), recording what it is given."""
    while True:
        for size in sizes:
            got.append((yield size))


@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
    stream=st.binary(min_size=0, max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=40),
)
def test_any_chunking_gives_the_reader_the_same_bytes(
    sizes: list[int], stream: bytes, cuts: list[int]
) -> None:
    whole: list[bytes] = []
    StreamDriver(lambda: recording_reader(sizes, whole), 300).feed(stream)
    chunked: list[bytes] = []
    driver = StreamDriver(lambda: recording_reader(sizes, chunked), 300)
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        driver.feed(stream[start:end])  # the buffer grows again after every hand-over
    assert chunked == whole
    assert b"".join(whole) == stream[: sum(len(b) for b in whole)]
    assert all(type(b) is bytes for b in chunked)  # the reader may keep what it gets
    assert driver.pending == len(stream) - sum(len(b) for b in chunked)


def test_a_large_read_arrives_whole_and_the_driver_goes_on() -> None:
    got: list[bytes] = []
    size = 8 << 20  # a full screen of raw pixels
    driver = StreamDriver(lambda: recording_reader([size, 1], got), size)
    payload = bytes(range(256)) * (size // 256)
    for start in range(0, size, 65536):
        driver.feed(payload[start : start + 65536])
    driver.feed(b"\x07")
    assert got == [payload, b"\x07"]
    assert driver.pending == 0


def test_a_need_over_the_bound_is_refused_before_anything_is_buffered() -> None:
    with pytest.raises(ProtocolError, match="over the limit"):
        StreamDriver(lambda: recording_reader([301], []), 300)
