"""Tight encoding: Fill, JPEG, or zlib over copy, palette or gradient filters.

Wire format (rfbproto, Tight): a compression-control byte, then

* Fill: one TPIXEL for the whole rectangle;
* JPEG: compact length + a JFIF stream of the rectangle;
* Basic: [filter id] [palette], then the filtered data, as is when shorter
  than 12 bytes, else compact length + a sync-flushed chunk of one of four
  zlib streams that live as long as the connection.

Streams used here: 0 full colour, 1 mono palette, 2 indexed palette,
3 gradient filter.  The connection splits rectangles to at most
:attr:`TightEncoder.max_width` by :attr:`TightEncoder.max_area` pixels.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Hashable
from dataclasses import dataclass, replace

import numpy as np
import simplejpeg

from ..constants import Encoding
from ..errors import ProtocolError, require
from ..limits import DEFAULT_LIMITS, Limits
from ..pixelformat import PixelCodec, rgb_to_words
from .base import DecodeGen, Decoder, Encoder, Ready, Rect, pixels_result, read_exact
from .tight_gradient import (
    ChannelLayout,
    channels_to_pixels,
    channels_to_tpixels,
    gradient_allowed,
    gradient_filter,
    gradient_unfilter,
    pixel_channels,
    tpixel_channels,
)
from .tight_select import (
    Palette,
    TightSettings,
    content_tones,
    find_palette,
    photo_like,
    too_many_sampled,
)
from .tight_tiny import tiny_rectangle
from .tight_wire import (
    FILL,
    FILTER_COPY,
    FILTER_GRADIENT,
    FILTER_PALETTE,
    JPEG,
    MAX_AREA,
    MAX_COMPACT,
    MAX_WIDTH,
    MIN_TO_COMPRESS,
    READ_FILTER_BIT,
    RESET_MASK,
    STREAM_BITS,
    STREAM_FULL,
    STREAM_GRADIENT,
    STREAM_INDEXED,
    STREAM_MONO,
    DeflateStreams,
    InflateStreams,
    basic_control,
    deflate_bound,
    independent_chunk,
    pack_compact,
    read_compact,
)

# Filtered data of at least this many bytes is compressed once on a fresh
# zlib stream and shared (see ``independent_chunk``); less rides on the
# connection's stream, whose history pays on small rectangles (a glyph
# repeats one typed before).
INDEPENDENT_BYTES = 8 * 1024
# The gradient filter is judged only on rectangles of at least this many
# pixels: on a typed glyph the judging costs more time than the filter
# ever saves bytes (none, on every many-colour glyph of the probe screen).
GRADIENT_MIN_AREA = 1024


def tpixels_from_words(words: np.ndarray, codec: PixelCodec) -> bytes:
    """TPIXEL bytes for wire pixel values (as from ``codec.to_words``)."""
    if codec.tight_pixel_bytes == 3:
        return codec.pack_tpixels(codec.from_words(words))
    return np.asarray(words, dtype=np.uint32).astype(codec.pf.wire_dtype).tobytes()


class TightEncoder(Encoder):
    encoding = Encoding.TIGHT
    max_width = MAX_WIDTH
    max_area = MAX_AREA

    def __init__(self) -> None:
        self._settings = TightSettings()
        self._streams = DeflateStreams()

    def configure(self, quality: int | None, compression: int | None) -> None:
        old = self._settings
        self._settings = TightSettings.of(quality, compression, old.shared, old.quick)

    def prefer_speed(self, quick: bool) -> None:
        """Compress large chunks for time rather than bytes (``quick``): the
        link carries the extra bytes in less time than zlib saves (see
        ``TightSettings.large_zlib``)."""
        if quick != self._settings.quick:
            self._settings = replace(self._settings, quick=quick)

    def share_streams(self, shared: bool) -> None:
        """Send every zlib chunk on a fresh stream (``shared``), or small ones
        on the connection's streams again.

        Shared, no rectangle's bytes depend on this connection's streams, so
        an update encoded for one connection can go to others as it is.  The
        streams are forgotten on the way in: updates sent as copies never
        pass through them, and each is reset before its next use.
        """
        if shared != self._settings.shared:
            self._settings = replace(self._settings, shared=shared)
            if shared:
                self._streams.forget()

    def finish_is_shared(self, prepared: object) -> bool:
        if isinstance(prepared, Basic):
            return prepared.chunk is not None or len(prepared.data) < MIN_TO_COMPRESS
        return isinstance(prepared, Ready)

    def settings_key(self) -> Hashable:
        return self._settings

    def prepare(self, pixels: np.ndarray, codec: PixelCodec) -> Ready | Basic:
        """Fill or JPEG (final), or the filtered data for a zlib stream."""
        px = np.asarray(pixels, dtype=np.uint32)
        if px.ndim != 2 or px.shape[1] > self.max_width or px.size > self.max_area:
            raise ValueError(f"Tight rectangle of shape {px.shape} is too large or not 2-D")
        if px.size == 0:
            return _fill(np.zeros(1, np.uint32), codec)
        settings = self._settings
        tiny = tiny_rectangle(px, codec, settings)
        if isinstance(tiny, bytes):
            return Ready(self.encoding, tiny)
        if tiny is not None:
            return _basic(tiny.stream, tiny.header, tiny.data, settings, tiny.level)
        jpeg_ok = settings.jpeg_allowed(codec, px.size)
        gradient = gradient_allowed(codec)
        # The palette is capped only for rectangles that would otherwise go to
        # JPEG; screen content keeps its lossless palette.  The uncapped palette
        # is tried first: within the cap, judging the content changes nothing,
        # and beyond it the palette's runs measure the tones exactly.
        limit = settings.palette_limit(px.size, codec, False)
        palette = None
        if not too_many_sampled(px, codec, limit):
            palette = find_palette(codec.to_words(px), limit)
        if palette is not None and palette.colours.size == 1:
            return _fill(palette.colours, codec)
        capped = settings.palette_cap(px.size, codec)
        if palette is not None:
            if palette.colours.size <= capped or not (jpeg_ok and palette.many_tones()):
                return _palette(palette, codec, settings)
            return _jpeg(px, settings)
        if jpeg_ok:
            # Smooth content is also photo-like, so JPEG: the gradient
            # filter is never the choice here.
            if photo_like(px):
                return _jpeg(px, settings)
            return _full_colour(px, codec, settings, False)
        smooth = gradient and px.size >= GRADIENT_MIN_AREA and content_tones(px).smooth
        return _full_colour(px, codec, settings, smooth)

    def finish(self, prepared: object, codec: PixelCodec) -> tuple[int, bytes]:
        """Final rectangles as they are; filtered data through this connection's streams."""
        if isinstance(prepared, Ready):
            return prepared.encoding, prepared.payload
        assert isinstance(prepared, Basic)
        return self.encoding, self._basic(prepared)

    def _basic(self, basic: Basic) -> bytes:
        """Control byte, filter header, then the data raw or zlib-compressed."""
        if basic.chunk is not None:
            resets = self._streams.send_independent(basic.stream)
            body = pack_compact(len(basic.chunk)) + basic.chunk
        elif len(basic.data) < MIN_TO_COMPRESS:
            body, resets = basic.data, 0
        else:
            chunk, resets = self._streams.compress(basic.stream, basic.data, basic.level)
            body = pack_compact(len(chunk)) + chunk
        control = basic_control(basic.stream, bool(basic.header), resets)
        return bytes([control]) + basic.header + body


