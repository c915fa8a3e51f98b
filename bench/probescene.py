"""The desktops a tester looks at: xterm-like windows, a clock face, an X logo.

Two pictures, rendered with Pillow from fixed seeds and DejaVu fonts, so
every run draws the same pixels:

* ``probe``: what a tester's desktop shows when they try a terminal: three
  xterm-like windows of monospace text (a shell session, black on white),
  a clock face and the X logo, over a plain background.  :func:`probe_desk`
  also says where the first xterm's prompt waits for typing and where the
  clock is, for the workload that types and ticks (``bench/probeload.py``);
* ``text-heavy``: three windows full of text (a document in a proportional
  font, source code and a manual page in monospace) and the X logo.

Positions and sizes scale with the screen; the benchmarks use 1920x1080.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from protocols.rfb.encodings import Rect

from .content import WORDS, image_to_frame
from .scenes import Font, code_line, font

BACKGROUND = (72, 96, 120)  # a plain root window colour
PAPER = (255, 255, 255)
INK = (0, 0, 0)
TITLE_BAR = (200, 200, 200)
TITLE_INK = (20, 20, 20)
PROMPT = "tester@desk:~$ "


@dataclass(frozen=True)
class Cells:
    """An xterm's text grid on the screen: where each character cell is."""

    left: int  # screen x of column 0
    top: int  # screen y of row 0
    cell_w: int
    cell_h: int
    cols: int
    rows: int
    font_size: int

    def cell(self, row: int, col: int) -> Rect:
        return Rect(
            self.left + col * self.cell_w, self.top + row * self.cell_h, self.cell_w, self.cell_h
        )


@dataclass(frozen=True)
class ProbeDesk:
    """The probe picture and where its changing parts are."""

    frame: np.ndarray  # 0x00RRGGBB, the whole screen
    typing: Cells  # the first xterm, typed into
    prompt_row: int  # the row whose prompt waits for typing (the rows below are empty)
    prompt_col: int  # the column after the prompt
    clock: Rect  # the clock face


def _scaled(width: int, height: int, x: float, y: float) -> tuple[int, int]:
    """A position given for 1920x1080, on a ``width`` x ``height`` screen."""
    return round(x * width / 1920), round(y * height / 1080)


def _window(draw: ImageDraw.ImageDraw, box: Rect, title: str, size: int) -> Rect:
    """A window frame with a title bar; the client area inside it."""
    bar = size + 8
    draw.rectangle((box.x, box.y, box.x + box.w - 1, box.y + box.h - 1), fill=PAPER, outline=INK)
    draw.rectangle((box.x + 1, box.y + 1, box.x + box.w - 2, box.y + bar), fill=TITLE_BAR)
    draw.line((box.x + 1, box.y + bar + 1, box.x + box.w - 2, box.y + bar + 1), fill=INK)
    draw.text((box.x + 8, box.y + 4), title, fill=TITLE_INK, font=font(size, bold=True))
    return Rect(box.x + 4, box.y + bar + 4, box.w - 8, box.h - bar - 8)


