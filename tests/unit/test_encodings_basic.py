"""CopyRect, RRE and Hextile: round trips, content-driven choices, hostile input."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import copyrect, hextile, make_decoder, make_encoder, rre
from protocols.rfb.encodings.base import CopyFrom, DecodeGen, DecodeResult, Rect, run_decoder
from protocols.rfb.encodings.copyrect import CopyRectDecoder, CopyRectEncoder
from protocols.rfb.errors import ProtocolError
from protocols.rfb.pixelformat import (
    BGR233,
    COLOUR_MAP_8,
    NATIVE,
    RGB565,
    PixelCodec,
    PixelFormat,
)
from protocols.rfb.updates import ClientSettings, RectEncoder

NATIVE_BE = dataclasses.replace(NATIVE, big_endian=True)
RGB555_BE = PixelFormat(16, 15, True, True, 31, 31, 31, 10, 5, 0)
FORMATS = {
    "native": NATIVE,
    "native-be": NATIVE_BE,
    "rgb565": RGB565,
    "rgb555-be": RGB555_BE,
    "bgr233": BGR233,
    "colourmap8": COLOUR_MAP_8,
}
PIXEL_ENCODINGS = (Encoding.RRE, Encoding.HEXTILE)
SIZES = ((1, 1), (17, 33), (33, 17), (37, 100), (64, 64))
WHITE, BLACK = 0xFFFFFF, 0x000000

# Hextile subencoding bits, as numbered by the specification.
RAW, BG, FG, ANY, COLOURED = 1, 2, 4, 8, 16


# -- content ---------------------------------------------------------------


def solid(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    return np.full((h, w), 0x3C78B4, dtype=np.uint32)


def two_colours(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    px = np.full((h, w), 0xE0E0E0, dtype=np.uint32)
    px[rng.random((h, w)) < 0.2] = 0x102030
    return px


def text(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Black glyph-like strokes on white: short bars in 8x12 cells."""
    px = np.full((h, w), WHITE, dtype=np.uint32)
    for top in range(1, h - 10, 14):
        for left in range(1, w - 6, 8):
            if rng.random() < 0.2:
                continue
            px[top : top + 10, left + int(rng.integers(0, 5))] = BLACK
            row = top + int(rng.integers(0, 10))
            px[row, left : left + int(rng.integers(1, 6))] = BLACK
    return px


