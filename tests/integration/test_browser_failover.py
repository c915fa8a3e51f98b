"""The browser terminal goes to the next node when its own stops answering.

Two browser-terminal sites (real twisted.web sites, real noVNC in headless
Chromium) list each other in ``/nodes.json``, as the nodes of a site do.
The page connects to the first; that node's port closes and its
connections drop; the page tries once more there, then goes to the second
node's page, with its settings, and connects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.request import urlopen

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.integration.test_browser_key import chromium
from tests.support.aio import as_deferred
from tests.support.browser import require_browser
from tests.support.reactor import ListeningPort
from tests.support.webserve import LosslessSession, listen
from tests.unit.content import desktop_frame
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.rfbserver import RFBServerFactory, ServerOptions
from thinserve.web import WebOptions, terminal_site

pytestmark = pytest.mark.integration


class Node:
    """One node's browser terminal: every page is shown ``source``."""

    def __init__(self, source: Source, nodes: Callable[[], list[str]]) -> None:
        self.sessions: list[TerminalSession] = []
        self.source = source
        self.site = terminal_site(
            RFBServerFactory(ServerOptions(), self._session), WebOptions(nodes=nodes)
        )
        self.port: ListeningPort | None = None

    def _session(self) -> TerminalSession:
        session = LosslessSession(on_attach=lambda s: self.source)
        session.control = True
        self.sessions.append(session)
        return session

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port.getHost().port}/"

    def die(self) -> None:
        """Stop listening and drop every connection, as a killed node does."""
        assert self.port is not None
        self.port.stopListening()
        for session in self.sessions:
            session.close("the node is gone")


@pytest_twisted.ensureDeferred
async def test_the_page_goes_to_the_next_node_when_its_node_is_gone(tmp_path: Any) -> None:
    require_browser()
    source = Source(desktop_frame(320, 240, seed=5), name="d1")
    urls: list[str] = []
    nodes = [Node(source, lambda: urls), Node(source, lambda: urls)]
    for node in nodes:
        node.port = await listen(node.site)
    urls += [node.url for node in nodes]
    listed = await threads.deferToThread(lambda: json.load(urlopen(nodes[0].url + "nodes.json")))
    assert listed == {"nodes": urls}

    first, second = sorted(nodes, key=lambda n: n.url)  # the ring is in sorted order

    async def scenario() -> None:
        async with chromium(tmp_path / "profile") as page:
            await page.goto(first.url + "?resize=off")
            await page.wait_for_selector("body[data-state=connected]", timeout=15_000)
            first.die()
            await page.wait_for_url(second.url + "?resize=off", timeout=30_000)
            await page.wait_for_selector("body[data-state=connected]", timeout=15_000)

    await as_deferred(scenario())
    assert second.sessions, "the second node never got the page's connection"
    second.die()
