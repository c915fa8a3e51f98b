"""Numbers defined by the RFB protocol (rfbproto) that both roles share."""

from __future__ import annotations

import enum


class Version(enum.Enum):
    """Protocol versions thinserve speaks, with their 12-byte wire form."""

    V3_3 = b"RFB 003.003\n"
    V3_7 = b"RFB 003.007\n"
    V3_8 = b"RFB 003.008\n"

    @property
    def minor(self) -> int:
        return int(self.value[8:11])


class SecurityType(enum.IntEnum):
    INVALID = 0
    NONE = 1
    VNC_AUTH = 2
    VENCRYPT = 19


class VeNCryptSubtype(enum.IntEnum):
    PLAIN = 256
    TLS_NONE = 257
    TLS_VNC = 258
    TLS_PLAIN = 259
    X509_NONE = 260
    X509_VNC = 261
    X509_PLAIN = 262


class ClientMsg(enum.IntEnum):
    SET_PIXEL_FORMAT = 0
    SET_ENCODINGS = 2
    FRAMEBUFFER_UPDATE_REQUEST = 3
    KEY_EVENT = 4
    POINTER_EVENT = 5
    CLIENT_CUT_TEXT = 6
    ENABLE_CONTINUOUS_UPDATES = 150
    CLIENT_FENCE = 248
    SET_DESKTOP_SIZE = 251
    QEMU = 255


class ServerMsg(enum.IntEnum):
    FRAMEBUFFER_UPDATE = 0
    SET_COLOUR_MAP_ENTRIES = 1
    BELL = 2
    SERVER_CUT_TEXT = 3
    END_OF_CONTINUOUS_UPDATES = 150
    SERVER_FENCE = 248


QEMU_EXTENDED_KEY_EVENT_SUBTYPE = 0


class Encoding(enum.IntEnum):
    """Rectangle encodings and pseudo-encodings (signed 32-bit on the wire)."""

    RAW = 0
    COPYRECT = 1
    RRE = 2
    HEXTILE = 5
    ZLIB = 6
    TIGHT = 7
    ZRLE = 16
    # Pseudo-encodings.
    JPEG_QUALITY_0 = -32  # -32 .. -23: quality levels 0 .. 9
    JPEG_QUALITY_9 = -23
    DESKTOP_SIZE = -223
    LAST_RECT = -224
    CURSOR = -239
    COMPRESS_LEVEL_0 = -256  # -256 .. -247: compression levels 0 .. 9
    COMPRESS_LEVEL_9 = -247
    QEMU_EXTENDED_KEY_EVENT = -258
    EXTENDED_DESKTOP_SIZE = -308
    FENCE = -312
    CONTINUOUS_UPDATES = -313
    EXTENDED_CLIPBOARD = 0xC0A1E5CE - (1 << 32)


class ResizeReason(enum.IntEnum):
    """Why an ExtendedDesktopSize rectangle came (its x field)."""

    SERVER = 0  # the server changed the size on its own
    THIS_CLIENT = 1  # the answer to this client's SetDesktopSize
    OTHER_CLIENT = 2  # another client's SetDesktopSize


class ResizeStatus(enum.IntEnum):
    """How a SetDesktopSize went (an ExtendedDesktopSize rectangle's y field)."""

    OK = 0
    PROHIBITED = 1
    OUT_OF_RESOURCES = 2
    INVALID_LAYOUT = 3
    FORWARDED = 4  # passed on to the guest (QEMU), which may resize later


def jpeg_quality_level(encoding: int) -> int | None:
    """Quality level 0..9 for a JPEG quality pseudo-encoding, else None."""
    if Encoding.JPEG_QUALITY_0 <= encoding <= Encoding.JPEG_QUALITY_9:
        return encoding - Encoding.JPEG_QUALITY_0
    return None


def compress_level(encoding: int) -> int | None:
    """Compression level 0..9 for a compression pseudo-encoding, else None."""
    if Encoding.COMPRESS_LEVEL_0 <= encoding <= Encoding.COMPRESS_LEVEL_9:
        return encoding - Encoding.COMPRESS_LEVEL_0
    return None


class FenceFlag(enum.IntFlag):
    BLOCK_BEFORE = 1 << 0
    BLOCK_AFTER = 1 << 1
    SYNC_NEXT = 1 << 2
    REQUEST = 1 << 31


class ClipboardFlag(enum.IntFlag):
    """Extended Clipboard: formats in the low 16 bits, actions in the top byte."""

    TEXT = 1 << 0
    RTF = 1 << 1
    HTML = 1 << 2
    DIB = 1 << 3
    FILES = 1 << 4
    CAPS = 1 << 24
    REQUEST = 1 << 25
    PEEK = 1 << 26
    NOTIFY = 1 << 27
    PROVIDE = 1 << 28


CLIPBOARD_ACTIONS = (
    ClipboardFlag.CAPS
    | ClipboardFlag.REQUEST
    | ClipboardFlag.PEEK
    | ClipboardFlag.NOTIFY
    | ClipboardFlag.PROVIDE
)
