"""The relay workloads: what a desktop draws, step by step, on a schedule.

A workload is a first full frame and a list of steps.  Each step is what an
application draws at one moment (``Put``: an image at a place, ``Copy``: a
block moved on the screen, as a scroll or a window move does) and when,
in seconds from the start.  Everything is generated from fixed seeds, so
every run draws the same frames at the same moments.

While the steps are built, a model framebuffer follows them; each step keeps
a *probe*: the pixels the screen must show afterwards in every rectangle the
step drew (rows sampled on large rectangles), and how much the step changed
them.  A terminal has shown a step once its framebuffer matches the probe.

* ``typing``: an editor; one character per step with the cursor and the
  status bar's position (20 characters a second);
* ``scrolling``: a long web page in a browser, scrolled three lines per
  step (15 steps a second): a Copy of the view and the new strip;
* ``dragging``: a window moved around the desktop (30 steps a second):
  a Copy of the window and the wallpaper it uncovers;
* ``clock``: an idle desktop whose panel clock ticks once a second;
* ``video``: full-screen photo frames panning in a circle (15 a second);
* ``office``: for the scale test, an editor on the left half typed into
  at 6 characters a second, a page on the right half scrolled in bursts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from protocols.rfb.encodings import Rect

from . import scenes
from .content import photo

PROBE_PIXELS = 16384  # probes keep evenly spaced rows, about this many pixels


@dataclass(frozen=True)
class Put:
    x: int
    y: int
    pixels: np.ndarray  # (h, w) uint32 0x00RRGGBB

    @property
    def target(self) -> Rect:
        return Rect(self.x, self.y, self.pixels.shape[1], self.pixels.shape[0])


@dataclass(frozen=True)
class Copy:
    src_x: int
    src_y: int
    w: int
    h: int
    dst_x: int
    dst_y: int

    @property
    def target(self) -> Rect:
        return Rect(self.dst_x, self.dst_y, self.w, self.h)


Op = Put | Copy


@dataclass(frozen=True)
class Probe:
    rect: Rect
    stride: int
    expected: np.ndarray  # the screen's rows rect.y, rect.y + stride, ... after the step

    def sample(self, fb: np.ndarray) -> np.ndarray:
        r = self.rect
        return fb[r.y : r.y + r.h : self.stride, r.x : r.x + r.w]


@dataclass(frozen=True)
class Step:
    at: float  # seconds from the start of the replay
    ops: tuple[Op, ...]
    probes: tuple[Probe, ...]
    change: float  # mean channel difference the step makes over its probes (> 0)
    pixels: int  # pixels the step draws


@dataclass
class Workload:
    name: str
    width: int
    height: int
    initial: np.ndarray
    steps: list[Step]

    @property
    def duration(self) -> float:
        return self.steps[-1].at if self.steps else 0.0


def channel_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the 8-bit channels of two 0x00RRGGBB arrays."""
    if a.size == 0:
        return 0.0
    bytes_a, bytes_b = a.view(np.uint8), b.view(np.uint8)  # rows stay contiguous
    difference = np.maximum(bytes_a, bytes_b) - np.minimum(bytes_a, bytes_b)
    return int(difference.sum(dtype=np.uint64)) / (3 * a.size)  # the 4th byte is 0


def apply(fb: np.ndarray, op: Op) -> None:
    """Do ``op`` on a framebuffer, as the X server does on its screen."""
    if isinstance(op, Put):
        h, w = op.pixels.shape
        fb[op.y : op.y + h, op.x : op.x + w] = op.pixels
    else:
        block = fb[op.src_y : op.src_y + op.h, op.src_x : op.src_x + op.w].copy()
        fb[op.dst_y : op.dst_y + op.h, op.dst_x : op.dst_x + op.w] = block


