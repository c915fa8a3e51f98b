"""A live RFB view of a desktop's console through thinserve's RFB client.

It asks for Raw updates and keeps asking, can type text (US keyboard
layout, Shift sent with capitals and shifted symbols, as servers that map
keys to scancodes need) and can wait for the screen to show something.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from twisted.internet import defer

from protocols.rfb.client import ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding
from thinserve.backends.base import ConsoleAddress
from thinserve.rfbclient import ClientOptions, RFBClientProtocol, connect

from .reactor import transport_of
from .waiting import sleep, wait_until

SHIFTED = '~!@#$%^&*()_+{}|:"<>?'
SHIFT_L, RETURN = 0xFFE1, 0xFF0D
KEY_PACING = 0.02  # seconds between typed characters, as a quick typist


class Console:
    """A connected RFB client that keeps asking for updates."""

    def __init__(self) -> None:
        self.proto: RFBClientProtocol | None = None
        self.updates = 0
        self.ready: defer.Deferred[None] = defer.Deferred()

    @classmethod
    async def open(cls, address: ConsoleAddress) -> Console:
        console = cls()
        options = ClientOptions(password=address.password)
        console.proto = await connect(address.endpoint, options, console._on_event)
        await console.ready
        return console

    def _on_event(self, proto: RFBClientProtocol, event: object) -> None:
        if isinstance(event, ServerInitReceived):
            proto.conn.set_encodings([Encoding.RAW])
            proto.conn.request_update(incremental=False)
        elif isinstance(event, UpdateDone):
            self.updates += 1
            proto.conn.request_update(incremental=True)
            if not self.ready.called:
                self.ready.callback(None)

    def frame(self) -> np.ndarray:
        assert self.proto is not None
        return self.proto.conn.framebuffer.copy()

    async def wait_for_frame(
        self, check: Callable[[np.ndarray], bool], timeout: float, what: str
    ) -> np.ndarray:
        """The first frame for which ``check(frame)`` holds."""

        def matching() -> np.ndarray | None:
            frame = self.frame()
            return frame if check(frame) else None

        return await wait_until(matching, timeout, f"the console to show {what}", interval=0.1)

    async def type_text(self, text: str, enter: bool = True) -> None:
        for char in text:
            shift = char.isupper() or char in SHIFTED
            if shift:
                self._key(True, SHIFT_L)
            self._key(True, ord(char))
            self._key(False, ord(char))
            if shift:
                self._key(False, SHIFT_L)
            await sleep(KEY_PACING)
        if enter:
            self._key(True, RETURN)
            self._key(False, RETURN)

    def _key(self, down: bool, keysym: int) -> None:
        assert self.proto is not None
        self.proto.conn.key_event(down, keysym)
        self.proto.flush()

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            transport_of(self.proto).loseConnection()


def lit_pixels(frame: np.ndarray) -> int:
    """How many pixels differ from the most common colour (the background)."""
    values, counts = np.unique(frame, return_counts=True)
    return int(frame.size - counts.max()) if len(values) else 0
