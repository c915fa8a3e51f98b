"""How the Tight encoder picks a method for a rectangle, and its tunables.

The choice follows the content, as established Tight servers do:

* one colour: Fill;
* two colours: a 1-bit palette;
* a few colours (up to a limit that grows with the area and the compression
  level, and shrinks when JPEG is available): an 8-bit palette;
* many colours in many tones (photos, video, noise), with a JPEG quality
  level set and a pixel format the spec allows JPEG for: JPEG;
* otherwise full colour: gradient filter for smooth content, plain copy else.

Both are judged on sampled rows.  "Many tones": few pixels repeat their left
neighbour (screen content, anti-aliased text included, is mostly flat runs
that zlib handles best, and stays lossless).  "Smooth", where the gradient
filter pays: the gradient predictor also guesses the pixels reasonably (mean
squared error per 8-bit component), which rules out noise.  A terminal that
set a JPEG quality level accepts loss on many-tone content, noise included,
as other Tight servers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..pixelformat import PixelCodec, words_to_rgb

DEFAULT_COMPRESSION = 2
# JPEG quality and chroma subsampling per quality level 0..9 (the levels
# TigerVNC-class servers use, so a viewer's setting means the same here).
JPEG_LEVELS: tuple[tuple[int, str], ...] = (
    (15, "420"),
    (29, "420"),
    (41, "420"),
    (42, "422"),
    (62, "422"),
    (77, "422"),
    (79, "444"),
    (86, "444"),
    (92, "444"),
    (100, "444"),
)
# zlib level per compression level 0..9, for full-colour and palette data.
FULL_ZLIB = (1, 1, 2, 3, 4, 5, 6, 6, 7, 9)
PALETTE_ZLIB = (1, 2, 3, 5, 6, 7, 8, 9, 9, 9)
# On a link fast enough that time matters more than bytes (``quick``), large
# zlib chunks of a peer that asked for compression up to QUICK_UP_TO use
# level QUICK_ZLIB: on whole screens of text and windows zlib takes half the
# time and the bytes grow by about a third.
QUICK_ZLIB = 1
QUICK_UP_TO = 2
# An 8-bit palette is used for at most area / divisor colours (and 256).
PALETTE_DIVISOR = (16, 12, 8, 8, 6, 6, 4, 4, 4, 4)
MAX_PALETTE = 256
# With JPEG available, rectangles with more colours than this go to JPEG.
JPEG_PALETTE_CAP_FAST = 24  # compression levels 0 and 1
JPEG_PALETTE_CAP = 96
JPEG_MIN_AREA = 256  # smaller rectangles cost less than a JPEG header losslessly
PHOTO_MAX_REPEATS = 0.5  # share of pixels equal to their left neighbour
PHOTO_MAX_ROUGHNESS = 2500.0  # mean squared prediction error, 8-bit components
SAMPLE_ROWS = 32  # rows sampled to judge the content
SAMPLE_PIXELS = 4096  # ... fewer on wide rectangles, about this many pixels
PALETTE_SAMPLE = 4096  # values sampled to reject many-colour rectangles early
SMALL_PALETTE_PIXELS = 2048  # blocks up to this size get their palette in one sort
RUN_SAMPLE = 1024  # run values whose colours make the first lookup table
# Palette indices: a table of 2**HASH_BITS slots, keyed by the top bits of the
# colour times one of these odd constants (multiplicative hashing).
HASH_BITS = 16
HASH_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)
_HASH_SHIFT = np.uint32(32 - HASH_BITS)


@dataclass(frozen=True)
class TightSettings:
    """What the peer asked for: JPEG quality level and compression level."""

    quality: int | None = None
    compression: int = DEFAULT_COMPRESSION
    # Every zlib chunk on a fresh stream, so a rectangle's bytes are the same
    # on every connection that sends it (TightEncoder.share_streams).
    shared: bool = False
    # The link is fast: large chunks trade bytes for time (TightEncoder.prefer_speed).
    quick: bool = False

    @classmethod
    def of(
        cls, quality: int | None, compression: int | None, shared: bool = False, quick: bool = False
    ) -> TightSettings:
        level = DEFAULT_COMPRESSION if compression is None else _level(compression)
        return cls(None if quality is None else _level(quality), level, shared, quick)

    def large_zlib(self, level: int) -> int:
        """The zlib level for a large chunk that would otherwise get ``level``."""
        if self.quick and self.compression <= QUICK_UP_TO:
            return min(level, QUICK_ZLIB)
        return level

    @property
    def full_zlib(self) -> int:
        return FULL_ZLIB[self.compression]

    @property
    def palette_zlib(self) -> int:
        return PALETTE_ZLIB[self.compression]

    @property
    def jpeg(self) -> tuple[int, str]:
        assert self.quality is not None
        return JPEG_LEVELS[self.quality]

    def jpeg_allowed(self, codec: PixelCodec, area: int) -> bool:
        """JPEG needs a quality level and 16 or 32 bits per pixel (spec)."""
        pf = codec.pf
        return (
            self.quality is not None
            and pf.true_colour
            and pf.bits_per_pixel in (16, 32)
            and area >= JPEG_MIN_AREA
        )

    def palette_cap(self, area: int, codec: PixelCodec) -> int:
        """Most colours a palette keeps whatever its tones: beyond them a
        rectangle that may go to JPEG goes there if its tones are many."""
        return (
            self.palette_limit(area, codec, True) if self.jpeg_allowed(codec, area) else MAX_PALETTE
        )

    def palette_limit(self, area: int, codec: PixelCodec, jpeg: bool) -> int:
        """Most colours worth an 8-bit palette (2 means: 1-bit palettes only)."""
        if codec.tight_pixel_bytes == 1:
            return 2  # 8-bit indices would be as large as the pixels
        limit = area // PALETTE_DIVISOR[self.compression]
        if jpeg:
            cap = JPEG_PALETTE_CAP_FAST if self.compression < 2 else JPEG_PALETTE_CAP
            limit = min(limit, cap)
        return min(max(limit, 2), MAX_PALETTE)


def _level(value: int) -> int:
    return min(max(int(value), 0), 9)


@dataclass(frozen=True)
class Palette:
    """A rectangle's colours and its runs of equal pixels (row-major order).

    ``colours`` are the sorted wire values; ``starts`` the index of each run's
    first pixel and ``index`` its colour's index.  Palette detection and
    index building both work on the runs, which screen content has few of.
    """

    colours: np.ndarray
    shape: tuple[int, int]
    starts: np.ndarray
    index: np.ndarray
    pixel_index: np.ndarray | None = None  # each pixel's index, where already known

    def many_tones(self) -> bool:
        """``ContentTones.many``, measured exactly on the runs: few pixels repeat their left one."""
        h, w = self.shape
        if w < 2:
            return False
        inside = np.count_nonzero(self.starts % w)  # run starts that are not a row's first pixel
        return bool(1 - inside / (h * (w - 1)) <= PHOTO_MAX_REPEATS)

    def indices(self) -> np.ndarray:
        """(h, w) index of each pixel's colour: uint8, or bool for two colours."""
        two = self.colours.size == 2
        if self.pixel_index is not None:
            return self.pixel_index.view(bool) if two else self.pixel_index
        per_run = self.index.view(bool) if two else self.index
        lengths = np.empty_like(self.starts)
        np.subtract(self.starts[1:], self.starts[:-1], out=lengths[:-1])
        lengths[-1] = self.shape[0] * self.shape[1] - self.starts[-1]
        return np.repeat(per_run, lengths).reshape(self.shape)


