"""What one FramebufferUpdate carried, per kind of rectangle: plain numbers.

The server's connection fills one ``UpdateStats`` per update as it encodes
(rectangles, bytes and encoding time per kind); whoever serves the
connection reads it once the update is done, e.g. to count it in its
metrics.  The core itself counts nothing across updates and knows nothing
of where the numbers go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import Encoding
from .encodings.tight_wire import JPEG

RECT_HEADER = 12  # bytes of a rectangle's header
UPDATE_HEADER = 4  # bytes of a FramebufferUpdate's own header

_KINDS: dict[int, str] = {
    Encoding.RAW: "raw",
    Encoding.COPYRECT: "copyrect",
    Encoding.RRE: "rre",
    Encoding.HEXTILE: "hextile",
    Encoding.ZLIB: "zlib",
    Encoding.TIGHT: "tight",
    Encoding.ZRLE: "zrle",
    Encoding.CURSOR: "cursor",
    Encoding.DESKTOP_SIZE: "desktop-size",
    Encoding.EXTENDED_DESKTOP_SIZE: "extended-desktop-size",
    Encoding.LAST_RECT: "last-rect",
}
TIGHT_JPEG = "tight-jpeg"
OTHER = "other"
# Every kind ``rect_kind`` can answer: a fixed, small set.
KINDS: tuple[str, ...] = (*_KINDS.values(), TIGHT_JPEG, OTHER)
# The kinds of pixel rectangles, whose encoding is timed (what RectEncoder
# sends: a rectangle encoding, or Raw when that is smaller).
PIXEL_KINDS: tuple[str, ...] = ("raw", "rre", "hextile", "zlib", "tight", TIGHT_JPEG, "zrle")


def rect_kind(encoding: int, payload: bytes) -> str:
    """The kind of one rectangle as it went out: its encoding's name, and
    "tight-jpeg" for a Tight rectangle sent as JPEG (its control byte says so)."""
    if encoding == Encoding.TIGHT and payload and payload[0] >> 4 == JPEG:
        return TIGHT_JPEG
    return _KINDS.get(encoding, OTHER)


@dataclass
class UpdateStats:
    """One update's rectangles, bytes (each rectangle's header and payload)
    and encoding seconds, by kind.  ``bytes`` plus ``UPDATE_HEADER`` is the
    whole message."""

    rects: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # pixel rectangles only

    def add(self, kind: str, size: int) -> None:
        """One rectangle of ``size`` bytes, header included."""
        self.rects[kind] = self.rects.get(kind, 0) + 1
        self.bytes[kind] = self.bytes.get(kind, 0) + size

    def sent_again(self) -> UpdateStats:
        """What the same bytes carry when sent as they are to another
        connection: the same rectangles and bytes, and no encoding time."""
        return UpdateStats(dict(self.rects), dict(self.bytes))

    def add_encoded(self, kind: str, size: int, seconds: float) -> None:
        """One pixel rectangle of ``size`` bytes that took ``seconds`` to encode."""
        self.add(kind, size)
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