def windows(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A desktop colour with a few overlapping windows with title bars."""
    px = np.full((h, w), 0x2D6A9F, dtype=np.uint32)
    for colour in (0xF0F0F0, 0xFFFFCC, 0xCCE0FF):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0, h + 1)), int(rng.integers(x0, w + 1))
        px[y0:y1, x0:x1] = colour
        px[y0 : min(y1, y0 + 5), x0:x1] = 0x3050A0
        px[y0:y1, x0 : min(x1, x0 + 1)] = 0x404040
    return px


def noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 1 << 24, (h, w), dtype=np.uint32)


CONTENT: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "solid": solid,
    "two": two_colours,
    "text": text,
    "windows": windows,
    "noise": noise,
}


# -- helpers ---------------------------------------------------------------


def checked(gen: DecodeGen, needs: list[int] | None = None) -> DecodeGen:
    """Pass a decoder through, asserting every request is a positive int
    (and recording each in ``needs``, if given)."""
    try:
        need = next(gen)
        while True:
            assert isinstance(need, int) and need > 0
            if needs is not None:
                needs.append(need)
            chunk = yield need
            need = gen.send(chunk)
    except StopIteration as stop:
        return stop.value


def decode_all(encoding: int, rect: Rect, codec: PixelCodec, data: bytes) -> DecodeResult:
    """Decode a complete payload, requiring every byte to be used."""
    result, used = run_decoder(checked(make_decoder(encoding).decode(rect, codec)), data)
    assert used == len(data)
    return result


def reference_rre(px: np.ndarray, codec: PixelCodec) -> bytes:
    """RRE as specified: the most common colour as background (smallest on ties)."""
    words = codec.to_words(px)
    values, counts = np.unique(words, return_counts=True)
    background = int(values[np.argmax(counts)])
    return rre._pack(words, background, codec)


def full_hextile(px: np.ndarray, codec: PixelCodec) -> bytes:
    """Hextile without the early 'send Raw' answer."""
    a = hextile._analyse(codec.to_words(px), codec.bytes_per_pixel)
    table = hextile._subrect_table(a, codec)
    plan = hextile._plan(a, table.counts, codec.bytes_per_pixel)
    wire = codec.pf.wire_dtype
    head, head_at = hextile._headers(a, plan, table.counts, wire)
    return hextile._assemble(head, head_at, *hextile._bodies(a, plan, table, wire))


def round_trip(encoding: int, px: np.ndarray, codec: PixelCodec) -> bytes:
    """Encode, decode and compare; returns the full payload.

    Where the encoder can also say early that Raw is smaller
    (``encode_unless_raw`` answers None), that answer must be right, and
    otherwise be the full payload.
    """
    encoder = make_encoder(encoding)
    data = encoder.encode(px, codec)
    unless_raw = getattr(encoder, "encode_unless_raw", None)
    if unless_raw is not None:
        early = unless_raw(px, codec)
        assert early == data or (early is None and len(data) > px.size * codec.bytes_per_pixel)
    if encoding == Encoding.RRE and px.size:
        assert data == reference_rre(px, codec)
    h, w = px.shape
    result = decode_all(encoding, Rect(5, 7, w, h), codec, data)
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.uint32
    np.testing.assert_array_equal(result, codec.quantize(px))
    return data


def wire(codec: PixelCodec, colour: int) -> bytes:
    return codec.to_wire(np.array([colour], dtype=np.uint32))


def hextile_tiles(h: int, w: int) -> int:
    return -(-h // 16) * -(-w // 16)


def decode_or_reject(encoding: int, rect: Rect, codec: PixelCodec, data: bytes) -> None:
    """Hostile input may be rejected with ProtocolError, nothing else."""
    try:
        result, used = run_decoder(checked(make_decoder(encoding).decode(rect, codec)), data)
    except ProtocolError:
        return
    assert used <= len(data)
    if encoding == Encoding.COPYRECT:
        assert isinstance(result, CopyFrom)
    else:
        assert isinstance(result, np.ndarray)
        assert result.shape == (rect.h, rect.w)
        assert result.dtype == np.uint32


# -- round trips -----------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("content", CONTENT)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("encoding", PIXEL_ENCODINGS, ids=lambda e: e.name)
def test_round_trip(encoding: int, fmt: str, content: str, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{fmt} {content} {size}".encode()))
    codec = PixelCodec(FORMATS[fmt])
    round_trip(encoding, CONTENT[content](*size, rng), codec)


@pytest.mark.parametrize("encoding", PIXEL_ENCODINGS, ids=lambda e: e.name)
def test_one_encoder_many_rectangles(encoding: int) -> None:
    """Per-connection encoder and decoder objects stay usable across rects."""
    rng = np.random.default_rng(3)
    codec = PixelCodec(RGB565)
    encoder, decoder = make_encoder(encoding), make_decoder(encoding)
    for make in CONTENT.values():
        px = make(20, 45, rng)
        data = encoder.encode(px, codec)  # the full payload, whatever its size
        result, used = run_decoder(decoder.decode(Rect(0, 0, 45, 20), codec), data)
        assert used == len(data)
        np.testing.assert_array_equal(result, codec.quantize(px))


@pytest.mark.parametrize("encoding", PIXEL_ENCODINGS, ids=lambda e: e.name)
@pytest.mark.parametrize("size", [(0, 0), (0, 9), (9, 0)])
def test_empty_rectangle(encoding: int, size: tuple[int, int]) -> None:
    codec = PixelCodec(NATIVE)
    round_trip(encoding, np.zeros(size, dtype=np.uint32), codec)


def test_colour_map_decoding_uses_the_peer_map() -> None:
    """Decoded colour-map pixels go through the map the codec was given."""
    colour_map = np.arange(256, dtype=np.uint32) * 0x010101
    codec = PixelCodec(COLOUR_MAP_8, colour_map)
    payload = struct.pack(">I", 1) + bytes([7]) + bytes([9]) + struct.pack(">HHHH", 1, 0, 2, 1)
    result = decode_all(Encoding.RRE, Rect(0, 0, 4, 2), codec, payload)
    expected = np.full((2, 4), 7 * 0x010101, dtype=np.uint32)
    expected[0, 1:3] = 9 * 0x010101
    np.testing.assert_array_equal(result, expected)


# -- CopyRect --------------------------------------------------------------


@pytest.mark.parametrize("src", [(0, 0), (1, 2), (640, 480), (65535, 65535)])
def test_copyrect_round_trip(src: tuple[int, int]) -> None:
    data = CopyRectEncoder().encode_copy(*src)
    assert len(data) == 4
    assert struct.unpack(">HH", data) == src
    gen = checked(CopyRectDecoder().decode(Rect(0, 0, 10, 10), PixelCodec(NATIVE)))
    assert next(gen) == 4
    with pytest.raises(StopIteration) as stop:
        gen.send(data)
    assert stop.value.value == CopyFrom(*src)


def test_copyrect_encoder_has_no_pixel_form() -> None:
    encoder = make_encoder(Encoding.COPYRECT)
    assert encoder.encoding == Encoding.COPYRECT
    encoder.configure(5, 5)
    with pytest.raises(TypeError, match="encode_copy"):
        encoder.encode(np.zeros((2, 2), dtype=np.uint32), PixelCodec(NATIVE))


def test_copyrect_short_input_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_all(Encoding.COPYRECT, Rect(0, 0, 1, 1), PixelCodec(NATIVE), b"\x00\x01")


@settings(max_examples=300, deadline=None)
@given(data=st.data(), band=st.integers(1, 9))
def test_copy_within_gives_the_source_as_it_was(data: st.DataObject, band: int) -> None:
    """Source and destination overlapping in every direction, any band size:
    the destination must equal the source copied out whole first."""
    fb = np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 2654435761 % (1 << 24)
    w, h = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 30))
    x, y = data.draw(st.integers(0, 40 - w)), data.draw(st.integers(0, 30 - h))
    sx, sy = data.draw(st.integers(0, 40 - w)), data.draw(st.integers(0, 30 - h))
    expected = fb.copy()
    expected[y : y + h, x : x + w] = fb[sy : sy + h, sx : sx + w].copy()
    old_band = copyrect.BAND_ROWS
    copyrect.BAND_ROWS = band  # bands smaller than the rectangle, as on a full screen
    try:
        copyrect.copy_within(fb, Rect(x, y, w, h), sx, sy)
    finally:
        copyrect.BAND_ROWS = old_band
    np.testing.assert_array_equal(fb, expected)


# -- RRE choices -----------------------------------------------------------


def rre_header(data: bytes, codec: PixelCodec) -> tuple[int, np.ndarray]:
    (count,) = struct.unpack_from(">I", data)
    background = codec.from_wire(data[4 : 4 + codec.bytes_per_pixel], 1)
    return count, background


@pytest.mark.parametrize("fmt", FORMATS)
def test_rre_background_is_the_most_common_colour(fmt: str) -> None:
    codec = PixelCodec(FORMATS[fmt])
    px = text(60, 90, np.random.default_rng(1))
    data = round_trip(Encoding.RRE, px, codec)
    count, background = rre_header(data, codec)
    assert background[0] == codec.quantize(np.array([WHITE], dtype=np.uint32))[0]
    assert count < np.count_nonzero(px != WHITE)


def test_rre_filled_rectangle_is_one_subrect() -> None:
    codec = PixelCodec(NATIVE)
    px = np.full((50, 70), WHITE, dtype=np.uint32)
    px[10:40, 5:60] = 0x123456
    data = round_trip(Encoding.RRE, px, codec)
    count, _ = rre_header(data, codec)
    assert count == 1
    assert len(data) == 4 + 4 + (4 + 8)


def test_rre_solid_has_no_subrects() -> None:
    codec = PixelCodec(RGB565)
    data = round_trip(Encoding.RRE, solid(30, 30, np.random.default_rng()), codec)
    assert len(data) == 4 + 2


def test_rre_later_subrects_paint_over_earlier_ones() -> None:
    codec = PixelCodec(BGR233)
    sub = struct.Struct(">BHHHH")
    payload = (
        struct.pack(">IB", 3, 0x00)
        + sub.pack(0x11, 0, 0, 4, 4)
        + sub.pack(0x22, 2, 2, 4, 3)
        + sub.pack(0x33, 5, 0, 1, 1)
    )
    result = decode_all(Encoding.RRE, Rect(0, 0, 6, 5), codec, payload)
    expected = np.zeros((5, 6), dtype=np.uint32)
    expected[0:4, 0:4] = 0x11
    expected[2:5, 2:6] = 0x22
    expected[0:1, 5:6] = 0x33
    np.testing.assert_array_equal(result, codec.from_words(expected))


def smooth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Photo-like gradients with grain: many colours, few repeats."""
    y, x = np.mgrid[0:h, 0:w]
    red = (x * 255 // max(w - 1, 1)).astype(np.uint32)
    green = (y * 255 // max(h - 1, 1)).astype(np.uint32)
    blue = rng.integers(0, 256, (h, w), dtype=np.uint32)
    return (red << 16) | (green << 8) | blue


def encode_through_rect_encoder(encoding: int, px: np.ndarray, codec: PixelCodec) -> list:
    encoder = RectEncoder()
    encoder.configure(ClientSettings.from_encodings((encoding,)))
    fb = np.ascontiguousarray(px)
    return encoder.encode(fb, Rect(0, 0, px.shape[1], px.shape[0]), codec)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("make", [noise, smooth], ids=["noise", "smooth"])
def test_rre_many_colours_go_raw_without_subrects(
    fmt: str, make: Callable[[int, int, np.random.Generator], np.ndarray]
) -> None:
    codec = PixelCodec(FORMATS[fmt])
    px = make(64, 200, np.random.default_rng(5))
    raw_size = px.size * codec.bytes_per_pixel
    encoder = make_encoder(Encoding.RRE)
    assert len(reference_rre(px, codec)) > raw_size
    assert encoder.encode_unless_raw(px, codec) is None  # type: ignore[attr-defined]
    assert encoder.encode(px, codec) == reference_rre(px, codec)
    [(header, payload)] = encode_through_rect_encoder(Encoding.RRE, px, codec)
    assert header.encoding == Encoding.RAW
    assert payload == codec.to_wire(px)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("content", ["text", "windows"])
def test_rre_payload_is_the_specified_one_when_it_wins(fmt: str, content: str) -> None:
    codec = PixelCodec(FORMATS[fmt])
    px = CONTENT[content](64, 200, np.random.default_rng(6))
    data = round_trip(Encoding.RRE, px, codec)
    assert data == reference_rre(px, codec)
    assert len(data) <= px.size * codec.bytes_per_pixel


def test_rre_background_ties_go_to_the_smallest_colour() -> None:
    codec = PixelCodec(NATIVE)
    px = np.zeros((8, 8), dtype=np.uint32)
    px[:, :4] = 0x00FF00
    px[:, 4:] = 0x0000FF
    data = round_trip(Encoding.RRE, px, codec)
    count, background = rre_header(data, codec)
    assert (count, background[0]) == (1, 0x0000FF)


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack(">IB", 13, 0),  # more subrects than pixels
        struct.pack(">IB", 1, 0) + struct.pack(">BHHHH", 1, 3, 0, 2, 1),  # past the right
        struct.pack(">IB", 1, 0) + struct.pack(">BHHHH", 1, 0, 2, 1, 2),  # past the bottom
        struct.pack(">IB", 1, 0) + struct.pack(">BHHHH", 1, 65535, 0, 65535, 1),
        struct.pack(">IB", 2, 0) + struct.pack(">BHHHH", 1, 0, 0, 1, 1),  # truncated
    ],
)
def test_rre_rejects(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_all(Encoding.RRE, Rect(0, 0, 4, 3), PixelCodec(BGR233), payload)


# -- Hextile choices -------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_hextile_solid_area_carries_the_background(fmt: str) -> None:
    codec = PixelCodec(FORMATS[fmt])
    data = round_trip(Encoding.HEXTILE, solid(64, 64, np.random.default_rng()), codec)
    # First tile: subencoding byte and background; the other 15: one byte.
    assert len(data) == 1 + codec.bytes_per_pixel + 15
    assert len(data) * 50 < 64 * 64 * codec.bytes_per_pixel


@pytest.mark.parametrize("fmt", FORMATS)
def test_hextile_noise_falls_back_to_raw(fmt: str) -> None:
    codec = PixelCodec(FORMATS[fmt])
    for h, w in ((64, 64), (37, 100)):
        px = noise(h, w, np.random.default_rng(h))
        data = round_trip(Encoding.HEXTILE, px, codec)
        assert len(data) <= h * w * codec.bytes_per_pixel + hextile_tiles(h, w)


@pytest.mark.parametrize("fmt", FORMATS)
def test_hextile_text_and_windows_beat_raw(fmt: str) -> None:
    codec = PixelCodec(FORMATS[fmt])
    rng = np.random.default_rng(8)
    for make in (text, windows):
        px = make(96, 160, rng)
        data = round_trip(Encoding.HEXTILE, px, codec)
        assert len(data) * 3 < px.size * codec.bytes_per_pixel


def test_hextile_two_colour_tiles_carry_the_foreground() -> None:
    codec = PixelCodec(NATIVE)
    px = np.full((16, 32), WHITE, dtype=np.uint32)
    px[2:6, 3:7] = BLACK
    px[8:12, 20:24] = BLACK
    data = round_trip(Encoding.HEXTILE, px, codec)
    first = 1 + 4 + 4 + 1 + 2  # flags, background, foreground, count, one subrect
    second = 1 + 1 + 2  # flags, count, one subrect; colours carried over
    assert len(data) == first + second
    assert data[0] == BG | FG | ANY
    assert data[first] == ANY


def test_hextile_nothing_carries_over_a_raw_tile() -> None:
    codec = PixelCodec(NATIVE)
    px = np.full((16, 48), WHITE, dtype=np.uint32)
    px[:, 16:32] = noise(16, 16, np.random.default_rng(2))
    data = round_trip(Encoding.HEXTILE, px, codec)
    assert data[0] == BG
    assert data[5] == RAW
    assert data[6 + 16 * 16 * 4] == BG  # background sent again after the raw tile
    assert len(data) == (1 + 4) + (1 + 1024) + (1 + 4)


def test_hextile_coloured_subrects_for_a_few_colours() -> None:
    codec = PixelCodec(NATIVE)
    px = np.full((16, 16), WHITE, dtype=np.uint32)
    px[1:3, 1:9] = 0xFF0000
    px[5:9, 4:6] = 0x00FF00
    px[12:15, 10:15] = 0x0000FF
    data = round_trip(Encoding.HEXTILE, px, codec)
    assert data[0] == BG | ANY | COLOURED
    assert len(data) == 1 + 4 + 1 + 3 * (4 + 2)


def hextile_payload(*parts: bytes | int) -> bytes:
    return b"".join(bytes([p]) if isinstance(p, int) else p for p in parts)


def test_hextile_decodes_spec_semantics() -> None:
    """Three tiles: fg carried over a solid tile, coloured overlapping subrects."""
    codec = PixelCodec(NATIVE_BE)
    red, blue, green = (wire(codec, c) for c in (0xFF0000, 0x0000FF, 0x00FF00))
    payload = hextile_payload(
        BG | FG | ANY, red, blue, 1, 0x00, 0x00,  # tile 0: red, blue pixel at (0, 0)
        0,  # tile 1: solid, red carried over
        ANY, 1, 0x11, 0x10,  # tile 2: blue (carried) at (1, 1), 2 wide 1 high
        BG | ANY | COLOURED, blue, 2, green, 0x00, 0x11, red, 0x11, 0x00,  # tile 3: overlap
    )  # fmt: skip
    result = decode_all(Encoding.HEXTILE, Rect(0, 0, 64, 3), codec, payload)
    expected = np.full((3, 64), 0xFF0000, dtype=np.uint32)
    expected[0, 0] = 0x0000FF
    expected[1, 33:35] = 0x0000FF
    expected[:, 48:] = 0x0000FF
    expected[0:2, 48:50] = 0x00FF00
    expected[1, 49] = 0xFF0000  # the later subrect is on top
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(hextile_payload(ANY, 0), id="first-tile-without-background"),
        pytest.param(hextile_payload(RAW, bytes(128), 0), id="background-after-raw"),
        pytest.param(
            hextile_payload(BG, 1, BG | ANY | COLOURED, 2, 0, ANY, 1, 0, 0),
            id="foreground-after-coloured",
        ),
        pytest.param(
            hextile_payload(RAW, bytes(128), BG | ANY, 1, 1, 0, 0), id="foreground-after-raw"
        ),
        pytest.param(hextile_payload(BG | ANY, 1, 1, 0, 0), id="foreground-never-sent"),
        pytest.param(
            hextile_payload(BG, 1, 0, BG | FG | ANY, 1, 2, 1, 0x70, 0x11),
            id="subrect-beyond-8-wide-tile",
        ),
        pytest.param(
            hextile_payload(BG | FG | ANY, 1, 2, 1, 0x07, 0x01), id="subrect-beyond-8-high-tile"
        ),
        pytest.param(hextile_payload(BG | FG | COLOURED, 1, 2), id="foreground-and-coloured"),
        pytest.param(hextile_payload(BG | 0x20, 1), id="zlibhex-bit"),
        pytest.param(hextile_payload(BG | ANY | COLOURED, 1, 3, 2, 0, 0), id="truncated"),
    ],
)
def test_hextile_rejects(payload: bytes) -> None:
    """Tiles of a 40x8 rectangle are 16x8, 16x8 and 8x8 (one byte per pixel)."""
    with pytest.raises(ProtocolError):
        decode_all(Encoding.HEXTILE, Rect(0, 0, 40, 8), PixelCodec(BGR233), payload)


