"""The benchmark run: every content through every row, thinserve then Xvnc.

Needs the asyncio reactor installed before it is imported (see __main__).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

import numpy as np
from twisted.internet import threads

from .content import make_content
from .encodings import (
    ROWS,
    Row,
    decode_update,
    measure_own,
    median_seconds,
    mpix_per_second,
    psnr,
)
from .options import Options
from .peer import LastByte, capture_update, screen_pixels, share_by_encoding, time_last_byte
from .report import ContentResult, PeerResult, RowResult
from .xvnc import Xvnc, XvncError

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def last_byte_times(port: int, row: Row, repetitions: int) -> list[LastByte]:
    """Request-to-last-byte captures on fresh connections, after one warm-up."""
    await threads.deferToThread(time_last_byte, port, row)
    return [await threads.deferToThread(time_last_byte, port, row) for _ in range(repetitions)]


async def measure_peer(xvnc: Xvnc, frame: np.ndarray, row: Row, repetitions: int) -> PeerResult:
    """Xvnc's bytes, request-to-decoded and request-to-last-byte times, our decode of it."""
    height, width = frame.shape
    await capture_update(xvnc.port, row)  # warm-up
    captures = [await capture_update(xvnc.port, row) for _ in range(repetitions)]
    arrivals = await last_byte_times(xvnc.port, row, repetitions)
    first = captures[0]
    decode_s = median_seconds(
        lambda: decode_update(width, height, row, first.message).seconds, repetitions
    )
    last_byte_s = statistics.median(a.seconds for a in arrivals)
    assert first.update is not None
    return PeerResult(
        frame_bytes=int(statistics.median(len(c.message) for c in captures)),
        request_ms=statistics.median(c.seconds for c in captures) * 1000.0,
        last_byte_ms=last_byte_s * 1000.0,
        encode_mpix_bound=mpix_per_second(frame.size, last_byte_s),
        unhindered=all(a.unhindered for a in arrivals),
        decode_mpix=mpix_per_second(frame.size, decode_s),
        psnr=psnr(first.framebuffer, frame),
        shares=share_by_encoding(first.update),
    )


async def put_on_screen(xvnc: Xvnc, frame: np.ndarray) -> None:
    """Draw the frame on Xvnc and check, through a Raw capture, that it is there."""
    xvnc.draw(frame)
    pixels = await screen_pixels(xvnc.port)
    if not np.array_equal(pixels, frame):
        differ = int(np.count_nonzero(pixels != frame))
        raise XvncError(f"Xvnc's screen differs from the content in {differ} pixels")


async def measure_content(
    name: str, options: Options, xvnc: Xvnc | None, progress: Progress
) -> ContentResult:
    progress(f"[{name}] generating {options.width}x{options.height} content")
    frame = make_content(name, options.width, options.height)
    results = []
    for row in ROWS:
        progress(f"[{name}] thinserve {row.name}")
        results.append(RowResult(row, measure_own(frame, row, options.repetitions), None))
    if xvnc is None:
        return ContentResult(name, results)
    progress(f"[{name}] Xvnc: drawing the content and checking it with a Raw capture")
    await put_on_screen(xvnc, frame)
    for i, result in enumerate(results):
        if not result.row.xvnc_offers:
            continue
        progress(f"[{name}] Xvnc {result.row.name}")
        peer = await measure_peer(xvnc, frame, result.row, options.repetitions)
        results[i] = RowResult(result.row, result.own, peer)
    return ContentResult(name, results)


async def run(options: Options, progress: Progress = stderr_progress) -> list[ContentResult]:
    xvnc = Xvnc(options.width, options.height) if options.xvnc else None
    try:
        if xvnc is not None:
            progress(f"starting Xvnc {options.width}x{options.height} on loopback")
            xvnc.start()
            progress(f"Xvnc on display :{xvnc.display_number}, port {xvnc.port}")
        return [await measure_content(n, options, xvnc, progress) for n in options.contents]
    finally:
        if xvnc is not None:
            xvnc.stop()
