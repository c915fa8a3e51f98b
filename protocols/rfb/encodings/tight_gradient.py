"""Tight's gradient filter, and pixels as per-channel intensities.

The filter predicts each colour component from its left, upper and
upper-left neighbours (``left + up - upper_left`` clamped to ``0..max``,
zero outside the rectangle) and sends the difference modulo ``max + 1``.
Components are the TPIXEL's R, G, B bytes for 24-bit formats, otherwise the
channels of the client's pixel format (for RGB565: 5, 6 and 5 bits).

Filtering is one vectorised pass.  Undoing it is sequential, since each
pixel needs its reconstructed left neighbour, so the decoder goes row by
row.  Where the clamp does not bite, a row is a running sum modulo
``max + 1`` (one ``cumsum``); the first pixel where the clamp does bite is
computed on its own and the sum restarts after it.  Photographs clamp a few
times per row at most.  Content that clamps often (possible from any peer)
exceeds a budget and is finished by sweeping anti-diagonals instead: every
pixel with the same ``row + column`` depends only on the two previous
anti-diagonals, so each is one numpy step, in bands of rows that bound the
memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..pixelformat import PixelCodec, rgb_to_words, words_to_rgb

BAND_CELLS = 1 << 19  # bound on (band rows + width) * band rows while decoding
MIN_WINDOW = 64  # fewest columns a running-sum pass covers after a clamp


@dataclass(frozen=True)
class ChannelLayout:
    """Where a TPIXEL's colour components live.

    ``shifts`` is None when TPIXELs are R, G, B bytes; otherwise the
    components are bit fields of the wire pixel value.
    """

    shifts: tuple[int, int, int] | None
    maxes: np.ndarray  # (3,) int32

    @classmethod
    def of(cls, codec: PixelCodec) -> ChannelLayout:
        if codec.tight_pixel_bytes == 3:
            return cls(None, np.full(3, 255, dtype=np.int32))
        pf = codec.pf
        shifts = (pf.red_shift, pf.green_shift, pf.blue_shift)
        maxes = np.array([pf.red_max, pf.green_max, pf.blue_max], dtype=np.int32)
        return cls(shifts, maxes)


def gradient_allowed(codec: PixelCodec) -> bool:
    """The spec allows the gradient filter for 16 and 32 bits per pixel only."""
    return codec.pf.true_colour and codec.pf.bits_per_pixel in (16, 32)


# -- pixels <-> channels ----------------------------------------------------
def pixel_channels(pixels: np.ndarray, codec: PixelCodec, layout: ChannelLayout) -> np.ndarray:
    """(h, w, 3) component values of internal pixels in the peer's format.

    uint8 for R, G, B TPIXELs, else int32.
    """
    if layout.shifts is None:
        return words_to_rgb(pixels)
    return _word_channels(codec.to_words(pixels), layout)


def channels_to_tpixels(channels: np.ndarray, codec: PixelCodec, layout: ChannelLayout) -> bytes:
    """TPIXEL bytes for (h, w, 3) component values."""
    if layout.shifts is None:
        return channels.astype(np.uint8).tobytes()
    return _channel_words(channels, layout).astype(codec.pf.wire_dtype).tobytes()


def tpixel_channels(
    data: bytes, codec: PixelCodec, layout: ChannelLayout, shape: tuple[int, int]
) -> np.ndarray:
    """(h, w, 3) int32 component values of TPIXEL bytes."""
    count = shape[0] * shape[1]
    if layout.shifts is None:
        raw = np.frombuffer(data, dtype=np.uint8, count=count * 3)
        return raw.reshape(*shape, 3).astype(np.int32)
    words = np.frombuffer(data, dtype=codec.pf.wire_dtype, count=count).astype(np.uint32)
    return _word_channels(words.reshape(shape), layout)


def channels_to_pixels(
    channels: np.ndarray, codec: PixelCodec, layout: ChannelLayout
) -> np.ndarray:
    """Internal pixels for (h, w, 3) component values."""
    if layout.shifts is None:
        return rgb_to_words(channels.astype(np.uint8))
    return codec.from_words(_channel_words(channels, layout))


def _word_channels(words: np.ndarray, layout: ChannelLayout) -> np.ndarray:
    assert layout.shifts is not None
    out = np.empty((*words.shape, 3), dtype=np.int32)
    for index, shift in enumerate(layout.shifts):
        out[..., index] = (words >> shift) & np.uint32(layout.maxes[index])
    return out


def _channel_words(channels: np.ndarray, layout: ChannelLayout) -> np.ndarray:
    assert layout.shifts is not None
    words = np.zeros(channels.shape[:-1], dtype=np.uint32)
    for index, shift in enumerate(layout.shifts):
        words |= channels[..., index].astype(np.uint32) << np.uint32(shift)
    return words


# -- the filter -------------------------------------------------------------
def gradient_filter(channels: np.ndarray, maxes: np.ndarray) -> np.ndarray:
    """Prediction residuals (h, w, 3), each modulo its channel's max + 1.

    ``channels`` may have any integer type that holds the components; the
    residuals have the same type.  Predictions are computed in the narrowest
    signed type that holds ``-max..2 * max``; the residual is a wrapping
    subtraction in the channels' type, masked, which is the same modulo a
    power of two.
    """
    values = channels.astype(np.int16 if int(maxes.max()) < 1 << 14 else np.int32)
    prediction = np.empty_like(values)
    prediction[0] = 0
    prediction[1:] = values[:-1]  # up
    prediction[:, 1:] += values[:, :-1]  # + left
    prediction[1:, 1:] -= values[:-1, :-1]  # - upper left
    _per_channel(np.clip, prediction, 0, maxes)
    residuals: np.ndarray = np.subtract(channels, prediction.astype(channels.dtype))
    _per_channel(np.bitwise_and, residuals, maxes)
    return residuals


def _per_channel(ufunc: Callable[..., np.ndarray], values: np.ndarray, *args: object) -> None:
    """``ufunc(values, *args, out=values)``, the last argument being per channel.

    numpy is many times faster with a scalar than with a broadcast (3,)
    array, so channels that share a max are done in one call.
    """
    *rest, maxes = args
    tops = [int(top) for top in np.asarray(maxes).reshape(-1)]
    if len(set(tops)) == 1:
        ufunc(values, *rest, tops[0], out=values)
        return
    for index, top in enumerate(tops):
        channel = values[..., index]
        ufunc(channel, *rest, top, out=channel)


def gradient_unfilter(residuals: np.ndarray, maxes: np.ndarray) -> np.ndarray:
    """Component values (h, w, 3) from gradient-filter residuals.

    Rows first, with a budget of running-sum passes (four per row and one
    per four columns); content that clamps more is finished by sweeping
    anti-diagonals, so the worst case stays a small multiple of a sweep.
    """
    residuals = np.asarray(residuals, dtype=np.int32)
    h, w, _ = residuals.shape
    planar = np.ascontiguousarray(residuals.transpose(0, 2, 1))  # (h, 3, w)
    out = np.empty_like(planar)
    above = np.zeros((3, w), dtype=np.int32)
    budget = 4 * h + w // 4 + 16
    for row in range(h):
        values, budget = _unfilter_row(planar[row], above, maxes[:, None], budget)
        if values is None:
            rest = _unfilter_diagonals(residuals[row:], np.ascontiguousarray(above.T), maxes)
            out[row:] = rest.transpose(0, 2, 1)
            break
        out[row] = above = values
    return out.transpose(0, 2, 1)


def _unfilter_row(
    residuals: np.ndarray, above: np.ndarray, maxes: np.ndarray, budget: int
) -> tuple[np.ndarray | None, int]:
    """(one row's values, passes left), or (None, 0) once the budget is spent.

    Arrays are (3, w).  Unclamped, value[j] = value[j-1] + (above[j] -
    above[j-1]) + residual[j] modulo max + 1: a running sum from the last
    exactly known value.  A negative int32 viewed as uint32 exceeds any
    max, so one comparison finds predictions clamped at either end.
    """
    w = residuals.shape[1]
    limit = maxes.astype(np.uint32)
    step = above.copy()
    step[:, 1:] -= above[:, :-1]
    increments = step + residuals
    out = np.empty_like(residuals)
    last = np.zeros((3, 1), dtype=np.int32)
    start, window = 0, w
    while start < w:
        if budget <= 0:
            return None, 0
        budget -= 1
        end = min(w, start + window)
        run = np.cumsum(increments[:, start:end], axis=1, dtype=np.int32)
        run += last
        run &= maxes
        unclamped = step[:, start:end].copy()
        unclamped[:, :1] += last
        unclamped[:, 1:] += run[:, :-1]
        over = unclamped.view(np.uint32) > limit
        clamped = over[0] | over[1] | over[2]
        first = int(np.argmax(clamped))
        if not clamped[first]:
            out[:, start:end] = run
            last = run[:, -1:]
            start, window = end, window * 4
            continue
        out[:, start : start + first] = run[:, :first]
        column = start + first
        predicted = np.clip(unclamped[:, first : first + 1], 0, maxes)
        last = (predicted + residuals[:, column : column + 1]) & maxes
        out[:, column : column + 1] = last
        start, window = column + 1, max(MIN_WINDOW, 4 * first)
    return out, budget


def _unfilter_diagonals(residuals: np.ndarray, above: np.ndarray, maxes: np.ndarray) -> np.ndarray:
    """Undo the filter in bands of rows, sweeping anti-diagonals."""
    h, w, _ = residuals.shape
    out = np.empty((h, w, 3), dtype=np.int32)
    rows = band_rows(w)
    for top in range(0, h, rows):
        band = _unfilter_band(residuals[top : top + rows], above, maxes)
        out[top : top + rows] = band
        above = band[-1]
    return out


def band_rows(width: int) -> int:
    """Rows decoded together so that (rows + width) * rows stays bounded."""
    rows = (math.isqrt(width * width + 4 * BAND_CELLS) - width) // 2
    return max(rows, 1)


def _unfilter_band(residuals: np.ndarray, above: np.ndarray, maxes: np.ndarray) -> np.ndarray:
    """Undo the filter for a band of rows whose upper neighbours are ``above``.

    ``diag[k + 2, i + 1]`` holds the pixel of row ``i`` on anti-diagonal
    ``k`` (column ``k - i``); index 0 along either axis is the zero or
    ``above`` border, so every step reads the two previous anti-diagonals.
    """
    h, w, _ = residuals.shape
    steps = h + w - 1
    row, col = np.indices((h, w))
    skewed = np.zeros((steps, h, 3), dtype=np.int32)
    skewed[row + col, row] = residuals
    diag = np.zeros((steps + 2, h + 1, 3), dtype=np.int32)
    diag[1 : w + 1, 0] = above
    add, sub, floor, ceil, mask = np.add, np.subtract, np.maximum, np.minimum, np.bitwise_and
    for k in range(steps):
        lo = max(0, k - w + 1)
        hi = min(h, k + 1)
        value = diag[k + 2, lo + 1 : hi + 1]
        add(diag[k + 1, lo + 1 : hi + 1], diag[k + 1, lo:hi], out=value)
        sub(value, diag[k, lo:hi], out=value)
        floor(value, 0, out=value)
        ceil(value, maxes, out=value)
        add(value, skewed[k, lo:hi], out=value)
        mask(value, maxes, out=value)
    channels: np.ndarray = diag[row + col + 2, row + 1]
    return channels
