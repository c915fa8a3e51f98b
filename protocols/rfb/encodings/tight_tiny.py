"""Tight's choice for tiny rectangles (a typed character, a cursor cell), in plain Python.

Below ``JPEG_MIN_AREA`` pixels neither JPEG nor the gradient filter
applies, so a rectangle is a fill, a palette or full colour; up to
``TINY_AREA`` a fill or a palette the general path would also choose is
made here, and the rest is left to it.  On a few hundred pixels, Python
ints pick and write that without the dozen numpy calls of the general
path.  Those are cheap in a loop, but a keystroke usually wakes an idle
server whose caches hold nothing of them, and there each costs tens of
microseconds: the two rectangles of a typed character (its cell and the
status bar's digits) took 0.60 ms after 50 ms idle, and take 0.38 ms here
(0.09 and 0.10 ms when warm).

Only where wire values are the pixels themselves and TPIXELs are their
R, G, B bytes (32 bits a pixel, 24-bit depth, red at bit 16: what viewers
ask for); elsewhere the general path runs.  The bytes are the general
path's: palettes in ascending value, a two-colour palette packed a bit a
pixel, most significant first, each row padded to a byte.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..pixelformat import PixelCodec
from .base import pack_index_rows
from .tight_select import JPEG_MIN_AREA, TightSettings
from .tight_wire import FILL, FILTER_PALETTE, STREAM_FULL, STREAM_INDEXED, STREAM_MONO

# Rectangles below this many pixels; from JPEG_MIN_AREA on only fills and
# palettes.  A typed character's cell with the cursor's beside it (360-420
# pixels, glyph-like, 2-4 colours) took 126-127 us here after a cache sweep
# against 181-237 us on the general path, and 35-36 us warm against 24; at
# 600 pixels 129 against 234 cold but 68 against 28 warm.
TINY_AREA = 512


class Filtered(NamedTuple):
    """Data for Tight's basic compression: the stream, filter header, data and zlib level."""

    stream: int
    header: bytes
    data: bytes
    level: int


def tiny_rectangle(
    pixels: np.ndarray, codec: PixelCodec, settings: TightSettings
) -> bytes | Filtered | None:
    """A fill's whole payload, or the filtered data of a palette or full
    colour; None where the general path is needed (larger rectangles,
    other pixel formats)."""
    if not 0 < pixels.size < TINY_AREA or not codec.words_are_rgb24:
        return None
    width = pixels.shape[1]
    values = pixels.ravel().tolist()
    colours = sorted(set(values))
    if colours[-1] > 0xFFFFFF:
        return None  # not 0x00RRGGBB: the general path masks what is above
    if len(colours) == 1:
        return bytes([FILL << 4]) + tpixel(colours[0])
    if pixels.size >= JPEG_MIN_AREA and _judged(len(colours), pixels.size, codec, settings):
        return None
    if len(colours) > settings.palette_limit(pixels.size, codec, False):
        data = b"".join([tpixel(value) for value in values])
        return Filtered(STREAM_FULL, b"", data, settings.full_zlib)
    table = b"".join([tpixel(colour) for colour in colours])
    header = bytes([FILTER_PALETTE, len(colours) - 1]) + table
    if len(colours) == 2:
        data = pack_index_rows([int(value == colours[1]) for value in values], width, 1)
        return Filtered(STREAM_MONO, header, data, settings.palette_zlib)
    place = {colour: i for i, colour in enumerate(colours)}
    data = bytes([place[value] for value in values])
    return Filtered(STREAM_INDEXED, header, data, settings.palette_zlib)


def _judged(colours: int, area: int, codec: PixelCodec, settings: TightSettings) -> bool:
    """Whether the general path must judge a rectangle large enough for
    JPEG: more colours than a palette takes there, where JPEG, the gradient
    filter or full colour may follow (a typed character's cell and the
    cursor's beside it, 360-420 pixels, are a palette here)."""
    return colours > min(
        settings.palette_limit(area, codec, False), settings.palette_cap(area, codec)
    )


def tpixel(value: int) -> bytes:
    """A 0x00RRGGBB pixel's TPIXEL: its R, G and B bytes."""
    return value.to_bytes(3, "big")