@dataclass(frozen=True)
class Basic:
    """A rectangle for Tight's basic compression: which stream, the filter
    header, the filtered data and the zlib level; large data comes instead
    already compressed, as a chunk of a fresh stream (``independent_chunk``)."""

    stream: int
    header: bytes
    data: bytes
    level: int
    chunk: bytes | None = None


def _basic(stream: int, header: bytes, data: bytes, settings: TightSettings, level: int) -> Basic:
    """Large data (any, when ``settings.shared``) is compressed here, once for
    every connection."""
    least = MIN_TO_COMPRESS if settings.shared else INDEPENDENT_BYTES
    if len(data) < least:
        return Basic(stream, header, data, level)
    if len(data) >= INDEPENDENT_BYTES:
        level = settings.large_zlib(level)
    return Basic(stream, header, b"", level, independent_chunk(data, level))


def _fill(colour: np.ndarray, codec: PixelCodec) -> Ready:
    return Ready(Encoding.TIGHT, bytes([FILL << 4]) + tpixels_from_words(colour, codec))


def _palette(palette: Palette, codec: PixelCodec, settings: TightSettings) -> Basic:
    colours = palette.colours
    header = bytes([FILTER_PALETTE, colours.size - 1]) + tpixels_from_words(colours, codec)
    if colours.size == 2:
        data = np.packbits(palette.indices(), axis=1).tobytes()
        return _basic(STREAM_MONO, header, data, settings, settings.palette_zlib)
    data = palette.indices().tobytes()
    return _basic(STREAM_INDEXED, header, data, settings, settings.palette_zlib)


