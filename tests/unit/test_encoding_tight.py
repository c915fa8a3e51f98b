"""Tight encoding: round trips, method choice, wire variants, hostile input."""

from __future__ import annotations

import contextlib
import zlib

import numpy as np
import pytest
import simplejpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import make_decoder, make_encoder, tight_gradient, tight_select
from protocols.rfb.encodings.base import Rect, run_decoder
from protocols.rfb.encodings.tight import (
    GRADIENT_MIN_AREA,
    INDEPENDENT_BYTES,
    TightDecoder,
    TightEncoder,
)
from protocols.rfb.encodings.tight_gradient import gradient_filter, gradient_unfilter
from protocols.rfb.encodings.tight_select import MAX_PALETTE, find_palette
from protocols.rfb.encodings.tight_wire import independent_chunk, pack_compact, read_compact
from protocols.rfb.errors import ProtocolError
from protocols.rfb.limits import Limits
from protocols.rfb.pixelformat import (
    BGR233,
    COLOUR_MAP_8,
    NATIVE,
    RGB565,
    PixelCodec,
    PixelFormat,
    rgb_to_words,
    words_to_rgb,
)

FORMATS = {
    "native": NATIVE,
    "native-be": PixelFormat(big_endian=True),
    "bgr-32": PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16),
    "rgb565": RGB565,
    "rgb555-be": PixelFormat(16, 15, True, True, 31, 31, 31, 10, 5, 0),
    "bgr233": BGR233,
    "colour-map-8": COLOUR_MAP_8,
}
WIDE = ("native", "native-be", "bgr-32", "rgb565", "rgb555-be")  # 16/32 bpp true colour
RGB24 = ("native", "native-be", "bgr-32")


# -- content ------------------------------------------------------------------
def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def solid(h: int, w: int) -> np.ndarray:
    return np.full((h, w), 0x3C78B4, dtype=np.uint32)


def two_colours(h: int, w: int, seed: int = 1) -> np.ndarray:
    mask = rng_for(seed).random((h, w)) < 0.3
    return np.where(mask, 0xFFFFFF, 0x000000).astype(np.uint32)


def few_colours(h: int, w: int, seed: int = 2) -> np.ndarray:
    colours = np.array(
        [0x000000, 0xFF0000, 0x00FF00, 0x0000FF, 0xFFFFFF, 0xFFFF00, 0x00FFFF, 0xFF00FF],
        dtype=np.uint32,
    )
    return rng_for(seed).choice(colours, (h, w))


def photo(h: int, w: int, seed: int = 3) -> np.ndarray:
    """Continuous tone: ramps and waves with a little sensor noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    noise = rng_for(seed).normal(0.0, 1.5, (h, w, 3))
    red = 30 + 190 * x / max(w - 1, 1)
    green = 30 + 190 * y / max(h - 1, 1)
    blue = 128 + 70 * np.sin(x / 9.0) * np.cos(y / 13.0)
    rgb = np.stack([red, green, blue], axis=-1) + noise
    return rgb_to_words(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def noise(h: int, w: int, seed: int = 4) -> np.ndarray:
    return rng_for(seed).integers(0, 1 << 24, (h, w), dtype=np.uint32)


# -- helpers ------------------------------------------------------------------
def decode(decoder: TightDecoder, payload: bytes, shape: tuple[int, int], codec: PixelCodec):
    rect = Rect(0, 0, shape[1], shape[0])
    pixels, used = run_decoder(decoder.decode(rect, codec), payload)
    assert used == len(payload)
    return pixels


def roundtrip(
    encoder: TightEncoder, decoder: TightDecoder, px: np.ndarray, codec: PixelCodec
) -> tuple[np.ndarray, bytes]:
    payload = encoder.encode(px, codec)
    return decode(decoder, payload, px.shape, codec), payload


def method(payload: bytes) -> str:
    """Which Tight method a payload uses, read from its first bytes."""
    kind = payload[0] >> 4
    if kind == 8:
        return "fill"
    if kind == 9:
        return "jpeg"
    if not kind & 4 or payload[1] == 0:
        return "copy"
    if payload[1] == 2:
        return "gradient"
    return "mono" if payload[2] == 1 else "indexed"


def stream_of(payload: bytes) -> int:
    return (payload[0] >> 4) & 3


def deflate(data: bytes, compressor=None) -> bytes:
    """One sync-flushed chunk, as a Tight sender's zlib stream produces."""
    compressor = compressor or zlib.compressobj()
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def codec_of(name: str) -> PixelCodec:
    return PixelCodec(FORMATS[name])


def rgb_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(words_to_rgb(a).astype(np.int32) - words_to_rgb(b).astype(np.int32))


# -- registry and interface ---------------------------------------------------
def test_registered_and_bounded() -> None:
    assert isinstance(make_encoder(Encoding.TIGHT), TightEncoder)
    assert isinstance(make_decoder(Encoding.TIGHT), TightDecoder)
    assert TightEncoder.max_width == 2048
    assert TightEncoder.max_area == 65536


