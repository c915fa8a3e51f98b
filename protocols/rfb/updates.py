"""Server side: what a client said it supports, and how each rectangle is encoded.

The client lists encodings in its order of preference.  The first rectangle
encoding it lists that thinserve has becomes the preferred one; solid
rectangles go out with the cheapest solid form the client accepts, and
encoders with size limits (Tight) get their rectangles split first.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, cast

import numpy as np

from .constants import Encoding, compress_level, jpeg_quality_level
from .encodings import (
    RECT_ENCODINGS,
    CopyRectEncoder,
    Encoder,
    Rect,
    make_encoder,
)
from .messages import RectHeader
from .pixelformat import PixelCodec
from .sharing import Job, SharedWork

# Solid rectangles: cheapest form first (Tight fill, RRE with no subrects, ...).
_SOLID_ORDER = (Encoding.TIGHT, Encoding.RRE, Encoding.HEXTILE, Encoding.ZRLE)
# A solid rectangle costs Hextile its colour plus one byte per 16x16 tile,
# ZRLE about 12 bytes on a running zlib stream (its repeated solid tiles
# compress to almost nothing): past this many Hextile tiles ZRLE is cheaper.
HEXTILE_SOLID_TILES = 8
# Encodings that make no sense for arbitrary rectangles.
_NOT_PRIMARY = (Encoding.COPYRECT,)
# Encoders without size limits get large rectangles in bands of about this many pixels.
BAND_PIXELS = 1 << 17
BAND_ROWS = 64
# A large rectangle starts with a piece of about this many pixels: a whole
# screen's first pixels leave after a small piece's encoding, not a band's.
FIRST_PIXELS = 1 << 14
FIRST_WIDTH = FIRST_PIXELS // BAND_ROWS  # 4 of ZRLE's 64x64 tiles
# Rows of pieces of size-limited encoders (Tight) come in multiples of this:
# JPEG codes 16-row blocks (8 at 4:4:4), and a 34-row piece of a 1920-wide
# photo was coded as 48 (40) rows.  On a photo screen in Tight q8 that is
# 14% fewer bytes and 7% less time; screen content, in more pieces, takes
# 1-3% more bytes.
JPEG_ROWS = 16


class Part(NamedTuple):
    """One rectangle of an update and the encoding chosen for it: a tuple,
    so that making a full screen's (35 in Tight) costs little before its
    first rectangle can leave."""

    rect: Rect
    encoding: int


@dataclass
class ClientSettings:
    encodings: tuple[int, ...] = ()
    rect_encodings: tuple[int, ...] = ()
    quality: int | None = None
    compression: int | None = None
    pseudo: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def from_encodings(cls, encodings: tuple[int, ...]) -> ClientSettings:
        rect = tuple(dict.fromkeys(e for e in encodings if e in RECT_ENCODINGS))
        quality = next((q for e in encodings if (q := jpeg_quality_level(e)) is not None), None)
        level = next((c for e in encodings if (c := compress_level(e)) is not None), None)
        return cls(encodings, rect, quality, level, frozenset(e for e in encodings if e < 0))

    def supports(self, encoding: int) -> bool:
        return encoding in self.pseudo or encoding in self.rect_encodings

    @property
    def preferred(self) -> int:
        for encoding in self.rect_encodings:
            if encoding not in _NOT_PRIMARY:
                return encoding
        return Encoding.RAW


class RectEncoder:
    """Per connection: chooses an encoding per rectangle and encodes it."""

    def __init__(self) -> None:
        self._encoders: dict[int, Encoder] = {}
        self._copy = CopyRectEncoder()
        self.settings = ClientSettings()
        self.shared = False  # encoding so that updates can go to other connections as they are
        self.quick = False  # the link is fast: fewer cycles for more bytes

    def configure(self, settings: ClientSettings) -> None:
        self.settings = settings
        for encoder in self._encoders.values():
            encoder.configure(settings.quality, settings.compression)

    def share_streams(self, shared: bool) -> None:
        """Encode for several connections at once, or for this one alone
        (see ``Encoder.share_streams``)."""
        if shared != self.shared:
            self.shared = shared
            for encoder in self._encoders.values():
                encoder.share_streams(shared)

    def prefer_speed(self, quick: bool) -> None:
        """Trade bytes for time where an encoding can (see ``Encoder.prefer_speed``)."""
        if quick != self.quick:
            self.quick = quick
            for encoder in self._encoders.values():
                encoder.prefer_speed(quick)

    def update_key(self) -> Hashable:
        """Besides the picture, the rectangles and the pixel format, all that
        decides an update's bytes when every rectangle's finish is shared."""
        settings = self.settings
        return (
            settings.rect_encodings,
            settings.quality,
            settings.compression,
            self.shared,
            self.quick,
        )

    def finish_is_shared(self, part: Part, prepared: object) -> bool:
        return self.encoder(part.encoding).finish_is_shared(prepared)

    def encoder(self, encoding: int) -> Encoder:
        if encoding not in self._encoders:
            encoder = make_encoder(encoding)
            encoder.configure(self.settings.quality, self.settings.compression)
            encoder.share_streams(self.shared)
            encoder.prefer_speed(self.quick)
            self._encoders[encoding] = encoder
        return self._encoders[encoding]

    def encode(
        self, fb: np.ndarray, rect: Rect, codec: PixelCodec
    ) -> list[tuple[RectHeader, bytes]]:
        """Headers and payloads for one damaged rectangle of ``fb``."""
        return [self.encode_part(fb, part, codec) for part in self.plan(fb, rect)]

    def plan(self, fb: np.ndarray, rect: Rect, work: SharedWork | None = None) -> list[Part]:
        """The pieces ``rect`` goes out as, each with its encoding, before encoding.

        Cheap (splitting and a solid check per piece), so the number of
        rectangles of an update is known before any is encoded.  With
        ``work`` (the picture's), connections that accept the same
        encodings share one plan.
        """
        if work is None:
            return self._plan(fb, rect)
        key = ("plan", rect, self.settings.rect_encodings)
        return cast(list[Part], work.plan(key, lambda: self._plan(fb, rect)))

    def _plan(self, fb: np.ndarray, rect: Rect) -> list[Part]:
        preferred = self.settings.preferred
        parts = []
        for piece in self._split(rect, preferred):
            encoding = self._choose(fb, piece)
            if encoding == preferred:
                parts.append(Part(piece, encoding))  # split by its limits already
            else:
                # A solid piece may go to an encoder with tighter size limits
                # (Tight) than the preferred one: split again by its limits.
                parts += [Part(sub, encoding) for sub in self._split(piece, encoding)]
        return parts

    def job(self, fb: np.ndarray, part: Part, codec: PixelCodec, work: SharedWork | None) -> Job:
        """The pixels-only half of encoding ``part`` (see ``Encoder.prepare``).

        With ``work`` (the picture's), it is shared with every connection
        whose encoder has the same settings and pixel format.
        """
        encoder = self.encoder(part.encoding)
        run = partial(encoder.prepare, _view(fb, part.rect), codec)
        if work is None:
            return Job(run)
        key = (part.rect, part.encoding, encoder.settings_key(), codec.pf)
        return work.job(key, run, part.rect.area)

    def finish(self, part: Part, prepared: object, codec: PixelCodec) -> tuple[RectHeader, bytes]:
        """Header and payload of a prepared piece, through this connection's streams."""
        encoding, payload = self.encoder(part.encoding).finish(prepared, codec)
        rect = part.rect
        return RectHeader(rect.x, rect.y, rect.w, rect.h, encoding), payload

    def encode_part(
        self, fb: np.ndarray, part: Part, codec: PixelCodec
    ) -> tuple[RectHeader, bytes]:
        """Header and payload of one planned piece, all done here."""
        return self.finish(part, self.job(fb, part, codec, None).result(), codec)

    def encode_copy(self, dest: Rect, src_x: int, src_y: int) -> tuple[RectHeader, bytes]:
        """Header and payload of a CopyRect: ``dest`` repeats the pixels at (src_x, src_y)."""
        payload = self._copy.encode_copy(src_x, src_y)
        return RectHeader(dest.x, dest.y, dest.w, dest.h, Encoding.COPYRECT), payload

    def _choose(self, fb: np.ndarray, piece: Rect) -> int:
        """The encoding of one piece: the preferred one, or a cheaper solid form."""
        preferred = self.settings.preferred
        if preferred == Encoding.TIGHT:
            return preferred  # its own fill is the cheapest solid form there is: no look
        if piece.area > 1 and _is_solid(_view(fb, piece)):
            return self._solid_encoding(piece.h, piece.w)
        return preferred

    def _solid_encoding(self, height: int, width: int) -> int:
        """The cheapest solid form the client accepts for a height x width rectangle."""
        accepted = [e for e in _SOLID_ORDER if e in self.settings.rect_encodings]
        if not accepted:
            return self.settings.preferred
        if accepted[0] == Encoding.HEXTILE and Encoding.ZRLE in accepted:
            tiles = -(-width // 16) * -(-height // 16)
            return Encoding.ZRLE if tiles > HEXTILE_SOLID_TILES else Encoding.HEXTILE
        return accepted[0]

    def _split(self, rect: Rect, encoding: int) -> Iterator[Rect]:
        encoder = self.encoder(encoding)
        if not encoder.max_area:
            return bands(rect, encoder.band_pixels or BAND_PIXELS)
        return split_rect(rect, encoder.max_width or rect.w, encoder.max_area)


def bands(rect: Rect, pixels: int = BAND_PIXELS) -> Iterator[Rect]:
    """``rect`` in full-width bands of about ``pixels``, a multiple of 64 rows.

    An update made of bands can be sent band by band (the terminal decodes
    the first while the next is encoded); 64 rows keep ZRLE's 64x64 and
    Hextile's 16x16 tiles where they would be in the whole rectangle.  Of a
    rectangle that takes several bands the first is the narrowest (64 rows),
    so its first pixels leave soon.
    """
    rows = max(BAND_ROWS, pixels // max(rect.w, 1) // BAND_ROWS * BAND_ROWS)
    y, end = rect.y, rect.y + rect.h
    first = BAND_ROWS if rect.h > rows else rows
    if rect.h > rows and rect.w > 2 * FIRST_WIDTH:
        # Narrower still: the first band's first few tiles.
        yield Rect(rect.x, y, FIRST_WIDTH, BAND_ROWS)
        yield Rect(rect.x + FIRST_WIDTH, y, rect.w - FIRST_WIDTH, BAND_ROWS)
        y += BAND_ROWS
    while y < end:
        height = min(first if y == rect.y else rows, end - y)
        yield Rect(rect.x, y, rect.w, height)
        y += height


def split_rect(rect: Rect, max_width: int, max_area: int) -> Iterator[Rect]:
    """Cover ``rect`` with pieces at most max_width wide and max_area big.

    When it takes several rows of pieces, the first row is only about
    FIRST_PIXELS big, so that its pixels leave soon (see ``bands``).
    """
    width = min(rect.w, max_width)
    rows = max(1, max_area // max(width, 1))
    if rows > JPEG_ROWS:
        rows -= rows % JPEG_ROWS
    y, end = rect.y, rect.y + rect.h
    if rect.h > rows:
        first = max(1, FIRST_PIXELS // width)
        if first < rows:
            yield from _row_of_pieces(rect, y, first, width)
            y += first
    while y < end:
        yield from _row_of_pieces(rect, y, min(rows, end - y), width)
        y += rows


def _row_of_pieces(rect: Rect, y: int, height: int, width: int) -> Iterator[Rect]:
    for x in range(rect.x, rect.x + rect.w, width):
        yield Rect(x, y, min(width, rect.x + rect.w - x), height)


def _view(fb: np.ndarray, rect: Rect) -> np.ndarray:
    return fb[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w]


def _is_solid(pixels: np.ndarray) -> bool:
    """Whether every pixel equals the first; the last pixel and the first row say no cheaply."""
    first = pixels.flat[0]
    if pixels.flat[-1] != first or not (pixels[0] == first).all():
        return False
    return bool((pixels == first).all())
