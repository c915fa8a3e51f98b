"""thinserve's side: encode a whole frame as its server would, decode it as its client.

Encoding goes through :class:`RectEncoder` (the server's per-rectangle choice
and splitting) with the client settings a viewer asking for one row's
encodings would produce; a fresh RectEncoder per repetition, so zlib streams
start fresh each time, as on a new connection.  The result is packed into a
FramebufferUpdate message, whose length is the "bytes per frame".

Decoding feeds that message to a fresh :class:`ClientConnection` (already
past its handshake, untimed) and stops the clock when it reports the
update applied to ``conn.framebuffer``: the whole client path, message
parsing included.  The same function decodes the bytes Xvnc sent.
"""

from __future__ import annotations

import math
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from protocols.rfb.client import ClientConnection, UpdateDone
from protocols.rfb.constants import Encoding, SecurityType, Version
from protocols.rfb.encodings import Rect
from protocols.rfb.messages import FramebufferUpdate, ServerInit
from protocols.rfb.pixelformat import NATIVE, PixelCodec
from protocols.rfb.updates import ClientSettings, RectEncoder

QUALITY_8 = Encoding.JPEG_QUALITY_0 + 8  # -24
QUALITY_5 = Encoding.JPEG_QUALITY_0 + 5  # -27
COMPRESS_2 = Encoding.COMPRESS_LEVEL_0 + 2  # -254


@dataclass(frozen=True)
class Row:
    """One table row: a name and the encodings a viewer lists in SetEncodings."""

    name: str
    encodings: tuple[int, ...]
    lossless: bool = True
    xvnc_offers: bool = True


ROWS: tuple[Row, ...] = (
    Row("Raw", (Encoding.RAW,)),
    Row("RRE", (Encoding.RRE,)),
    Row("Hextile", (Encoding.HEXTILE,)),
    Row("Zlib", (Encoding.ZLIB,), xvnc_offers=False),
    Row("ZRLE", (Encoding.ZRLE,)),
    Row("Tight lossless", (Encoding.TIGHT,)),
    Row("Tight JPEG q8", (Encoding.TIGHT, QUALITY_8, COMPRESS_2), lossless=False),
    Row("Tight JPEG q5", (Encoding.TIGHT, QUALITY_5, COMPRESS_2), lossless=False),
)


@dataclass(frozen=True)
class Decoded:
    """A decoded update: how long it took and what the client ended up with."""

    seconds: float
    framebuffer: np.ndarray
    update: UpdateDone


@dataclass(frozen=True)
class OwnResult:
    encode_mpix: float
    decode_mpix: float
    frame_bytes: int
    psnr: float  # of the decoded frame against the content; inf when exact


def psnr(decoded: np.ndarray, original: np.ndarray) -> float:
    """Peak signal-to-noise ratio over the 8-bit channels; inf when equal."""
    if np.array_equal(decoded, original):
        return math.inf
    shifts = np.array([16, 8, 0], dtype=np.uint32)
    a = ((decoded[..., None] >> shifts) & 255).astype(np.float64)
    b = ((original[..., None] >> shifts) & 255).astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    return 10.0 * math.log10(255.0**2 / mse)


def mpix_per_second(pixels: int, seconds: float) -> float:
    return pixels / 1e6 / max(seconds, 1e-9)


def median_seconds(run: Callable[[], float], repetitions: int) -> float:
    """Median of ``repetitions`` timings returned by ``run``, after one warm-up run."""
    run()
    return statistics.median(run() for _ in range(repetitions))


def encode_frame(frame: np.ndarray, row: Row) -> bytes:
    """The FramebufferUpdate thinserve's server sends for the whole frame."""
    encoder = RectEncoder()
    encoder.configure(ClientSettings.from_encodings(row.encodings))
    height, width = frame.shape
    rects = encoder.encode(frame, Rect(0, 0, width, height), PixelCodec(NATIVE))
    return FramebufferUpdate(rects).pack()


def ready_client(width: int, height: int, encodings: tuple[int, ...]) -> ClientConnection:
    """A ClientConnection past the handshake of a server like Xvnc's (depth 24).

    It is fed a 3.8 handshake with security type None and a ServerInit with
    thinserve's native pixel format, which is also Xvnc's at depth 24.
    """
    conn = ClientConnection()
    server_hello = (
        Version.V3_8.value
        + bytes([1, SecurityType.NONE])
        + struct.pack(">I", 0)
        + ServerInit(width, height, NATIVE, "bench").pack()
    )
    conn.receive_data(server_hello)
    conn.set_encodings(encodings)
    conn.data_to_send()
    return conn


def decode_update(width: int, height: int, row: Row, message: bytes) -> Decoded:
    """Feed one FramebufferUpdate to a fresh client; time until it is applied."""
    conn = ready_client(width, height, row.encodings)
    start = time.perf_counter()
    events = conn.receive_data(message)
    seconds = time.perf_counter() - start
    updates = [e for e in events if isinstance(e, UpdateDone)]
    if len(updates) != 1:
        raise RuntimeError(f"{row.name}: expected one update, got events {events!r}")
    return Decoded(seconds, conn.framebuffer, updates[0])


def measure_own(frame: np.ndarray, row: Row, repetitions: int) -> OwnResult:
    """thinserve encode and decode speed and bytes for one frame and row."""
    height, width = frame.shape
    latest = [b""]

    def encode_once() -> float:
        latest[0] = b""  # let the previous message go before timing the next
        start = time.perf_counter()
        latest[0] = encode_frame(frame, row)
        return time.perf_counter() - start

    encode_s = median_seconds(encode_once, repetitions)
    message = latest[0]
    decode_s = median_seconds(
        lambda: decode_update(width, height, row, message).seconds, repetitions
    )
    decoded = decode_update(width, height, row, message)
    return OwnResult(
        encode_mpix=mpix_per_second(frame.size, encode_s),
        decode_mpix=mpix_per_second(frame.size, decode_s),
        frame_bytes=len(message),
        psnr=psnr(decoded.framebuffer, frame),
    )