def find_palette(words: np.ndarray, limit: int) -> Palette | None:
    """The palette of a (h, w) block of wire values, or None beyond ``limit`` colours.

    The colours of sampled runs make a lookup table; looking every run up
    in it gives each run's index, and the runs it misses add their colours
    (or show there are too many).  A sample only rejects when it alone has
    too many colours, so the outcome is exact.  (Its caller rules most
    many-colour blocks out first, with ``too_many_sampled``.)
    """
    flat = words.reshape(-1)
    if flat.size <= SMALL_PALETTE_PIXELS:
        return _small_palette(words, limit)
    starts = run_starts(flat)
    values = flat[starts]
    table = ColourTable.of(distinct(values[:: max(1, values.size // RUN_SAMPLE)]))
    if table.colours.size > limit:
        return None
    index, found = table.lookup(values)
    if not found.all():
        table = ColourTable.of(distinct(np.concatenate((table.colours, values[~found]))))
        if table.colours.size > limit:
            return None
        index, _ = table.lookup(values)
    return Palette(table.colours, words.shape, starts, index)


def _small_palette(words: np.ndarray, limit: int) -> Palette | None:
    """``find_palette`` for a small block (a typed glyph, a cursor's trail):
    a binary search of the sorted colours gives every pixel's index, cheaper
    than building a lookup table."""
    flat = words.reshape(-1)
    colours = distinct(flat)
    if colours.size > limit:
        return None
    pixel_index = np.searchsorted(colours, flat).astype(np.uint8)
    starts = run_starts(flat)
    shape = (words.shape[0], words.shape[1])
    return Palette(colours, shape, starts, pixel_index[starts], pixel_index.reshape(shape))


def too_many_sampled(pixels: np.ndarray, codec: PixelCodec, limit: int) -> bool:
    """True if about PALETTE_SAMPLE / 8 evenly spaced pixels (in row-major
    order) of a (h, w) block alone hold more than ``limit`` colours.

    It rejects most photos at once, before any other pixel is converted
    to its wire value: a sample only rejects when it alone has too many
    colours, so what it lets through is decided exactly.
    """
    size = PALETTE_SAMPLE // 8
    h, w = pixels.shape
    if h * w <= max(2 * size, SMALL_PALETTE_PIXELS):
        return False  # as cheap to count them all (``find_palette``)
    at = np.arange(0, h * w, h * w // size)
    return distinct(codec.to_words(pixels[at // w, at % w])).size > limit


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a 1-D array.

    Sorted and compared with neighbours: on pixel values this is faster
    than ``np.unique``'s hash table (10x on 512 values, 6x on 20 000
    distinct ones, a little on a few hundred colours in thousands).
    """
    ordered = np.sort(values)
    keep = np.ones(ordered.size, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def run_starts(flat: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in ``flat``."""
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    starts = np.empty(changes.size + 1, dtype=np.intp)
    starts[0] = 0
    np.add(changes, 1, out=starts[1:])
    return starts


@dataclass(frozen=True)
class ColourTable:
    """Sorted colours (at most 256) and a lookup of values among them.

    A multiplicative hash of the colours into a small table is tried with
    a few multipliers; the first that gives every colour its own slot
    looks values up with one gather.  Otherwise a binary search does it.
    """

    colours: np.ndarray
    factor: np.uint32 | None = None
    slots: np.ndarray | None = None

    @classmethod
    def of(cls, colours: np.ndarray) -> ColourTable:
        if colours.size > MAX_PALETTE:
            return cls(colours)
        for multiplier in HASH_MULTIPLIERS:
            factor = np.uint32(multiplier)
            keys = (colours * factor) >> _HASH_SHIFT
            if distinct(keys).size == keys.size:
                slots = np.zeros(1 << HASH_BITS, dtype=np.uint8)
                slots[keys] = np.arange(colours.size)
                return cls(colours, factor, slots)
        return cls(colours)

    def lookup(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 index of each value's colour, whether it is one of the colours)."""
        if self.factor is None or self.slots is None:
            index = np.searchsorted(self.colours, values)
            np.minimum(index, self.colours.size - 1, out=index)
            index = index.astype(np.uint8)
        else:
            index = self.slots[(values * self.factor) >> _HASH_SHIFT]
        return index, self.colours[index] == values


@dataclass(frozen=True)
class ContentTones:
    """What sampled rows say about a many-colour rectangle."""

    many: bool  # few flat runs: photo, video, noise; JPEG where the peer allows it
    smooth: bool  # and the gradient predictor guesses it well: the gradient filter pays


def content_tones(pixels: np.ndarray) -> ContentTones:
    repeats, error = sample_statistics(pixels)
    many = repeats <= PHOTO_MAX_REPEATS
    return ContentTones(many, many and error <= PHOTO_MAX_ROUGHNESS)


def photo_like(pixels: np.ndarray) -> bool:
    """``content_tones(pixels).many``, without measuring the smoothness
    (a third of a photo's analysis): all JPEG needs to know."""
    h, w = pixels.shape
    if h < 2 or w < 2:
        return _line_statistics(pixels.reshape(-1))[0] <= PHOTO_MAX_REPEATS
    here = pixels[sampled_rows(h, w)]
    return _repeats(here) <= PHOTO_MAX_REPEATS


def sample_statistics(pixels: np.ndarray) -> tuple[float, float]:
    """(share of left-neighbour repeats, mean squared gradient-prediction error).

    Measured on up to SAMPLE_ROWS rows (fewer on rectangles wider than
    SAMPLE_PIXELS / SAMPLE_ROWS) and their upper neighbours, as 8-bit
    RGB components; a single row or column is judged by its differences.
    """
    h, w = pixels.shape
    if h < 2 or w < 2:
        return _line_statistics(pixels.reshape(-1))
    rows = sampled_rows(h, w)
    sampled = pixels[np.concatenate((rows - 1, rows))]
    repeats = _repeats(sampled[rows.size :])
    rgb = words_to_rgb(sampled).astype(np.int16)  # predictions fit: -255..510
    rgb_above, rgb_here = rgb[: rows.size], rgb[rows.size :]
    prediction = rgb_here[:, :-1] + rgb_above[:, 1:] - rgb_above[:, :-1]
    np.clip(prediction, 0, 255, out=prediction)
    error = (rgb_here[:, 1:] - prediction).astype(np.int32)
    return repeats, float(np.mean(np.square(error, out=error)))


@lru_cache(maxsize=64)
def sampled_rows(h: int, w: int) -> np.ndarray:
    """The rows (from 1 on) ``sample_statistics`` measures in an (h, w) block.

    Kept per shape: a full screen's pieces mostly share one.
    """
    count = min(h - 1, SAMPLE_ROWS, max(2, SAMPLE_PIXELS // w))
    rows = np.unique(np.linspace(1, h - 1, num=count).astype(np.intp))
    rows.flags.writeable = False
    return rows


def _repeats(rows: np.ndarray) -> float:
    """The share of pixels in these rows equal to their left neighbour."""
    equal = np.count_nonzero(rows[:, 1:] == rows[:, :-1])
    return float(equal / (rows.shape[0] * (rows.shape[1] - 1)))


def _line_statistics(line: np.ndarray) -> tuple[float, float]:
    """The same measures for a single row or column: left neighbour only."""
    if line.size < 2:
        return 1.0, 0.0
    repeats = float(np.mean(line[1:] == line[:-1]))
    rgb = words_to_rgb(line).astype(np.int32)
    return repeats, float(np.mean(np.square(np.diff(rgb, axis=0))))