def test_hextile_solid_tile_keeps_a_carried_foreground_valid() -> None:
    """Foreground may carry over a tile without subrects that carried it itself."""
    codec = PixelCodec(BGR233)
    payload = hextile_payload(BG | FG | ANY, 1, 2, 1, 0, 0, 0, ANY, 1, 0, 0)
    result = decode_all(Encoding.HEXTILE, Rect(0, 0, 40, 1), codec, payload)
    expected = codec.from_words(np.ones((1, 40), dtype=np.uint32))
    expected[0, [0, 32]] = codec.from_words(np.array([2], dtype=np.uint32))[0]
    np.testing.assert_array_equal(result, expected)


# -- hypothesis ------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
fmt_names = st.sampled_from(sorted(FORMATS))
fuzz_encodings = st.sampled_from((Encoding.RRE, Encoding.HEXTILE, Encoding.COPYRECT))


@FUZZ
@given(
    encoding=fuzz_encodings,
    fmt=fmt_names,
    w=st.integers(0, 40),
    h=st.integers(0, 40),
    data=st.binary(max_size=600),
)
def test_random_bytes_only_raise_protocol_error(
    encoding: int, fmt: str, w: int, h: int, data: bytes
) -> None:
    decode_or_reject(encoding, Rect(0, 0, w, h), PixelCodec(FORMATS[fmt]), data)


