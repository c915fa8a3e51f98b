"""Typed characters echoed on Xvnc desktops: ``python -m bench.echo W H SECONDS :N ...``.

An X client of each given display, in a process of its own, as an editor
would be: it paints the editor of bench/scenes.py (blank) on the root
window, selects KeyPress on it (with no window manager and no windows
the keyboard focus follows the pointer, which is over the root window, so
every key a VNC client types arrives there), and on each key press draws
the next character cell of the editor's text and flushes.  The cells are
taken in reading order, skipping blanks; after the last one the text is
erased cell by cell in the same order, then typed again, so every key
changes the screen.  No other X client draws on these displays: any
change a terminal sees after typing a key is that key's echo.

Reports (JSON lines on stdout): ``ready`` once every display shows the
blank editor, ``closed`` with the keys echoed per display at the end.
The process ends when its stdin ends or after SECONDS.
"""

from __future__ import annotations

import json
import select
import sys
import time
from dataclasses import dataclass

import numpy as np
from Xlib import X
from Xlib import display as xdisplay

from . import scenes

PUT_IMAGE_OVERHEAD = 64  # bytes of a PutImage request besides the pixels


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    typed: np.ndarray  # the cell with its character
    blank: np.ndarray  # the cell before it was typed


def cells(width: int, height: int) -> tuple[np.ndarray, list[Cell]]:
    """The blank editor and its text's character cells, in reading order."""
    ed = scenes.editor(width, height)
    found = []
    for row, line in enumerate(ed.lines):
        for col, char in enumerate(line):
            x, y = ed.left + col * ed.cell_w, ed.top + row * ed.cell_h
            typed = ed.page[y : y + ed.cell_h, x : x + ed.cell_w]
            blank = ed.blank[y : y + ed.cell_h, x : x + ed.cell_w]
            if char != " " and typed.shape == blank.shape and not np.array_equal(typed, blank):
                found.append(Cell(x, y, typed.copy(), blank.copy()))
    if not found:
        raise SystemExit(f"the {width}x{height} editor has no text to type")
    return ed.blank, found


class Screen:
    """One display: its root window, and how many keys it has echoed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.display = xdisplay.Display(name)
        self.root = self.display.screen().root
        self.gc = self.root.create_gc(graphics_exposures=False)
        info = self.display.display.info
        self.order = "<" if info.image_byte_order == X.LSBFirst else ">"
        self.max_bytes = info.max_request_length * 4 - PUT_IMAGE_OVERHEAD
        self.keys = 0

    def put(self, x: int, y: int, pixels: np.ndarray) -> None:
        words = pixels.astype(f"{self.order}u4")
        height, width = pixels.shape
        rows = max(1, self.max_bytes // (width * 4))
        for top in range(0, height, rows):
            chunk = words[top : top + rows]
            self.root.put_image(
                self.gc, x, y + top, width, chunk.shape[0], X.ZPixmap, 24, 0, chunk.tobytes()
            )

    def listen(self) -> None:
        self.root.change_attributes(event_mask=X.KeyPressMask)
        self.display.sync()

    def echo(self, text: list[Cell]) -> bool:
        """Draw one cell per key press waiting; whether anything was drawn."""
        drew = False
        while self.display.pending_events():
            event = self.display.next_event()
            if event.type != X.KeyPress:
                continue
            turn, index = divmod(self.keys, len(text))
            cell = text[index]
            self.put(cell.x, cell.y, cell.blank if turn % 2 else cell.typed)
            self.keys += 1
            drew = True
        if drew:
            self.display.flush()
        return drew


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: python -m bench.echo WIDTH HEIGHT SECONDS :DISPLAY...", file=sys.stderr)
        return 2
    width, height, seconds = int(argv[0]), int(argv[1]), float(argv[2])
    blank, text = cells(width, height)
    screens = [Screen(name) for name in argv[3:]]
    for screen in screens:
        screen.put(0, 0, blank)
        screen.listen()
    emit("ready", cells=len(text))
    by_fd = {screen.display.fileno(): screen for screen in screens}
    deadline = time.monotonic() + seconds
    stdin = sys.stdin.fileno()
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([stdin, *by_fd], [], [], 0.5)
            for fd in readable:
                if fd == stdin:
                    if not sys.stdin.buffer.readline():
                        return 0  # stdin ended: the benchmark is done
                    continue
                by_fd[fd].echo(text)
            for screen in screens:  # events already read into python-xlib's queue
                screen.echo(text)
    finally:
        emit("closed", keys={screen.name: screen.keys for screen in screens})
        for screen in screens:
            screen.display.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
