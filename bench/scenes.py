"""Pictures the relay workloads draw: an editor, a web page, a desktop, a clock.

Everything is rendered with Pillow into 0x00RRGGBB frames, deterministically
(seeded text, fixed fonts).  The workloads in ``bench.workloads`` cut these
pictures into the pieces an application would draw step by step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .content import WORDS, image_to_frame, photo

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def font(size: int, mono: bool = False, bold: bool = False) -> Font:
    """DejaVu (Debian's fonts-dejavu-core) at ``size`` px, else Pillow's own."""
    name = "DejaVuSansMono" if mono else "DejaVuSans"
    path = FONT_DIR / f"{name}{'-Bold' if bold else ''}.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default(size=size)


def code_line(rng: np.random.Generator, max_chars: int) -> str:
    """A line of code-like words, indented, at most ``max_chars`` long."""
    indent = " " * (4 * int(rng.integers(0, 3)))
    words = [indent.rstrip()] if indent else []
    length = len(indent)
    target = int(rng.integers(max_chars // 3, max_chars))
    while True:
        word = WORDS[int(rng.integers(len(WORDS)))]
        if length + len(word) + 1 > target:
            break
        words.append(word)
        length += len(word) + 1
    text = indent + " ".join(w for w in words if w)
    return text[:max_chars]


# -- the editor ------------------------------------------------------------------------


@dataclass(frozen=True)
class Editor:
    """A text editor filling a region: where each character cell is."""

    page: np.ndarray  # the editor with all its text typed
    blank: np.ndarray  # the editor before any text is typed
    lines: tuple[str, ...]
    left: int  # x of column 0
    top: int  # y of line 0
    cell_w: int
    cell_h: int
    status: tuple[int, int, int, int]  # x, y, w, h of the status text


@functools.lru_cache(maxsize=4)
def editor(width: int, height: int, seed: int = 11) -> Editor:
    rng = np.random.default_rng(seed)
    size = max(11, height // 64)
    mono = font(size, mono=True)
    cell_w = max(1, round(mono.getlength("M")))
    cell_h = size + size // 3
    gutter = 5 * cell_w
    status_h = cell_h + 4
    rows = max(1, (height - status_h - 8) // cell_h)
    cols = max(8, (width - gutter - 16) // cell_w)
    lines = tuple(code_line(rng, cols) for _ in range(rows))
    blank = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(blank)
    draw.rectangle((0, 0, gutter - 4, height), fill=(243, 243, 243))
    for row in range(rows):
        draw.text((4, 4 + row * cell_h), f"{row + 1:>3}", fill=(150, 150, 150), font=mono)
    draw.rectangle((0, height - status_h, width, height), fill=(0, 122, 204))
    draw.text((8, height - status_h + 2), "notes.txt  UTF-8", fill=(255, 255, 255), font=mono)
    page = blank.copy()
    ink = ImageDraw.Draw(page)
    left, top = gutter + 4, 4
    for row, line in enumerate(lines):
        for col, char in enumerate(line):
            if char != " ":
                ink.text(
                    (left + col * cell_w, top + row * cell_h), char, fill=(30, 30, 30), font=mono
                )
    status = (width - 20 * cell_w, height - status_h + 1, 18 * cell_w, status_h - 2)
    return Editor(
        image_to_frame(page), image_to_frame(blank), lines, left, top, cell_w, cell_h, status
    )


def status_text(ed: Editor, row: int, col: int) -> np.ndarray:
    """The status bar's "Ln, Col" field for a cursor position."""
    _x, _y, w, h = ed.status
    image = Image.new("RGB", (w, h), (0, 122, 204))
    mono = font(max(11, ed.cell_h * 3 // 4), mono=True)
    ImageDraw.Draw(image).text(
        (2, 1), f"Ln {row + 1}, Col {col + 1}", fill=(255, 255, 255), font=mono
    )
    return image_to_frame(image)


# -- the web page ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def web_page(width: int, height: int, seed: int = 12) -> np.ndarray:
    """A long article page ``width`` wide: headings, paragraphs, pictures, boxes."""
    rng = np.random.default_rng(seed)
    size = max(12, width // 90)
    body, head = font(size), font(size * 2, bold=True)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    margin, y = width // 8, size
    column = width - 2 * margin
    chars = max(20, int(column / (size * 0.55)))
    while y < height - 4 * size:
        kind = rng.random()
        if kind < 0.15:
            draw.text((margin, y), code_line(rng, chars // 2).title(), fill=(20, 20, 60), font=head)
            y += size * 3
        elif kind < 0.3:
            h = int(column * rng.uniform(0.25, 0.45))
            picture = photo(column // 2, h, seed=int(rng.integers(1 << 30)))
            rgb = np.stack([(picture >> s) & 255 for s in (16, 8, 0)], axis=-1).astype(np.uint8)
            image.paste(Image.fromarray(rgb, "RGB"), (margin, y))
            draw.text((margin + column // 2 + size, y), "Figure", fill=(90, 90, 90), font=body)
            y += h + size
        elif kind < 0.4:
            box = (margin, y, margin + column, y + size * 5)
            draw.rectangle(box, fill=(238, 244, 252), outline=(160, 190, 230))
            draw.text(
                (margin + size, y + size), code_line(rng, chars - 4), fill=(30, 60, 120), font=body
            )
            y += size * 6
        else:
            for _ in range(int(rng.integers(3, 8))):
                colour = (0, 70, 170) if rng.random() < 0.1 else (35, 35, 35)
                draw.text((margin, y), code_line(rng, chars), fill=colour, font=body)
                y += int(size * 1.5)
            y += size
    return image_to_frame(image)


def browser_chrome(width: int, height: int) -> np.ndarray:
    """Tabs and an address bar, ``height`` px tall."""
    image = Image.new("RGB", (width, height), (222, 225, 230))
    draw = ImageDraw.Draw(image)
    text = font(max(11, height // 5))
    tab_h = height // 2
    draw.rectangle((8, 6, min(width - 8, 260), tab_h), fill=(255, 255, 255))
    draw.text((18, 10), "Reading - the article", fill=(40, 40, 40), font=text)
    draw.rectangle(
        (8, tab_h + 6, width - 8, height - 6), fill=(255, 255, 255), outline=(180, 180, 180)
    )
    draw.text((18, tab_h + 10), "https://example.org/article", fill=(60, 60, 60), font=text)
    return image_to_frame(image)


# -- the desktop -------------------------------------------------------------------------


def wallpaper(width: int, height: int) -> np.ndarray:
    """A vertical gradient with a dark panel at the bottom."""
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    top, bottom = np.array([28.0, 68.0, 108.0]), np.array([92.0, 150.0, 172.0])
    rgb = np.broadcast_to(top + (bottom - top) * y, (height, width, 3)).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    panel = panel_height(height)
    ImageDraw.Draw(image).rectangle((0, height - panel, width, height), fill=(40, 40, 40))
    return image_to_frame(image)


def panel_height(height: int) -> int:
    return max(24, height // 32)


def window(width: int, height: int, seed: int = 13) -> np.ndarray:
    """An application window: title bar, menu, text."""
    rng = np.random.default_rng(seed)
    text = font(max(11, height // 28))
    image = Image.new("RGB", (width, height), (246, 245, 244))
    draw = ImageDraw.Draw(image)
    title = max(18, height // 14)
    draw.rectangle((0, 0, width - 1, height - 1), outline=(110, 110, 110))
    draw.rectangle((0, 0, width - 1, title), fill=(53, 132, 228))
    draw.text((10, title // 5), "Documents - Files", fill=(255, 255, 255), font=text)
    for i, colour in enumerate(((237, 51, 59), (246, 211, 45), (51, 209, 122))):
        cx = width - (i + 1) * title
        draw.ellipse((cx + 4, 4, cx + title - 4, title - 4), fill=colour)
    y = title + 8
    while y < height - 20:
        draw.text((12, y), code_line(rng, 60), fill=(30, 30, 30), font=text)
        y += int(text.size * 1.5) if hasattr(text, "size") else 16
    return image_to_frame(image)


def clock_face(text: str, height: int) -> np.ndarray:
    """The panel clock showing ``text``, drawn on the panel colour."""
    size = max(11, panel_height(height) * 3 // 5)
    face = font(size, mono=True)
    w = int(face.getlength("00:00:00")) + 12
    image = Image.new("RGB", (w, panel_height(height) - 4), (40, 40, 40))
    ImageDraw.Draw(image).text((6, 2), text, fill=(235, 235, 235), font=face)
    return image_to_frame(image)
