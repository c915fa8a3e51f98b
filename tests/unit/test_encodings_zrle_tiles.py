"""ZRLE's whole-rectangle tile encoder against a tile-by-tile encoder written from the spec.

The reference below reads each tile's runs and colours one tile at a time,
sizes every subencoding from the specification's layouts and writes the
smallest (the lowest subencoding number on ties, palettes in ascending wire
value), with CPIXELs cut from the wire bytes as the specification
describes.  The encoder must produce exactly its bytes on rectangles of
many tiles, ragged edges and every pixel format.  Also here: the zlib level
a rectangle's data goes at, and ``prepare`` being pure across threads.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.rfb.encodings.base import Rect, run_decoder
from protocols.rfb.encodings.zrle import (
    PHOTO_LEVEL,
    STORED_LEVEL,
    Deflated,
    TileData,
    ZRLEDecoder,
    ZRLEEncoder,
    encode_tiles,
    suited_level,
)
from protocols.rfb.encodings.zrle_write import tile_alternatives, tile_bytes
from protocols.rfb.pixelformat import PixelCodec, PixelFormat

from .test_encodings_zlib_zrle import FORMATS as ZLIB_FORMATS
from .test_encodings_zlib_zrle import expected_packed_rows

FORMATS = {
    **ZLIB_FORMATS,
    "rgb-high-32-be": PixelFormat(32, 24, True, True, 255, 255, 255, 24, 16, 8),
    "depth-32": PixelFormat(32, 32, False, True, 255, 255, 255, 16, 8, 0),  # 4-byte CPIXELs
    "spread-32": PixelFormat(32, 24, True, True, 255, 255, 255, 24, 8, 0),  # 4-byte CPIXELs
}
CODECS = {name: PixelCodec(pf) for name, pf in FORMATS.items()}
TILE = 64


# -- the reference: one tile at a time, from the specification --------------------------


def spec_cpixels(codec: PixelCodec, pixels: np.ndarray) -> list[bytes]:
    """Each pixel's CPIXEL: its wire bytes, less the byte no channel uses where
    the format is true colour, 32 bits and at most 24 bits deep."""
    bpp = codec.bytes_per_pixel
    wire = codec.to_wire(pixels.reshape(-1))
    each = [wire[i : i + bpp] for i in range(0, len(wire), bpp)]
    pf = codec.pf
    if not (pf.true_colour and pf.bits_per_pixel == 32 and pf.depth <= 24):
        return each
    used = (pf.red_max << pf.red_shift) | (pf.green_max << pf.green_shift)
    used |= pf.blue_max << pf.blue_shift
    if used >= 1 << 24 and used & 0xFF:
        return each
    drop_high = used < (1 << 24)
    drop_first = drop_high == pf.big_endian  # the dropped byte comes first on the wire
    return [item[1:] if drop_first else item[:3] for item in each]


def spec_length(run: int) -> bytes:
    return b"\xff" * ((run - 1) // 255) + bytes([(run - 1) % 255])


def reference_tile(pixels: np.ndarray, codec: PixelCodec) -> bytes:
    """One tile, in the smallest subencoding before zlib."""
    height, width = pixels.shape
    flat = pixels.reshape(-1)
    words = codec.to_words(flat)
    starts = [0, *(np.flatnonzero(words[1:] != words[:-1]) + 1).tolist()]
    lengths = np.diff([*starts, flat.size]).tolist()
    cps = spec_cpixels(codec, flat)
    if len(starts) == 1:
        return bytes([1]) + cps[0]
    colours = sorted(set(words.tolist()))
    place = {colour: i for i, colour in enumerate(colours)}
    first_of = {int(words[i]): i for i in reversed(range(flat.size))}
    table = b"".join(cps[first_of[colour]] for colour in colours)
    options: dict[int, bytes] = {0: b"".join(cps)}
    options[128] = b"".join(cps[s] + spec_length(n) for s, n in zip(starts, lengths, strict=True))
    k = len(colours)
    if k <= 127:
        records = b""
        for s, n in zip(starts, lengths, strict=True):
            index = place[int(words[s])]
            records += bytes([index]) if n == 1 else bytes([index | 128]) + spec_length(n)
        options[128 + k] = table + records
    if k <= 16:
        bits = 1 if k == 2 else 2 if k <= 4 else 4
        indexes = np.vectorize(place.__getitem__)(words).reshape(height, width)
        options[k] = table + expected_packed_rows(indexes, bits)
    sub = min(options, key=lambda s: (len(options[s]), s))
    return bytes([sub]) + options[sub]


def reference(pixels: np.ndarray, codec: PixelCodec) -> bytes:
    height, width = pixels.shape
    return b"".join(
        reference_tile(pixels[y : y + TILE, x : x + TILE], codec)
        for y in range(0, height, TILE)
        for x in range(0, width, TILE)
    )


# -- content ---------------------------------------------------------------------------


def runs_image(rng: np.random.Generator, h: int, w: int, colours: int, longest: int) -> np.ndarray:
    """Runs of 1..longest pixels (row ends do not stop them) in ``colours`` colours."""
    palette = rng.integers(0, 1 << 24, size=colours, dtype=np.uint32)
    runs = rng.integers(1, longest + 1, size=h * w)
    return np.repeat(rng.choice(palette, size=runs.size), runs)[: h * w].reshape(h, w)


def glyphs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Anti-aliased strokes on white: many greys in short runs, long white runs between lines."""
    img = np.full((h, w), 0xFFFFFF, dtype=np.uint32)
    for top in range(0, h, 16):
        line = img[top : top + 10]
        strokes = rng.random(line.shape) < 0.35
        shades = rng.integers(0, 200, size=int(strokes.sum())).astype(np.uint32)
        line[strokes] = shades * 0x010101
    return img


