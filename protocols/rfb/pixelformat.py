"""Pixel formats and vectorised conversion to and from the internal framebuffer.

Inside thinserve every framebuffer is a 2-D numpy ``uint32`` array, one word
per pixel, holding ``0x00RRGGBB``.  A :class:`PixelCodec` converts such arrays
to a peer's wire pixel format and back, using lookup tables over whole arrays
(no per-pixel Python).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from .errors import ProtocolError, require

_PF_STRUCT = struct.Struct(">BBBBHHHBBB3x")
PIXEL_FORMAT_SIZE = _PF_STRUCT.size  # 16
# The internal pixels' colour bits, made once: a numpy scalar made for each
# rectangle costs a microsecond.
_RGB_MASK = np.uint32(0x00FFFFFF)


@dataclass(frozen=True)
class PixelFormat:
    bits_per_pixel: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255
    red_shift: int = 16
    green_shift: int = 8
    blue_shift: int = 0

    def pack(self) -> bytes:
        return _PF_STRUCT.pack(
            self.bits_per_pixel,
            self.depth,
            int(self.big_endian),
            int(self.true_colour),
            self.red_max,
            self.green_max,
            self.blue_max,
            self.red_shift,
            self.green_shift,
            self.blue_shift,
        )

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        """Parse and validate the 16-byte wire form; ProtocolError if unusable."""
        require(len(data) == PIXEL_FORMAT_SIZE, "pixel format must be 16 bytes")
        bpp, depth, be, tc, rmax, gmax, bmax, rs, gs, bs = _PF_STRUCT.unpack(data)
        pf = cls(bpp, depth, bool(be), bool(tc), rmax, gmax, bmax, rs, gs, bs)
        pf.validate()
        return pf

    def validate(self) -> None:
        bpp = self.bits_per_pixel
        require(bpp in (8, 16, 32), f"unsupported bits-per-pixel {bpp}")
        require(1 <= self.depth <= bpp, f"depth {self.depth} does not fit {bpp} bpp")
        if not self.true_colour:
            require(bpp == 8, "colour-map pixel formats must be 8 bits per pixel")
            return
        for name, cmax, shift in self.channels:
            require(cmax > 0, f"{name}-max must be positive")
            require((cmax & (cmax + 1)) == 0, f"{name}-max {cmax} is not 2^n-1")
            require(
                shift + cmax.bit_length() <= bpp,
                f"{name} channel does not fit in {bpp} bits",
            )

    @property
    def channels(self) -> tuple[tuple[str, int, int], ...]:
        return (
            ("red", self.red_max, self.red_shift),
            ("green", self.green_max, self.green_shift),
            ("blue", self.blue_max, self.blue_shift),
        )

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    @property
    def is_native(self) -> bool:
        """True when the wire form equals the internal 0x00RRGGBB word."""
        return self == NATIVE and not self.big_endian

    @cached_property
    def wire_dtype(self) -> np.dtype:
        """Made once: a dtype made from its name costs 370 ns, and the
        desktop's every rectangle asks for it."""
        order = ">" if self.big_endian else "<"
        return np.dtype(f"{order}u{self.bytes_per_pixel}")


NATIVE = PixelFormat()
RGB565 = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
BGR233 = PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6)
COLOUR_MAP_8 = PixelFormat(8, 8, False, False, 0, 0, 0, 0, 0, 0)


def _default_colour_map() -> np.ndarray:
    """The 3-3-2 colour map thinserve offers to colour-map terminals."""
    idx = np.arange(256, dtype=np.uint32)
    r = ((idx >> 5) & 7) * 255 // 7
    g = ((idx >> 2) & 7) * 255 // 7
    b = (idx & 3) * 255 // 3
    return ((r << 16) | (g << 8) | b).astype(np.uint32)


DEFAULT_COLOUR_MAP = _default_colour_map()