@pytest.mark.parametrize("shape", [(1, 2049), (257, 256), (4, 4, 1)])
def test_encoder_rejects_oversize(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        TightEncoder().encode(np.zeros(shape, dtype=np.uint32), PixelCodec(NATIVE))


# -- lossless round trips and method choice --------------------------------
def expected_method(content: str, name: str, quality: int | None) -> str:
    wide = name in WIDE
    if content in ("fill", "mono"):
        return content
    if content == "indexed":
        return "indexed" if FORMATS[name].bits_per_pixel > 8 else "copy"
    if content == "photo" and wide:
        return "jpeg" if quality is not None else "gradient"
    if content == "copy" and wide and quality is not None:
        return "jpeg"  # many tones: lossy where the peer allows it
    return "copy"


CONTENT = {
    "fill": solid,
    "mono": two_colours,
    "indexed": few_colours,
    "photo": photo,
    "copy": noise,
}


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("content", CONTENT)
def test_lossless_roundtrip_and_choice(name: str, content: str) -> None:
    codec = codec_of(name)
    px = CONTENT[content](96, 80)
    decoded, payload = roundtrip(TightEncoder(), TightDecoder(), px, codec)
    assert method(payload) == expected_method(content, name, None)
    np.testing.assert_array_equal(decoded, codec.quantize(px))


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("content", ["fill", "mono", "indexed"])
def test_choice_with_jpeg_enabled_stays_lossless_off_photos(name: str, content: str) -> None:
    codec = codec_of(name)
    encoder = TightEncoder()
    encoder.configure(5, None)
    px = CONTENT[content](96, 80)
    decoded, payload = roundtrip(encoder, TightDecoder(), px, codec)
    assert method(payload) == expected_method(content, name, 5)
    np.testing.assert_array_equal(decoded, codec.quantize(px))


@pytest.mark.parametrize("name", WIDE)
def test_noise_goes_to_jpeg_when_the_peer_allows_loss(name: str) -> None:
    """Many-tone content without flat runs is JPEG at the peer's level, smaller than exact."""
    codec = codec_of(name)
    px = noise(96, 80)
    lossless = TightEncoder().encode(px, codec)
    encoder = TightEncoder()
    encoder.configure(5, None)
    decoded, payload = roundtrip(encoder, TightDecoder(), px, codec)
    assert method(payload) == "jpeg"
    assert len(payload) < len(lossless)
    grey = np.full_like(px, 0x808080)
    assert rgb_error(decoded, px).mean() < 0.75 * rgb_error(grey, px).mean()


def rows_repeating(h: int, w: int, repeats: int) -> np.ndarray:
    """(h, w) pixels whose every row has its pixels 1..``repeats`` equal to
    their left neighbour and the rest new colours: every row alike, so any
    sample of rows shows the same share of repeats."""
    step = np.ones(w, dtype=np.uint32)
    step[1 : repeats + 1] = 0
    row = np.cumsum(step, dtype=np.uint32)
    return row + (np.arange(h, dtype=np.uint32) * w * 97)[:, None]


@pytest.mark.parametrize("shape", [(2, 600), (33, 200), (32, 1920), (100, 64), (1, 1000)])
def test_jpeg_takes_content_where_at_most_half_the_pixels_repeat_their_left_one(
    shape: tuple[int, int],
) -> None:
    """The photo threshold, at its edge: half of the neighbours equal is
    still photo-like (JPEG), one more is not (exact full colour)."""
    h, w = shape
    encoder = TightEncoder()
    encoder.configure(8, None)
    codec = codec_of("native")
    half = (w - 1) // 2
    photo = rows_repeating(h, w, half)
    flat = rows_repeating(h, w, half + 1)
    assert tight_select.photo_like(photo) and not tight_select.photo_like(flat)
    assert method(encoder.encode(photo, codec)) == "jpeg"
    assert method(encoder.encode(flat, codec)) in ("copy", "gradient")
    assert tight_select.content_tones(photo).many and not tight_select.content_tones(flat).many


def palette_scene(colours: int, run: int) -> np.ndarray:
    """96x80 pixels of ``colours`` colours in horizontal runs of ``run`` pixels,
    never two equal neighbouring runs."""
    palette = rng_for(7).integers(0, 1 << 24, colours, dtype=np.uint32)
    pick = np.arange(96 * 80 // run) % colours
    return np.repeat(palette[pick], run).reshape(80, 96)


@pytest.mark.parametrize(
    ("run", "expected"),
    [(1, "jpeg"), (2, "indexed"), (8, "indexed")],
    ids=["every-pixel", "pairs", "runs"],
)
def test_palettes_beyond_the_jpeg_cap_go_to_jpeg_only_with_many_tones(
    run: int, expected: str
) -> None:
    """200 colours: past the JPEG palette cap, inside the palette limit.  With
    JPEG allowed, the rectangle goes lossy only when few pixels repeat their
    left neighbour (every pixel a new colour), measured on all its runs."""
    codec = codec_of("native")
    px = palette_scene(200, run)
    encoder = TightEncoder()
    encoder.configure(5, None)
    assert method(encoder.encode(px, codec)) == expected
    assert method(TightEncoder().encode(px, codec)) == "indexed"


@pytest.mark.parametrize("name", FORMATS)
def test_fill_is_tiny(name: str) -> None:
    codec = codec_of(name)
    payload = TightEncoder().encode(solid(200, 300), codec)
    assert len(payload) == 1 + codec.tight_pixel_bytes


def test_tpixel_is_rgb_bytes_for_24_bit_formats() -> None:
    for name in RGB24:
        payload = TightEncoder().encode(solid(3, 3), codec_of(name))
        assert payload[1:] == bytes([0x3C, 0x78, 0xB4])


def test_mono_rows_are_bit_packed_and_padded() -> None:
    px = two_colours(9, 13)
    payload = TightEncoder().encode(px, codec_of("native"))
    assert method(payload) == "mono"
    # control, filter, count, two 3-byte colours, then zlib: 9 rows of 2 bytes
    body = payload[3 + 6 :]
    length = body[0]
    inflated = zlib.decompressobj().decompress(body[1 : 1 + length])
    assert len(inflated) == 9 * 2
    bits = np.unpackbits(np.frombuffer(inflated, np.uint8).reshape(9, 2), axis=1)[:, :13]
    np.testing.assert_array_equal(bits == 1, px == 0xFFFFFF)


@pytest.mark.parametrize("name", ["native", "rgb565"])
def test_stream_assignment_is_fixed(name: str) -> None:
    codec = codec_of(name)
    encoder = TightEncoder()
    payloads = [encoder.encode(make(64, 64), codec) for make in CONTENT.values()]
    streams = {method(p): stream_of(p) for p in payloads if method(p) != "fill"}
    assert streams == {"mono": 1, "indexed": 2, "gradient": 3, "copy": 0}


def test_palette_limit_grows_with_area() -> None:
    codec = codec_of("native")
    colours = rng_for(7).permutation(np.arange(100, dtype=np.uint32) * 0x010203)
    small = np.resize(colours, (16, 16))  # 256 pixels, 100 colours
    large = np.resize(colours, (64, 64))
    assert method(TightEncoder().encode(small, codec)) == "copy"
    assert method(TightEncoder().encode(large, codec)) == "indexed"


@pytest.mark.parametrize("name", FORMATS)
def test_256_colour_palette(name: str) -> None:
    codec = codec_of(name)
    levels = np.arange(256, dtype=np.uint32)
    px = np.resize((levels << 16) | (levels[::-1] << 8) | 0x40, (64, 64))
    px = rng_for(5).permutation(px.reshape(-1)).reshape(64, 64)
    decoded, payload = roundtrip(TightEncoder(), TightDecoder(), px, codec)
    np.testing.assert_array_equal(decoded, codec.quantize(px))
    if name in RGB24:
        assert method(payload) == "indexed" and payload[2] == 255  # 256 colours


# -- palette detection against a plain reference ------------------------------
def reference_palette(words: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    colours, inverse = np.unique(words, return_inverse=True)
    if colours.size > limit:
        return None
    return colours, inverse.reshape(words.shape)


def runs_image(rng: np.random.Generator, h: int, w: int, colours: int, longest: int) -> np.ndarray:
    """Row-major runs of random length (1..longest) in up to ``colours`` colours."""
    palette = rng.integers(0, 1 << 24, colours, dtype=np.uint32)
    lengths = rng.integers(1, longest + 1, h * w)
    runs = np.repeat(palette[rng.integers(0, colours, h * w)], lengths)
    return runs[: h * w].reshape(h, w)


def assert_same_palette(words: np.ndarray, limit: int) -> None:
    found, expected = find_palette(words, limit), reference_palette(words, limit)
    if expected is None:
        assert found is None
        return
    assert found is not None
    np.testing.assert_array_equal(found.colours, expected[0])
    indices = found.indices()
    assert indices.shape == words.shape
    np.testing.assert_array_equal(indices.astype(np.intp), expected[1])


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    colours=st.integers(1, 400),
    longest=st.integers(1, 60),
    w=st.integers(1, 300),
    h=st.integers(1, 120),
    limit=st.integers(2, MAX_PALETTE),
)
def test_find_palette_matches_unique(
    seed: int, colours: int, longest: int, w: int, h: int, limit: int
) -> None:
    assert_same_palette(runs_image(rng_for(seed), h, w, colours, longest), limit)


@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("shape", [(34, 1920), (256, 256), (1, 2048)])
def test_find_palette_sees_colours_the_samples_miss(shape: tuple[int, int], extra: int) -> None:
    """Few colours everywhere but in one corner, where exactly enough are added
    to reach the limit (extra 0) or pass it (extra 1)."""
    h, w = shape
    limit = 200
    words = runs_image(rng_for(h), h, w, 8, 30)
    base = np.unique(words).size
    words.reshape(-1)[-(limit - base + extra) :] = np.arange(limit - base + extra) + (1 << 24)
    assert_same_palette(words, limit)
    assert (find_palette(words, limit) is None) == bool(extra)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(3, MAX_PALETTE),
    size=st.integers(1, 3000),
    forced_search=st.booleans(),
)
def test_colour_table_indexes_like_binary_search(
    seed: int, count: int, size: int, forced_search: bool
) -> None:
    """The hashed lookup, and the binary search it falls back to when every
    multiplier collides (forced with a multiplier of 0), index like searchsorted."""
    rng = rng_for(seed)
    colours = np.unique(rng.integers(0, 1 << 24, count, dtype=np.uint32))
    values = colours[rng.integers(0, colours.size, size)]
    multipliers = (0,) if forced_search else tight_select.HASH_MULTIPLIERS
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tight_select, "HASH_MULTIPLIERS", multipliers)
        found, member = tight_select.ColourTable.of(colours).lookup(values)
    assert member.all()
    assert found.dtype == np.uint8
    np.testing.assert_array_equal(found, np.searchsorted(colours, values))


