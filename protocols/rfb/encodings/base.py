"""The shape every rectangle encoding shares.

Encoders turn a block of internal pixels (2-D ``uint32`` array, 0x00RRGGBB)
into the payload that follows a rectangle header.  Decoders are generators:
they yield the number of bytes they need next, receive exactly that many
bytes, and finally return the decoded pixels (or a :class:`CopyFrom`).  The
connection drives them, so a decoder never sees a socket and never needs all
of a rectangle's bytes at once.

Decoder generator protocol::

    gen = decoder.decode(rect, codec)
    need = next(gen)              # int, > 0, bounded by the decoder
    need = gen.send(chunk)        # chunk has exactly `need` bytes
    ...                           # StopIteration.value is the result

Encoders and decoders are per connection: stateful ones (zlib streams) keep
their state between rectangles, exactly as the peer's does.

Encoding is split in two so that many connections watching the same pixels
share the work: ``prepare`` does what depends only on the pixels, the pixel
format and ``settings_key`` (content analysis, JPEG, tile data), is pure and
may run in a worker thread; ``finish`` applies the connection's own stream
state (zlib) on the reactor thread, in wire order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Hashable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from ..errors import ProtocolError
from ..pixelformat import PixelCodec


class Rect(NamedTuple):
    """A rectangle of pixels: a tuple, so that making, comparing and hashing
    one (every update has several, for every terminal) costs little."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


@dataclass(frozen=True)
class CopyFrom:
    """Result of a CopyRect rectangle: copy from (src_x, src_y)."""

    src_x: int
    src_y: int


@dataclass(frozen=True)
class Ready:
    """A prepared rectangle that needs nothing more from the connection."""

    encoding: int
    payload: bytes


DecodeResult = np.ndarray | CopyFrom
DecodeGen = Generator[int, bytes, DecodeResult]


class Encoder(ABC):
    """What the server's rectangle planning and encoding ask of every encoder.

    The defaults fit an encoder without size limits, quality or compression
    settings.
    """

    encoding: ClassVar[int]
    # The largest rectangle the encoding can carry; 0 is no limit.  Limited
    # encoders get their rectangles split to fit, the others get full-width
    # bands of about band_pixels (0: the usual size, updates.BAND_PIXELS).
    max_width: ClassVar[int] = 0
    max_area: ClassVar[int] = 0
    band_pixels: ClassVar[int] = 0

    def encode(self, pixels: np.ndarray, codec: PixelCodec) -> bytes:
        """Payload for one rectangle of ``pixels`` (shape (h, w))."""
        return self.finish(self.prepare(pixels, codec), codec)[1]

    @abstractmethod
    def prepare(self, pixels: np.ndarray, codec: PixelCodec) -> object:
        """What depends only on ``pixels``, the format and ``settings_key()``.

        Pure and thread-safe: its result is shared between connections with
        equal keys and formats, and may be computed in a worker thread.
        """

    def finish(self, prepared: object, codec: PixelCodec) -> tuple[int, bytes]:
        """Per connection, in wire order: (encoding for the header, payload).

        The default fits stateless encoders, whose ``prepare`` is final.
        """
        assert isinstance(prepared, Ready), "a stateful encoder must override finish"
        return prepared.encoding, prepared.payload

    def settings_key(self) -> Hashable:
        """Besides the pixels and the pixel format, what decides ``prepare``."""
        return ()

    def finish_is_shared(self, prepared: object) -> bool:
        """Whether ``finish`` gives the same bytes on every connection (and
        changes nothing of this one's): a rectangle another connection can
        send as it is.  True of what ``prepare`` made final."""
        return isinstance(prepared, Ready)

    def share_streams(self, shared: bool) -> None:
        """Encode so that ``finish`` is shared wherever the encoding allows,
        at some cost in bytes (``shared``), or for this connection alone.
        Encoders without streams, or whose streams cannot restart, ignore it."""
        return

    def prefer_speed(self, quick: bool) -> None:
        """Spend fewer CPU cycles for some more bytes (``quick``: the link is
        fast), where the encoding has such a choice.  By default it is ignored."""
        return

    def configure(self, quality: int | None, compression: int | None) -> None:
        """Apply the peer's JPEG quality and compression level (0..9 or None).

        Most encodings have neither: by default both are ignored.
        """
        return


class StatelessEncoder(Encoder):
    """An encoder without stream state.

    A payload of its may be thrown away (for Raw, when Raw is smaller)
    without the peer's decoder noticing, so it may also say early that Raw
    is smaller.  Zlib-based encoders must never drop a payload: the peer's
    inflater would fall behind.
    """

    @abstractmethod
    def encode_unless_raw(self, pixels: np.ndarray, codec: PixelCodec) -> bytes | None:
        """The payload, or None when it is provably longer than Raw."""

    def prepare(self, pixels: np.ndarray, codec: PixelCodec) -> Ready:
        """This encoding's payload, or Raw where Raw is smaller."""
        payload = self.encode_unless_raw(pixels, codec)
        if payload is None or len(payload) > pixels.size * codec.bytes_per_pixel:
            return Ready(0, codec.to_wire(pixels))
        return Ready(self.encoding, payload)


class Decoder(ABC):
    """Per connection, like the peer's encoder: decodes rectangles of one encoding."""

    encoding: ClassVar[int]

    @abstractmethod
    def decode(self, rect: Rect, codec: PixelCodec) -> DecodeGen:
        """Generator decoding one rectangle; see the module docstring."""

    def decode_into(
        self, rect: Rect, codec: PixelCodec, target: np.ndarray
    ) -> Generator[int, bytes, CopyFrom | None]:
        """``decode``, with the pixels written into ``target`` (the
        rectangle's (h, w) view of a framebuffer); a CopyFrom is returned
        for the caller to carry out."""
        result = yield from self.decode(rect, codec)
        if isinstance(result, CopyFrom):
            return result
        target[:] = result
        return None


def read_exact(need: int) -> Generator[int, bytes, bytes]:
    """Sub-generator: ``data = yield from read_exact(n)``."""
    if need <= 0:
        return b""
    data = yield need
    if len(data) != need:
        raise ProtocolError("decoder was fed the wrong number of bytes")
    return data


def run_decoder(gen: DecodeGen, data: bytes) -> tuple[DecodeResult, int]:
    """Drive a decoder over a complete buffer; return (result, bytes used).

    Raises ProtocolError if the buffer ends before the decoder does.
    """
    offset = 0
    try:
        need = next(gen)
        while True:
            if offset + need > len(data):
                raise ProtocolError("rectangle data ends early")
            chunk = data[offset : offset + need]
            offset += need
            need = gen.send(chunk)
    except StopIteration as stop:
        return stop.value, offset


def pixels_result(pixels: np.ndarray, rect: Rect) -> np.ndarray:
    """Reshape decoded pixels to (h, w) uint32."""
    return np.asarray(pixels, dtype=np.uint32).reshape(rect.h, rect.w)


def pack_index_rows(indexes: list[int], width: int, bits: int) -> bytes:
    """Palette indexes, row after row in one list, packed ``bits`` to a pixel,
    most significant first, each row padded to a whole byte (Tight's mono
    rows, ZRLE's packed palettes), for the few pixels of a tiny rectangle."""
    row_bytes = (width * bits + 7) // 8
    pad = row_bytes * 8 - width * bits
    out = bytearray()
    for start in range(0, len(indexes), width):
        packed = 0
        for index in indexes[start : start + width]:
            packed = (packed << bits) | index
        out += (packed << pad).to_bytes(row_bytes, "big")
    return bytes(out)
