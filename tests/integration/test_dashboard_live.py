"""The dashboard's live parts with a real desktop: Xvnc behind thinserve, events over HTTP."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.web import resource

from tests.support.pixels import u32_to_rgb
from tests.support.server import start_thinserve
from tests.support.waiting import wait_until
from tests.support.xvnc import XvncServer
from tests.unit.test_thumbnails import assert_looks_like, blocks, decode, scaled
from thinserve.config import DesktopConfig
from thinserve.dashboard.events import EventsResource
from thinserve.dashboard.thumbnails import ThumbnailResource, Thumbnails
from thinserve.verifier import Verifier
from thinserve.web.channel import BoundedSite

pytestmark = pytest.mark.integration


class EventReader:
    """An EventSource in a thread: the ``changed`` events' data, as they arrive."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.events: list[dict[str, Any]] = []
        self.status = 0
        self.closing = False
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            self.connection.request("GET", "/api/v1/events")
            response = self.connection.getresponse()
            self.status = response.status
            event = ""
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "changed":
                    with self._lock:
                        self.events.append(json.loads(line[6:]))
        except Exception:  # http.client fails in several ways once closed under it
            if not self.closing:
                raise

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return self.events[-1] if self.events else None

    def close(self) -> None:
        self.closing = True
        sock = self.connection.sock
        if sock is not None:
            sock.shutdown(2)  # wakes the reading thread up
        self.connection.close()


def get(port: int, path: str, etag: str | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"If-None-Match": etag} if etag else {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_a_drawn_desktop_reaches_the_wall(xvnc: Callable[..., XvncServer]) -> None:
    server = xvnc(size=(640, 480))
    server.paint(blocks(640, 480, 1))
    ts = await start_thinserve([DesktopConfig("d1", f"{server.host}:{server.port}")])
    hub = ts.hub
    assert hub is not None
    runner = Verifier(reactor)
    thumbnails = Thumbnails(hub, reactor, runner)
    thumbnails.start()
    events = EventsResource(hub, thumbnails, reactor)
    v1 = resource.Resource()
    v1.putChild(b"events", events)
    v1.putChild(b"thumbnails", ThumbnailResource(thumbnails))
    api = resource.Resource()
    api.putChild(b"v1", v1)
    root = resource.Resource()
    root.putChild(b"api", api)
    listening = reactor.listenTCP(0, BoundedSite(root), interface="127.0.0.1")
    port = listening.getHost().port
    reader = EventReader(port)
    try:
        await wait_until(lambda: any(u.live for u in ts.upstreams), 30, "the desktop's link")

        def version() -> int | None:
            latest = reader.latest()
            return latest["thumbnails"].get("desktop/d1") if latest else None

        first = await wait_until(version, 30, "an event with the desktop's thumbnail")
        assert reader.status == 200
        drawn = blocks(640, 480, 2)
        await threads.deferToThread(server.paint, drawn)
        await wait_until(lambda: (version() or 0) > first, 30, "an event after drawing")

        async def shows_drawing() -> tuple[dict[str, str], bytes] | None:
            status, headers, jpeg = await threads.deferToThread(
                get, port, "/api/v1/thumbnails/desktops/d1.jpg"
            )
            assert status == 200 and headers["Content-Type"] == "image/jpeg"
            if _distance(decode(jpeg), scaled(drawn, (320, 240))) > 8:
                return None  # a picture from halfway through the update
            return headers, jpeg

        headers, jpeg = await wait_until(shows_drawing, 30, "the thumbnail of the drawing")
        screen = await threads.deferToThread(server.grab)
        assert_looks_like(decode(jpeg), scaled(screen, (320, 240)))
        status, _, body = await threads.deferToThread(
            get, port, "/api/v1/thumbnails/desktops/d1.jpg", headers["ETag"]
        )
        assert (status, body) == (304, b"")
        status, _, body = await threads.deferToThread(
            get, port, "/api/v1/thumbnails/desktops/nope.jpg"
        )
        assert status == 404 and json.loads(body)["code"] == "not_found"
    finally:
        reader.close()
        events.close()
        thumbnails.stop()
        runner.stop()
        await listening.stopListening()
        await ts.stopService()


def _distance(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(u32_to_rgb(got).astype(int) - u32_to_rgb(want).astype(int)).mean())