def test_colour_table_survives_colliding_multipliers() -> None:
    """Colours that differ only above the bits a multiplier of 1 << 16 keeps
    all land in slot 0; the next multiplier must be tried."""
    colours = np.arange(200, dtype=np.uint32) << 16
    values = colours[rng_for(3).integers(0, 200, 5000)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tight_select, "HASH_MULTIPLIERS", (1 << 16, 0x9E3779B1))
        found, member = tight_select.ColourTable.of(colours).lookup(values)
    assert member.all()
    np.testing.assert_array_equal(found, np.searchsorted(colours, values))


# -- JPEG ---------------------------------------------------------------------
# quality level: (mean absolute error, max error) per 8-bit component
JPEG_BOUNDS = {0: (7.0, 64), 2: (3.5, 28), 6: (2.5, 18), 9: (1.0, 6)}


@pytest.mark.parametrize("quality", JPEG_BOUNDS)
@pytest.mark.parametrize("name", RGB24)
def test_jpeg_error_is_bounded(name: str, quality: int) -> None:
    codec = codec_of(name)
    encoder = TightEncoder()
    encoder.configure(quality, None)
    px = photo(128, 160)
    decoded, payload = roundtrip(encoder, TightDecoder(), px, codec)
    assert method(payload) == "jpeg"
    error = rgb_error(decoded, px)
    mae, worst = JPEG_BOUNDS[quality]
    assert error.mean() < mae
    assert error.max() <= worst


