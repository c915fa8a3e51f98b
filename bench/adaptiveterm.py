"""The adaptive benchmark's terminal: ``python -m bench.adaptiveterm PORT SOURCE CPU``.

thinserve's own RFB client asking for Tight at JPEG quality level 9, one
update at a time, as a classic viewer does.  Run as a process of its own
it pins itself to core ``CPU`` at nice ``NICE``: beside a CPU hog there it
gets about a tenth of the core, and reads and decodes slowly, as a
terminal whose CPU is saturated does.  After each update it reports
``{"event": "update", "updates": N, "bytes": B}`` on stdout; it ends when
its stdin does.  The benchmark also uses ``Viewer`` in its own process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from twisted.internet import defer, endpoints, task, threads

from protocols.rfb.client import ClientEvent, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding, SecurityType
from thinserve import rfbclient

NICE = 19  # beside a hog at nice 0 on the same core: about a seventieth of it
ENCODINGS = (
    Encoding.TIGHT,
    Encoding.JPEG_QUALITY_9,
    Encoding.COPYRECT,
    Encoding.DESKTOP_SIZE,
    Encoding.LAST_RECT,
)
PLAIN = rfbclient.ClientOptions(methods=(SecurityType.NONE,))

OnUpdate = Callable[[int, int], None]  # (updates, bytes received) so far


class Viewer(rfbclient.RFBClientProtocol):
    """Asks for Tight at level 9, one update at a time; counts updates and bytes."""

    def __init__(self, on_update: OnUpdate | None = None) -> None:
        super().__init__(PLAIN, self._event)
        self.updates = 0
        self.received = 0
        self.on_update = on_update

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        super().dataReceived(data)

    def _event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        if isinstance(event, ServerInitReceived):
            self.conn.set_encodings(ENCODINGS)
            self.conn.request_update(incremental=False)
        elif isinstance(event, UpdateDone):
            self.updates += 1
            self.conn.request_update(incremental=True)
            if self.on_update is not None:
                self.on_update(self.updates, self.received)
        self.flush()


def report(updates: int, received: int) -> None:
    print(json.dumps({"event": "update", "updates": updates, "bytes": received}), flush=True)


def main(port: int, source: str, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    os.nice(NICE)

    async def serve(reactor: object) -> None:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
        await endpoints.connectProtocol(endpoint, Viewer(report))
        await threads.deferToThread(sys.stdin.read)  # until the benchmark closes it

    task.react(lambda reactor: defer.Deferred.fromCoroutine(serve(reactor)))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
