"""Drawing workload steps on an Xvnc desktop, as the application would.

``Put`` is an X PutImage on the root window (in request-sized chunks),
``Copy`` an X CopyArea of the root window onto itself: Xvnc sees exactly
the requests an application's drawing or a window move makes, and tracks
damage and copies from them as it does for real programs.  Each paint ends
with XSync, so when :meth:`Painter.paint` returns, the pixels are in Xvnc's
framebuffer: that moment is when the change "happened on the desktop".
"""

from __future__ import annotations

import time

from .workloads import Copy, Op, Put, Workload
from .xvnc import Xvnc


class Painter:
    def __init__(self, xvnc: Xvnc) -> None:
        assert xvnc.x is not None
        self.xvnc = xvnc
        self.display = xvnc.x
        self.root = xvnc.x.screen().root
        self.gc = self.root.create_gc(graphics_exposures=False)

    def paint(self, ops: tuple[Op, ...] | list[Op]) -> float:
        """Draw ``ops``; the perf_counter time once Xvnc has them all."""
        for op in ops:
            if isinstance(op, Put):
                self.xvnc.put(self.gc, op.x, op.y, op.pixels)
            elif isinstance(op, Copy):
                self.root.copy_area(
                    self.gc, self.root, op.src_x, op.src_y, op.w, op.h, op.dst_x, op.dst_y
                )
        self.display.sync()
        return time.perf_counter()

    def show_initial(self, workload: Workload) -> None:
        """The workload's first frame on the whole screen."""
        self.paint([Put(0, 0, workload.initial)])

    def close(self) -> None:
        self.gc.free()
        self.display.sync()
