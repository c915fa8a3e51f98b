"""The probe desktop at work: a command typed at the xterm's prompt, the clock ticking.

Built like the relay workloads (``bench/workloads.py``): the probe picture
(``bench/probescene.py``) is the first frame, then ``rate`` steps a second
on a fixed schedule.  One step a second is the clock's: the part of the
face where the second hand moved, redrawn, as xclock redraws its hands.  Every other step is a key:
the character drawn in its cell of the first xterm and the block cursor
moved to the next cell.  The text typed is a fixed command line, wrapping
over the free rows under the prompt.  ``phase`` (0..1) shifts the schedule
by part of a step, so desktops of one run do not all draw at the same
moment.
"""

from __future__ import annotations

import numpy as np

from protocols.rfb.encodings import Rect

from . import probescene
from .scenes import code_line
from .workloads import Builder, Op, Put, Workload

CLOCK_TIME = (10, 8)  # hours, minutes the clock shows; the seconds tick


def typed_text(length: int, seed: int = 33) -> str:
    """A deterministic command line of ``length`` characters."""
    rng = np.random.default_rng(seed)
    text = ""
    while len(text) < length:
        text += code_line(rng, 60).strip() + " "
    return text[:length]


def _tick(clock: Rect, second: int) -> Put:
    """The clock's hands at ``second``: what changed since the second before, as xclock
    redraws only its hands."""
    before = probescene.clock_face(clock.w, *CLOCK_TIME, (second - 1) % 60)
    after = probescene.clock_face(clock.w, *CLOCK_TIME, second)
    rows, cols = np.nonzero(before != after)
    top, left = int(rows.min()), int(cols.min())
    bottom, right = int(rows.max()) + 1, int(cols.max()) + 1
    return Put(clock.x + left, clock.y + top, after[top:bottom, left:right])


def probe_workload(
    width: int, height: int, seconds: float, rate: float, phase: float = 0.0
) -> Workload:
    """``rate`` steps a second for ``seconds``: one clock tick a second, keys between."""
    desk = probescene.probe_desk(width, height)
    cells = desk.typing
    builder = Builder(width, height)
    builder.background(0, 0, desk.frame)
    free = [
        (row, col)
        for row in range(desk.prompt_row, cells.rows)
        for col in range(desk.prompt_col if row == desk.prompt_row else 0, cells.cols)
    ]
    cursor = probescene.cursor_block(cells)

    def at(cell: tuple[int, int], pixels: np.ndarray) -> Put:
        box = cells.cell(*cell)
        return Put(box.x, box.y, pixels)

    builder.background(at(free[0], cursor).x, at(free[0], cursor).y, cursor)
    per_second = max(1, round(rate))
    count = max(1, int(rate * seconds))
    text = typed_text(count)
    key = 0
    for i in range(count):
        when = (i + phase) / rate
        if i % per_second == 0:
            tick = (1 + i // per_second) % 60
            ops: list[Op] = [_tick(desk.clock, tick)]
        else:
            here, after = free[key % len(free)], free[(key + 1) % len(free)]
            ops = [at(here, probescene.glyph(cells, text[key])), at(after, cursor)]
            key += 1
        builder.step(when, ops)
    return builder.workload("probe")
