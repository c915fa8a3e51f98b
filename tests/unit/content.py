"""Deterministic desktop-like test images (internal 0x00RRGGBB framebuffers)."""

from __future__ import annotations

import numpy as np


def desktop_frame(width: int, height: int, seed: int = 7) -> np.ndarray:
    """Windows, title bars, text-like strokes and a photo-like patch."""
    rng = np.random.default_rng(seed)
    fb = np.full((height, width), 0x003A6EA5, dtype=np.uint32)  # desktop background
    for _ in range(4):
        x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        w, h = (
            int(rng.integers(width // 4, width // 2)),
            int(rng.integers(height // 4, height // 2)),
        )
        fb[y : y + h, x : x + w] = 0x00F0F0F0
        fb[y : y + 12, x : x + w] = 0x00204080
        _text(fb[y + 16 : y + h - 4, x + 4 : x + w - 4], rng)
    _photo(fb[height * 2 // 3 :, width * 2 // 3 :])
    return fb


def _text(area: np.ndarray, rng: np.random.Generator) -> None:
    h, w = area.shape
    for row in range(0, h - 8, 12):
        strokes = rng.random((8, w)) < 0.25
        strokes[:, rng.random(w) < 0.3] = False
        area[row : row + 8][strokes] = 0x00101010


def _photo(area: np.ndarray) -> None:
    h, w = area.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = (128 + 100 * np.sin(xx / 9.0)).astype(np.uint32)
    g = (128 + 100 * np.cos(yy / 7.0)).astype(np.uint32)
    b = ((xx + yy) * 255 // max(w + h, 1)).astype(np.uint32)
    area[:] = (r << 16) | (g << 8) | b


def noise_frame(width: int, height: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << 24, size=(height, width), dtype=np.uint32)