def few_colours(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    """Exactly k colours (where the rectangle holds k pixels), scattered."""
    palette = (np.arange(k, dtype=np.uint32) * 0x0B1D27 + 0x102030) & 0xFFFFFF
    img = rng.choice(palette, size=(h, w))
    img.reshape(-1)[: min(k, h * w)] = palette[: min(k, h * w)]
    return img


SHAPES = [(1, 1), (1, 300), (300, 1), (64, 64), (65, 129), (130, 70), (200, 131)]


def contents(rng: np.random.Generator, h: int, w: int) -> list[np.ndarray]:
    return [
        np.full((h, w), 0x336699, dtype=np.uint32),
        glyphs(rng, h, w),
        rng.integers(0, 1 << 24, size=(h, w), dtype=np.uint32),
        runs_image(rng, h, w, 5, 700),
        runs_image(rng, h, w, 100, 30),
        runs_image(rng, h, w, 400, 12),
        *(few_colours(rng, h, w, k) for k in (2, 3, 4, 5, 16, 17, 127, 128)),
    ]


# -- the encoder equals the reference ---------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_tile_data_equals_the_tile_by_tile_reference(fmt: str, shape: tuple[int, int]) -> None:
    codec = CODECS[fmt]
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for pixels in contents(rng, *shape):
        assert encode_tiles(pixels, codec) == reference(pixels, codec)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 140),
    width=st.integers(1, 140),
    colours=st.integers(1, 300),
    longest=st.integers(1, 600),
)
def test_random_runs_equal_the_reference(
    fmt: str, seed: int, height: int, width: int, colours: int, longest: int
) -> None:
    codec = CODECS[fmt]
    pixels = runs_image(np.random.default_rng(seed), height, width, colours, longest)
    assert encode_tiles(pixels, codec) == reference(pixels, codec)


def test_views_of_a_larger_framebuffer_encode_like_copies() -> None:
    """Rectangles are views into the framebuffer (strided rows)."""
    codec = CODECS["native"]
    fb = glyphs(np.random.default_rng(2), 300, 500)
    view = fb[37:237, 91:421]
    assert encode_tiles(view, codec) == reference(np.ascontiguousarray(view), codec)


def test_alternatives_are_the_choice_and_raw() -> None:
    """Small rectangles: every tile as chosen, plus its raw form unless raw or solid."""
    codec = CODECS["native"]
    rng = np.random.default_rng(4)
    pixels = np.hstack(
        [
            np.full((40, 64), 0x123456, dtype=np.uint32),
            rng.integers(0, 1 << 24, size=(40, 64), dtype=np.uint32),
            glyphs(rng, 40, 70),
        ]
    )
    tiles = tile_alternatives(pixels, codec)
    chosen = [reference_tile(pixels[:, x : x + TILE], codec) for x in range(0, 198, TILE)]
    assert [group[0] for group in tiles] == chosen
    assert [len(group) for group in tiles] == [1, 1, 2, 2]
    raw = b"".join(spec_cpixels(codec, pixels[:, 128:192]))
    assert tiles[2][1] == b"\x00" + raw


def test_raw_share_counts_the_raw_tiles() -> None:
    codec = CODECS["native"]
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 1 << 24, size=(64, 64), dtype=np.uint32)
    data, raw = tile_bytes(np.hstack([noise, np.zeros((64, 64), dtype=np.uint32)]), codec)
    assert raw == 1 + 64 * 64 * 3
    assert len(data) == raw + 1 + 3


