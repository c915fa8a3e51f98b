"""Raw encoding: pixels in the peer's format, left to right, top to bottom."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..constants import Encoding
from ..pixelformat import PixelCodec
from .base import CopyFrom, DecodeGen, Decoder, Encoder, Ready, Rect, pixels_result, read_exact

# Raw pixels are taken in bands of about this many bytes (see decode_into).
BAND_BYTES = 256 * 1024


class RawEncoder(Encoder):
    encoding = Encoding.RAW

    def prepare(self, pixels: np.ndarray, codec: PixelCodec) -> Ready:
        return Ready(self.encoding, codec.to_wire(pixels))


class RawDecoder(Decoder):
    encoding = Encoding.RAW

    def decode(self, rect: Rect, codec: PixelCodec) -> DecodeGen:
        data = yield from read_exact(rect.area * codec.bytes_per_pixel)
        return pixels_result(codec.from_wire(data, rect.area), rect)

    def decode_into(
        self, rect: Rect, codec: PixelCodec, target: np.ndarray
    ) -> Generator[int, bytes, CopyFrom | None]:
        """The desktop's own pixels (thinserve asks local desktops for Raw)
        go straight into the framebuffer, band by band as they arrive.

        Bands of about BAND_BYTES: a whole screen read at once would be held
        whole by the stream driver and then copied (8 MB twice at 1920x1080,
        33 MB twice at 3840x2160); a band's buffers are small, the heap's.
        """
        row_bytes = rect.w * codec.bytes_per_pixel
        rows = max(1, BAND_BYTES // max(row_bytes, 1))
        if rows >= rect.h:  # one band, as a typed character's: no view of a view
            codec.wire_into((yield from read_exact(rect.h * row_bytes)), target)
            return None
        for top in range(0, rect.h, rows):
            band = target[top : top + rows]
            codec.wire_into((yield from read_exact(band.shape[0] * row_bytes)), band)
        return None