def _cells(client: Rect, size: int, mono: Font) -> Cells:
    cell_w = max(1, round(mono.getlength("M")))
    cell_h = size + size // 3
    return Cells(client.x, client.y, cell_w, cell_h, client.w // cell_w, client.h // cell_h, size)


def put_text(draw: ImageDraw.ImageDraw, cells: Cells, row: int, col: int, text: str) -> None:
    """``text`` on the grid, one character per cell, as a terminal draws it."""
    mono = font(cells.font_size, mono=True)
    for offset, char in enumerate(text[: max(0, cells.cols - col)]):
        if char != " ":
            box = cells.cell(row, col + offset)
            draw.text((box.x, box.y), char, fill=INK, font=mono)


def glyph(cells: Cells, char: str) -> np.ndarray:
    """One cell with ``char`` on paper, drawn as :func:`put_text` draws it."""
    image = Image.new("RGB", (cells.cell_w, cells.cell_h), PAPER)
    if char != " ":
        ImageDraw.Draw(image).text((0, 0), char, fill=INK, font=font(cells.font_size, mono=True))
    return image_to_frame(image)


def cursor_block(cells: Cells) -> np.ndarray:
    """xterm's block cursor: a filled cell."""
    return np.zeros((cells.cell_h, cells.cell_w), dtype=np.uint32)


def _shell_lines(rng: np.random.Generator, cols: int, count: int) -> list[str]:
    """A shell session: prompts with commands, listings, program output."""
    lines: list[str] = []
    while len(lines) < count:
        kind = rng.random()
        if kind < 0.25:
            lines.append(PROMPT + code_line(rng, cols - len(PROMPT)).strip())
        elif kind < 0.6:
            name = WORDS[int(rng.integers(len(WORDS)))] + ".py"
            size = int(rng.integers(100, 99_999))
            day = int(rng.integers(1, 29))
            lines.append(f"-rw-r--r-- 1 tester tester {size:>6} Mar {day:>2} 09:41 {name}")
        else:
            lines.append(code_line(rng, cols).strip())
    return [line[:cols] for line in lines[:count]]


def _xterm(
    draw: ImageDraw.ImageDraw, box: Rect, title: str, size: int, rng: np.random.Generator, free: int
) -> tuple[Cells, int]:
    """An xterm whose last ``free`` rows are empty but for a prompt; the grid and that row."""
    mono = font(size, mono=True)
    cells = _cells(_window(draw, box, title, size), size, mono)
    used = max(0, cells.rows - free)
    for row, line in enumerate(_shell_lines(rng, cells.cols, used)):
        put_text(draw, cells, row, 0, line)
    put_text(draw, cells, used, 0, PROMPT)
    return cells, used


def clock_face(size: int, hours: int, minutes: int, seconds: int) -> np.ndarray:
    """An analog clock like xclock's: marks, hour, minute and second hands."""
    image = Image.new("RGB", (size, size), PAPER)
    draw = ImageDraw.Draw(image)
    centre, radius = size / 2, size / 2 - 4
    draw.ellipse((4, 4, size - 5, size - 5), outline=INK, width=2)
    for mark in range(60):
        angle = 2 * math.pi * mark / 60
        inner = radius * (0.82 if mark % 5 == 0 else 0.92)
        draw.line(
            _spoke(centre, angle, inner, radius - 2), fill=INK, width=3 if mark % 5 == 0 else 1
        )
    hands = (
        ((hours % 12 + minutes / 60) / 12, 0.5, 6),
        ((minutes + seconds / 60) / 60, 0.75, 4),
        (seconds / 60, 0.85, 1),
    )
    for turn, length, thickness in hands:
        draw.line(_spoke(centre, 2 * math.pi * turn, 0, radius * length), fill=INK, width=thickness)
    return image_to_frame(image)


def _spoke(centre: float, angle: float, inner: float, outer: float) -> list[tuple[float, float]]:
    """A line from ``inner`` to ``outer`` from the centre, ``angle`` clockwise from 12."""
    dx, dy = math.sin(angle), -math.cos(angle)
    return [(centre + dx * inner, centre + dy * inner), (centre + dx * outer, centre + dy * outer)]


def xlogo(size: int) -> np.ndarray:
    """The X Window System logo, black on white: a thick and a thin stroke crossing."""
    image = Image.new("RGB", (size, size), PAPER)
    draw = ImageDraw.Draw(image)
    s = size - 1
    thick = s * 0.25
    thin = s * 0.11
    gap = s * 0.04  # white on either side of the thin stroke where it crosses the thick one
    draw.polygon([(0, 0), (thick, 0), (s, s), (s - thick, s)], fill=INK)
    draw.polygon([(s - thin - gap, 0), (s + gap, 0), (thin + gap, s), (-gap, s)], fill=PAPER)
    draw.polygon([(s - thin, 0), (s, 0), (thin, s), (0, s)], fill=INK)
    return image_to_frame(image)


def _paste(image: Image.Image, pixels: np.ndarray, x: int, y: int) -> None:
    rgb = np.stack([(pixels >> s) & 255 for s in (16, 8, 0)], axis=-1).astype(np.uint8)
    image.paste(Image.fromarray(rgb, "RGB"), (x, y))


def _framed(image: Image.Image, box: Rect, title: str, size: int, pixels: np.ndarray) -> Rect:
    """``pixels`` in a window of their own; where they landed."""
    client = _window(ImageDraw.Draw(image), box, title, size)
    _paste(image, pixels, client.x, client.y)
    return Rect(client.x, client.y, pixels.shape[1], pixels.shape[0])


@functools.lru_cache(maxsize=2)
def probe_desk(width: int, height: int, seed: int = 31) -> ProbeDesk:
    rng = np.random.default_rng(seed)
    size = max(11, height // 72)  # 15 px at 1080 rows
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    mono_w = round(font(size, mono=True).getlength("M"))
    term_w, term_h = 80 * mono_w + 10, 24 * (size + size // 3) + size + 22
    x, y = _scaled(width, height, 48, 40)
    typing, prompt_row = _xterm(draw, Rect(x, y, term_w, term_h), "xterm", size, rng, 4)
    x, y = _scaled(width, height, 820, 84)
    _xterm(draw, Rect(x, y, term_w, term_h), "xterm: logs", size, rng, 1)
    x, y = _scaled(width, height, 260, 560)
    _xterm(draw, Rect(x, y, term_w + 20 * mono_w, term_h - 3 * size), "xterm: build", size, rng, 1)
    face = height * 10 // 54  # 200 px at 1080 rows
    x, y = _scaled(width, height, 1640, 40)
    clock = _framed(
        image, Rect(x, y, face + 8, face + size + 20), "xclock", size, clock_face(face, 10, 8, 0)
    )
    x, y = _scaled(width, height, 1560, 620)
    logo = height * 11 // 54
    _framed(image, Rect(x, y, logo + 8, logo + size + 20), "xlogo", size, xlogo(logo))
    return ProbeDesk(image_to_frame(image), typing, prompt_row, len(PROMPT), clock)


def probe(width: int, height: int) -> np.ndarray:
    return probe_desk(width, height).frame


def _document(draw: ImageDraw.ImageDraw, client: Rect, size: int, rng: np.random.Generator) -> None:
    """Paragraphs of proportional text with headings, filling ``client``."""
    body, head = font(size), font(size * 3 // 2, bold=True)
    chars = max(20, int(client.w / (size * 0.55)))
    y = client.y + 4
    while y + size * 2 < client.y + client.h:
        if rng.random() < 0.12:
            draw.text((client.x + 8, y), code_line(rng, chars // 2).title(), fill=INK, font=head)
            y += size * 2 + 4
            continue
        draw.text((client.x + 8, y), code_line(rng, chars).strip(), fill=(30, 30, 30), font=body)
        y += size + size // 2


def text_heavy(width: int, height: int, seed: int = 32) -> np.ndarray:
    """A document, source code and a manual page, all full of text, and the X logo."""
    rng = np.random.default_rng(seed)
    size = max(11, height // 77)  # 14 px at 1080 rows
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    mono = font(size, mono=True)
    x, y = _scaled(width, height, 24, 24)
    w, h = _scaled(width, height, 900, 1030)
    _document(draw, _window(draw, Rect(x, y, w, h), "Report - Document Viewer", size), size, rng)
    x, y = _scaled(width, height, 944, 24)
    w, h = _scaled(width, height, 952, 620)
    code = _cells(_window(draw, Rect(x, y, w, h), "emacs: relay.py", size), size, mono)
    for row in range(code.rows):
        put_text(draw, code, row, 0, code_line(rng, code.cols))
    x, y = _scaled(width, height, 944, 668)
    w, h = _scaled(width, height, 700, 386)
    manual = _cells(_window(draw, Rect(x, y, w, h), "xterm: man xlogo", size), size, mono)
    for row, line in enumerate(_shell_lines(rng, manual.cols, manual.rows)):
        put_text(draw, manual, row, 0, line)
    x, y = _scaled(width, height, 1668, 700)
    logo = height * 9 // 54
    _framed(image, Rect(x, y, logo + 8, logo + size + 20), "xlogo", size, xlogo(logo))
    return image_to_frame(image)