def test_jpeg_error_falls_with_quality() -> None:
    codec = codec_of("native")
    px = photo(128, 160)
    errors = []
    for quality in range(10):
        encoder = TightEncoder()
        encoder.configure(quality, None)
        decoded, _ = roundtrip(encoder, TightDecoder(), px, codec)
        errors.append(rgb_error(decoded, px).mean())
    assert errors == sorted(errors, reverse=True)


@pytest.mark.parametrize("name", ["rgb565", "rgb555-be"])
def test_jpeg_for_16_bpp_decodes_to_the_format(name: str) -> None:
    codec = codec_of(name)
    encoder = TightEncoder()
    encoder.configure(8, None)
    px = photo(64, 96)
    decoded, payload = roundtrip(encoder, TightDecoder(), px, codec)
    assert method(payload) == "jpeg"
    np.testing.assert_array_equal(decoded, codec.quantize(decoded))
    assert rgb_error(decoded, px).mean() < 6.0


def test_jpeg_much_smaller_than_lossless_and_quality_orders_size() -> None:
    codec = codec_of("native")
    px = photo(200, 300)
    lossless = TightEncoder().encode(px, codec)
    sizes = []
    for quality in (0, 3, 6, 9):
        encoder = TightEncoder()
        encoder.configure(quality, None)
        payload = encoder.encode(px, codec)
        assert method(payload) == "jpeg"
        sizes.append(len(payload))
    assert sizes == sorted(sizes)
    assert sizes[2] * 5 < len(lossless)


def test_jpeg_subsampling_follows_quality_level() -> None:
    codec = codec_of("native")
    seen = {}
    for quality in (0, 4, 8):
        encoder = TightEncoder()
        encoder.configure(quality, None)
        payload = encoder.encode(photo(64, 64), codec)
        assert method(payload) == "jpeg"
        length, used = run_decoder(read_compact(1 << 22), payload[1:])
        jpeg = payload[1 + used :]
        assert len(jpeg) == length
        seen[quality] = simplejpeg.decode_jpeg_header(jpeg)[3]
    assert seen == {0: "420", 4: "422", 8: "444"}


@pytest.mark.parametrize("name", ["bgr233", "colour-map-8"])
def test_no_jpeg_for_8_bpp(name: str) -> None:
    encoder = TightEncoder()
    encoder.configure(5, None)
    payload = encoder.encode(photo(64, 64), codec_of(name))
    assert method(payload) == "copy"


# -- streams across rectangles ------------------------------------------------
SEQUENCE_SHAPES = [(1, 1), (7, 300), (16, 2048), (256, 256), (1, 1), (7, 300)]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("quality", [None, 6])
def test_sequence_through_one_pair(name: str, quality: int | None) -> None:
    codec = codec_of(name)
    encoder, decoder = TightEncoder(), TightDecoder()
    encoder.configure(quality, 6)
    lossy = name in WIDE and quality is not None
    for shape in SEQUENCE_SHAPES:
        for content, make in CONTENT.items():
            px = make(*shape)
            decoded, payload = roundtrip(encoder, decoder, px, codec)
            if method(payload) == "jpeg":
                assert lossy and content in ("photo", "copy")
                assert rgb_error(decoded, px).mean() < (6.0 if content == "photo" else 40.0)
            else:
                np.testing.assert_array_equal(decoded, codec.quantize(px), f"{shape} {content}")


def test_streams_keep_their_dictionary() -> None:
    codec = codec_of("native")
    encoder, decoder = TightEncoder(), TightDecoder()
    px = noise(40, 60)  # data under INDEPENDENT_BYTES: the connection's stream
    first = encoder.encode(px, codec)
    second = encoder.encode(px, codec)
    assert len(second) * 4 < len(first)  # back-references into the first rectangle
    np.testing.assert_array_equal(decode(decoder, first, px.shape, codec), px)
    np.testing.assert_array_equal(decode(decoder, second, px.shape, codec), px)
    with pytest.raises(ProtocolError):
        decode(TightDecoder(), second, px.shape, codec)


