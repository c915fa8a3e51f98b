"""CopyRect encoding: the rectangle repeats pixels found at (src_x, src_y)."""

from __future__ import annotations

import struct

import numpy as np

from ..constants import Encoding
from ..pixelformat import PixelCodec
from .base import CopyFrom, DecodeGen, Decoder, Encoder, Rect, read_exact

_SOURCE = struct.Struct(">HH")


class CopyRectEncoder(Encoder):
    encoding = Encoding.COPYRECT

    def prepare(self, pixels: np.ndarray, codec: PixelCodec) -> object:
        raise TypeError("CopyRect carries no pixels; use encode_copy(src_x, src_y)")

    def encode_copy(self, src_x: int, src_y: int) -> bytes:
        return _SOURCE.pack(src_x, src_y)


class CopyRectDecoder(Decoder):
    encoding = Encoding.COPYRECT

    def decode(self, rect: Rect, codec: PixelCodec) -> DecodeGen:
        data = yield from read_exact(_SOURCE.size)
        src_x, src_y = _SOURCE.unpack(data)
        return CopyFrom(src_x, src_y)