@st.composite
def palette_images(draw: st.DrawFn) -> np.ndarray:
    """Small images of a few colours (so subrects appear) or full noise."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    colours = draw(st.lists(st.integers(0, 0xFFFFFF), min_size=1, max_size=6))
    index = draw(hnp.arrays(np.uint8, (h, w), elements=st.integers(0, len(colours) - 1)))
    return np.array(colours, dtype=np.uint32)[index]


@FUZZ
@given(
    encoding=st.sampled_from(PIXEL_ENCODINGS),
    fmt=fmt_names,
    px=palette_images(),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10**6),
)
def test_mutated_payloads_only_raise_protocol_error(
    encoding: int,
    fmt: str,
    px: np.ndarray,
    edits: list[tuple[int, int]],
    cut: int,
) -> None:
    codec = PixelCodec(FORMATS[fmt])
    data = bytearray(make_encoder(encoding).encode(px, codec))
    for position, value in edits:
        if data:
            data[position % len(data)] = value
    if cut % 3 == 0 and data:
        del data[cut % len(data) :]
    h, w = px.shape
    decode_or_reject(encoding, Rect(0, 0, w, h), codec, bytes(data))


@FUZZ
@given(encoding=st.sampled_from(PIXEL_ENCODINGS), fmt=fmt_names, px=palette_images())
def test_random_images_round_trip(encoding: int, fmt: str, px: np.ndarray) -> None:
    round_trip(encoding, px, PixelCodec(FORMATS[fmt]))


@FUZZ
@given(
    fmt=fmt_names,
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_noise_round_trips(fmt: str, h: int, w: int, seed: int) -> None:
    px = noise(h, w, np.random.default_rng(seed))
    for encoding in PIXEL_ENCODINGS:
        round_trip(encoding, px, PixelCodec(FORMATS[fmt]))


@st.composite
def rre_scenes(draw: st.DrawFn) -> tuple[int, int, int, list[tuple[int, int, int, int, int]]]:
    """A rectangle size, a background and up to w*h overlapping subrects inside it."""
    w, h = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    rects = []
    for _ in range(draw(st.integers(0, min(12, w * h)))):
        x, y = draw(st.integers(0, w)), draw(st.integers(0, h))
        rw, rh = draw(st.integers(0, w - x)), draw(st.integers(0, h - y))
        rects.append((draw(st.integers(0, 255)), x, y, rw, rh))
    return w, h, draw(st.integers(0, 255)), rects


@FUZZ
@given(scene=rre_scenes())
def test_rre_paints_in_order_like_the_specification(
    scene: tuple[int, int, int, list[tuple[int, int, int, int, int]]],
) -> None:
    """Overlapping subrects: each is drawn over the ones before it."""
    w, h, background, rects = scene
    codec = PixelCodec(BGR233)
    payload = struct.pack(">IB", len(rects), background)
    expected = np.full((h, w), background, dtype=np.uint32)
    for colour, x, y, rw, rh in rects:
        payload += struct.pack(">BHHHH", colour, x, y, rw, rh)
        expected[y : y + rh, x : x + rw] = colour
    result = decode_all(Encoding.RRE, Rect(0, 0, w, h), codec, payload)
    np.testing.assert_array_equal(result, codec.from_words(expected))


@st.composite
def word_arrays(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Values of 8, 16 or 32 bits, from a few values (ties, majorities) to many."""
    bits = draw(st.sampled_from((8, 16, 32)))
    top = (1 << min(bits, 24)) - 1
    values = draw(
        st.lists(st.integers(0, top), min_size=1, max_size=draw(st.sampled_from((3, 50))))
    )
    n = draw(st.integers(1, 3000))
    index = draw(hnp.arrays(np.uint16, n, elements=st.integers(0, len(values) - 1)))
    return np.array(values, dtype=np.uint32)[index], bits