def _full_colour(
    px: np.ndarray, codec: PixelCodec, settings: TightSettings, gradient: bool
) -> Basic:
    if gradient:
        layout = ChannelLayout.of(codec)
        residuals = gradient_filter(pixel_channels(px, codec, layout), layout.maxes)
        data = channels_to_tpixels(residuals, codec, layout)
        return _basic(STREAM_GRADIENT, bytes([FILTER_GRADIENT]), data, settings, settings.full_zlib)
    if codec.tight_pixel_bytes == 3:
        data = codec.pack_tpixels(px)
    else:
        data = tpixels_from_words(codec.to_words(px), codec)
    return _basic(STREAM_FULL, b"", data, settings, settings.full_zlib)


def _jpeg(px: np.ndarray, settings: TightSettings) -> Ready:
    quality, subsampling = settings.jpeg
    # The words' own bytes, no conversion: 0x00RRGGBB is B, G, R, 0 in
    # memory on little-endian machines and 0, R, G, B on big-endian ones.
    quads = np.ascontiguousarray(px, dtype=np.uint32).view(np.uint8)
    quads = quads.reshape(px.shape[0], px.shape[1], 4)
    layout = "BGRX" if sys.byteorder == "little" else "XRGB"
    data: bytes = simplejpeg.encode_jpeg(quads, quality, layout, subsampling)
    return Ready(Encoding.TIGHT, bytes([JPEG << 4]) + pack_compact(len(data)) + data)