def test_large_rectangles_go_as_fresh_streams_that_every_connection_shares() -> None:
    codec = codec_of("native")
    small, large = noise(20, 30), noise(40, 200)
    assert large.size * 3 >= INDEPENDENT_BYTES > small.size * 3
    used, fresh = TightEncoder(), TightEncoder()
    decoder = TightDecoder()
    decode(decoder, used.encode(small, codec), small.shape, codec)  # a stream with history
    payload = used.encode(large, codec)
    assert payload == fresh.encode(large, codec)  # the same bytes, whatever came before
    assert payload[0] & 0x0F == 1 << stream_of(payload)  # the peer resets the stream first
    np.testing.assert_array_equal(decode(decoder, payload, large.shape, codec), large)
    after = used.encode(small, codec)  # the stream's state is the fresh one's: reset again
    assert after[0] & 0x0F == 1 << stream_of(after)
    np.testing.assert_array_equal(decode(decoder, after, small.shape, codec), small)
    again = used.encode(small, codec)
    assert again[0] & 0x0F == 0
    np.testing.assert_array_equal(decode(decoder, again, small.shape, codec), small)


def test_compression_change_resets_streams() -> None:
    codec = codec_of("native")
    encoder, decoder = TightEncoder(), TightDecoder()
    px = noise(30, 30)
    decode(decoder, encoder.encode(px, codec), px.shape, codec)
    encoder.configure(None, 9)
    payload = encoder.encode(px, codec)
    assert payload[0] & 0x0F == 1 << stream_of(payload)
    np.testing.assert_array_equal(decode(decoder, payload, px.shape, codec), px)
    again = encoder.encode(px, codec)
    assert again[0] & 0x0F == 0
    np.testing.assert_array_equal(decode(decoder, again, px.shape, codec), px)


def test_compression_levels_all_roundtrip_and_trade_size() -> None:
    codec = codec_of("native")
    px = np.resize(photo(32, 512), (64, 512)) & 0xF0F0F0
    sizes = {}
    for level in range(10):
        encoder = TightEncoder()
        encoder.configure(None, level)
        decoded, payload = roundtrip(encoder, TightDecoder(), px, codec)
        np.testing.assert_array_equal(decoded, px)
        sizes[level] = len(payload)
    assert sizes[9] < sizes[0]


def text_like(h: int, w: int) -> np.ndarray:
    """Eight colours in runs, as anti-aliased text is: an indexed palette."""
    return np.repeat(few_colours(h, w // 8), 8, axis=1)


@pytest.mark.parametrize("compression", range(10))
def test_on_a_fast_link_large_chunks_trade_bytes_for_time_up_to_level_2(compression: int) -> None:
    codec = codec_of("native")
    large, small = text_like(64, 512), text_like(8, 64)
    assert large.size >= INDEPENDENT_BYTES > small.size
    plain, quick, fastest = TightEncoder(), TightEncoder(), TightEncoder()
    plain.configure(None, compression)
    quick.prefer_speed(True)
    quick.configure(None, compression)  # a SetEncodings keeps the link's choice
    fastest.configure(None, 0)  # zlib level 1, and the same indexed palette here
    payload = quick.encode(large, codec)
    assert method(payload) == method(plain.encode(large, codec)) == "indexed"
    if compression <= 2:
        assert payload == fastest.encode(large, codec)
        assert len(payload) >= len(plain.encode(large, codec))
    else:  # the peer asked for small bytes
        assert payload == plain.encode(large, codec)
    np.testing.assert_array_equal(decode(TightDecoder(), payload, large.shape, codec), large)
    # Small data rides on the connection's streams as before.
    assert quick.encode(small, codec) == plain.encode(small, codec)


def test_the_fast_choice_can_be_taken_back() -> None:
    codec = codec_of("native")
    px = text_like(64, 512)
    encoder, plain = TightEncoder(), TightEncoder()
    encoder.prefer_speed(True)
    quick = encoder.encode(px, codec)
    encoder.prefer_speed(False)
    assert encoder.encode(px, codec) == plain.encode(px, codec) != quick


# -- decoder: every wire variant ----------------------------------------------
def test_explicit_copy_filter_on_any_stream() -> None:
    codec = codec_of("native")
    px = noise(4, 5)
    data = codec.pack_tpixels(px)
    for stream in range(4):
        payload = bytes([(0x4 | stream) << 4, 0]) + pack_compact(len(z := deflate(data))) + z
        np.testing.assert_array_equal(decode(TightDecoder(), payload, px.shape, codec), px)


def test_short_data_is_sent_uncompressed() -> None:
    codec = codec_of("native")
    px = noise(1, 3)  # 9 bytes of TPIXELs
    payload = bytes([0x00]) + codec.pack_tpixels(px)
    np.testing.assert_array_equal(decode(TightDecoder(), payload, px.shape, codec), px)
    encoded = TightEncoder().encode(px, codec)
    assert encoded == payload


def test_three_byte_compact_length() -> None:
    codec = codec_of("native")
    px = noise(64, 128)
    chunk = deflate(codec.pack_tpixels(px), zlib.compressobj(0))
    assert len(chunk) >= 1 << 14
    payload = bytes([0x00]) + pack_compact(len(chunk)) + chunk
    assert len(pack_compact(len(chunk))) == 3
    np.testing.assert_array_equal(decode(TightDecoder(), payload, px.shape, codec), px)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 10000, 16383, 16384, 4194303])
