"""What one benchmark run measures: frame size, repetitions, contents, peer."""

from __future__ import annotations

from dataclasses import dataclass

FULL_SIZE = (1920, 1080)
FULL_REPETITIONS = 7
QUICK_SIZE = (1280, 720)
QUICK_REPETITIONS = 3


@dataclass(frozen=True)
class Options:
    width: int
    height: int
    repetitions: int  # each speed is the median of this many runs
    contents: tuple[str, ...]
    xvnc: bool  # measure TigerVNC's Xvnc too

    @classmethod
    def of(
        cls, quick: bool, contents: tuple[str, ...], xvnc: bool, repeat: int | None = None
    ) -> Options:
        width, height = QUICK_SIZE if quick else FULL_SIZE
        repetitions = repeat or (QUICK_REPETITIONS if quick else FULL_REPETITIONS)
        return cls(width, height, max(1, repetitions), contents, xvnc)