class TightDecoder(Decoder):
    encoding = Encoding.TIGHT

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._streams = InflateStreams()

    def decode(self, rect: Rect, codec: PixelCodec) -> DecodeGen:
        control = (yield from read_exact(1))[0]
        self._streams.reset(control & RESET_MASK)
        method = control >> 4
        if method == FILL:
            tpixel = yield from read_exact(codec.tight_pixel_bytes)
            colour = codec.unpack_tpixels(tpixel, 1)[0]
            return np.full((rect.h, rect.w), colour, dtype=np.uint32)
        if method == JPEG:
            pixels = yield from self._jpeg(rect, codec)
        elif method & 0x8:
            raise ProtocolError(f"unknown Tight compression type {method:#x}")
        else:
            pixels = yield from self._basic(method, rect, codec)
        return pixels_result(pixels, rect)

    # -- BasicCompression ---------------------------------------------------
    def _basic(
        self, method: int, rect: Rect, codec: PixelCodec
    ) -> Generator[int, bytes, np.ndarray]:
        if rect.w > MAX_WIDTH:
            raise ProtocolError(f"Tight rectangle {rect.w} pixels wide exceeds {MAX_WIDTH}")
        stream = method & STREAM_BITS
        filter_id = FILTER_COPY
        if method & READ_FILTER_BIT:
            filter_id = (yield from read_exact(1))[0]
        if filter_id == FILTER_COPY:
            data = yield from self._data(stream, rect.area * codec.tight_pixel_bytes)
            return codec.unpack_tpixels(data, rect.area)
        if filter_id == FILTER_PALETTE:
            return (yield from self._palette(stream, rect, codec))
        if filter_id == FILTER_GRADIENT:
            return (yield from self._gradient(stream, rect, codec))
        raise ProtocolError(f"unknown Tight filter id {filter_id}")

    def _palette(
        self, stream: int, rect: Rect, codec: PixelCodec
    ) -> Generator[int, bytes, np.ndarray]:
        count = (yield from read_exact(1))[0] + 1
        tpixels = yield from read_exact(count * codec.tight_pixel_bytes)
        colours = codec.unpack_tpixels(tpixels, count)
        if count == 2:
            row_bytes = (rect.w + 7) // 8
            data = yield from self._data(stream, row_bytes * rect.h)
            packed = np.frombuffer(data, dtype=np.uint8).reshape(rect.h, row_bytes)
            return colours[np.unpackbits(packed, axis=1, count=rect.w)]
        data = yield from self._data(stream, rect.area)
        indices = np.frombuffer(data, dtype=np.uint8)
        if indices.size and int(indices.max()) >= count:
            raise ProtocolError(f"Tight palette index beyond the {count}-colour palette")
        return colours[indices]

    def _gradient(
        self, stream: int, rect: Rect, codec: PixelCodec
    ) -> Generator[int, bytes, np.ndarray]:
        require(
            gradient_allowed(codec), "Tight gradient filter needs a 16 or 32 bpp true-colour format"
        )
        data = yield from self._data(stream, rect.area * codec.tight_pixel_bytes)
        layout = ChannelLayout.of(codec)
        residuals = tpixel_channels(data, codec, layout, (rect.h, rect.w))
        return channels_to_pixels(gradient_unfilter(residuals, layout.maxes), codec, layout)

    def _data(self, stream: int, size: int) -> Generator[int, bytes, bytes]:
        """``size`` bytes of filtered data: raw when short, else inflated."""
        if size < MIN_TO_COMPRESS:
            return (yield from read_exact(size))
        bound = min(self._limits.max_compressed_rect, deflate_bound(size))
        length = yield from read_compact(bound)
        compressed = yield from read_exact(length)
        return self._streams.inflate(stream, compressed, size)

    # -- JpegCompression ----------------------------------------------------
    def _jpeg(self, rect: Rect, codec: PixelCodec) -> Generator[int, bytes, np.ndarray]:
        pf = codec.pf
        require(
            pf.true_colour and pf.bits_per_pixel in (16, 32),
            "Tight JPEG is only allowed for 16 or 32 bpp true-colour formats",
        )
        length = yield from read_compact(min(self._limits.max_compressed_rect, MAX_COMPACT))
        require(length > 0, "empty Tight JPEG data")
        data = yield from read_exact(length)
        pixels = rgb_to_words(decode_jpeg(data, rect))
        return pixels if codec.tight_pixel_bytes == 3 else codec.quantize(pixels)


def decode_jpeg(data: bytes, rect: Rect) -> np.ndarray:
    """(h, w, 3) RGB of a JFIF stream that must be exactly the rectangle's size."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except Exception as exc:  # the library raises several types
        raise ProtocolError(f"bad Tight JPEG data: {exc}") from None
    if (height, width) != (rect.h, rect.w):
        raise ProtocolError(f"Tight JPEG is {width}x{height}, the rectangle {rect.w}x{rect.h}")
    out = np.empty((rect.h, rect.w, 3), dtype=np.uint8)
    try:
        rgb: np.ndarray = simplejpeg.decode_jpeg(data, "RGB", buffer=out)
    except Exception as exc:
        raise ProtocolError(f"bad Tight JPEG data: {exc}") from None
    require(rgb.shape == out.shape, "Tight JPEG decoded to an unexpected shape")
    return rgb