def test_compact_lengths(value: int) -> None:
    packed = pack_compact(value)
    assert len(packed) == 1 + (value > 127) + (value > 16383)
    got, used = run_decoder(read_compact(1 << 22), packed + b"extra")
    assert (got, used) == (value, len(packed))


def test_compact_length_example_from_the_spec() -> None:
    assert pack_compact(10000) == bytes([0x90, 0x4E])
    with pytest.raises(ValueError):
        pack_compact(1 << 22)


def test_palette_sizes_and_streams_are_free() -> None:
    codec = codec_of("rgb565")
    for count in (1, 3, 17, 256):
        colours = np.arange(count, dtype=np.uint32) * 0x0A0B0C
        indices = rng_for(count).integers(0, count, (9, 11)).astype(np.uint8)
        palette = bytes([0x1, count - 1]) + codec.pack_tpixels(colours)
        chunk = deflate(indices.tobytes())
        payload = bytes([0x70]) + palette + pack_compact(len(chunk)) + chunk
        decoded = decode(TightDecoder(), payload, indices.shape, codec)
        np.testing.assert_array_equal(decoded, codec.quantize(colours)[indices])


@pytest.mark.parametrize("name", ["bgr233", "colour-map-8"])
def test_indexed_palette_decodes_in_8_bpp(name: str) -> None:
    codec = codec_of(name)
    colours = np.array([0x000000, 0xFF0000, 0x00FF00, 0xFFFFFF], dtype=np.uint32)
    indices = rng_for(6).integers(0, 4, (6, 7)).astype(np.uint8)
    chunk = deflate(indices.tobytes())
    payload = bytes([0x60, 1, 3]) + codec.pack_tpixels(colours) + pack_compact(len(chunk)) + chunk
    decoded = decode(TightDecoder(), payload, indices.shape, codec)
    np.testing.assert_array_equal(decoded, codec.quantize(colours)[indices])


def test_reset_bits_on_fill_reset_the_stream() -> None:
    codec = codec_of("native")
    decoder = TightDecoder()
    px = noise(4, 4)
    data = codec.pack_tpixels(px)
    first = deflate(data)
    decode(decoder, bytes([0x00]) + pack_compact(len(first)) + first, px.shape, codec)
    fresh = deflate(data)  # a new stream: starts with a zlib header
    payload = bytes([0x00]) + pack_compact(len(fresh)) + fresh
    with pytest.raises(ProtocolError):
        decode(decoder, payload, px.shape, codec)
    decode(decoder, bytes([0x81, 1, 2, 3]), (2, 2), codec)  # fill, reset stream 0
    np.testing.assert_array_equal(decode(decoder, payload, px.shape, codec), px)


# -- decoder: rejections ------------------------------------------------------
def rejects(payload: bytes, shape=(4, 4), name: str = "native", limits: Limits | None = None):
    decoder = TightDecoder(limits) if limits else TightDecoder()
    with pytest.raises(ProtocolError):
        decode(decoder, payload, shape, codec_of(name))


@pytest.mark.parametrize("kind", range(0xA, 0x10))
def test_unknown_compression_types(kind: int) -> None:
    rejects(bytes([kind << 4]) + bytes(64))


@pytest.mark.parametrize("filter_id", [3, 4, 128, 255])
def test_unknown_filter_ids(filter_id: int) -> None:
    rejects(bytes([0x40, filter_id]) + bytes(64))


@pytest.mark.parametrize("name", ["bgr233", "colour-map-8"])
def test_gradient_and_jpeg_rejected_for_8_bpp(name: str) -> None:
    rejects(bytes([0x40, 2]) + bytes(16), (2, 2), name)
    jpeg = simplejpeg.encode_jpeg(np.zeros((2, 2, 3), np.uint8), 90)
    rejects(bytes([0x90]) + pack_compact(len(jpeg)) + jpeg, (2, 2), name)