@FUZZ
@given(case=word_arrays())
def test_most_common_is_the_mode_with_the_smallest_on_ties(case: tuple[np.ndarray, int]) -> None:
    words, bits = case
    values, counts = np.unique(words, return_counts=True)
    assert rre.most_common(words, bits) == int(values[np.argmax(counts)])
    assert rre.most_common(words.reshape(1, -1)) == int(values[np.argmax(counts)])


@FUZZ
@given(px=palette_images())
def test_corner_pixels_bound_the_subrect_count(px: np.ndarray) -> None:
    """Each non-background corner pixel starts a subrect of its own."""
    background = rre.most_common(px)
    found = rre.find_subrects(px[np.newaxis], np.array([background]))
    corners = rre.corner_mask(px) & (px != background)
    assert np.count_nonzero(corners) <= len(found)
    assert set(zip(found.y.tolist(), found.x.tolist(), strict=True)) >= set(
        zip(*np.nonzero(corners), strict=True)
    )


def sequential_hextile_plan(
    px: np.ndarray, codec: PixelCodec
) -> tuple[list[bool], list[bool], list[bool]]:
    """Raw choice, background sent, foreground sent: tile by tile, as the spec reads."""
    bpp = codec.bytes_per_pixel
    a = hextile._analyse(codec.to_words(px), bpp)
    counts = hextile._subrect_table(a, codec).counts.tolist()
    carry_bg: int | None = None
    carry_fg: int | None = None
    raw, send_bg, send_fg = [], [], []
    for i, kind in enumerate(a.kind.tolist()):
        bg, fg = int(a.background[i]), int(a.foreground[i])
        two = kind == hextile._TWO
        size = 2 + bpp * (bg != carry_bg) + (bpp * (fg != carry_fg) + 2 * counts[i] if two else 0)
        size += 0 if two else (bpp + 2) * counts[i]
        possible = bool(a.candidate[i]) and counts[i] <= 255
        goes_raw = kind != hextile._SOLID and (
            not possible or size >= 1 + int(a.heights[i] * a.widths[i]) * bpp
        )
        raw.append(goes_raw)
        send_bg.append(not goes_raw and bg != carry_bg)
        send_fg.append(not goes_raw and two and fg != carry_fg)
        if goes_raw:
            carry_bg = carry_fg = None
            continue
        carry_bg = bg
        if two:
            carry_fg = fg
        elif kind != hextile._SOLID:
            carry_fg = None
    return raw, send_bg, send_fg


