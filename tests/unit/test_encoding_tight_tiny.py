"""Tight's plain-Python path for tiny rectangles gives the general path's bytes.

Typed characters go through :mod:`protocols.rfb.encodings.tight_tiny`.  Its
payloads must be byte for byte those of the general (numpy) path, over one
connection's streams, for every content, compression and quality level,
and decode to the rectangle exactly; formats it does not serve go to the
general path.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.rfb.encodings import tight
from protocols.rfb.encodings.tight import TightDecoder, TightEncoder
from protocols.rfb.encodings.tight_select import TightSettings
from protocols.rfb.encodings.tight_tiny import TINY_AREA, tiny_rectangle

from .test_encoding_tight import FORMATS, codec_of, decode, few_colours, noise, two_colours

TINY_SHAPES = [(1, 1), (1, 255), (255, 1), (21, 12), (11, 16), (15, 17), (9, 13)]
# From JPEG_MIN_AREA pixels on, fills and palettes only: a typed character's
# cell with the cursor's beside it, and the largest shapes taken.
PALETTE_SHAPES = [(16, 16), (20, 18), (21, 20), (1, 511), (511, 1), (22, 23)]


def general_encoder(quality: int | None, compression: int | None) -> TightEncoder:
    encoder = TightEncoder()
    encoder.configure(quality, compression)
    return encoder


def contents(h: int, w: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    grey = (rng.integers(0, 40, (h, w)).astype(np.uint32) * 0x060606) | 0x000001
    return [
        np.full((h, w), 0x3C78B4, dtype=np.uint32),
        two_colours(h, w, seed),
        few_colours(h, w, seed),
        grey,  # up to 40 colours: a palette or full colour, by the level's limit
        noise(h, w, seed),
    ]


def encode_both(
    monkeypatch: pytest.MonkeyPatch, pixels: list[np.ndarray], name: str, level: int | None
) -> tuple[list[bytes], list[bytes]]:
    """The payloads of one connection each: the tiny path, and the general one."""
    codec = codec_of(name)
    tiny = general_encoder(8, level)
    fast = [tiny.encode(px, codec) for px in pixels]
    with monkeypatch.context() as patch:
        patch.setattr(tight, "tiny_rectangle", lambda *_: None)
        general = general_encoder(8, level)
        slow = [general.encode(px, codec) for px in pixels]
    return fast, slow


@pytest.mark.parametrize("name", ["native", "native-be", "bgr-32", "rgb565"])
@pytest.mark.parametrize("level", [None, 0, 2, 6, 9])
def test_tiny_payloads_equal_the_general_path(
    monkeypatch: pytest.MonkeyPatch, name: str, level: int | None
) -> None:
    pixels = [px for i, shape in enumerate(TINY_SHAPES) for px in contents(*shape, seed=i)]
    fast, slow = encode_both(monkeypatch, pixels, name, level)
    assert fast == slow
    decoder, codec = TightDecoder(), codec_of(name)
    for px, payload in zip(pixels, fast, strict=True):
        np.testing.assert_array_equal(decode(decoder, payload, px.shape, codec), codec.quantize(px))


@pytest.mark.parametrize("name", ["native", "native-be", "bgr-32", "rgb565"])
@pytest.mark.parametrize("level", [None, 0, 2, 6, 9])
@pytest.mark.parametrize("quality", [None, 0, 8, 9])
def test_larger_fills_and_palettes_equal_the_general_path(
    monkeypatch: pytest.MonkeyPatch, name: str, level: int | None, quality: int | None
) -> None:
    """From JPEG_MIN_AREA pixels on, where the general path may choose JPEG
    (lossy) or full colour for the many-coloured ones, the bytes are still
    its own."""
    pixels = [px for i, shape in enumerate(PALETTE_SHAPES) for px in contents(*shape, seed=i)]
    codec = codec_of(name)
    fast = [general_encoder(quality, level).encode(px, codec) for px in pixels]
    with monkeypatch.context() as patch:
        patch.setattr(tight, "tiny_rectangle", lambda *_: None)
        slow = [general_encoder(quality, level).encode(px, codec) for px in pixels]
    assert fast == slow
    assert (
        any(tiny_rectangle(px, codec, TightSettings()) is not None for px in pixels)
        == codec.words_are_rgb24
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    colours=st.integers(1, 120),
    level=st.sampled_from([None, 0, 1, 2, 5, 9]),
)
def test_random_tiny_rectangles_equal_the_general_path(
    seed: int, height: int, width: int, colours: int, level: int | None
) -> None:
    if height * width >= TINY_AREA:
        width = max(1, (TINY_AREA - 1) // height)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 1 << 24, colours, dtype=np.uint32)
    pixels = [rng.choice(palette, (height, width)) for _ in range(3)]
    with pytest.MonkeyPatch.context() as patch:
        fast, slow = encode_both(patch, pixels, "native", level)
    assert fast == slow


def test_other_formats_and_larger_rectangles_take_the_general_path() -> None:
    glyph = two_colours(21, 12)
    assert tiny_rectangle(glyph, codec_of("native"), TightSettings()) is not None
    for name in sorted(set(FORMATS) - {"native", "native-be", "bgr-32"}):
        assert tiny_rectangle(glyph, codec_of(name), TightSettings()) is None
    larger = two_colours(16, 32)  # TINY_AREA pixels
    assert tiny_rectangle(larger, codec_of("native"), TightSettings()) is None
    many = noise(16, 16, 1)  # JPEG may apply: the general path judges
    assert tiny_rectangle(many, codec_of("native"), TightSettings()) is None
    assert tiny_rectangle(noise(9, 13, 1), codec_of("native"), TightSettings()) is not None


def test_pixels_with_a_high_byte_encode_as_their_low_three_bytes() -> None:
    """The general path masks a stray top byte; tiny rectangles do the same by
    handing such pixels to it, and never fail."""
    codec = codec_of("native")
    glyph = few_colours(21, 12)
    stray = glyph | np.uint32(0x5A000000)
    assert tiny_rectangle(stray, codec, TightSettings()) is None
    assert general_encoder(8, 2).encode(stray, codec) == general_encoder(8, 2).encode(glyph, codec)
