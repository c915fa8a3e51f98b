"""A terminal's size request is passed to a desktop that can resize, and
scaled to when the desktop refuses: whatever the desktop does meanwhile."""

from __future__ import annotations

import numpy as np

from protocols.rfb.client import DesktopResized
from protocols.rfb.constants import Encoding
from thinserve.relay.source import Source

from .content import desktop_frame
from .test_session_stream import Wire


class ResizableDesktop(Source):
    """A desktop whose console passes size requests on, and remembers them."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__(desktop_frame(width, height, seed=7), "desk")
        self.asked: list[tuple[int, int]] = []
        self.input = self

    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        pass

    def pointer(self, buttons: int, x: int, y: int) -> None:
        pass

    def clipboard(self, text: str) -> None:
        pass

    def set_desktop_size(self, width: int, height: int) -> bool:
        self.asked.append((width, height))
        return True

    def switch_mode(self, width: int, height: int) -> None:
        """The desktop changes its own size (a guest's mode switch)."""
        self.framebuffer = desktop_frame(width, height, seed=8)
        self.resized()


def resizing_wire(desktop: Source) -> Wire:
    wire = Wire(desktop)
    encodings = [Encoding.ZRLE, Encoding.COPYRECT, Encoding.EXTENDED_DESKTOP_SIZE]
    wire.client.set_encodings(encodings)
    wire.client.request_update(incremental=False)
    wire.pump()
    return wire


def finish(wire: Wire) -> None:
    """Let updates go out and ask again, like a viewer, until none comes: an
    update that resizes the terminal is asked for at the old size."""
    for _ in range(5):
        while wire.session.stream is not None:
            wire.turn()
        before = len(wire.events)
        wire.client.request_update(incremental=True)
        wire.pump()
        while wire.session.stream is not None:
            wire.turn()
        if len(wire.events) == before:
            return
    raise AssertionError("updates kept coming")


def scaled(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """``frame`` scaled to ``width`` x ``height``: each output pixel shows the
    input pixel under its centre."""
    rows = (2 * np.arange(height) + 1) * frame.shape[0] // (2 * height)
    cols = (2 * np.arange(width) + 1) * frame.shape[1] // (2 * width)
    return frame[np.ix_(rows, cols)]


def test_a_refused_request_is_scaled_to() -> None:
    desktop = ResizableDesktop(640, 480)
    wire = resizing_wire(desktop)
    wire.client.set_desktop_size(320, 200)
    wire.pump()
    assert desktop.asked == [(320, 200)]
    desktop.resize_answered(False)
    finish(wire)
    np.testing.assert_array_equal(wire.client.framebuffer, scaled(desktop.framebuffer, 320, 200))
    assert wire.take(DesktopResized)[-1].reason == 1  # the answer to its request


def test_a_request_outlives_the_desktops_own_resize() -> None:
    """A guest that switches mode while the request is on its way does not
    answer it: the refusal that follows still scales the terminal."""
    desktop = ResizableDesktop(640, 480)
    wire = resizing_wire(desktop)
    wire.client.set_desktop_size(360, 200)
    wire.pump()
    desktop.switch_mode(720, 400)
    finish(wire)
    assert wire.client.framebuffer.shape == (400, 720)  # the desktop's new size, meanwhile
    desktop.resize_answered(False)
    finish(wire)
    np.testing.assert_array_equal(wire.client.framebuffer, scaled(desktop.framebuffer, 360, 200))


def test_a_granted_request_is_answered_and_not_scaled() -> None:
    desktop = ResizableDesktop(640, 480)
    wire = resizing_wire(desktop)
    wire.client.set_desktop_size(800, 600)
    wire.pump()
    desktop.switch_mode(800, 600)
    desktop.resize_answered(True)
    finish(wire)
    assert wire.client.framebuffer.shape == (600, 800)
    np.testing.assert_array_equal(wire.client.framebuffer, desktop.framebuffer)
    answers = [e for e in wire.take(DesktopResized) if e.reason == 1]
    assert [(e.width, e.height, e.status) for e in answers] == [(800, 600, 0)]
    desktop.resize_answered(False)  # a later refusal answers nobody's request here
    finish(wire)
    assert wire.client.framebuffer.shape == (600, 800)


def test_a_request_pending_when_the_terminal_moves_is_kept() -> None:
    """Moved to another desktop before the first answered, the terminal keeps
    the size it asked for: the new desktop is scaled to it."""
    first, second = ResizableDesktop(640, 480), Source(desktop_frame(1024, 768, seed=9), "two")
    wire = resizing_wire(first)
    wire.client.set_desktop_size(360, 200)
    wire.pump()
    wire.session.show(second, control=True)
    finish(wire)
    np.testing.assert_array_equal(wire.client.framebuffer, scaled(second.framebuffer, 360, 200))
    first.resize_answered(False)  # heard by nobody any more
    finish(wire)
    np.testing.assert_array_equal(wire.client.framebuffer, scaled(second.framebuffer, 360, 200))
