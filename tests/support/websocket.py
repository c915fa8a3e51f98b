"""The WebSocket wire format seen from a raw peer: the upgrade request, the
HTTP response, masked client frames and unmasked server frames."""

from __future__ import annotations

import base64
import os
import struct

from .rawpeer import TIMEOUT, RawPeer
from .reactor import transport_of

OPCODE_BINARY = 0x2


def upgrade_request(
    port: int, origin: str | None, protocols: str | None = "binary", path: str = "/websockify"
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def head_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, rest) of an HTTP response."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


def client_frame(opcode: int, payload: bytes, declared: int | None = None) -> bytes:
    """A masked client frame; ``declared`` may claim more payload than is sent."""
    length = len(payload) if declared is None else declared
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the complete unmasked server frames in ``data``."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            if len(data) < 4:
                break
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            if len(data) < 10:
                break
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


class WebSocketStream:
    """The server's frames on a raw peer, read one by one after the handshake."""

    def __init__(self, peer: RawPeer) -> None:
        self.peer = peer
        self.frames_seen = 0

    def _frames(self) -> list[tuple[int, bytes]]:
        return server_frames(bytes(self.peer.received).partition(b"\r\n\r\n")[2])

    async def next_frames(self, timeout: float = TIMEOUT) -> list[tuple[int, bytes]]:
        seen = self.frames_seen
        await self.peer.wait_for(lambda _: len(self._frames()) > seen, timeout)
        frames = self._frames()
        self.frames_seen = len(frames)
        return frames[seen:]

    def send(self, data: bytes) -> None:
        if data:
            transport_of(self.peer).write(client_frame(OPCODE_BINARY, data))
