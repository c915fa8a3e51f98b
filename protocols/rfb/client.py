"""The client role of an RFB connection, sans I/O.

The connection keeps the framebuffer (``conn.framebuffer``, 2-D ``uint32``
0x00RRGGBB) and applies every decoded rectangle to it in order, so callers
only learn *what* changed::

    conn = ClientConnection(password="secret")
    for event in conn.receive_data(data):
        if isinstance(event, ServerInitReceived):
            conn.set_encodings([Encoding.TIGHT, Encoding.RAW, ...])
            conn.request_update(incremental=False)
        elif isinstance(event, UpdateDone):
            ...  # event.rects changed in conn.framebuffer
    transport.write(conn.data_to_send())
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np

from . import messages as m
from .clipboard import ClipboardState
from .connection import Connection
from .constants import Encoding, FenceFlag, ServerMsg
from .encodings import RECT_ENCODINGS, Decoder, Rect, make_decoder
from .encodings.copyrect import copy_within
from .errors import ProtocolError, require
from .handshake import ClientHandshake, HandshakeEvent
from .limits import DEFAULT_LIMITS, Limits
from .pixelformat import DEFAULT_COLOUR_MAP, PixelCodec, PixelFormat
from .server import FENCE_FLAGS_SUPPORTED, ClipboardText, Cursor


@dataclass(frozen=True)
class ServerInitReceived:
    width: int
    height: int
    pixel_format: PixelFormat
    name: str


@dataclass(frozen=True)
class UpdateDone:
    """A FramebufferUpdate was applied; ``rects`` lists what changed.

    ``copies`` are the CopyRects among them, in order, as (destination,
    src_x, src_y).
    """

    rects: tuple[Rect, ...]
    encodings: tuple[int, ...]
    copies: tuple[tuple[Rect, int, int], ...] = ()


@dataclass(frozen=True)
class DesktopResized:
    width: int
    height: int
    reason: int = 0
    status: int = 0
    screens: tuple[m.Screen, ...] = ()


@dataclass(frozen=True)
class SetDesktopSizeFailed:
    status: int


@dataclass(frozen=True)
class CursorShape:
    cursor: Cursor


@dataclass(frozen=True)
class ExtendedKeysSupported:
    pass


@dataclass(frozen=True)
class ContinuousUpdatesSupported:
    pass


ClientEvent = (
    HandshakeEvent
    | ServerInitReceived
    | UpdateDone
    | DesktopResized
    | SetDesktopSizeFailed
    | CursorShape
    | ExtendedKeysSupported
    | ContinuousUpdatesSupported
    | m.EndOfContinuousUpdates
    | m.SetColourMapEntries
    | m.Bell
    | m.Fence
    | ClipboardText
)


class ClientConnection(Connection[ClientHandshake]):
    def __init__(
        self,
        *,
        password: str | None = None,
        username: str | None = None,
        methods: Sequence[int] | None = None,
        shared: bool = True,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        handshake = ClientHandshake(
            password=password, username=username, methods=methods, limits=limits
        )
        super().__init__(handshake, limits)
        self.shared = shared
        self.framebuffer = np.zeros((0, 0), dtype=np.uint32)
        # Inside a FramebufferUpdate: part of its rectangles are in the framebuffer.
        self.in_update = False
        # Called as an update begins, before any of its rectangles is written:
        # the owner may give ``framebuffer`` a fresh array to write to then.
        self.on_update_start: Callable[[], None] | None = None
        self._copies: list[tuple[Rect, int, int]] = []  # CopyRects of the update being read
        self.name = ""
        self.codec: PixelCodec | None = None
        self._colour_map = DEFAULT_COLOUR_MAP.copy()
        self._decoders: dict[int, Decoder] = {}
        self.encodings: tuple[int, ...] = ()
        self.clipboard = ClipboardState(from_server=False, max_text=limits.max_cut_text)
        self.extended_keys = False
        self.continuous_updates_supported = False
        self.fence_supported = False
        self.screens: tuple[m.Screen, ...] = ()

    @property
    def width(self) -> int:
        return self.framebuffer.shape[1]

    @property
    def height(self) -> int:
        return self.framebuffer.shape[0]

    def _handshake_done(self) -> None:
        self._out += m.ClientInit(self.shared).pack()

    def _max_need(self) -> int:
        biggest_rect = self.limits.max_pixels * 4
        return max(biggest_rect, self.limits.max_compressed_rect, self.limits.max_cut_text) + 64

    # -- reading server messages ------------------------------------------------
    def _reader(self) -> Generator[int, bytes, None]:
        init = yield from m.read_server_init(self.limits)
        self._apply_server_init(init)
        while True:
            (kind,) = yield 1
            yield from self._read_message(kind)

    def _apply_server_init(self, init: m.ServerInit) -> None:
        self.framebuffer = np.zeros((init.height, init.width), dtype=np.uint32)
        self.name = init.name
        self.codec = PixelCodec(init.pixel_format, self._colour_map)
        self.screens = (m.Screen(0, 0, 0, init.width, init.height),)
        self._events.append(
            ServerInitReceived(init.width, init.height, init.pixel_format, init.name)
        )

    def _read_message(self, kind: int) -> Generator[int, bytes, None]:
        if kind == ServerMsg.FRAMEBUFFER_UPDATE:
            yield from self._read_update()
        elif kind == ServerMsg.SET_COLOUR_MAP_ENTRIES:
            entries = yield from m.read_colour_map_entries(self.limits)
            self._apply_colour_map(entries)
        elif kind == ServerMsg.BELL:
            self._events.append(m.Bell())
        elif kind == ServerMsg.SERVER_CUT_TEXT:
            msg = yield from m.read_cut_text(self.limits, from_server=True)
            self._receive_clipboard(msg)
        elif kind == ServerMsg.END_OF_CONTINUOUS_UPDATES:
            self._end_of_continuous_updates()
        elif kind == ServerMsg.SERVER_FENCE:
            fence = yield from m.read_fence(self.limits, from_server=True)
            self._receive_fence(fence)
        else:
            raise ProtocolError(f"unknown server message type {kind}")

    def _apply_colour_map(self, entries: m.SetColourMapEntries) -> None:
        for i, (r, g, b) in enumerate(entries.colours):
            self._colour_map[entries.first + i] = (r >> 8) << 16 | (g >> 8) << 8 | (b >> 8)
        assert self.codec is not None
        self.codec = PixelCodec(self.codec.pf, self._colour_map)
        self._events.append(entries)

    def _end_of_continuous_updates(self) -> None:
        if not self.continuous_updates_supported:
            self.continuous_updates_supported = True
            self._events.append(ContinuousUpdatesSupported())
        else:
            self._events.append(m.EndOfContinuousUpdates())

    def _receive_fence(self, fence: m.Fence) -> None:
        self.fence_supported = True
        if fence.flags & FenceFlag.REQUEST:
            flags = fence.flags & FENCE_FLAGS_SUPPORTED
            self._out += m.Fence(int(flags), fence.payload).pack()
        else:
            self._events.append(fence)

    def _receive_clipboard(self, msg: m.CutText | m.ExtendedClipboard) -> None:
        replies, text = self.clipboard.receive(msg)
        for reply in replies:
            self._out += reply.pack()
        if text is not None:
            self._events.append(ClipboardText(text))

    # -- framebuffer updates ----------------------------------------------------------
    def _read_update(self) -> Generator[int, bytes, None]:
        head = yield 3
        (count,) = struct.unpack_from(">H", head, 1)
        self.in_update = True
        if self.on_update_start is not None:
            self.on_update_start()
        changed: list[Rect] = []
        encodings: list[int] = []
        self._copies = []
        for _ in range(count):
            header = yield 12
            x, y, w, h, encoding = struct.unpack(">HHHHi", header)
            if encoding == Encoding.LAST_RECT:
                break
            rect = Rect(x, y, w, h)
            if encoding in RECT_ENCODINGS:
                yield from self._read_rect(rect, encoding)
                changed.append(rect)
                encodings.append(encoding)
            else:
                yield from self._read_pseudo(rect, encoding)
        self.in_update = False
        self._events.append(UpdateDone(tuple(changed), tuple(encodings), tuple(self._copies)))

    def _read_rect(self, rect: Rect, encoding: int) -> Generator[int, bytes, None]:
        # The reasons are formatted only when needed: this runs for every rectangle.
        if rect.x + rect.w > self.width or rect.y + rect.h > self.height:
            raise ProtocolError(
                f"rectangle {rect} outside the {self.width}x{self.height} framebuffer"
            )
        if encoding not in self.encodings and encoding != Encoding.RAW:
            raise ProtocolError(f"encoding {encoding} was not asked for")
        assert self.codec is not None
        target = self.framebuffer[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w]
        copy = yield from self._decoder(encoding).decode_into(rect, self.codec, target)
        if copy is not None:
            sx, sy = copy.src_x, copy.src_y
            require(
                sx + rect.w <= self.width and sy + rect.h <= self.height,
                "CopyRect source outside the framebuffer",
            )
            copy_within(self.framebuffer, rect, sx, sy)
            self._copies.append((rect, sx, sy))

    def _decoder(self, encoding: int) -> Decoder:
        if encoding not in self._decoders:
            self._decoders[encoding] = make_decoder(encoding)
        return self._decoders[encoding]

    def _read_pseudo(self, rect: Rect, encoding: int) -> Generator[int, bytes, None]:
        if encoding not in self.encodings:
            raise ProtocolError(f"pseudo-encoding {encoding} was not asked for")
        if encoding == Encoding.CURSOR:
            yield from self._read_cursor(rect)
        elif encoding == Encoding.DESKTOP_SIZE:
            self._resize(rect.w, rect.h, DesktopResized(rect.w, rect.h))
        elif encoding == Encoding.EXTENDED_DESKTOP_SIZE:
            yield from self._read_extended_desktop_size(rect)
        elif encoding == Encoding.QEMU_EXTENDED_KEY_EVENT:
            if not self.extended_keys:
                self.extended_keys = True
                self._events.append(ExtendedKeysSupported())
        else:
            raise ProtocolError(f"unexpected pseudo-encoding {encoding} in an update")

    def _read_cursor(self, rect: Rect) -> Generator[int, bytes, None]:
        side = self.limits.max_cursor_side
        require(rect.w <= side and rect.h <= side, "cursor too large")
        assert self.codec is not None
        pixels = yield from m.read(rect.area * self.codec.bytes_per_pixel)
        mask = yield from m.read(((rect.w + 7) // 8) * rect.h)
        if rect.area == 0:  # the server hides the cursor
            empty = np.zeros((rect.h, rect.w), dtype=np.uint32)
            self._events.append(CursorShape(Cursor(rect.x, rect.y, empty, empty.astype(bool))))
            return
        image = self.codec.from_wire(pixels, rect.area).reshape(rect.h, rect.w)
        bits = np.unpackbits(np.frombuffer(mask, dtype=np.uint8).reshape(rect.h, -1), axis=1)
        cursor = Cursor(rect.x, rect.y, image, bits[:, : rect.w].astype(bool))
        self._events.append(CursorShape(cursor))

    def _read_extended_desktop_size(self, rect: Rect) -> Generator[int, bytes, None]:
        head = yield 4
        count = head[0]
        body = yield from m.read(16 * count)
        screens = m.unpack_screens(body, count)
        reason, status = rect.x, rect.y
        if status != 0:
            self._events.append(SetDesktopSizeFailed(status))
            return
        self._resize(rect.w, rect.h, DesktopResized(rect.w, rect.h, reason, status, screens))

    def _resize(self, width: int, height: int, event: DesktopResized) -> None:
        require(self.limits.check_size(width, height), f"desktop size {width}x{height} too large")
        if (height, width) != self.framebuffer.shape:
            old = self.framebuffer
            self.framebuffer = np.zeros((height, width), dtype=np.uint32)
            h, w = min(height, old.shape[0]), min(width, old.shape[1])
            self.framebuffer[:h, :w] = old[:h, :w]
        self.screens = event.screens or (m.Screen(0, 0, 0, width, height),)
        self._events.append(event)

    # -- sending ----------------------------------------------------------------------
    def _send(self, msg: m.ClientMessage) -> None:
        self._out += msg.pack()

    def set_pixel_format(self, pf: PixelFormat) -> None:
        pf.validate()
        self.codec = PixelCodec(pf, self._colour_map)
        self._send(m.SetPixelFormat(pf))

    def set_encodings(self, encodings: Sequence[int]) -> None:
        # Decoders are kept: the server's zlib streams (Zlib, ZRLE, Tight)
        # live as long as the connection, whatever encodings are asked later.
        self.encodings = tuple(encodings)
        self._send(m.SetEncodings(self.encodings))

    def request_update(self, incremental: bool = True, rect: Rect | None = None) -> None:
        r = rect or Rect(0, 0, self.width, self.height)
        self._send(m.FramebufferUpdateRequest(incremental, r.x, r.y, r.w, r.h))

    def key_event(self, down: bool, keysym: int, keycode: int | None = None) -> None:
        """A key press or release; sent with its scancode when both sides can."""
        if keycode is not None and self.extended_keys:
            self._send(m.QemuKeyEvent(down, keysym, keycode))
        else:
            self._send(m.KeyEvent(down, keysym))

    def pointer_event(self, buttons: int, x: int, y: int) -> None:
        self._send(m.PointerEvent(buttons, x, y))

    def send_clipboard(self, text: str) -> None:
        for msg in self.clipboard.offer(text):
            self._send(msg)

    def enable_continuous_updates(self, enable: bool, rect: Rect | None = None) -> None:
        r = rect or Rect(0, 0, self.width, self.height)
        self._send(m.EnableContinuousUpdates(enable, r.x, r.y, r.w, r.h))

    def set_desktop_size(self, width: int, height: int) -> None:
        screens = tuple(
            m.Screen(s.id, s.x, s.y, width, height, s.flags) for s in self.screens[:1]
        ) or (m.Screen(0, 0, 0, width, height),)
        self._send(m.SetDesktopSize(width, height, screens))

    def send_fence(self, flags: int, payload: bytes = b"") -> None:
        self._send(m.Fence(flags | FenceFlag.REQUEST, payload))