def test_jpeg_rejections() -> None:
    jpeg = simplejpeg.encode_jpeg(np.zeros((8, 8, 3), np.uint8), 90)
    rejects(bytes([0x90]) + pack_compact(len(jpeg)) + jpeg, (8, 16))
    rejects(bytes([0x90]) + pack_compact(len(jpeg) // 2) + jpeg[: len(jpeg) // 2], (8, 8))
    rejects(bytes([0x90, 0x10]) + b"\xff\xd8 not a jpeg at all", (8, 8))
    rejects(bytes([0x90, 0x00]), (8, 8))


def test_palette_index_beyond_palette() -> None:
    codec = codec_of("native")
    palette = bytes([0x1, 2]) + codec.pack_tpixels(np.array([1, 2, 3], np.uint32))
    rejects(bytes([0x40]) + palette + bytes([0, 1, 2, 3, 0, 0, 0, 0, 0]), (3, 3))


def test_zlib_rejections() -> None:
    codec = codec_of("native")
    data = codec.pack_tpixels(noise(4, 4))
    short = deflate(data[:-3])
    long = deflate(data + b"xyz")
    rejects(bytes([0x00]) + pack_compact(len(short)) + short)
    rejects(bytes([0x00]) + pack_compact(len(long)) + long)
    rejects(bytes([0x00, 20]) + bytes(range(20)))
    rejects(bytes([0x00, 0x00]))
    finished = zlib.compress(data)
    rejects(bytes([0x00]) + pack_compact(len(finished)) + finished)


def test_compact_length_bounds() -> None:
    chunk = deflate(bytes(48 * 3))
    rejects(bytes([0x00, 0xFF, 0xFF, 0xFF]), (4, 4))  # above what 48 bytes can need
    rejects(
        bytes([0x00]) + pack_compact(len(chunk)) + chunk,
        (1, 48),
        limits=Limits(max_compressed_rect=8),
    )
    assert len(chunk) > 8


def test_basic_compression_width_limit() -> None:
    rejects(bytes([0x00]) + bytes(16), (1, 2049))
    # Fill has no width limit.
    decoded = decode(TightDecoder(), bytes([0x80, 1, 2, 3]), (1, 4000), codec_of("native"))
    assert decoded.shape == (1, 4000) and np.all(decoded == 0x010203)


def test_broken_stream_needs_a_reset() -> None:
    codec = codec_of("native")
    decoder = TightDecoder()
    px = noise(4, 4)
    good = deflate(codec.pack_tpixels(px))
    with pytest.raises(ProtocolError):
        decode(decoder, bytes([0x00, 5]) + b"\x78\x9c\xff\xff\xff", px.shape, codec)
    with pytest.raises(ProtocolError, match="without a reset"):
        decode(decoder, bytes([0x00]) + pack_compact(len(good)) + good, px.shape, codec)
    decoded = decode(decoder, bytes([0x01]) + pack_compact(len(good)) + good, px.shape, codec)
    np.testing.assert_array_equal(decoded, px)


# -- gradient filter against the spec's pseudo-code ---------------------------
def reference_unfilter(residuals: np.ndarray, maxes: np.ndarray) -> np.ndarray:
    h, w, _ = residuals.shape
    values = np.zeros((h + 1, w + 1, 3), dtype=np.int64)
    for i in range(h):
        for j in range(w):
            for c in range(3):
                guess = values[i, j + 1, c] + values[i + 1, j, c] - values[i, j, c]
                guess = min(max(guess, 0), int(maxes[c]))
                values[i + 1, j + 1, c] = (guess + residuals[i, j, c]) % (maxes[c] + 1)
    return values[1:, 1:]


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (23, 1), (9, 40), (31, 12)])
@pytest.mark.parametrize("maxes", [(255, 255, 255), (31, 63, 31)])
@pytest.mark.parametrize("kind", ["smooth", "noisy"])
def test_gradient_matches_reference(
    shape: tuple[int, int], maxes: tuple[int, int, int], kind: str
) -> None:
    top = np.array(maxes, dtype=np.int32)
    rng = rng_for(sum(shape))
    if kind == "noisy":
        values = rng.integers(0, 1 << 16, (*shape, 3)).astype(np.int32) & top
    else:
        ramp = np.cumsum(rng.integers(-2, 3, (*shape, 3)), axis=1) + top // 2
        values = np.clip(ramp, 0, top).astype(np.int32)
    residuals = gradient_filter(values, top)
    np.testing.assert_array_equal(reference_unfilter(residuals, top), values)
    np.testing.assert_array_equal(gradient_unfilter(residuals, top), values)
    # Arbitrary residuals, as a peer may send, decode like the reference too.
    arbitrary = rng.integers(0, 1 << 16, (*shape, 3)).astype(np.int32) & top
    np.testing.assert_array_equal(
        gradient_unfilter(arbitrary, top), reference_unfilter(arbitrary, top)
    )


def reference_filter(values: np.ndarray, maxes: np.ndarray) -> np.ndarray:
    h, w, _ = values.shape
    padded = np.zeros((h + 1, w + 1, 3), dtype=np.int64)
    padded[1:, 1:] = values
    out = np.zeros((h, w, 3), dtype=np.int64)
    for i in range(h):
        for j in range(w):
            for c in range(3):
                guess = padded[i + 1, j, c] + padded[i, j + 1, c] - padded[i, j, c]
                guess = min(max(guess, 0), int(maxes[c]))
                out[i, j, c] = (padded[i + 1, j + 1, c] - guess) % (maxes[c] + 1)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 19), (17, 1), (11, 23)])
@pytest.mark.parametrize(
    "maxes", [(255, 255, 255), (31, 63, 31), (7, 7, 3), (1023, 1023, 1023), (65535, 255, 1)]
)
def test_gradient_filter_matches_reference_for_every_type(
    shape: tuple[int, int], maxes: tuple[int, int, int]
) -> None:
    """Same residuals from int32 and from the narrowest unsigned components,
    with shared or per-channel maxes and channels too wide for int16 sums."""
    top = np.array(maxes, dtype=np.int32)
    values = rng_for(sum(shape) + int(top.sum())).integers(0, 1 << 16, (*shape, 3)) & top
    expected = reference_filter(values, top)
    unsigned = np.uint8 if top.max() <= 255 else np.uint16
    for dtype in (np.int32, unsigned):
        residuals = gradient_filter(values.astype(dtype), top)
        assert residuals.dtype == dtype
        np.testing.assert_array_equal(residuals, expected)
    np.testing.assert_array_equal(gradient_unfilter(expected.astype(np.int32), top), values)


