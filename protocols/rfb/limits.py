"""Bounds on everything a peer can make the RFB core allocate or loop over."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_width: int = 16384
    max_height: int = 16384
    max_pixels: int = 8192 * 8192
    max_cut_text: int = 16 * 1024 * 1024
    max_encodings: int = 1024
    max_reason: int = 64 * 1024
    max_name: int = 64 * 1024
    max_fence_payload: int = 64
    max_screens: int = 255
    max_compressed_rect: int = 64 * 1024 * 1024
    max_cursor_side: int = 512
    max_credential: int = 4096

    def check_size(self, width: int, height: int) -> bool:
        return (
            0 <= width <= self.max_width
            and 0 <= height <= self.max_height
            and width * height <= self.max_pixels
        )


DEFAULT_LIMITS = Limits()