@st.composite
def tiled_scenes(draw: st.DrawFn) -> np.ndarray:
    """Up to 4x4 tiles, each solid, of two colours, of a few colours or noise."""
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h = 16 * rows - draw(st.integers(0, 15))
    w = 16 * cols - draw(st.integers(0, 15))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    px = np.empty((16 * rows, 16 * cols), dtype=np.uint32)
    palette = rng.integers(0, 1 << 24, 4, dtype=np.uint32)
    for y in range(rows):
        for x in range(cols):
            colours = draw(st.sampled_from((1, 2, 3, 4, 0)))
            if colours:
                tile = palette[rng.integers(0, colours, (16, 16))]
                tile[rng.random((16, 16)) < draw(st.sampled_from((0.0, 0.7)))] = palette[0]
            else:
                tile = rng.integers(0, 1 << 24, (16, 16), dtype=np.uint32)
            px[16 * y : 16 * y + 16, 16 * x : 16 * x + 16] = tile
    return px[:h, :w]


@FUZZ
@given(px=tiled_scenes(), fmt=fmt_names)
def test_hextile_choices_match_a_tile_by_tile_writer(px: np.ndarray, fmt: str) -> None:
    codec = PixelCodec(FORMATS[fmt])
    a = hextile._analyse(codec.to_words(px), codec.bytes_per_pixel)
    plan = hextile._plan(a, hextile._subrect_table(a, codec).counts, codec.bytes_per_pixel)
    raw, send_bg, send_fg = sequential_hextile_plan(px, codec)
    assert plan.raw.tolist() == raw
    assert plan.send_bg.tolist() == send_bg
    assert plan.send_fg.tolist() == send_fg
    data = round_trip(Encoding.HEXTILE, px, codec)
    assert data == full_hextile(px, codec)


