"""Where the site's browser terminals are: each node's web address, for failover.

A node with a browser-terminal port publishes its address(es) as leases of
kind ``web`` (subject: the URL, e.g. ``https://10.1.2.4:8443/``): the
heartbeats renew them and they expire with the node, so the live ones are
exactly the browser terminals of the site's alive nodes.  Every heartbeat
the node reads them again; the page gets them from ``/nodes.json`` and,
when its node stops answering, goes to the next one (clients/web/terminal.js).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, task, threads

from .db import NOW, ClusterError, Database

log = logging.getLogger(__name__)

WEB = "web"
MAX_URLS = 64  # the most a page is given
LIVE = f"SELECT subject FROM leases WHERE kind = '{WEB}' AND expires > {NOW} ORDER BY subject"


class Claims(Protocol):
    def acquire(self, kind: str, subject: str) -> defer.Deferred[bool]: ...


def web_url(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port/``, an IPv6 host in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}/"


def read_urls(db: Database) -> list[str]:
    return [str(row[0]) for row in db.fetch(LIVE)][:MAX_URLS]


class WebURLs(service.Service):
    """Publish this node's browser-terminal URLs; keep the site's list for ``/nodes.json``."""

    def __init__(
        self, claims: Claims, url: str, own: list[str], interval: float, reactor: Any
    ) -> None:
        self.claims = claims
        self.db = Database(url)
        self.own = own
        self.interval = interval
        self.reactor = reactor
        self.urls: list[str] = list(own)  # the site's, as of the last read
        self._loop: task.LoopingCall | None = None
        self._problem = ""

    def startService(self) -> defer.Deferred[None]:
        super().startService()
        self._loop = task.LoopingCall(self._refresh)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)
        return defer.ensureDeferred(self._publish()).addCallback(lambda _: self._refresh())

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.db.close()

    def site(self) -> list[str]:
        """The site's browser terminals: this node's first, then the others in order."""
        return self.own + [u for u in self.urls if u not in self.own]

    async def _publish(self) -> None:
        for url in self.own:
            try:
                await self.claims.acquire(WEB, url)
            except (ClusterError, ValueError) as exc:
                log.warning("cannot publish the browser terminal at %s: %s", url, exc)

    def _refresh(self) -> defer.Deferred[None]:
        pool = self.reactor.getThreadPool()
        read = threads.deferToThreadPool(self.reactor, pool, read_urls, self.db)
        return read.addCallbacks(self._read, self._failed)

    def _read(self, urls: list[str]) -> None:
        self.urls = urls
        self._problem = ""
        if self.running and any(url not in urls for url in self.own):  # lost: publish again
            defer.ensureDeferred(self._publish())

    def _failed(self, failure: Any) -> None:
        if failure.getErrorMessage() != self._problem:
            self._problem = failure.getErrorMessage()
            log.warning("cannot read the site's browser terminals: %s", self._problem)
