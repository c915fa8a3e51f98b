"""Screens thinserve draws itself (Pillow), at the terminal's resolution.

Text is sized from the screen height so it stays readable from across a
room on any terminal.  Each screen returns an internal framebuffer
(2-D uint32, 0x00RRGGBB).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (24, 44, 72)
FOREGROUND = (240, 244, 248)
ACCENT = (255, 196, 64)
DIM = (150, 170, 195)
REASON_WIDTH = 60  # characters per line of a failure's reason
REASON_LINES = 4


@dataclass(frozen=True)
class ScreenText:
    """What a screen says: a title, lines under it, an optional highlight."""

    title: str
    lines: tuple[str, ...] = ()
    highlight: str | None = None  # drawn big, e.g. a pairing code
    footer: str = "thinserve"
    progress: float | None = None  # 0..1 shows a progress bar
    extra: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def render(text: ScreenText, width: int, height: int) -> np.ndarray:
    """Draw ``text`` centred on a plain background at width x height."""
    image = Image.new("RGB", (max(width, 1), max(height, 1)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    unit = max(height // 18, 10)
    y = height // 4
    y = _centred(draw, text.title, _font(unit * 2), FOREGROUND, width, y) + unit
    if text.highlight:
        y = _centred(draw, text.highlight, _font(unit * 4), ACCENT, width, y) + unit
    for line in text.lines:
        y = _centred(draw, line, _font(unit), FOREGROUND, width, y) + unit // 2
    if text.progress is not None:
        _progress_bar(draw, text.progress, width, y + unit, unit)
    _centred(draw, text.footer, _font(max(unit * 2 // 3, 8)), DIM, width, height - unit * 2)
    # Pillow packs B, G, R and a zero byte: as little-endian words, 0x00RRGGBB.
    packed = np.frombuffer(bytearray(image.tobytes("raw", "BGRX")), dtype="<u4")
    return packed.reshape(image.height, image.width).astype(np.uint32, copy=False)


def _centred(
    draw: ImageDraw.ImageDraw,
    line: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    colour: tuple[int, int, int],
    width: int,
    y: int,
) -> int:
    """Draw one centred line at y, shrunk to fit the width; return the y below it."""
    font = _fitting(draw, line, font, width * 0.94)
    left, _top, right, bottom = draw.textbbox((0, 0), line, font=font)
    draw.text(((width - (right - left)) // 2, y), line, font=font, fill=colour)
    return y + int(bottom)


def _fitting(
    draw: ImageDraw.ImageDraw,
    line: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    room: float,
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest size of ``font`` (down to 8 px) whose rendering of ``line`` fits."""
    size = int(getattr(font, "size", 0))
    while size > 8:
        left, _top, right, _bottom = draw.textbbox((0, 0), line, font=font)
        if right - left <= room:
            break
        size = max(8, int(size * 0.9))
        font = _font(size)
    return font


def _progress_bar(
    draw: ImageDraw.ImageDraw, fraction: float, width: int, y: int, unit: int
) -> None:
    left, right = width // 4, width * 3 // 4
    draw.rectangle((left, y, right, y + unit), outline=FOREGROUND, width=max(unit // 8, 1))
    filled = left + int((right - left) * min(max(fraction, 0.0), 1.0))
    if filled > left:
        draw.rectangle((left, y, filled, y + unit), fill=ACCENT)


def connecting(desktop: str) -> ScreenText:
    return ScreenText("Connecting", (f"to {desktop}",), progress=None)


def unavailable(desktop: str, retry_in: float, reason: str = "") -> ScreenText:
    lines = (
        f"{desktop} is not available.",
        f"Retrying in {retry_in:.0f} s" if retry_in >= 1 else "Retrying",
    )
    return ScreenText("Desktop unavailable", lines + ((reason,) if reason else ()))


def could_not_start(desktop: str, reason: str) -> ScreenText:
    """A desktop that failed to start: its name, then why, in lines that fit."""
    lines = tuple(textwrap.wrap(reason, REASON_WIDTH, max_lines=REASON_LINES)) or ("",)
    return ScreenText(
        f"Desktop {desktop} could not start",
        (*lines, "It is tried again by itself. Tell the administrator if this stays."),
    )


def no_desktop_free() -> ScreenText:
    return ScreenText(
        "No desktop free",
        ("Every desktop is in use.", "This screen changes by itself when one is free."),
    )


def server_busy() -> ScreenText:
    return ScreenText(
        "Server busy",
        ("Too many terminals are waiting to be paired.", "Please try again in a few minutes."),
    )


def pairing(terminal_id: str, code: str, message: str = "") -> ScreenText:
    lines = (
        f"Terminal {terminal_id}",
        "An administrator pairs it with this code:",
    )
    footer = f"thinserve pair --code {code} DESKTOP"
    return ScreenText("Pair this terminal", lines + ((message,) if message else ()), code, footer)


def starting(desktop: str, progress: float | None) -> ScreenText:
    return ScreenText("Starting your desktop", (desktop, "This takes a moment."), progress=progress)


def in_use(desktop: str) -> ScreenText:
    return ScreenText("Desktop in use", (f"{desktop} is in use at another terminal.",))


def cannot_accept(reason: str) -> ScreenText:
    """The server cannot take a terminal now, e.g. ``reason`` "its disk is full"."""
    return ScreenText(
        "Cannot connect",
        (
            f"This server cannot accept terminals right now ({reason}).",
            "Please tell the administrator.",
        ),
    )


def kicked(message: str = "") -> ScreenText:
    return ScreenText("Disconnected", (message or "An administrator ended this session.",))


def login_form(
    user: str, secret_length: int, field: str, message: str = "", terminal_id: str = ""
) -> ScreenText:
    cursor = "_"
    user_line = f"User:  {user}{cursor if field == 'user' else ''}"
    secret_line = f"PIN:  {'*' * secret_length}{cursor if field == 'secret' else ''}"
    lines: tuple[str, ...] = (user_line, secret_line, "Tab: next field   Enter: log in")
    if message:
        lines += (message,)
    return ScreenText("Log in", lines, footer=f"thinserve  {terminal_id}".rstrip())
