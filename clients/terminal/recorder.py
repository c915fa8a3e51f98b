"""Record the screen: a PNG after each completed update (``--record DIR``).

Frames are numbered ``frame-000001.png``, ``frame-000002.png``, ... across
sessions; ``latest.png`` is always the newest, replaced atomically so a
reader never sees half a file.  The PNGs hold the framebuffer exactly as
the server sent it (no cursor, no scaling).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

LATEST = "latest.png"


def framebuffer_image(framebuffer: np.ndarray) -> Image.Image:
    """An RGB image of a uint32 0x00RRGGBB framebuffer (B, G, R, X in memory)."""
    height, width = framebuffer.shape
    words = np.ascontiguousarray(framebuffer, dtype="<u4")
    return Image.frombuffer("RGB", (width, height), words.tobytes(), "raw", "BGRX", 0, 1)


class Recorder:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def record(self, framebuffer: np.ndarray) -> Path | None:
        """Save this frame; returns its numbered file (None for an empty framebuffer)."""
        if framebuffer.size == 0:
            return None
        self.count += 1
        image = framebuffer_image(framebuffer)
        numbered = self.directory / f"frame-{self.count:06d}.png"
        image.save(numbered, compress_level=1)
        temporary = self.directory / f".{LATEST}.tmp"
        shutil.copyfile(numbered, temporary)
        os.replace(temporary, self.directory / LATEST)
        return numbered
