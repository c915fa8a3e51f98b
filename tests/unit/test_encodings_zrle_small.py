"""ZRLE's tile-by-tile path for small rectangles against the specification's reference.

Typed characters and clock digits go through :mod:`protocols.rfb.encodings.zrle_small`;
its bytes must be exactly those of the tile-by-tile reference written from
the specification (and so of the whole-rectangle analysis), in every pixel
format, and it must hand larger or busier rectangles back.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.rfb.encodings.base import Rect
from protocols.rfb.encodings.zrle import ZRLEDecoder, ZRLEEncoder
from protocols.rfb.encodings.zrle_small import (
    SMALL_AREA,
    SMALL_RUNS,
    TINY_AREA,
    small_alternatives,
    tiny_alternatives,
)
from protocols.rfb.encodings.zrle_write import tile_alternatives

from .test_encodings_zlib_zrle import decode
from .test_encodings_zrle_tiles import (
    CODECS,
    TILE,
    few_colours,
    glyphs,
    reference_tile,
    runs_image,
    spec_cpixels,
)

SMALL_SHAPES = [(1, 1), (1, 300), (21, 12), (11, 16), (64, 64), (30, 70), (13, 200), (65, 20)]


def small_contents(rng: np.random.Generator, h: int, w: int) -> list[np.ndarray]:
    return [
        np.full((h, w), 0x336699, dtype=np.uint32),
        glyphs(rng, h, w),
        runs_image(rng, h, w, 5, 700),
        runs_image(rng, h, w, 100, 30),
        *(few_colours(rng, h, w, k) for k in (2, 3, 4, 5, 16, 17, 127, 128)),
    ]


def expected_alternatives(pixels: np.ndarray, codec: object) -> list[list[bytes]]:
    """Per tile: the reference's choice, and raw unless that is the choice or it is solid."""
    out = []
    height, width = pixels.shape
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = np.ascontiguousarray(pixels[y : y + TILE, x : x + TILE])
            chosen = reference_tile(tile, codec)  # type: ignore[arg-type]
            raw = b"\x00" + b"".join(spec_cpixels(codec, tile))  # type: ignore[arg-type]
            out.append([chosen] if chosen[0] in (0, 1) else [chosen, raw])
    return out


@pytest.mark.parametrize("fmt", sorted(CODECS))
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_small_tiles_equal_the_reference(fmt: str, shape: tuple[int, int]) -> None:
    codec = CODECS[fmt]
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    contents = small_contents(rng, *shape)
    taken = 0
    for pixels in contents:
        small = small_alternatives(pixels, codec)
        if small is None:
            continue
        taken += 1
        assert small == expected_alternatives(pixels, codec)
        assert small == tile_alternatives(pixels, codec)
    # All of them on glyph-sized rectangles; solid and long runs on any.
    assert taken >= (len(contents) if pixels.size <= 300 else 2)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(CODECS)),
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 64),
    width=st.integers(1, 64),
    colours=st.integers(1, 200),
    longest=st.integers(1, 600),
)
def test_random_runs_equal_the_reference(
    fmt: str, seed: int, height: int, width: int, colours: int, longest: int
) -> None:
    codec = CODECS[fmt]
    pixels = runs_image(np.random.default_rng(seed), height, width, colours, longest)
    small = small_alternatives(pixels, codec)
    if small is not None:
        assert small == expected_alternatives(pixels, codec)


def test_long_runs_take_several_length_bytes() -> None:
    """Runs of 255, 256, 510 and more pixels: the length's 255-bytes, as the reference."""
    codec = CODECS["native"]
    lengths = [1, 255, 256, 257, 510, 511, 1200]
    lengths.append(TILE * TILE - sum(lengths))
    for colours in ([0x000000, 0xFFFFFF] * 4, list(range(0x10, 0x90, 0x10))):
        pixels = np.repeat(np.array(colours, dtype=np.uint32), lengths).reshape(TILE, TILE)
        small = small_alternatives(pixels, codec)
        assert small == expected_alternatives(pixels, codec)


def test_larger_or_busier_rectangles_are_handed_back() -> None:
    codec = CODECS["native"]
    rng = np.random.default_rng(7)
    assert small_alternatives(np.zeros((1, SMALL_AREA + 1), dtype=np.uint32), codec) is None
    busy = rng.integers(0, 1 << 24, size=(32, SMALL_RUNS // 32 + 1), dtype=np.uint32)
    assert small_alternatives(busy, codec) is None
    quiet = rng.integers(0, 1 << 24, size=(32, SMALL_RUNS // 32 - 1), dtype=np.uint32)
    assert small_alternatives(quiet, codec) is not None


def test_typed_glyphs_round_trip_through_one_stream() -> None:
    """Glyph after glyph on one connection: each decodes exactly, whichever form won."""
    codec = CODECS["native"]
    rng = np.random.default_rng(8)
    page = glyphs(rng, 21, 12 * 40)
    encoder, decoder = ZRLEEncoder(), ZRLEDecoder()
    for i in [*range(40), *range(40)]:  # the second time round repeats the history
        cell = np.ascontiguousarray(page[:, 12 * i : 12 * (i + 1)])
        payload = encoder.encode(cell, codec)
        np.testing.assert_array_equal(decode(decoder, Rect(0, 0, 12, 21), codec, payload), cell)


@pytest.mark.parametrize("fmt", sorted(CODECS))
def test_cpixel_byte_order_writes_the_spec_s_cpixels(fmt: str) -> None:
    """Where a format has one, ``to_bytes`` in that order gives each pixel's CPIXEL."""
    codec = CODECS[fmt]
    order = codec.cpixel_byteorder
    if order is None:
        return
    pixels = np.random.default_rng(9).integers(0, 1 << 24, size=(4, 50), dtype=np.uint32)
    assert [p.to_bytes(3, order) for p in pixels.reshape(-1).tolist()] == spec_cpixels(
        codec, pixels
    )


def test_tiny_rectangles_take_python_ints_and_give_the_reference_bytes() -> None:
    """Glyph cells in both byte orders: the Python path, as the reference."""
    rng = np.random.default_rng(10)
    for fmt in ("native", "native-be"):
        codec = CODECS[fmt]
        assert codec.cpixel_byteorder is not None
        for shape in [(21, 12), (11, 16), (1, 200), (3, 70)]:
            assert shape[0] * shape[1] < TINY_AREA
            for pixels in small_contents(rng, *shape):
                tiny = tiny_alternatives(pixels, codec.cpixel_byteorder)
                assert tiny == expected_alternatives(pixels, codec)


def test_pixels_with_a_high_byte_encode_as_their_low_three_bytes() -> None:
    codec = CODECS["native"]
    glyph = glyphs(np.random.default_rng(11), 21, 12)
    stray = glyph | np.uint32(0x5A000000)
    assert tiny_alternatives(stray, "little") is None
    assert small_alternatives(stray, codec) == small_alternatives(glyph, codec)
