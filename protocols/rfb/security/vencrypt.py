"""VeNCrypt (security type 19), version 0.2: subtypes and their wire pieces.

Exchange, after the client picks type 19::

    server: U8 major=0, U8 minor=2
    client: U8 major, U8 minor          (0.2; 0.0 means "cannot")
    server: U8 status                   (0 = accepted, non-zero = refused)
    server: U8 count, count x U32 subtypes
    client: U32 chosen subtype
    TLS/X509 subtypes: server U8 1 (ack), then the TLS handshake; the rest
    of the exchange runs inside TLS.
    inner auth: None -> nothing; Vnc -> VNC Authentication challenge and
    response; Plain -> client U32 username length, U32 password length,
    username, password.
    server: SecurityResult
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ..constants import VeNCryptSubtype
from ..errors import ProtocolError
from ..limits import Limits

VERSION = b"\x00\x02"
VERSION_CANNOT = b"\x00\x00"
VERSION_ACCEPTED = b"\x00"
VERSION_REFUSED = b"\xff"
TLS_ACK = b"\x01"


class InnerAuth(enum.Enum):
    NONE = "none"
    VNC = "vnc"
    PLAIN = "plain"


@dataclass(frozen=True)
class SubtypeInfo:
    tls: bool  # the rest of the exchange runs inside TLS
    anonymous: bool  # anonymous (EC)DH TLS rather than X.509 certificates
    inner: InnerAuth


SUBTYPES: dict[int, SubtypeInfo] = {
    VeNCryptSubtype.PLAIN: SubtypeInfo(False, False, InnerAuth.PLAIN),
    VeNCryptSubtype.TLS_NONE: SubtypeInfo(True, True, InnerAuth.NONE),
    VeNCryptSubtype.TLS_VNC: SubtypeInfo(True, True, InnerAuth.VNC),
    VeNCryptSubtype.TLS_PLAIN: SubtypeInfo(True, True, InnerAuth.PLAIN),
    VeNCryptSubtype.X509_NONE: SubtypeInfo(True, False, InnerAuth.NONE),
    VeNCryptSubtype.X509_VNC: SubtypeInfo(True, False, InnerAuth.VNC),
    VeNCryptSubtype.X509_PLAIN: SubtypeInfo(True, False, InnerAuth.PLAIN),
}

MAX_SUBTYPES = 255  # the count is a U8


def pack_subtypes(subtypes: Sequence[int]) -> bytes:
    """The server's U8 count followed by U32 subtypes."""
    if not 0 < len(subtypes) <= MAX_SUBTYPES:
        raise ValueError("VeNCrypt needs 1 to 255 subtypes")
    return bytes([len(subtypes)]) + struct.pack(f">{len(subtypes)}I", *subtypes)


def unpack_subtypes(data: bytes) -> tuple[int, ...]:
    """U32 subtypes (the count was read before)."""
    return struct.unpack(f">{len(data) // 4}I", data)


def encode_credential(text: str, limits: Limits) -> bytes:
    """UTF-8 form of a username or password; ValueError if over the limit."""
    data = text.encode("utf-8")
    if len(data) > limits.max_credential:
        raise ValueError("credential longer than limits.max_credential")
    return data


def pack_plain(username: str, password: str, limits: Limits) -> bytes:
    """The client's Plain credentials message."""
    user = encode_credential(username, limits)
    secret = encode_credential(password, limits)
    return struct.pack(">II", len(user), len(secret)) + user + secret


def plain_lengths(header: bytes, limits: Limits) -> tuple[int, int]:
    """Username and password lengths from the 8-byte Plain header, bounded."""
    user_len, password_len = struct.unpack(">II", header)
    if user_len > limits.max_credential or password_len > limits.max_credential:
        raise ProtocolError("Plain credentials longer than allowed")
    return user_len, password_len


def decode_credential(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("Plain credentials are not valid UTF-8") from None
