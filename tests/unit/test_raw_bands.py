"""The desktop's Raw pixels go into the framebuffer band by band as they arrive.

A whole screen read at once would be held whole by the stream driver and
copied out: 8 MB twice at 1920x1080, 33 MB twice at 3840x2160.  In bands
of 256 KiB the buffers stay small, and the heap's.
"""

from __future__ import annotations

import numpy as np
import pytest

from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect, make_decoder, raw
from protocols.rfb.pixelformat import NATIVE, RGB565, PixelCodec

from .test_encodings_basic import FORMATS, decode_all, decode_into_framebuffer


def needs_of(rect: Rect, codec: PixelCodec, data: bytes) -> tuple[np.ndarray, list[int]]:
    """The framebuffer with ``rect`` decoded into it, and each read the decoder asked for."""
    needs: list[int] = []
    return decode_into_framebuffer(Encoding.RAW, rect, codec, data, needs), needs


@pytest.mark.parametrize("fmt", ["native", "rgb565", "bgr233"])
@pytest.mark.parametrize("band", [1, 300, 1000, 10**6])
def test_raw_arrives_in_bands_of_whole_rows(
    monkeypatch: pytest.MonkeyPatch, fmt: str, band: int
) -> None:
    codec = PixelCodec(FORMATS[fmt])
    monkeypatch.setattr(raw, "BAND_BYTES", band)
    rect = Rect(5, 2, 67, 31)
    data = np.random.default_rng(9).bytes(rect.area * codec.bytes_per_pixel)
    framebuffer, needs = needs_of(rect, codec, data)
    row = rect.w * codec.bytes_per_pixel
    assert sum(needs) == len(data)
    assert all(need % row == 0 and need <= max(band, row) for need in needs)
    assert len(needs) == -(-rect.h // max(1, band // row))
    np.testing.assert_array_equal(
        framebuffer[2:33, 5:72], decode_all(Encoding.RAW, rect, codec, data)
    )
    outside = framebuffer.copy()
    outside[2:33, 5:72] = 0xABCDEF
    assert np.all(outside == 0xABCDEF)


def test_an_empty_raw_rectangle_reads_nothing() -> None:
    for rect in (Rect(0, 0, 0, 5), Rect(0, 0, 5, 0)):
        framebuffer, needs = needs_of(rect, PixelCodec(RGB565), b"")
        assert needs == [] and np.all(framebuffer == 0xABCDEF)


def test_a_full_screen_is_read_a_quarter_megabyte_at_a_time() -> None:
    codec = PixelCodec(NATIVE)
    rect = Rect(0, 0, 1920, 1080)
    framebuffer = np.zeros((1080, 1920), dtype=np.uint32)
    pixels = np.random.default_rng(3).integers(0, 1 << 24, (1080, 1920), dtype=np.uint32)
    data = codec.to_wire(pixels)
    gen = make_decoder(Encoding.RAW).decode_into(rect, codec, framebuffer)
    needs, offset = [next(gen)], 0
    with pytest.raises(StopIteration):
        while True:
            chunk = data[offset : offset + needs[-1]]
            offset += len(chunk)
            needs.append(gen.send(chunk))
    assert offset == len(data) and max(needs) <= 256 * 1024
    np.testing.assert_array_equal(framebuffer, pixels)
