"""Convert between images (PNG, PPM, RGB arrays) and 0x00RRGGBB uint32 frames."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def rgb_to_u32(rgb: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 array as an (H, W) uint32 array of 0x00RRGGBB."""
    wide = rgb.astype(np.uint32)
    words: np.ndarray = (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]
    return words


def u32_to_rgb(frame: np.ndarray) -> np.ndarray:
    """An (H, W) uint32 0x00RRGGBB array as (H, W, 3) uint8."""
    shifts = np.array([16, 8, 0], dtype=np.uint32)
    return ((frame[..., None] >> shifts) & 0xFF).astype(np.uint8)


def read_image(source: Path | bytes) -> np.ndarray:
    """Any image Pillow reads (PNG, PPM, ...) as a uint32 0x00RRGGBB frame."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        return rgb_to_u32(np.asarray(image.convert("RGB")))


def diff_summary(got: np.ndarray, want: np.ndarray) -> str:
    """A short description of how two frames differ, for assertion messages."""
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    rows, cols = np.nonzero(got != want)
    if rows.size == 0:
        return "identical"
    y, x = int(rows[0]), int(cols[0])
    return (
        f"{rows.size} of {got.size} pixels differ, inside x {cols.min()}..{cols.max()} "
        f"y {rows.min()}..{rows.max()}; first at ({x}, {y}): "
        f"got {int(got[y, x]):06x} want {int(want[y, x]):06x}"
    )
