"""The server role of an RFB connection, sans I/O.

Usage::

    conn = ServerConnection([SecurityType.NONE])
    transport.write(conn.data_to_send())          # the version string
    for event in conn.receive_data(data):         # handshake and messages
        ...                                       # ClientInit -> conn.server_init(...)
    conn.send_update(framebuffer, [Rect(...)])    # after a FramebufferUpdateRequest
    transport.write(conn.data_to_send())

Extension acknowledgements (QEMU extended keys, continuous updates, fences,
Extended Clipboard capabilities, desktop-size announcements) are handled
here, so the caller sees only what it must act on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from . import messages as m
from .clipboard import ClipboardState
from .connection import Connection
from .constants import ClipboardFlag, Encoding, FenceFlag, ResizeReason, ResizeStatus
from .encodings import Rect
from .errors import ProtocolError
from .handshake import HandshakeEvent, ServerHandshake
from .limits import DEFAULT_LIMITS, Limits
from .pixelformat import DEFAULT_COLOUR_MAP, NATIVE, PixelCodec, PixelFormat
from .sharing import Job, SharedWork
from .updates import ClientSettings, Part, RectEncoder
from .updatestats import RECT_HEADER, UpdateStats, rect_kind

# Rectangles at least this big are prepared in worker threads when a pool is
# given (smaller ones cost less than the trip to a worker and back).
POOL_MIN_PIXELS = 16 * 1024
FENCE_FLAGS_SUPPORTED = FenceFlag.BLOCK_BEFORE | FenceFlag.BLOCK_AFTER | FenceFlag.SYNC_NEXT


@dataclass(frozen=True)
class ClipboardText:
    """Text the peer put on its clipboard (plain or Extended Clipboard)."""

    text: str


@dataclass(frozen=True)
class ClipboardIgnored:
    """An Extended Clipboard message the server does not act on (a format or
    action it does not offer): nothing is wrong, but the caller may log it."""

    reason: str


@dataclass(frozen=True)
class Cursor:
    hotspot_x: int
    hotspot_y: int
    pixels: np.ndarray  # (h, w) uint32 0x00RRGGBB
    mask: np.ndarray  # (h, w) bool: True where the cursor is opaque


ServerEvent = (
    HandshakeEvent
    | m.ClientInit
    | m.SetPixelFormat
    | m.SetEncodings
    | m.FramebufferUpdateRequest
    | m.KeyEvent
    | m.PointerEvent
    | m.QemuKeyEvent
    | m.EnableContinuousUpdates
    | m.SetDesktopSize
    | m.Fence
    | ClipboardText
    | ClipboardIgnored
)


class ServerConnection(Connection[ServerHandshake]):
    def __init__(self, methods: Sequence[int], *, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(ServerHandshake(methods, limits=limits), limits)
        self.width = 0
        self.height = 0
        self.screens: tuple[m.Screen, ...] = ()
        self.pixel_format: PixelFormat = NATIVE
        self.codec = PixelCodec(NATIVE)
        self.settings = ClientSettings()
        self.rect_encoder = RectEncoder()
        self.clipboard = ClipboardState(from_server=True, max_text=limits.max_cut_text)
        self.continuous_updates = False
        self._initialised = False
        self._pending_pseudo: list[tuple[m.RectHeader, bytes]] = []
        self._announced: set[int] = set()
        self._stream: UpdateStream | None = None
        self._held = bytearray()  # messages queued while an update goes out
        self._between_messages = False  # the reader waits for a message's type

    def _max_need(self) -> int:
        return self.limits.max_cut_text + 64

    # -- authentication (handshake) ---------------------------------------------
    def accept_auth(self) -> list[ServerEvent]:
        """Accept the credentials the last auth event carried; returns new events."""
        self._handshake.accept_auth()
        return self.receive_data(b"")

    def reject_auth(self, reason: str) -> None:
        """Refuse them; the failure (with reason on 3.8) is queued, then close."""
        self._handshake.reject_auth(reason)

    # -- reading client messages --------------------------------------------------
    def receive_data(self, data: bytes) -> list[Any]:
        """Feed received bytes; returns the events they complete.

        While the reader waits for a message's type with nothing buffered,
        whole messages of one size at the front of ``data`` are read here:
        the same messages the reader would give, without its steps.  Every
        terminal sends an update request for each update, so fifty watching
        one desktop send fifty for each change.
        """
        if self._between_messages:  # then the driver holds no byte: it reads on while it can
            data = self._read_fixed(data)
            if not data:
                return self._take_events()
        return super().receive_data(data)

    def _read_fixed(self, data: bytes) -> bytes:
        """Handle the whole fixed-size messages at the front of ``data``; the rest."""
        start, size = 0, len(data)
        while start < size and (fixed := m.FIXED_CLIENT_BODIES.get(data[start])) is not None:
            body, parse = fixed
            end = start + 1 + body
            if end > size:
                break
            self._handle(parse(data[start + 1 : end]))
            start = end
        return data[start:] if start else data

    def _reader(self) -> Generator[int, bytes, None]:
        init = yield from m.read_client_init()
        self._events.append(init)
        while True:
            self._between_messages = True
            (kind,) = yield 1
            self._between_messages = False
            self._handle((yield from m.read_client_body(kind, self.limits)))

    def _handle(self, msg: m.ClientMessage) -> None:
        if isinstance(msg, m.SetPixelFormat):
            self._set_pixel_format(msg.pixel_format)
        elif isinstance(msg, m.SetEncodings):
            self._set_encodings(msg.encodings)
        elif isinstance(msg, m.FramebufferUpdateRequest):
            msg = self._clip_request(msg)
        elif isinstance(msg, m.Fence):
            self._answer_fence(msg)
            return
        elif isinstance(msg, m.EnableContinuousUpdates):
            self._set_continuous(msg)
        elif isinstance(msg, m.CutText | m.ExtendedClipboard):
            self._receive_clipboard(msg)
            return
        self._events.append(msg)

    def _set_pixel_format(self, pf: PixelFormat) -> None:
        self.pixel_format = pf
        self.codec = PixelCodec(pf)
        if not pf.true_colour:
            colours = tuple(
                (int(c >> 16 & 255) * 257, int(c >> 8 & 255) * 257, int(c & 255) * 257)
                for c in DEFAULT_COLOUR_MAP
            )
            self._queue(m.SetColourMapEntries(0, colours).pack())

    def _set_encodings(self, encodings: tuple[int, ...]) -> None:
        self.settings = ClientSettings.from_encodings(encodings)
        self.rect_encoder.configure(self.settings)
        fresh = self.settings.pseudo - self._announced
        self._announced |= self.settings.pseudo
        if Encoding.QEMU_EXTENDED_KEY_EVENT in fresh:
            self._pending_pseudo.append(
                (m.RectHeader(0, 0, 0, 0, Encoding.QEMU_EXTENDED_KEY_EVENT), b"")
            )
        if Encoding.EXTENDED_DESKTOP_SIZE in fresh and self._initialised:
            self._queue_desktop_size(ResizeReason.SERVER, ResizeStatus.OK)
        if Encoding.CONTINUOUS_UPDATES in fresh:
            self._queue(m.EndOfContinuousUpdates().pack())
        if Encoding.FENCE in fresh:
            self._queue(m.Fence(int(FENCE_FLAGS_SUPPORTED | FenceFlag.REQUEST), b"", True).pack())
        if Encoding.EXTENDED_CLIPBOARD in fresh:
            self._queue(self.clipboard.our_caps().pack())
            self.clipboard.extended = True

    def _clip_request(self, req: m.FramebufferUpdateRequest) -> m.FramebufferUpdateRequest:
        if req.x + req.width <= self.width and req.y + req.height <= self.height:
            return req  # inside the screen, as nearly every request is
        x, y = min(req.x, self.width), min(req.y, self.height)
        w = min(req.width, self.width - x)
        h = min(req.height, self.height - y)
        return m.FramebufferUpdateRequest(req.incremental, x, y, w, h)

    def _answer_fence(self, fence: m.Fence) -> None:
        if fence.flags & FenceFlag.REQUEST:
            flags = fence.flags & FENCE_FLAGS_SUPPORTED
            self._queue(m.Fence(int(flags), fence.payload, True).pack())
        else:
            self._events.append(fence)  # the answer to a fence of ours (send_fence)

    def _set_continuous(self, msg: m.EnableContinuousUpdates) -> None:
        if not self.settings.supports(Encoding.CONTINUOUS_UPDATES):
            raise ProtocolError("continuous updates enabled without announcing support")
        self.continuous_updates = msg.enable
        if not msg.enable:
            self._queue(m.EndOfContinuousUpdates().pack())

    def _receive_clipboard(self, msg: m.CutText | m.ExtendedClipboard) -> None:
        replies, text = self.clipboard.receive(msg)
        for reply in replies:
            self._queue(reply.pack())
        if text is not None:
            self._events.append(ClipboardText(text))
        elif (
            not replies
            and isinstance(msg, m.ExtendedClipboard)
            and not msg.flags & ClipboardFlag.CAPS
        ):
            reason = f"Extended Clipboard message with flags 0x{msg.flags:08x} asks for nothing"
            self._events.append(ClipboardIgnored(reason + " this server acts on (text only)"))

    # -- sending --------------------------------------------------------------------
    def server_init(
        self,
        width: int,
        height: int,
        name: str,
        pixel_format: PixelFormat = NATIVE,
    ) -> None:
        """Answer ClientInit with the desktop's size, name and pixel format."""
        self.width, self.height = width, height
        self.screens = (m.Screen(0, 0, 0, width, height),)
        self._set_pixel_format_silently(pixel_format)
        self._queue(m.ServerInit(width, height, pixel_format, name).pack())
        self._initialised = True

    def _set_pixel_format_silently(self, pf: PixelFormat) -> None:
        self.pixel_format = pf
        self.codec = PixelCodec(pf)

    def send_update(
        self,
        fb: np.ndarray,
        regions: Sequence[Rect],
        copies: Sequence[tuple[Rect, int, int]] = (),
    ) -> int:
        """Send one whole FramebufferUpdate (see :meth:`begin_update`); returns its bytes."""
        stream = self.begin_update(fb, regions, copies)
        stream.send()
        return stream.bytes

    def begin_update(
        self,
        fb: np.ndarray,
        regions: Sequence[Rect],
        copies: Sequence[tuple[Rect, int, int]] = (),
        *,
        work: SharedWork | None = None,
        pool: Callable[[Job], None] | None = None,
    ) -> UpdateStream:
        """Start a FramebufferUpdate: queued pseudo-rects, copies, then regions.

        ``copies`` are (destination, src_x, src_y) and go out first, as
        CopyRect when the client accepts it.  The update's header, pseudo
        rectangles and CopyRects are queued at once; the regions' pixels are
        encoded as the returned stream is sent, so the first rectangles can
        be on their way while later ones are encoded.  Until the stream is
        done, other messages wait behind it.  ``work`` and ``pool``: see
        :class:`UpdateStream`.
        """
        if self._stream is not None:
            raise RuntimeError("the previous FramebufferUpdate is still being sent")
        ready = list(self._pending_pseudo)
        pseudo = bool(ready)
        self._pending_pseudo.clear()
        parts: list[Part] = []
        for dest, sx, sy in copies:
            if self.settings.supports(Encoding.COPYRECT):
                ready.append(self.rect_encoder.encode_copy(dest, sx, sy))
            else:
                parts += self.rect_encoder.plan(fb, dest, work)
        for region in regions:
            parts += self.rect_encoder.plan(fb, region, work)
        head = m.FramebufferUpdate(ready).pack_head(len(ready) + len(parts))
        self._out += head
        stats = UpdateStats()
        for header, payload in ready:
            stats.add(rect_kind(header.encoding, payload), RECT_HEADER + len(payload))
        keep = None if pseudo else self._keeper(regions, copies, work)
        stream = self._stream = UpdateStream(
            self.rect_encoder,
            fb,
            parts,
            self.codec,
            head,
            out=self._stream_out,
            on_done=self._stream_done,
            stats=stats,
            work=work,
            pool=pool,
            keep=keep,
        )
        if not parts:
            stream.send()  # nothing to encode: done at once
        return stream

    def send_prepared(
        self,
        regions: Sequence[Rect],
        copies: Sequence[tuple[Rect, int, int]],
        work: SharedWork,
    ) -> UpdateStats | None:
        """Queue the update another connection sent for the same rectangles of
        ``work``'s picture with the same settings, if one is kept; what it
        carried, or None (then :meth:`begin_update` encodes it)."""
        key = None if self._pending_pseudo else self._update_key(regions, copies, work)
        found = None if key is None else work.update(key)
        if found is None:
            return None
        data, stats = found
        self._out += data
        return stats

    def _update_key(
        self,
        regions: Sequence[Rect],
        copies: Sequence[tuple[Rect, int, int]],
        work: SharedWork | None,
    ) -> Hashable | None:
        """What decides an update's bytes on ``work``'s picture, when it can be
        shared at all: the connection encodes for several
        (``RectEncoder.share_streams``), no update is going out, nothing of
        its own is queued.  A connection encoding for itself alone neither
        keeps its updates nor looks for them."""
        if work is None or self._stream is not None or not self.rect_encoder.shared:
            return None
        return (tuple(regions), tuple(copies), self.rect_encoder.update_key(), self.pixel_format)

    def _keeper(
        self,
        regions: Sequence[Rect],
        copies: Sequence[tuple[Rect, int, int]],
        work: SharedWork | None,
    ) -> Callable[[bytes | None, UpdateStats], None] | None:
        """Where the update about to be encoded is kept for other connections
        (``send_prepared``), if it may be."""
        key = self._update_key(regions, copies, work)
        if key is None or work is None or not work.record(key):
            return None
        return partial(work.keep_update, key)

    def _stream_out(self, data: bytes) -> None:
        self._out += data

    def _stream_done(self) -> None:
        self._stream = None
        self._out += self._held
        self._held.clear()

    def _queue(self, data: bytes) -> None:
        """Any message but an update's rectangles: after the update going out."""
        if self._stream is None:
            self._out += data
        else:
            self._held += data

    @property
    def sending_update(self) -> bool:
        """Whether a FramebufferUpdate is still being sent (its stream not done)."""
        return self._stream is not None

    @property
    def jpeg_quality(self) -> int | None:
        """The JPEG quality level (0..9) Tight encodes with; None: no JPEG."""
        return self.rect_encoder.settings.quality

    @jpeg_quality.setter
    def jpeg_quality(self, quality: int | None) -> None:
        """Encode with another level than the client's own, until its next SetEncodings."""
        self.rect_encoder.configure(replace(self.settings, quality=quality))

    @property
    def has_pending_pseudo(self) -> bool:
        return bool(self._pending_pseudo)

    def set_cursor(self, cursor: Cursor) -> bool:
        """Queue a cursor shape for the next update; False if unsupported."""
        if not self.settings.supports(Encoding.CURSOR):
            return False
        h, w = cursor.pixels.shape
        payload = self.codec.to_wire(cursor.pixels) + pack_mask(cursor.mask)
        header = m.RectHeader(cursor.hotspot_x, cursor.hotspot_y, w, h, Encoding.CURSOR)
        self._pending_pseudo = [r for r in self._pending_pseudo if r[0].encoding != Encoding.CURSOR]
        self._pending_pseudo.append((header, payload))
        return True

    @property
    def can_resize(self) -> bool:
        return self.settings.supports(Encoding.EXTENDED_DESKTOP_SIZE) or self.settings.supports(
            Encoding.DESKTOP_SIZE
        )

    def resize(self, width: int, height: int, reason: int = ResizeReason.SERVER) -> bool:
        """Queue a framebuffer size change; False if the client cannot take it."""
        if not self.can_resize:
            return False
        self.width, self.height = width, height
        self.screens = (m.Screen(0, 0, 0, width, height),)
        self._queue_desktop_size(reason, ResizeStatus.OK)
        return True

    def answer_set_desktop_size(self, status: ResizeStatus) -> None:
        """Tell the client how its SetDesktopSize request went (reason 1)."""
        self._queue_desktop_size(ResizeReason.THIS_CLIENT, status)

    def _queue_desktop_size(self, reason: int, status: int) -> None:
        self._pending_pseudo = [
            r
            for r in self._pending_pseudo
            if r[0].encoding not in (Encoding.DESKTOP_SIZE, Encoding.EXTENDED_DESKTOP_SIZE)
        ]
        if self.settings.supports(Encoding.EXTENDED_DESKTOP_SIZE):
            header = m.RectHeader(
                reason, status, self.width, self.height, Encoding.EXTENDED_DESKTOP_SIZE
            )
            body = bytes([len(self.screens), 0, 0, 0]) + b"".join(s.pack() for s in self.screens)
            self._pending_pseudo.insert(0, (header, body))
        elif status == 0 and reason != 1:
            header = m.RectHeader(0, 0, self.width, self.height, Encoding.DESKTOP_SIZE)
            self._pending_pseudo.insert(0, (header, b""))

    def send_clipboard(self, text: str) -> None:
        for msg in self.clipboard.offer(text):
            self._queue(msg.pack())

    def send_bell(self) -> None:
        self._queue(m.Bell().pack())

    def send_fence(self, flags: int, payload: bytes = b"") -> None:
        self._queue(m.Fence(flags | FenceFlag.REQUEST, payload, True).pack())