class Builder:
    """Collects a background and timed steps; follows them on a model framebuffer.

    Backgrounds are drawn on the model at once; steps are only collected, and
    ``workload`` applies them in time order, so generators sharing a screen
    (on separate regions) may add their steps in any order.
    """

    def __init__(self, width: int, height: int) -> None:
        self.model = np.zeros((height, width), dtype=np.uint32)
        self.pending: list[tuple[float, list[Op]]] = []

    def background(self, x: int, y: int, pixels: np.ndarray) -> None:
        apply(self.model, Put(x, y, pixels))

    def step(self, at: float, ops: list[Op]) -> None:
        self.pending.append((at, ops))

    def workload(self, name: str) -> Workload:
        initial = self.model.copy()
        steps = []
        for at, ops in sorted(self.pending, key=lambda item: item[0]):
            step = self._apply(at, ops)
            if step is not None:
                steps.append(step)
        height, width = self.model.shape
        return Workload(name, width, height, initial, steps)

    def _apply(self, at: float, ops: list[Op]) -> Step | None:
        rects = [op.target for op in ops]
        strides = [max(1, -(-r.area // PROBE_PIXELS)) for r in rects]
        before = [self._sample(r, s).copy() for r, s in zip(rects, strides, strict=True)]
        for op in ops:
            apply(self.model, op)
        probes = tuple(
            Probe(r, s, self._sample(r, s).copy()) for r, s in zip(rects, strides, strict=True)
        )
        sizes = [p.expected.size for p in probes]
        diffs = [channel_difference(b, p.expected) for b, p in zip(before, probes, strict=True)]
        change = sum(d * n for d, n in zip(diffs, sizes, strict=True)) / max(1, sum(sizes))
        if change <= 0:
            return None  # draws what is already there: nothing to see
        return Step(at, tuple(ops), probes, change, sum(r.area for r in rects))

    def _sample(self, r: Rect, stride: int) -> np.ndarray:
        return self.model[r.y : r.y + r.h : stride, r.x : r.x + r.w]


# -- typing ------------------------------------------------------------------------------


def _cursor_positions(lines: tuple[str, ...]) -> Iterator[tuple[int, int, bool]]:
    """(row, column, typed a character?) for every key: characters, then Enter."""
    for row, line in enumerate(lines[:-1]):
        for col in range(len(line)):
            yield row, col, True
        yield row, len(line), False


def type_into(b: Builder, ed: scenes.Editor, x0: int, y0: int, times: list[float]) -> None:
    """Type the editor's text at ``times``: character, cursor and status per key."""

    def cell(row: int, col: int, typed: bool) -> Put:
        x, y = ed.left + col * ed.cell_w, ed.top + row * ed.cell_h
        source = ed.page if typed else ed.blank
        return Put(x0 + x, y0 + y, source[y : y + ed.cell_h, x : x + ed.cell_w])

    def cursor(row: int, col: int) -> Put:
        put = cell(row, col, False)
        pixels = put.pixels.copy()
        pixels[:, :2] = 0
        return Put(put.x, put.y, pixels)

    first = cursor(0, 0)
    b.background(first.x, first.y, first.pixels)
    sx, sy, _, _ = ed.status
    for at, (row, col, typed) in zip(times, _cursor_positions(ed.lines), strict=False):
        nxt = (row, col + 1) if typed else (row + 1, 0)
        status = Put(x0 + sx, y0 + sy, scenes.status_text(ed, *nxt))
        b.step(at, [cell(row, col, typed), cursor(*nxt), status])


def typing(width: int, height: int, seconds: float) -> Workload:
    ed = scenes.editor(width, height)
    b = Builder(width, height)
    b.background(0, 0, ed.blank)
    type_into(b, ed, 0, 0, _times(20.0, seconds))
    return b.workload("typing")


def _times(rate: float, seconds: float, start: float = 0.0) -> list[float]:
    return [start + i / rate for i in range(max(1, int(rate * seconds)))]


# -- scrolling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Browser:
    x: int
    y: int
    width: int
    height: int
    chrome: int  # height of the tabs and address bar
    bar: int = 14  # scroll bar width

    @property
    def view(self) -> Rect:
        return Rect(self.x, self.y + self.chrome, self.width - self.bar, self.height - self.chrome)


def _scrollbar(page_height: int, view: Rect, offset: int, bar: int) -> np.ndarray:
    track = np.full((view.h, bar), 0xEEEEEE, dtype=np.uint32)
    thumb_h = max(20, view.h * view.h // page_height)
    top = (view.h - thumb_h) * offset // max(1, page_height - view.h)
    track[top : top + thumb_h, 3 : bar - 3] = 0x9A9A9A
    return track


def scroll_into(b: Builder, br: Browser, times: list[float]) -> None:
    """Scroll a web page three lines per step at ``times``."""
    view = br.view
    line = int(max(12, view.w // 90) * 1.5)
    step = 3 * line
    page = scenes.web_page(view.w, view.h + step * len(times) + step)
    b.background(br.x, br.y, scenes.browser_chrome(br.width, br.chrome))
    b.background(view.x, view.y, page[: view.h])
    b.background(view.x + view.w, view.y, _scrollbar(page.shape[0], view, 0, br.bar))
    for i, at in enumerate(times, 1):
        offset = i * step
        new_strip = page[offset + view.h - step : offset + view.h]
        ops: list[Op] = [
            Copy(view.x, view.y + step, view.w, view.h - step, view.x, view.y),
            Put(view.x, view.y + view.h - step, new_strip),
            Put(view.x + view.w, view.y, _scrollbar(page.shape[0], view, offset, br.bar)),
        ]
        b.step(at, ops)


def scrolling(width: int, height: int, seconds: float) -> Workload:
    b = Builder(width, height)
    br = Browser(0, 0, width, height, chrome=max(40, height // 14))
    times = _times(15.0, seconds)
    scroll_into(b, br, times)
    return b.workload("scrolling")


# -- dragging ----------------------------------------------------------------------------


def _uncovered(old: Rect, new: Rect) -> list[Rect]:
    """The parts of ``old`` that ``new`` (same size) no longer covers."""
    dx, dy = new.x - old.x, new.y - old.y
    if abs(dx) >= old.w or abs(dy) >= old.h:
        return [old]
    out = []
    if dx > 0:
        out.append(Rect(old.x, old.y, dx, old.h))
    elif dx < 0:
        out.append(Rect(old.x + old.w + dx, old.y, -dx, old.h))
    x0 = old.x + max(dx, 0)
    w = old.w - abs(dx)
    if dy > 0:
        out.append(Rect(x0, old.y, w, dy))
    elif dy < 0:
        out.append(Rect(x0, old.y + old.h + dy, w, -dy))
    return out


def _ellipse(width: int, height: int, ww: int, wh: int, count: int) -> list[tuple[int, int]]:
    panel = scenes.panel_height(height)
    cx, cy = (width - ww) / 2, (height - panel - wh) / 2
    rx, ry = cx - 10, cy - 10
    perimeter = 2 * math.pi * math.sqrt((rx * rx + ry * ry) / 2)
    steps_per_loop = max(8, int(perimeter / 8))  # about 8 pixels a step
    return [
        (
            round(cx + rx * math.cos(2 * math.pi * i / steps_per_loop)),
            round(cy + ry * math.sin(2 * math.pi * i / steps_per_loop)),
        )
        for i in range(count + 1)
    ]


def dragging(width: int, height: int, seconds: float) -> Workload:
    paper = scenes.wallpaper(width, height)
    ww, wh = width // 3, height // 3
    win = scenes.window(ww, wh)
    times = _times(30.0, seconds)
    path = _ellipse(width, height, ww, wh, len(times))
    b = Builder(width, height)
    b.background(0, 0, paper)
    b.background(path[0][0], path[0][1], win)
    for at, (old, new) in zip(times, itertools.pairwise(path), strict=False):
        before, after = Rect(old[0], old[1], ww, wh), Rect(new[0], new[1], ww, wh)
        ops: list[Op] = [Copy(before.x, before.y, ww, wh, after.x, after.y)]
        ops += [
            Put(r.x, r.y, paper[r.y : r.y + r.h, r.x : r.x + r.w])
            for r in _uncovered(before, after)
        ]
        b.step(at, ops)
    return b.workload("dragging")


# -- the idle desktop with a clock -----------------------------------------------------


def clock(width: int, height: int, seconds: float) -> Workload:
    b = Builder(width, height)
    b.background(0, 0, scenes.wallpaper(width, height))
    face = scenes.clock_face("09:41:00", height)
    x, y = width - face.shape[1] - 8, height - scenes.panel_height(height) + 2
    b.background(x, y, face)
    for i, at in enumerate(_times(1.0, seconds, start=1.0), 1):
        b.step(at, [Put(x, y, scenes.clock_face(f"09:41:{i % 60:02d}", height))])
    return b.workload("clock")


# -- video ------------------------------------------------------------------------------


def video(width: int, height: int, seconds: float) -> Workload:
    radius, loop = 96, 24
    big = photo(width + 2 * radius, height + 2 * radius, seed=21)
    b = Builder(width, height)

    def frame(i: int) -> np.ndarray:
        angle = 2 * math.pi * (i % loop) / loop
        ox = round(radius + radius * math.cos(angle))
        oy = round(radius + radius * math.sin(angle))
        return big[oy : oy + height, ox : ox + width]

    b.background(0, 0, frame(0))
    for i, at in enumerate(_times(15.0, seconds), 1):
        b.step(at, [Put(0, 0, frame(i))])
    return b.workload("video")


# -- the office mix for the scale test ------------------------------------------------------


def office(width: int, height: int, seconds: float, phase: float = 0.0) -> Workload:
    """Typing on the left half, bursts of scrolling on the right half.

    ``phase`` (0..1) shifts this desktop's schedule, so desktops of a scale
    test do not all draw at the same moment.
    """
    half = width // 2
    b = Builder(width, height)
    ed = scenes.editor(half, height)
    b.background(0, 0, ed.blank)
    br = Browser(half, 0, width - half, height, chrome=max(40, height // 14))
    burst_every, burst_steps, burst_rate = 6.0, 4, 15.0
    bursts = max(1, int(seconds / burst_every))
    scroll_times = [
        (k + phase) * burst_every + j / burst_rate
        for k in range(bursts)
        for j in range(burst_steps)
    ]
    scroll_into(b, br, scroll_times)
    type_into(b, ed, 0, 0, _times(6.0, seconds, start=phase / 6.0))
    return b.workload("office")


WORKLOADS: dict[str, Callable[[int, int, float], Workload]] = {
    "typing": typing,
    "scrolling": scrolling,
    "dragging": dragging,
    "clock": clock,
    "video": video,
}