def _to_wire_lut(cmax: int, shift: int) -> np.ndarray:
    """Map an 8-bit channel value to its scaled, shifted wire bits."""
    v = np.arange(256, dtype=np.uint32)
    return (((v * cmax + 127) // 255) << shift).astype(np.uint32)


def _from_wire_lut(cmax: int) -> np.ndarray:
    """Map a wire channel value 0..cmax to 8 bits."""
    v = np.arange(cmax + 1, dtype=np.uint32)
    return ((v * 255 + cmax // 2) // cmax).astype(np.uint32)


class PixelCodec:
    """Converts internal framebuffer pixels to one wire pixel format and back.

    ``colour_map`` (256 internal colours) is used only for colour-map
    formats; encoding to a colour-map format always uses the default 3-3-2
    map, which is what a thinserve server announces.
    """

    def __init__(self, pf: PixelFormat, colour_map: np.ndarray | None = None) -> None:
        pf.validate()
        self.pf = pf
        self.bytes_per_pixel = pf.bytes_per_pixel
        self.colour_map = DEFAULT_COLOUR_MAP if colour_map is None else colour_map

    # -- whole-pixel conversion ------------------------------------------
    def to_words(self, pixels: np.ndarray) -> np.ndarray:
        """Wire pixel values (as uint32, host order) for internal pixels."""
        px = np.asarray(pixels, dtype=np.uint32)
        if not self.pf.true_colour:
            return ((px >> 16) & 0xE0 | ((px >> 11) & 0x1C) | ((px >> 6) & 0x03)).astype(np.uint32)
        if self.pf.is_native or self._same_layout_as_native:
            low: np.ndarray = px & 0x00FFFFFF
            return low
        r_lut, g_lut, b_lut = self._to_luts
        words: np.ndarray = r_lut[(px >> 16) & 0xFF] | g_lut[(px >> 8) & 0xFF] | b_lut[px & 0xFF]
        return words

    def from_words(self, words: np.ndarray) -> np.ndarray:
        """Internal pixels for wire pixel values (uint32, host order)."""
        w = np.asarray(words, dtype=np.uint32)
        if not self.pf.true_colour:
            mapped: np.ndarray = self.colour_map[w & 0xFF]
            return mapped
        if self._same_layout_as_native:
            low: np.ndarray = w & 0x00FFFFFF
            return low
        pf = self.pf
        r_lut, g_lut, b_lut = self._from_luts
        r = r_lut[(w >> pf.red_shift) & pf.red_max]
        g = g_lut[(w >> pf.green_shift) & pf.green_max]
        b = b_lut[(w >> pf.blue_shift) & pf.blue_max]
        pixels: np.ndarray = (r << 16) | (g << 8) | b
        return pixels

    def to_wire(self, pixels: np.ndarray) -> bytes:
        """Wire bytes, row by row, for a 2-D (or 1-D) array of internal pixels."""
        return self.to_words(pixels).astype(self.pf.wire_dtype).tobytes()

    def from_wire(self, data: bytes | memoryview, count: int) -> np.ndarray:
        """``count`` internal pixels from wire bytes (1-D array)."""
        return self.from_words(self._wire_words(data, count))

    def wire_into(self, data: bytes | memoryview, target: np.ndarray) -> None:
        """Wire bytes straight into ``target``, a (h, w) view of a framebuffer.

        In the native layout the pixels are masked into place, with no
        whole-rectangle temporary: a full screen's would be 8 MB of fresh
        pages to fault in.
        """
        words = self._wire_words(data, target.size).reshape(target.shape)
        if self.pf.true_colour and self._same_layout_as_native:
            np.bitwise_and(words, _RGB_MASK, out=target)
        else:
            target[:] = self.from_words(words)

    def _wire_words(self, data: bytes | memoryview, count: int) -> np.ndarray:
        """The first ``count`` wire values of ``data``, which must hold them."""
        if len(data) < count * self.bytes_per_pixel:
            raise ProtocolError("pixel data shorter than announced")
        return np.frombuffer(data, dtype=self.pf.wire_dtype, count=count)

    def quantize(self, pixels: np.ndarray) -> np.ndarray:
        """What internal pixels look like after a trip through this format."""
        return self.from_words(self.to_words(pixels)).reshape(np.shape(pixels))

    # -- compressed pixels (ZRLE CPIXEL, Tight TPIXEL) --------------------
    @cached_property
    def zrle_cpixel_bytes(self) -> int:
        return 3 if self._cpixel_skip_byte is not None else self.bytes_per_pixel

    def pack_cpixels(self, pixels: np.ndarray) -> bytes:
        """ZRLE CPIXELs: the wire pixel with its unused byte dropped."""
        return self.pack_cpixel_words(self.to_words(pixels))

    def pack_cpixel_words(self, words: np.ndarray) -> bytes:
        """ZRLE CPIXELs of wire pixel values (as :meth:`to_words` gives them)."""
        wire = np.asarray(words).astype(self.pf.wire_dtype, copy=False).reshape(-1)
        skip = self._cpixel_skip_byte
        if skip is None:
            return wire.tobytes()
        # The three bytes kept are adjacent: copying them as one 3-byte item
        # per pixel is several times faster than picking bytes.
        offset = 1 if skip == 0 else 0
        kept = np.dtype({"names": ["c"], "formats": ["V3"], "offsets": [offset], "itemsize": 4})
        return wire.view(kept)["c"].tobytes()

    def unpack_cpixels(self, data: bytes | memoryview, count: int) -> np.ndarray:
        skip = self._cpixel_skip_byte
        if skip is None:
            return self.from_wire(data, count)
        if len(data) < count * 3:
            raise ProtocolError("pixel data shorter than announced")
        raw = np.frombuffer(data, dtype=np.uint8, count=count * 3).reshape(-1, 3)
        full = np.zeros((count, 4), dtype=np.uint8)
        full[:, [i for i in range(4) if i != skip]] = raw
        return self.from_wire(full.tobytes(), count)

    @cached_property
    def tight_pixel_bytes(self) -> int:
        return 3 if self._tight_rgb24 else self.bytes_per_pixel

    def pack_tpixels(self, pixels: np.ndarray) -> bytes:
        """Tight TPIXELs: R, G, B bytes for 24-bit depth, else wire pixels."""
        if not self._tight_rgb24:
            return self.to_wire(pixels)
        px = np.asarray(pixels, dtype=np.uint32).reshape(-1)
        rgb = np.empty((px.size, 3), dtype=np.uint8)
        rgb[:, 0] = px >> 16
        rgb[:, 1] = px >> 8
        rgb[:, 2] = px
        return rgb.tobytes()

    def unpack_tpixels(self, data: bytes | memoryview, count: int) -> np.ndarray:
        if not self._tight_rgb24:
            return self.from_wire(data, count)
        if len(data) < count * 3:
            raise ProtocolError("pixel data shorter than announced")
        rgb = np.frombuffer(data, dtype=np.uint8, count=count * 3).reshape(-1, 3)
        return rgb_to_words(rgb)

    # -- helpers ------------------------------------------------------------
    @cached_property
    def words_are_rgb24(self) -> bool:
        """Wire values are the internal 0x00RRGGBB pixels and Tight's TPIXELs
        their R, G, B bytes (32 bits, 24-bit depth, the usual layout)."""
        return self._tight_rgb24 and (self.pf.is_native or self._same_layout_as_native)

    @cached_property
    def cpixel_byteorder(self) -> Literal["little", "big"] | None:
        """Where wire values are the internal 0x00RRGGBB pixels and a ZRLE
        CPIXEL is three bytes: the byte order that writes a pixel's CPIXEL
        with ``int.to_bytes(3, ...)``; else None."""
        if not self._same_layout_as_native or self._cpixel_skip_byte is None:
            return None
        return "big" if self.pf.big_endian else "little"

    @cached_property
    def _same_layout_as_native(self) -> bool:
        pf = self.pf
        return (
            pf.true_colour
            and pf.bits_per_pixel == 32
            and (pf.red_max, pf.green_max, pf.blue_max) == (255, 255, 255)
            and (pf.red_shift, pf.green_shift, pf.blue_shift) == (16, 8, 0)
        )

    @cached_property
    def _to_luts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        red, green, blue = (_to_wire_lut(cmax, shift) for _, cmax, shift in self.pf.channels)
        return red, green, blue

    @cached_property
    def _from_luts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        red, green, blue = (_from_wire_lut(cmax) for _, cmax, _ in self.pf.channels)
        return red, green, blue

    @cached_property
    def _tight_rgb24(self) -> bool:
        pf = self.pf
        return (
            pf.true_colour
            and pf.bits_per_pixel == 32
            and pf.depth == 24
            and (pf.red_max, pf.green_max, pf.blue_max) == (255, 255, 255)
        )

    @cached_property
    def _cpixel_skip_byte(self) -> int | None:
        """Index (in wire byte order) of the byte a ZRLE CPIXEL leaves out."""
        pf = self.pf
        if not (pf.true_colour and pf.bits_per_pixel == 32 and pf.depth <= 24):
            return None
        used = 0
        for _, cmax, shift in pf.channels:
            used |= cmax << shift
        if used < (1 << 24):  # fits in the least significant three bytes
            return 0 if pf.big_endian else 3
        if used & 0xFF == 0:  # fits in the most significant three bytes
            return 3 if pf.big_endian else 0
        return None


def rgb_to_words(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) or (H, W, 3) uint8 RGB to internal 0x00RRGGBB words."""
    rgb = rgb.astype(np.uint32)
    words: np.ndarray = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return words


def words_to_rgb(words: np.ndarray) -> np.ndarray:
    """Internal words to uint8 RGB with a trailing axis of 3."""
    w = np.asarray(words, dtype=np.uint32)
    out = np.empty((*w.shape, 3), dtype=np.uint8)
    out[..., 0] = w >> 16
    out[..., 1] = w >> 8
    out[..., 2] = w
    return out