def test_gradient_decoder_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    sweep = tight_gradient._unfilter_diagonals

    def counting(*args):
        calls.append(args[0].shape)
        return sweep(*args)

    monkeypatch.setattr(tight_gradient, "_unfilter_diagonals", counting)
    monkeypatch.setattr(tight_gradient, "BAND_CELLS", 200)  # force several bands
    top = np.array([255, 255, 255], dtype=np.int32)
    codec = codec_of("native")
    layout = tight_gradient.ChannelLayout.of(codec)
    smooth = tight_gradient.pixel_channels(photo(40, 60), codec, layout)
    np.testing.assert_array_equal(gradient_unfilter(gradient_filter(smooth, top), top), smooth)
    assert calls == []  # running sums sufficed
    noisy = rng_for(9).integers(0, 256, (40, 60, 3)).astype(np.int32)
    np.testing.assert_array_equal(gradient_unfilter(gradient_filter(noisy, top), top), noisy)
    assert len(calls) == 1 and calls[0][0] < 40  # rows first, then the sweep
    assert tight_gradient.band_rows(60) < 40


# -- hostile input ------------------------------------------------------------
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_fresh(payload: bytes, w: int, h: int, name: str) -> None:
    with contextlib.suppress(ProtocolError):
        decode_any(TightDecoder(Limits(max_compressed_rect=1 << 16)), payload, w, h, name)


def decode_any(decoder: TightDecoder, payload: bytes, w: int, h: int, name: str) -> None:
    pixels, _ = run_decoder(decoder.decode(Rect(0, 0, w, h), codec_of(name)), payload)
    assert pixels.shape == (h, w) and pixels.dtype == np.uint32


@FUZZ
@given(
    payload=st.binary(max_size=300),
    w=st.integers(0, 40),
    h=st.integers(0, 40),
    name=st.sampled_from(sorted(FORMATS)),
)
def test_random_payloads_raise_only_protocol_errors(
    payload: bytes, w: int, h: int, name: str
) -> None:
    decode_fresh(payload, w, h, name)


@FUZZ
@given(
    control=st.integers(0, 255),
    filter_id=st.integers(0, 3),
    rest=st.binary(max_size=200),
    w=st.integers(0, 24),
    h=st.integers(0, 24),
    name=st.sampled_from(sorted(FORMATS)),
)
def test_structured_payloads_raise_only_protocol_errors(
    control: int, filter_id: int, rest: bytes, w: int, h: int, name: str
) -> None:
    decode_fresh(bytes([control, filter_id]) + rest, w, h, name)


@FUZZ
@given(
    content=st.sampled_from(sorted(CONTENT)),
    w=st.integers(1, 48),
    h=st.integers(1, 48),
    name=st.sampled_from(sorted(FORMATS)),
    quality=st.sampled_from([None, 3]),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 10**6),
)
def test_mutated_payloads_raise_only_protocol_errors(
    content: str, w: int, h: int, name: str, quality: int | None, edits, cut: int
) -> None:
    encoder = TightEncoder()
    encoder.configure(quality, None)
    payload = bytearray(encoder.encode(CONTENT[content](h, w), codec_of(name)))
    for where, value in edits:
        payload[where % len(payload)] = value
    decode_fresh(bytes(payload), w, h, name)
    decode_fresh(bytes(payload[: cut % len(payload)]), w, h, name)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    colours=st.integers(1, 300),
    w=st.integers(1, 70),
    h=st.integers(1, 70),
    name=st.sampled_from(sorted(FORMATS)),
)
def test_random_images_roundtrip_exactly(
    seed: int, colours: int, w: int, h: int, name: str
) -> None:
    rng = rng_for(seed)
    palette = rng.integers(0, 1 << 24, colours, dtype=np.uint32)
    px = palette[rng.integers(0, colours, (h, w))]
    codec = codec_of(name)
    decoded, _ = roundtrip(TightEncoder(), TightDecoder(), px, codec)
    np.testing.assert_array_equal(decoded, codec.quantize(px))


def test_the_gradient_filter_is_judged_only_on_rectangles_large_enough_to_gain() -> None:
    """A glyph-sized smooth rectangle goes out with the copy filter, unjudged;
    a larger one of the same content gets the gradient filter.  Both exact."""
    codec = PixelCodec(NATIVE)
    encoder, decoder = TightEncoder(), TightDecoder()
    side = int(GRADIENT_MIN_AREA**0.5)
    for (h, w), expected in (((side - 1, side - 1), "copy"), ((side, side), "gradient")):
        px = photo(h, w)
        pixels, payload = roundtrip(encoder, decoder, px, codec)
        assert method(payload) == expected, (h, w)
        np.testing.assert_array_equal(pixels, px)


@pytest.mark.parametrize("size", [12, 13, 511, 512, 513, 4000, 8191, 8192, 40000])
def test_a_small_fresh_chunk_has_a_window_to_its_size_and_any_inflater_reads_it(
    size: int,
) -> None:
    data = rng_for(size).integers(0, 6, size, dtype=np.uint8).tobytes()
    chunk = independent_chunk(data, 3)
    assert zlib.decompressobj().decompress(chunk) == data  # a default (32 KiB) inflater
    window = 1 << ((chunk[0] >> 4) + 8)  # CINFO of the zlib header
    assert window == (32768 if size >= 8192 else max(512, 1 << (size - 1).bit_length()))
    default = zlib.compressobj(3)
    assert len(chunk) <= len(default.compress(data) + default.flush(zlib.Z_SYNC_FLUSH)) + 8