class UpdateStream:
    """The rectangles of one FramebufferUpdate, encoded as they are sent.

    Each rectangle goes to ``out`` as it is encoded; ``on_done`` is called once,
    after the last, so that messages held back behind the update can follow.
    ``stats`` says what the update carried so far, per kind of rectangle.

    Each rectangle's pixels-only work is a :class:`Job`, shared through
    ``work`` with other connections encoding the same picture.  With
    ``pool`` (only for a still picture: workers read it while the caller
    goes on), large rectangles' jobs are handed to worker threads at once,
    so the whole update is prepared on every core while its first
    rectangles go out; the connection's own part (zlib) is done here, in
    order.
    """

    def __init__(
        self,
        encoder: RectEncoder,
        fb: np.ndarray,
        parts: list[Part],
        codec: PixelCodec,
        head: bytes,
        *,
        out: Callable[[bytes], None],
        on_done: Callable[[], None],
        stats: UpdateStats | None = None,
        work: SharedWork | None = None,
        pool: Callable[[Job], None] | None = None,
        keep: Callable[[bytes | None, UpdateStats], None] | None = None,
    ) -> None:
        self._encoder = encoder
        self._fb = fb
        self._codec = codec
        self._work = work
        self._pool = pool
        # Each rectangle with its job, made when first needed: a long update's
        # first rectangle leaves without waiting for the rest's bookkeeping.
        self._parts: deque[tuple[Part, Job | None]] = deque((part, None) for part in parts)
        self._out = out
        self._on_done = on_done
        self._finished = False
        # The update's bytes so far, while it may still be kept for other
        # connections (every rectangle's finish shared so far).
        self._keep = keep
        self._recorded: list[bytes] | None = [head] if keep is not None else None
        self.bytes = len(head)  # queued so far, the header included
        self.stats = stats if stats is not None else UpdateStats()
        if pool is not None:
            self._hand_out(pool)

    def _hand_out(self, pool: Callable[[Job], None]) -> None:
        """Queue the large rectangles' jobs, but the first: the caller is about
        to do that one itself, so it leaves without a trip through a worker."""
        for index, (part, _) in enumerate(self._parts):
            if not index or part.rect.area < POOL_MIN_PIXELS:
                continue
            job = self._job(index)
            if not job.queued and not job.done:
                job.queued = True
                pool(job)

    def _job(self, index: int) -> Job:
        """The job of the ``index``-th rectangle still to send (made now if need be)."""
        part, job = self._parts[index]
        if job is None:
            job = self._encoder.job(self._fb, part, self._codec, self._work)
            self._parts[index] = (part, job)
        return job

    @property
    def done(self) -> bool:
        return not self._parts

    @property
    def waiting_for(self) -> Job | None:
        """The job another thread runs now, which the next rectangle needs."""
        if self._parts and (job := self._job(0)).running_elsewhere:
            return job
        return None

    def send(self, pixels: int | None = None) -> bool:
        """Encode and queue rectangles: all, or about ``pixels`` pixels' worth.

        With a budget, it stops early at a rectangle that another thread is
        still preparing (see ``waiting_for``) rather than wait for it.
        Returns whether more remain.
        """
        budget = pixels
        clock = time.perf_counter
        while self._parts and (budget is None or budget > 0):
            job = self._job(0)
            part = self._parts[0][0]
            if budget is not None and job.running_elsewhere:
                break
            self._parts.popleft()
            ran_here = not job.done and not job.running_elsewhere
            started = clock()
            prepared = job.result()
            header, payload = self._encoder.finish(part, prepared, self._codec)
            took = clock() - started + (0.0 if ran_here else job.seconds)
            packed = header.pack()
            self._out(packed)
            self._out(payload)
            self._record(part, prepared, packed, payload)
            size = RECT_HEADER + len(payload)
            self.bytes += size
            self.stats.add_encoded(rect_kind(header.encoding, payload), size, took)
            if budget is not None:
                budget -= part.rect.area
        if not self._parts and not self._finished:
            self._finished = True
            self._kept()
            self._on_done()
        return bool(self._parts)

    def _record(self, part: Part, prepared: object, header: bytes, payload: bytes) -> None:
        if self._recorded is None:
            return
        if self._encoder.finish_is_shared(part, prepared):
            self._recorded += (header, payload)
        else:
            self._recorded = None

    def _kept(self) -> None:
        """Hand the whole update to ``keep``: its bytes if other connections can
        send them as they are, else None."""
        if self._keep is not None:
            data = None if self._recorded is None else b"".join(self._recorded)
            self._keep(data, self.stats)
            self._keep = self._recorded = None

    def blank(self) -> None:
        """Send the rest black: what it showed is no longer the client's to see.

        Work already prepared from the picture is dropped with it.
        """
        self._fb = np.zeros_like(self._fb)
        self._work = self._pool = None
        self.renew()

    def renew(self) -> None:
        """Prepare the rest anew, with the encoders' settings as they are now
        (a lower JPEG quality for a slow link takes effect mid-update)."""
        self._recorded = None  # its rectangles no longer all come from one picture and settings
        self._parts = deque((part, None) for part, _ in self._parts)
        if self._pool is not None:
            self._hand_out(self._pool)


def pack_mask(mask: np.ndarray) -> bytes:
    """A cursor bitmask: one bit per pixel, rows padded to whole bytes."""
    return np.packbits(np.asarray(mask, dtype=bool), axis=1).tobytes()