def hextile_table_rects(table: hextile._SubrectTable, tile: int) -> set[tuple[int, ...]]:
    """(x, y, w, h, colour) of one tile's entries in the coloured form."""
    record = np.dtype([("colour", "<u4"), ("xy", "u1"), ("wh", "u1")])
    entries = np.frombuffer(table.coloured, dtype=record)
    start = int(table.offsets[tile])
    rects = set()
    for e in entries[start : start + int(table.counts[tile])].tolist():
        colour, xy, wh = e
        rects.add((xy >> 4, xy & 15, (wh >> 4) + 1, (wh & 15) + 1, colour))
    return rects


@FUZZ
@given(px=tiled_scenes())
def test_hextile_finds_the_subrects_rre_finds_in_each_tile(px: np.ndarray) -> None:
    """Run by run, with partial tiles' edge padding cut off, Hextile's finder
    covers each tile with exactly the rects of the pixel-by-pixel finder."""
    codec = PixelCodec(NATIVE)
    words = codec.to_words(px)
    a = hextile._analyse(words, codec.bytes_per_pixel)
    table = hextile._subrect_table(a, codec)
    cols = -(-px.shape[1] // 16)
    for i in np.flatnonzero(a.candidate).tolist():
        ty, tx = divmod(i, cols)
        tile = words[16 * ty : 16 * ty + 16, 16 * tx : 16 * tx + 16]
        found = rre.find_subrects(tile[np.newaxis], np.array([a.background[i]]))
        expected = zip(
            *(v.tolist() for v in (found.x, found.y, found.w, found.h, found.colour)), strict=True
        )
        assert hextile_table_rects(table, i) == set(expected)


# -- decoding into a framebuffer -------------------------------------------


def decode_into_framebuffer(
    encoding: int, rect: Rect, codec: PixelCodec, data: bytes, needs: list[int] | None = None
) -> np.ndarray:
    """A 40x120 framebuffer of a marker colour with ``rect`` decoded into it
    (each read the decoder asked for recorded in ``needs``, if given)."""
    framebuffer = np.full((40, 120), 0xABCDEF, dtype=np.uint32)
    target = framebuffer[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w]
    gen = checked(make_decoder(encoding).decode_into(rect, codec, target), needs)
    copy, used = run_decoder(gen, data)
    assert copy is None and used == len(data)
    return framebuffer


@pytest.mark.parametrize("fmt", FORMATS)
def test_raw_decodes_into_the_framebuffer_as_decode_does(fmt: str) -> None:
    """Raw writes wire pixels straight into the framebuffer: the same pixels
    as ``decode``, padding and unused bits dropped, nothing outside touched."""
    codec = PixelCodec(FORMATS[fmt])
    rect = Rect(7, 3, 37, 17)
    data = np.random.default_rng(5).bytes(rect.area * codec.bytes_per_pixel)  # any bits set
    expected = np.full((40, 120), 0xABCDEF, dtype=np.uint32)
    expected[3:20, 7:44] = decode_all(Encoding.RAW, rect, codec, data)
    got = decode_into_framebuffer(Encoding.RAW, rect, codec, data)
    np.testing.assert_array_equal(got, expected)
    assert got[3:20, 7:44].max() <= 0xFFFFFF


def test_other_decoders_decode_into_the_framebuffer_through_decode() -> None:
    codec = PixelCodec(NATIVE)
    px = text(17, 37, np.random.default_rng(6))
    rect = Rect(7, 3, 37, 17)
    data = make_encoder(Encoding.HEXTILE).encode(px, codec)
    got = decode_into_framebuffer(Encoding.HEXTILE, rect, codec, data)
    np.testing.assert_array_equal(got[3:20, 7:44], px)
    assert np.all(got[:3] == 0xABCDEF) and np.all(got[:, :7] == 0xABCDEF)
