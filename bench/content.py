"""Deterministic screen contents for the benchmark (0x00RRGGBB frames).

Every generator takes the frame size and a seed and returns a 2-D ``uint32``
array; the same arguments give the same pixels.  Shapes, text and colours
scale with the frame size so the quick (1280x720) run shows the same kind
of screen as the full (1920x1080) one.

* ``text``: a text editor page, dark anti-aliased text in lines on white;
* ``windows``: a desktop with overlapping windows, title bars, menus, text;
* ``photo``: a smooth photo-like image (blurred random fields at several
  scales, gradients, sinusoids, mild grain);
* ``noise``: uniform random pixels, the worst case for every encoding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

VOCABULARY = """
def return self import from class for while if else elif with as try except raise
yield lambda None True False data frame pixels width height encode decode buffer
rect stream zlib tight palette colour server client update request bytes offset
count value result limit region screen
"""
WORDS = tuple(VOCABULARY.split())

Content = Callable[[int, int], np.ndarray]


def rgb_to_frame(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB to an (h, w) uint32 0x00RRGGBB frame."""
    channels = rgb.astype(np.uint32)
    return (channels[..., 0] << 16) | (channels[..., 1] << 8) | channels[..., 2]


def image_to_frame(image: Image.Image) -> np.ndarray:
    return rgb_to_frame(np.asarray(image.convert("RGB")))


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at a size that suits a frame ``height`` tall."""
    return ImageFont.load_default(size=max(9, height // 77))


def _line_of_words(rng: np.random.Generator, max_chars: int) -> str:
    words: list[str] = []
    length = 0
    target = int(rng.integers(max_chars // 4, max_chars))
    while length < target:
        word = WORDS[int(rng.integers(len(WORDS)))]
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _text_lines(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    rng: np.random.Generator,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    colour: tuple[int, int, int] = (32, 32, 32),
) -> None:
    """Fill ``box`` (x0, y0, x1, y1) with ragged, indented lines of words."""
    x0, y0, x1, y1 = box
    line_height = int(font.size * 1.45) if hasattr(font, "size") else 14
    char_width = max(1, int(font.getlength("m")))
    y = y0
    while y + line_height <= y1:
        if rng.random() < 0.12:  # blank line between paragraphs
            y += line_height
            continue
        indent = int(rng.integers(0, 4)) * 4 * char_width
        max_chars = max(4, (x1 - x0 - indent) // char_width)
        draw.text((x0 + indent, y), _line_of_words(rng, max_chars), fill=colour, font=font)
        y += line_height


def text_page(width: int, height: int, seed: int = 1) -> np.ndarray:
    """A text editor: gutter with line numbers, text lines, a status bar."""
    rng = np.random.default_rng(seed)
    font = _font(height)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    gutter = width // 30
    status = height // 40
    draw.rectangle((0, 0, gutter, height), fill=(240, 240, 240))
    line_height = int(font.size * 1.45)
    for number, y in enumerate(range(4, height - status - line_height, line_height), 1):
        draw.text((4, y), str(number), fill=(150, 150, 150), font=font)
    _text_lines(draw, (gutter + 8, 4, width - 8, height - status), rng, font)
    draw.rectangle((0, height - status, width, height), fill=(0, 122, 204))
    status_text = "main.py  UTF-8  Ln 1, Col 1"
    draw.text((8, height - status + 2), status_text, fill=(255, 255, 255), font=font)
    return image_to_frame(image)


def _window(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    rng: np.random.Generator,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    active: bool,
) -> None:
    x0, y0, x1, y1 = box
    title = max(16, (y1 - y0) // 14)
    draw.rectangle(box, fill=(246, 245, 244), outline=(120, 120, 120))
    bar = (53, 132, 228) if active else (200, 200, 200)
    draw.rectangle((x0, y0, x1, y0 + title), fill=bar)
    ink = (255, 255, 255) if active else (60, 60, 60)
    draw.text((x0 + 10, y0 + title // 4), _line_of_words(rng, 24), fill=ink, font=font)
    for i, colour in enumerate(((237, 51, 59), (246, 211, 45), (51, 209, 122))):
        cx = x1 - (i + 1) * title
        draw.ellipse((cx + 4, y0 + 4, cx + title - 4, y0 + title - 4), fill=colour)
    menu = y0 + title + title // 2 + 2
    draw.rectangle((x0 + 1, y0 + title + 1, x1 - 1, menu), fill=(232, 232, 231))
    draw.text((x0 + 10, y0 + title + 2), "File  Edit  View  Help", fill=(30, 30, 30), font=font)
    _text_lines(draw, (x0 + 12, menu + 6, x1 - 12, y1 - 6), rng, font)


def desktop_windows(width: int, height: int, seed: int = 2) -> np.ndarray:
    """Gradient wallpaper, five overlapping windows, a panel at the bottom."""
    rng = np.random.default_rng(seed)
    font = _font(height)
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    top, bottom = np.array([30.0, 70.0, 110.0]), np.array([90.0, 150.0, 170.0])
    wallpaper = np.broadcast_to(top + (bottom - top) * y, (height, width, 3))
    image = Image.fromarray(wallpaper.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for i in range(5):
        w = int(width * rng.uniform(0.3, 0.55))
        h = int(height * rng.uniform(0.3, 0.6))
        x = int(rng.integers(0, width - w))
        y0 = int(rng.integers(0, height - h - height // 20))
        _window(draw, (x, y0, x + w, y0 + h), rng, font, active=i == 4)
    panel = height // 20
    draw.rectangle((0, height - panel, width, height), fill=(40, 40, 40))
    for i in range(6):
        x = 8 + i * width // 10
        draw.rectangle((x, height - panel + 4, x + width // 11, height - 4), fill=(70, 70, 70))
        draw.text((x + 6, height - panel + 8), WORDS[i * 3], fill=(230, 230, 230), font=font)
    return image_to_frame(image)


def _smooth_field(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Random values on a coarse grid, upscaled smoothly: (h, w) float 0..1."""
    grid_h = max(2, cells * height // width)
    coarse = rng.uniform(0, 255, size=(grid_h, cells)).astype(np.uint8)
    image = Image.fromarray(coarse, "L").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float64) / 255.0


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Blotches at three scales, 0..1: the light and shade of a scene."""
    return (
        0.55 * _smooth_field(rng, width, height, 6)
        + 0.30 * _smooth_field(rng, width, height, 24)
        + 0.15 * _smooth_field(rng, width, height, 96)
    )


def photo(width: int, height: int, seed: int = 3) -> np.ndarray:
    """A landscape: graded sky with a sun, soft hills, textured ground, grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xx / width, yy / height
    horizon = 0.5 + 0.07 * np.sin(u * 7.0 + 1.0) + 0.03 * np.sin(u * 23.0)
    ground_share = np.clip((v - horizon) * height / 6.0 + 0.5, 0.0, 1.0)[..., None]
    sky = _lerp((60, 110, 190), (205, 220, 235), np.clip(v / horizon, 0, 1))
    sun = np.exp(-((u - 0.72) ** 2 + (v - 0.22) ** 2 * 0.3) / 0.004)[..., None]
    sky = sky + sun * (255.0 - sky) + 18.0 * _texture(rng, width, height)[..., None]
    tint = _smooth_field(rng, width, height, 10)
    ground = _lerp((50, 100, 35), (150, 125, 70), tint)
    shade = 0.55 + 0.8 * _texture(rng, width, height)
    ripple = 0.06 * np.sin(xx / (width / 41.0)) * np.cos(yy / (height / 29.0))
    ground = ground * (shade + ripple)[..., None]
    rgb = sky * (1.0 - ground_share) + ground * ground_share
    rgb += rng.normal(0.0, 2.0, size=rgb.shape)
    return rgb_to_frame(np.clip(rgb, 0, 255).astype(np.uint8))


def _lerp(a: tuple[int, int, int], b: tuple[int, int, int], t: np.ndarray) -> np.ndarray:
    """(h, w, 3) colours from ``a`` (t = 0) to ``b`` (t = 1)."""
    start, end = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    return start + (end - start) * t[..., None]


def noise(width: int, height: int, seed: int = 4) -> np.ndarray:
    """Uniform random 24-bit pixels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << 24, size=(height, width), dtype=np.uint32)


CONTENTS: dict[str, Content] = {
    "text": text_page,
    "windows": desktop_windows,
    "photo": photo,
    "noise": noise,
}


def make_content(name: str, width: int, height: int) -> np.ndarray:
    """The named content at the given size; KeyError for unknown names."""
    return CONTENTS[name](width, height)
