"""Key-to-echo latency as a terminal sees it: one key, the first changed picture."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .replay import wait_for
from .terminal import MeasuringTerminal

ECHO_TIMEOUT = 2.0  # a key not echoed within this is missed


def whole(fb: np.ndarray) -> np.ndarray:
    return fb


async def echo_once(
    terminal: MeasuringTerminal,
    keysym: int,
    view: Callable[[np.ndarray], np.ndarray] = whole,
) -> float | None:
    """Seconds from sending the key to a decoded change of ``view`` of the
    screen (e.g. leaving out a blinking cursor); None if none came in time
    or the terminal went away."""
    before = view(terminal.conn.framebuffer).copy()
    echoed: list[float] = []

    def check(now: float) -> None:
        seen = view(terminal.conn.framebuffer)
        if not echoed and seen.shape == before.shape and not np.array_equal(seen, before):
            echoed.append(now)

    terminal.on_update = check
    terminal.conn.key_event(True, keysym)
    terminal.conn.key_event(False, keysym)
    terminal.flush()
    sent = time.perf_counter()
    try:
        await wait_for(lambda: bool(echoed) or terminal.closed.called, ECHO_TIMEOUT)
    finally:
        terminal.on_update = None
    return echoed[0] - sent if echoed else None
