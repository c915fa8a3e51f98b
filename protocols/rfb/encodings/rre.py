"""RRE encoding: a background pixel and a list of one-colour subrectangles.

The subrectangle finder and painter here are vectorised and shared with
Hextile, which is RRE applied to 16x16 tiles.  Both work on wire pixel
values (``PixelCodec.to_words``), so what is compared and painted is exactly
what travels.
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..constants import Encoding
from ..errors import ProtocolError, require
from ..pixelformat import PixelCodec
from .base import DecodeGen, Decoder, Rect, StatelessEncoder, pixels_result, read_exact

_COUNT = struct.Struct(">I")
_BATCH = 1 << 16  # subrectangles read per yield
_SAMPLE = 1024  # pixels sampled when guessing the background


@dataclass(frozen=True)
class Subrects:
    """Subrectangles of one colour, grouped by the block they belong to."""

    block: np.ndarray
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray
    colour: np.ndarray

    def __len__(self) -> int:
        return int(self.block.size)


def find_subrects(
    blocks: np.ndarray, backgrounds: np.ndarray, masks: RunMasks | None = None
) -> Subrects:
    """Cover every non-background pixel of each block with one-colour rects.

    ``blocks`` has shape (n, height, width); ``backgrounds`` one value per
    block; ``masks`` are ``run_masks(blocks)`` when the caller has them.
    Horizontal runs are found per row; a run with the same x, width and
    colour as the run directly above it extends that run's rect
    downwards.  The result is grouped by block in increasing order.
    """
    b = np.ascontiguousarray(blocks)
    height, width = b.shape[1:]
    masks = masks or run_masks(b)
    length = _run_lengths(masks.starts)
    head = masks.starts & (b != np.asarray(backgrounds, dtype=b.dtype)[:, None, None])
    below = np.zeros(b.shape, dtype=bool)
    np.logical_and(head[:, 1:], head[:, :-1], out=below[:, 1:])
    below[:, 1:] &= masks.same_above[:, 1:]
    below[:, 1:] &= length[:, 1:] == length[:, :-1]
    # Column by column, a continuing run directly follows the run above it.
    index = np.flatnonzero(head.transpose(0, 2, 1))
    block, rest = np.divmod(index, width * height)
    x, y = np.divmod(rest, height)
    at = (block * height + y) * width + x
    fresh = ~below.reshape(-1)[at]
    heights = np.diff(np.flatnonzero(fresh), append=index.size)
    at = at[fresh]
    return Subrects(
        block[fresh], x[fresh], y[fresh], length.reshape(-1)[at], heights, b.reshape(-1)[at]
    )


@dataclass(frozen=True)
class RunMasks:
    """Per pixel of (n, height, width) blocks: run starts and likeness to the pixel above.

    A horizontal run starts in the first column and wherever a pixel
    differs from its left neighbour; no pixel of the first row is like
    the one above.
    """

    starts: np.ndarray
    same_above: np.ndarray

    def corners(self) -> np.ndarray:
        """Pixels unlike their left and upper neighbours (or on the edge).

        Such a pixel is the top-left corner of whichever one-colour rect
        covers it, so a cover of the non-background pixels needs at least
        one rect per non-background corner pixel.
        """
        corners: np.ndarray = self.starts & ~self.same_above
        return corners


def run_starts(blocks: np.ndarray) -> np.ndarray:
    """Where horizontal runs start in (n, height, width) blocks (see ``RunMasks``)."""
    n, height, width = blocks.shape
    flat = np.ascontiguousarray(blocks).reshape(n, height * width)
    starts: np.ndarray = np.empty(flat.shape, dtype=bool)
    np.not_equal(flat[:, 1:], flat[:, :-1], out=starts[:, 1:])
    starts = starts.reshape(blocks.shape)
    starts[:, :, 0] = True
    return starts


def run_masks(blocks: np.ndarray) -> RunMasks:
    """The run masks of (n, height, width) blocks, compared along each flat block."""
    blocks = np.ascontiguousarray(blocks)
    n, height, width = blocks.shape
    flat = blocks.reshape(n, height * width)
    starts = run_starts(blocks)
    same_above = np.empty(flat.shape, dtype=bool)
    same_above[:, :width] = False
    np.equal(flat[:, width:], flat[:, :-width], out=same_above[:, width:])
    return RunMasks(starts, same_above.reshape(blocks.shape))


def _run_lengths(starts: np.ndarray) -> np.ndarray:
    """Length of the horizontal run beginning at each start (0 elsewhere)."""
    at = np.flatnonzero(starts)
    dtype = np.uint8 if starts.shape[-1] < 256 else np.int32
    length = np.zeros(starts.shape, dtype=dtype)
    length.reshape(-1)[at] = np.diff(at, append=starts.size)
    return length


def most_common(words: np.ndarray, bits: int = 32) -> int:
    """The most frequent value in an array (the smallest one on ties).

    ``bits`` bounds the values (the wire pixel size): up to 16 bits a
    histogram answers directly.  Wider values are first tried against a
    sampled guess, which wins if it holds a strict majority or if a
    histogram of the low bits shows no other value can reach its count;
    only otherwise are the values sorted.
    """
    flat = words.reshape(-1)
    if bits <= 16:
        return int(np.argmax(_low_bits_histogram(flat, bits)))
    guess = _sample_mode(flat)
    count = int(np.count_nonzero(flat == guess))
    if 2 * count > flat.size or _unrivalled(flat, guess, count):
        return guess
    values, counts = np.unique(flat, return_counts=True)
    return int(values[np.argmax(counts)])


def _low_bits_histogram(flat: np.ndarray, bits: int) -> np.ndarray:
    """How many values share each pattern of their low 8 (or 16) bits."""
    low = flat.astype(np.uint8 if bits <= 8 else np.uint16)
    return np.bincount(low, minlength=1 << min(bits, 16))


def _sample_mode(flat: np.ndarray) -> int:
    """The most frequent value among about _SAMPLE evenly spaced ones."""
    sample = flat[:: max(1, flat.size // _SAMPLE)]
    values, counts = np.unique(sample, return_counts=True)
    return int(values[np.argmax(counts)])


def _unrivalled(flat: np.ndarray, value: int, count: int) -> bool:
    """Whether no other value can occur ``count`` times, judged by low 16 bits."""
    buckets = _low_bits_histogram(flat, 16)
    own = value & 0xFFFF
    rival = int(buckets[own]) - count
    buckets[own] = 0
    return count > max(rival, int(buckets.max()))


def corner_mask(words: np.ndarray) -> np.ndarray:
    """Pixels unlike their left and upper neighbours (see ``RunMasks.corners``)."""
    return run_masks(words.reshape(-1, *words.shape[-2:])).corners().reshape(words.shape)


def paint_subrects(
    out: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    colour: np.ndarray,
) -> None:
    """Fill out[y0:y1, x0:x1] = colour for each rect, later rects on top.

    Rects that overlap no other are painted at once with summed-area
    tables; only rects that overlap another are painted one by one, in
    order.  Coordinates must already lie inside ``out``.
    """
    if x0.size == 0:
        return
    ones = np.ones(x0.size, dtype=np.int32)
    cover = _accumulate(out.shape, x0, y0, x1, y1, ones)
    if int(cover.max()) <= 1:
        _paint_disjoint(out, x0, y0, x1, y1, colour, cover)
        return
    clash = _touches(cover > 1, x0, y0, x1, y1)
    alone = ~clash
    if alone.any():
        sx0, sy0, sx1, sy1 = (a[alone] for a in (x0, y0, x1, y1))
        solo_cover = _accumulate(out.shape, sx0, sy0, sx1, sy1, ones[alone])
        _paint_disjoint(out, sx0, sy0, sx1, sy1, colour[alone], solo_cover)
    for c, a, b, e, f in zip(
        colour[clash].tolist(),
        x0[clash].tolist(),
        y0[clash].tolist(),
        x1[clash].tolist(),
        y1[clash].tolist(),
        strict=True,
    ):
        out[b:f, a:e] = c


def _paint_disjoint(
    out: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    colour: np.ndarray,
    cover: np.ndarray,
) -> None:
    values = np.asarray(colour, dtype=np.uint32)
    total = _accumulate(out.shape, x0, y0, x1, y1, values)
    np.copyto(out, total, where=cover > 0)


def _accumulate(
    shape: tuple[int, ...],
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """Per pixel, the sum of ``values`` of the rects covering it.

    Uses a 2-D difference array; with uint32 values the arithmetic wraps,
    which is still exact wherever at most one rect covers a pixel.
    """
    h, w = shape
    diff = np.zeros((h + 1, w + 1), dtype=values.dtype)
    negated = np.negative(values)
    np.add.at(diff, (y0, x0), values)
    np.add.at(diff, (y0, x1), negated)
    np.add.at(diff, (y1, x0), negated)
    np.add.at(diff, (y1, x1), values)
    np.cumsum(diff, axis=0, out=diff)
    np.cumsum(diff, axis=1, out=diff)
    total: np.ndarray = diff[:h, :w]
    return total


def _touches(
    mask: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """Per rect, whether any pixel of ``mask`` lies inside it."""
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), dtype=np.int32)
    np.cumsum(mask, axis=0, dtype=np.int32, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    touched: np.ndarray = inside > 0
    return touched


def _subrect_dtype(codec: PixelCodec) -> np.dtype:
    return np.dtype(
        [
            ("colour", codec.pf.wire_dtype),
            ("x", ">u2"),
            ("y", ">u2"),
            ("w", ">u2"),
            ("h", ">u2"),
        ]
    )


def _pixel_bytes(word: int, codec: PixelCodec) -> bytes:
    return np.array([word], dtype=np.uint32).astype(codec.pf.wire_dtype).tobytes()


def rre_size(count: int, bpp: int) -> int:
    """Payload bytes of an RRE rectangle with ``count`` subrectangles."""
    return _COUNT.size + bpp + count * (bpp + 8)


def _most_of_one_value(words: np.ndarray) -> int:
    """An upper bound on how often any single value occurs in ``words``."""
    return int(_low_bits_histogram(words.reshape(-1), 8).max())


class RREEncoder(StatelessEncoder):
    """RRE payloads.

    ``encode_unless_raw`` first bounds the number of subrectangles from
    below by the non-background corner pixels (see :func:`corner_mask`);
    when even that bound makes the payload longer than Raw it answers None
    at once, without finding the subrectangles.
    """

    encoding = Encoding.RRE

    def encode(self, pixels: np.ndarray, codec: PixelCodec) -> bytes:
        """The RRE payload, whatever its size."""
        words = codec.to_words(pixels)
        if words.size == 0:
            return _COUNT.pack(0) + _pixel_bytes(0, codec)
        return _pack(words, most_common(words, 8 * codec.bytes_per_pixel), codec)

    def encode_unless_raw(self, pixels: np.ndarray, codec: PixelCodec) -> bytes | None:
        """The RRE payload, or None when it is provably longer than Raw."""
        words = codec.to_words(pixels)
        if words.size == 0:
            return _COUNT.pack(0) + _pixel_bytes(0, codec)
        bpp = codec.bytes_per_pixel
        raw_size = words.size * bpp
        masks = run_masks(words[np.newaxis])
        corner = masks.corners()[0]
        corners = int(np.count_nonzero(corner))
        many = rre_size(corners, bpp) > raw_size
        if many and rre_size(corners - _most_of_one_value(words), bpp) > raw_size:
            return None
        background = most_common(words, 8 * bpp)
        if many:
            background_corners = int(np.count_nonzero(corner & (words == background)))
            if rre_size(corners - background_corners, bpp) > raw_size:
                return None
        return _pack(words, background, codec, masks)


def _pack(
    words: np.ndarray, background: int, codec: PixelCodec, masks: RunMasks | None = None
) -> bytes:
    found = find_subrects(words[np.newaxis], np.array([background]), masks)
    records = np.empty(len(found), dtype=_subrect_dtype(codec))
    records["colour"] = found.colour
    records["x"] = found.x
    records["y"] = found.y
    records["w"] = found.w
    records["h"] = found.h
    header = _COUNT.pack(len(found)) + _pixel_bytes(background, codec)
    return header + records.tobytes()


class RREDecoder(Decoder):
    encoding = Encoding.RRE

    def decode(self, rect: Rect, codec: PixelCodec) -> DecodeGen:
        bpp = codec.bytes_per_pixel
        header = yield from read_exact(_COUNT.size + bpp)
        (count,) = _COUNT.unpack_from(header)
        if count > rect.area:
            raise ProtocolError(f"RRE announces {count} subrectangles for {rect.area} pixels")
        background = np.frombuffer(header, dtype=codec.pf.wire_dtype, offset=_COUNT.size)
        out = np.full((rect.h, rect.w), background[0], dtype=np.uint32)
        records = yield from _read_subrects(count, codec, rect)
        x = records["x"].astype(np.intp)
        y = records["y"].astype(np.intp)
        colour = records["colour"].astype(np.uint32)
        paint_subrects(out, x, y, x + records["w"], y + records["h"], colour)
        return pixels_result(codec.from_words(out), rect)


def _read_subrects(count: int, codec: PixelCodec, rect: Rect) -> Generator[int, bytes, np.ndarray]:
    """Read ``count`` subrectangle records in batches, checking each batch."""
    dtype = _subrect_dtype(codec)
    batches = []
    remaining = count
    while remaining > 0:
        take = min(remaining, _BATCH)
        data = yield from read_exact(take * dtype.itemsize)
        batch = np.frombuffer(data, dtype=dtype)
        _check_inside(batch, rect)
        batches.append(batch)
        remaining -= take
    if not batches:
        return np.empty(0, dtype=dtype)
    return np.concatenate(batches)


def _check_inside(batch: np.ndarray, rect: Rect) -> None:
    right = batch["x"].astype(np.int64) + batch["w"]
    bottom = batch["y"].astype(np.int64) + batch["h"]
    inside = (right <= rect.w) & (bottom <= rect.h)
    require(bool(inside.all()), "RRE subrectangle extends outside the rectangle")
