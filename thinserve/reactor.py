"""The reactor the server runs on: Twisted's, on the asyncio event loop,
with a ready socket's reads handed to its connection directly.

Twisted's asyncio reactor calls each handler inside its legacy log context
(``log.callWithLogger``): the connection's ``logPrefix`` becomes the
``system`` of old-style log lines, at the cost of two dict copies and
eight Python calls for every event.  thinserve logs through ``logging`` and
names the terminal itself.  With fifty terminals watching one desktop, each
asking for the next update ten times a second, that context took a tenth
of the server's Python time.  Failures are still caught and logged, by
the reactor's ``_readOrWrite`` as before and by the event loop beyond it.
"""

from __future__ import annotations

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import installReactor


class DirectReactor(AsyncioSelectorReactor):
    """Twisted's asyncio reactor; a socket's reads skip the legacy log context."""

    def addReader(self, reader: IReadDescriptor) -> None:
        super().addReader(reader)
        fd = self._readers.get(reader)
        if fd is not None:  # watched by the loop, not polled: its handler replaced
            self._asyncioEventloop.add_reader(fd, self._readOrWrite, reader, True)


def install() -> None:
    """Make it the reactor, before anything imports one."""
    installReactor(DirectReactor())
