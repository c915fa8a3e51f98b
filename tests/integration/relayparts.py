"""Helpers for relay tests: thinserve in-process, and terminals that watch it.

A :class:`Terminal` is thinserve's own RFB client connected to thinserve as
a terminal would be: it keeps asking for updates and records what arrives,
so a test can wait until its screen shows something.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from twisted.internet import reactor, task

from protocols.rfb.client import (
    ClientEvent,
    ContinuousUpdatesSupported,
    ServerInitReceived,
    UpdateDone,
)
from protocols.rfb.constants import Encoding, SecurityType
from protocols.rfb.server import ClipboardText
from thinserve import rfbclient
from thinserve.broker import BrokerConfig
from thinserve.config import Config, DesktopConfig
from thinserve.service import ThinServe

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


def first_free(desktops: Sequence[DesktopConfig]) -> BrokerConfig:
    """Every terminal gets the first free desktop (a pool of them all)."""
    names = tuple(d.name for d in desktops)
    return BrokerConfig(unknown_terminal="pool", pools={"all": names}, default_pool="all")


async def start_thinserve(
    desktops: Sequence[DesktopConfig],
    broker: BrokerConfig | None = None,
    web: bool = False,
    database: str = ":memory:",
    discovery_interfaces: tuple[str, ...] | None = None,
    dial: tuple[str, ...] = (),
    address_pairing: tuple[str, ...] = ("127.0.0.0/8",),
) -> ThinServe:
    """thinserve in this process; terminals get desktops by ``broker`` (default:
    first free).  Discovery runs only when interfaces are given.  Keyless
    viewers on loopback are known by address (``viewer-127.0.0.N``), as an
    admin may choose for a subnet, unless ``address_pairing`` says otherwise."""
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=("tcp:port=0:interface=127.0.0.1",) if web else (),
        broker=broker or first_free(desktops),
        database=database,
        admin_socket="",  # no admin API unless a test asks for one
        discovery=discovery_interfaces is not None,
        discovery_interfaces=discovery_interfaces or (),
        dial=dial,
        address_pairing=address_pairing,
        desktops=tuple(desktops),
        local_desktops=(),
        source="test",
    )
    server = ThinServe(config, reactor)
    await server.startService()
    return server


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await sleep(0.05)


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

    async def connect(self, port: int, source: str = "127.0.0.1") -> Terminal:
        """Connect from loopback address ``source``: thinserve tells plain
        viewers apart by address, as it would tell apart PCs on a LAN."""
        endpoint = f"{rfbclient.tcp('127.0.0.1', port)}:bindAddress={source}"
        self.proto = await rfbclient.connect(endpoint, PLAIN_VIEWER, self._on_event)
        self.proto.closed.addBoth(self._closed)
        await wait_for(lambda: self.updates > 0, 20, "the first update")
        return self

    def listen(self) -> int:
        """Listen like a VNC "listening viewer"; thinserve connects to us."""
        from twisted.internet import protocol

        def build() -> rfbclient.RFBClientProtocol:
            proto = rfbclient.RFBClientProtocol(PLAIN_VIEWER, self._on_event)
            self.proto = proto
            proto.closed.addBoth(self._closed)
            return proto

        factory = protocol.Factory.forProtocol(build)
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
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
        await wait_for(
            lambda: self.framebuffer.shape == want.shape and np.array_equal(self.framebuffer, want),
            timeout,
            "the terminal to show the expected picture",
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
            self.proto.transport.loseConnection()

    def abort(self) -> None:
        """Vanish without a goodbye, as a terminal whose cable is pulled."""
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.abortConnection()
