"""Wire forms of the handshake's own messages.

ProtocolVersion and how each role maps a peer's version onto one it
speaks, the security type list, SecurityResult and the length-prefixed
reason strings that go with failures.
"""

from __future__ import annotations

import re
import struct

from ..constants import SecurityType, Version
from ..errors import ProtocolError

VERSION_SIZE = 12
RESULT_OK = 0
RESULT_FAILED = 1
RESULT_TOO_MANY = 2  # only defined with the Tight security type; read as "failed"

_VERSION_RE = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def parse_u32(data: bytes) -> int:
    value: int = struct.unpack(">I", data)[0]
    return value


def parse_version(data: bytes) -> tuple[int, int]:
    """(major, minor) from a 12-byte ProtocolVersion message."""
    match = _VERSION_RE.fullmatch(data)
    if match is None:
        raise ProtocolError(f"not an RFB protocol version: {data[:VERSION_SIZE]!r}")
    return int(match[1]), int(match[2])


def server_version_for(major: int, minor: int) -> Version:
    """The version a 3.8 server speaks with a client that asked for major.minor.

    3.7 and 3.8 are taken as they are; every other 3.x (3.5, 3.6, the 3.889
    of Apple clients, ...) has the 3.3 handshake.
    """
    if major != 3:
        raise ProtocolError(f"client asked for RFB {major}.{minor}; only 3.x is spoken here")
    if minor == 7:
        return Version.V3_7
    if minor == 8:
        return Version.V3_8
    return Version.V3_3


def client_version_for(major: int, minor: int) -> Version:
    """The version a client answers to a server offering major.minor."""
    if (major, minor) < (3, 3):
        raise ProtocolError(f"server offers RFB {major}.{minor}, older than 3.3")
    if (major, minor) >= (3, 8):
        return Version.V3_8
    if minor == 7:
        return Version.V3_7
    return Version.V3_3


def pack_string(text: str, limit: int) -> bytes:
    """U32 length and UTF-8 text, cut to ``limit`` bytes on a character edge."""
    data = text.encode("utf-8")
    if len(data) > limit:
        data = data[:limit].decode("utf-8", "ignore").encode("utf-8")
    return u32(len(data)) + data


def decode_reason(data: bytes) -> str:
    """A peer's reason string: ASCII by the spec, UTF-8 in practice."""
    return data.decode("utf-8", "replace")


def pack_security_types(types: tuple[int, ...]) -> bytes:
    """The 3.7+ list of security types (U8 count, U8 each)."""
    return bytes([len(types), *types])


def connection_failed(version: Version, reason: str, limit: int) -> bytes:
    """The server's "connection failed" message in place of the type list.

    3.3 has a U32 security type 0, 3.7+ a U8 count of 0; both are followed
    by a reason string.
    """
    zero = u32(SecurityType.INVALID) if version is Version.V3_3 else b"\x00"
    return zero + pack_string(reason, limit)


def security_result_ok() -> bytes:
    return u32(RESULT_OK)


def security_result_failed(version: Version, reason: str, limit: int) -> bytes:
    """SecurityResult "failed"; 3.8 adds the reason string."""
    if version is Version.V3_8:
        return u32(RESULT_FAILED) + pack_string(reason, limit)
    return u32(RESULT_FAILED)


def sends_security_result(version: Version, security_type: int) -> bool:
    """3.3 and 3.7 skip SecurityResult for security type None."""
    return version is Version.V3_8 or security_type != SecurityType.NONE