# -- the zlib level ---------------------------------------------------------------------


def smooth_photo(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    grain = np.random.default_rng(6).integers(0, 24, size=(h, w))
    r = (120 + 90 * np.sin(xx / 11.0) + grain).astype(np.uint32)
    g = (120 + 90 * np.cos(yy / 13.0) + grain).astype(np.uint32)
    b = ((xx * 3 + yy) % 200 + grain).astype(np.uint32)
    return (r << 16) | (g << 8) | b


def level_of(pixels: np.ndarray) -> int | None:
    """The level ``prepare`` deflated the rectangle at; None: left to the stream."""
    prepared = ZRLEEncoder().prepare(pixels, CODECS["native"])
    if isinstance(prepared, TileData):
        return None
    assert isinstance(prepared, Deflated)
    return prepared.level


def test_noise_is_stored_photos_go_at_level_one_screens_at_the_streams_level() -> None:
    rng = np.random.default_rng(7)
    assert level_of(rng.integers(0, 1 << 24, size=(128, 640), dtype=np.uint32)) == STORED_LEVEL
    assert level_of(smooth_photo(128, 640)) == PHOTO_LEVEL
    assert level_of(glyphs(rng, 128, 640)) is None


def test_noise_tiles_repeating_across_the_screen_are_not_stored() -> None:
    """A patterned background repeats whole raw tiles: deflate finds them, so
    the data is compressed, not stored."""
    pattern = np.random.default_rng(8).integers(0, 1 << 24, size=(64, 64), dtype=np.uint32)
    tiled = np.tile(pattern, (2, 10))
    assert level_of(tiled) == PHOTO_LEVEL
    data, raw = tile_bytes(tiled, CODECS["native"])
    assert suited_level(data, raw) == PHOTO_LEVEL
    assert len(zlib.compress(data, 1)) < len(data) // 4


def test_stored_noise_is_no_larger_than_at_level_one() -> None:
    rng = np.random.default_rng(9)
    pixels = rng.integers(0, 1 << 24, size=(192, 640), dtype=np.uint32)
    data, _ = tile_bytes(pixels, CODECS["native"])
    payload = ZRLEEncoder().encode(pixels, CODECS["native"])
    assert len(payload) <= 4 + len(zlib.compress(data, 1))
    decoded, _ = run_decoder(ZRLEDecoder().decode(Rect(0, 0, 640, 192), CODECS["native"]), payload)
    assert isinstance(decoded, np.ndarray)
    np.testing.assert_array_equal(decoded, pixels)


def test_photos_deflated_alone_are_no_larger_than_on_the_stream_at_level_one() -> None:
    """Deflated in ``prepare`` (level 2, no history) against what the connection's
    own stream made of a photo's bands at level 1 (every band after the first
    with the one before as history)."""
    codec = CODECS["native"]
    bands = [smooth_photo(640, 640)[y : y + 64] for y in range(0, 640, 64)]
    stream = zlib.compressobj(1, zlib.DEFLATED, 15, 7)
    on_stream = 0
    encoder, decoder = ZRLEEncoder(), ZRLEDecoder()
    alone = 0
    for band in bands:
        data, _ = tile_bytes(band, codec)
        on_stream += len(stream.compress(data)) + len(stream.flush(zlib.Z_SYNC_FLUSH))
        payload = encoder.encode(band, codec)
        alone += len(payload) - 4
        decoded, _ = run_decoder(decoder.decode(Rect(0, 0, 640, 64), codec), payload)
        assert isinstance(decoded, np.ndarray)
        np.testing.assert_array_equal(decoded, band)
    assert alone <= on_stream


# -- prepare is pure ----------------------------------------------------------------------


def test_prepare_gives_the_same_results_from_many_threads() -> None:
    """No state shared between calls: threads interleaving give each its own result."""
    codec = CODECS["native"]
    rng = np.random.default_rng(10)
    rects = [
        glyphs(rng, 128, 700),
        smooth_photo(128, 700),
        rng.integers(0, 1 << 24, size=(128, 700), dtype=np.uint32),
        runs_image(rng, 64, 900, 60, 40),
        glyphs(rng, 30, 50),
    ] * 6
    encoder = ZRLEEncoder()
    alone = [encoder.prepare(pixels, codec) for pixels in rects]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda pixels: encoder.prepare(pixels, codec), rects))
    assert together == alone
