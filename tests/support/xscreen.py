"""Exact pixels on an X screen: paint the root window from a frame, and read it back."""

from __future__ import annotations

import numpy as np
from Xlib import X
from Xlib.display import Display
from Xlib.protocol import display as xprotocol
from Xlib.protocol import event as xevent

REQUEST_HEADER_BYTES = 64  # room for the PutImage request header


def open_display(name: str) -> Display:
    """Connect to an X display with python-xlib, safely after other displays.

    python-xlib keeps the event-code table in a class attribute shared by every
    connection, and each connection writes its server's extension event codes
    into it; a second server with other codes then breaks the constructor.  Our
    connections are short-lived, so each starts from the pristine core table.
    """
    xprotocol.Display.event_classes = xevent.event_class.copy()
    return Display(name)


def _check_truecolour(display: Display) -> None:
    screen = display.screen()
    visual = next(
        v for d in screen.allowed_depths for v in d.visuals if v.visual_id == screen.root_visual
    )
    masks = (visual.red_mask, visual.green_mask, visual.blue_mask)
    if screen.root_depth != 24 or masks != (0xFF0000, 0x00FF00, 0x0000FF):
        raise RuntimeError(f"X screen is depth {screen.root_depth} with masks {masks}; need 24-bit")


def paint_root(display_name: str, frame: np.ndarray) -> None:
    """Make the root window show ``frame`` (uint32 0x00RRGGBB) from its top-left corner.

    The frame becomes the root window's background pixmap (tiled if smaller than the
    screen): the window keeps the pixmap alive after this client disconnects, and
    the X server repaints it exactly after any exposure.
    """
    height, width = frame.shape
    display = open_display(display_name)
    try:
        _check_truecolour(display)
        root = display.screen().root
        pixmap = root.create_pixmap(width, height, 24)
        gc = pixmap.create_gc()
        rows_per_request = max(1, _max_request_bytes(display) // (width * 4))
        words = np.ascontiguousarray(frame, dtype="<u4")
        for top in range(0, height, rows_per_request):
            band = words[top : top + rows_per_request]
            pixmap.put_image(gc, 0, top, width, band.shape[0], X.ZPixmap, 24, 0, band.tobytes())
        root.change_attributes(background_pixmap=pixmap)
        root.clear_area(0, 0, 0, 0)
        gc.free()
        pixmap.free()
        display.sync()
    finally:
        display.close()


def _max_request_bytes(display: Display) -> int:
    return int(display.display.info.max_request_length) * 4 - REQUEST_HEADER_BYTES


def grab_root(display_name: str, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The root window's pixels (x, y, width, height box, default all) as uint32 0x00RRGGBB."""
    display = open_display(display_name)
    try:
        _check_truecolour(display)
        screen = display.screen()
        x, y, width, height = box or (0, 0, screen.width_in_pixels, screen.height_in_pixels)
        reply = screen.root.get_image(x, y, width, height, X.ZPixmap, 0xFFFFFFFF)
        words = np.frombuffer(reply.data, dtype="<u4").reshape(height, width)
        return words & np.uint32(0x00FFFFFF)
    finally:
        display.close()
