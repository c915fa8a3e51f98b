"""A terminal connected to thinserve: thinserve's own RFB client, as a terminal would be.

It keeps asking for updates and records what arrives, so a test can wait
until its screen shows something.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
from twisted.internet import protocol

from protocols.rfb.client import (
    ClientEvent,
    ContinuousUpdatesSupported,
    ServerInitReceived,
    UpdateDone,
)
from protocols.rfb.constants import Encoding, SecurityType
from protocols.rfb.server import ClipboardText
from thinserve import rfbclient

from .netns import NetNamespace
from .pixels import diff_summary
from .reactor import running_reactor, transport_of
from .waiting import wait_until

TERMINAL_ENCODINGS = (
    Encoding.ZRLE,
    Encoding.HEXTILE,
    Encoding.RAW,
    Encoding.COPYRECT,
    Encoding.CURSOR,
    Encoding.DESKTOP_SIZE,
    Encoding.EXTENDED_DESKTOP_SIZE,
    Encoding.EXTENDED_CLIPBOARD,
)

# A keyless viewer on loopback, as vncdotool or a VNC viewer set to None is.
PLAIN_VIEWER = rfbclient.ClientOptions(methods=(SecurityType.NONE,))


class Terminal:
    """A terminal connected to thinserve: keeps its screen up to date."""

    def __init__(
        self, encodings: Sequence[int] = TERMINAL_ENCODINGS, continuous: bool = False
    ) -> None:
        """``continuous``: let the server push updates (Continuous Updates)."""
        self.continuous = continuous
        self.encodings = tuple(encodings) + ((Encoding.CONTINUOUS_UPDATES,) if continuous else ())
        self.proto: rfbclient.RFBClientProtocol | None = None
        self.updates = 0
        self.clipboard: list[str] = []
        self.closed = False

    async def connect(
        self,
        port: int,
        source: str = "127.0.0.1",
        host: str = "127.0.0.1",
        netns: NetNamespace | None = None,
        options: rfbclient.ClientOptions = PLAIN_VIEWER,
    ) -> Terminal:
        """Connect from address ``source``: thinserve tells plain viewers apart
        by address, as it would tell apart PCs on a LAN.  With ``netns`` the
        connection is made in that network namespace (a host of a test LAN);
        ``options``: how to connect (beyond loopback thinserve asks for VeNCrypt)."""
        endpoint = f"{rfbclient.tcp(host, port)}:bindAddress={source}"
        with netns.entered() if netns is not None else contextlib.nullcontext():
            connecting = rfbclient.connect(endpoint, options, self._on_event)
        self.proto = await connecting
        self.proto.closed.addBoth(self._closed)
        await wait_until(lambda: self.updates > 0, 20, "the first update")
        return self

    def listen(self) -> int:
        """Listen like a VNC "listening viewer"; thinserve connects to us."""

        def build() -> rfbclient.RFBClientProtocol:
            proto = rfbclient.RFBClientProtocol(PLAIN_VIEWER, self._on_event)
            self.proto = proto
            proto.closed.addBoth(self._closed)
            return proto

        factory = protocol.Factory.forProtocol(build)
        self.listening = running_reactor().listenTCP(0, factory, interface="127.0.0.1")
        return self.listening.getHost().port

    def _closed(self, reason: object) -> None:
        self.closed = True

    def _on_event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        conn = proto.conn
        if isinstance(event, ServerInitReceived):
            conn.set_encodings(self.encodings)
            conn.request_update(incremental=False)
        elif isinstance(event, ContinuousUpdatesSupported):
            conn.enable_continuous_updates(True)
        elif isinstance(event, UpdateDone):
            self.updates += 1
            if not self.continuous:
                conn.request_update(incremental=True)
        elif isinstance(event, ClipboardText):
            self.clipboard.append(event.text)

    @property
    def framebuffer(self) -> np.ndarray:
        assert self.proto is not None
        return self.proto.conn.framebuffer

    async def wait_screen(self, want: np.ndarray, timeout: float = 20) -> None:
        await wait_until(
            lambda: self.framebuffer.shape == want.shape and np.array_equal(self.framebuffer, want),
            timeout,
            lambda: (
                "the terminal to show the expected picture "
                f"({diff_summary(self.framebuffer, want)})"
            ),
        )

    def type_text(self, text: str) -> None:
        special = {"\n": 0xFF0D, "\t": 0xFF09}  # X keysyms Return and Tab
        for char in text:
            self.key(special.get(char, ord(char)))

    def key(self, keysym: int) -> None:
        assert self.proto is not None
        self.proto.conn.key_event(True, keysym)
        self.proto.conn.key_event(False, keysym)
        self.proto.flush()

    def pointer(self, x: int, y: int, buttons: int = 0) -> None:
        assert self.proto is not None
        self.proto.conn.pointer_event(buttons, x, y)
        self.proto.flush()

    def send_clipboard(self, text: str) -> None:
        assert self.proto is not None
        self.proto.conn.send_clipboard(text)
        self.proto.flush()

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            transport_of(self.proto).loseConnection()

    def abort(self) -> None:
        """Vanish without a goodbye, as a terminal whose cable is pulled."""
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.abortConnection()
