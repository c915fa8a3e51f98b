"""Raw encoding: pixels in the peer's format, left to right, top to bottom."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..constants import Encoding
from ..pixelformat import PixelCodec
from .base import CopyFrom, DecodeGen, Decoder, Encoder, Ready, Rect, pixels_result, read_exact


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
        go straight into the framebuffer, with no temporary copy."""
        data = yield from read_exact(rect.area * codec.bytes_per_pixel)
        codec.wire_into(data, target)
        return None
