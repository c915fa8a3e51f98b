"""CopyRect encoding: the rectangle repeats pixels found at (src_x, src_y)."""

from __future__ import annotations

import struct

import numpy as np

from ..constants import Encoding
from ..pixelformat import PixelCodec
from .base import CopyFrom, DecodeGen, Decoder, Encoder, Rect, read_exact

_SOURCE = struct.Struct(">HH")
BAND_ROWS = 64  # rows copied at a time: numpy's temporary for a band's own overlap stays small


def copy_within(fb: np.ndarray, dest: Rect, src_x: int, src_y: int) -> None:
    """Give ``dest`` of ``fb`` the pixels at (src_x, src_y) as they were
    before, source and destination overlapping or not.

    Copied in bands of rows, in the order that reads every source row
    before any band writes it: upwards when the source lies above.  A
    band's overlap with its own source takes a temporary of the band
    only; the whole rectangle's (a scrolled page: 5 MB of fresh pages to
    fault in) would take 3-4 times as long.
    """
    x, y, w, h = dest
    step = max(BAND_ROWS, abs(src_y - y))
    tops = range(0, h, step)
    for top in reversed(tops) if src_y < y else tops:
        rows = min(step, h - top)
        fb[y + top : y + top + rows, x : x + w] = fb[
            src_y + top : src_y + top + rows, src_x : src_x + w
        ]


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
