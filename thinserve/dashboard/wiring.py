"""Putting the admin API and the dashboard together for the running server.

``admin_api`` makes the one AdminAPI both the Unix socket and the dashboard
serve, with its account handlers and admin viewers; ``Dashboard`` is the
service that runs the dashboard's live parts (thumbnails, events, metrics)
while thinserve runs.  The listening ports are the service's own Listeners.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service

from .. import metrics
from ..admin.accounts_api import ACCOUNT_ROUTES, AccountsAPI
from ..admin.handlers import CORE_ROUTES, AdminAPI, LocalControl, Route
from ..desktops import DesktopManager
from ..hub import Hub
from ..secrets import SecretHasher
from ..verifier import Verifier
from .accounts import Accounts
from .auth import Authenticator, LoginResource
from .events import EventsResource
from .site import DashboardParts, DashboardSite, dashboard_site, is_secure
from .thumbnails import ThumbnailResource, Thumbnails
from .viewer import VIEWER_ROUTES, Tickets, ViewersAPI, ViewerSocket

SOCKET_ROUTES: tuple[Route, ...] = CORE_ROUTES + ACCOUNT_ROUTES
DASHBOARD_ROUTES: tuple[Route, ...] = SOCKET_ROUTES + VIEWER_ROUTES


@dataclass(frozen=True)
class Admin:
    """The admin API with every part, and what the dashboard shares with it."""

    api: AdminAPI
    accounts: Accounts
    tickets: Tickets


def admin_api(
    hub: Hub,
    info: Callable[[], dict[str, Any]],
    desktops: DesktopManager | None,
    local: LocalControl | None,
    clock: Callable[[], float] = time.time,
) -> Admin:
    """The admin API with its account handlers and admin viewers."""
    api = AdminAPI(hub, info, desktops, local)
    accounts = Accounts(hub.broker.store, SecretHasher(), hub.verifier, clock)
    tickets = Tickets(clock)
    api.accounts = AccountsAPI(hub.broker.store, accounts, hub)
    api.viewers = ViewersAPI(hub, tickets)
    return Admin(api, accounts, tickets)


class Dashboard(service.Service):
    """The dashboard's live parts, for as long as thinserve runs."""

    def __init__(self, admin: Admin, reactor: Any) -> None:
        self.admin = admin
        self.api = api = admin.api
        self.reactor = reactor
        hub = api.hub
        accounts = admin.accounts
        self.auth = Authenticator(
            hub.broker.store, accounts.hasher, hub.verifier, accounts.clock, accounts
        )
        # Their own threads: thumbnails never wait behind a login's Argon2 check.
        self.encoders = Verifier(reactor)
        self.thumbnails = Thumbnails(hub, reactor, self.encoders)
        self.events = EventsResource(hub, self.thumbnails, reactor)
        self.metrics = metrics.MetricsResource()

    def site(self) -> DashboardSite:
        """The site to listen on (DashboardMissing when its files are not installed)."""
        hub = self.api.hub
        auth = self.auth
        socket = ViewerSocket(
            hub, self.admin.tickets, lambda request: auth.principal(request, is_secure(request))
        )
        parts = DashboardParts(
            api=self.api,
            routes=DASHBOARD_ROUTES,
            auth=auth,
            login=LoginResource(auth),
            events=self.events,
            thumbnails=ThumbnailResource(self.thumbnails),
            viewer_socket=socket,
            metrics=self.metrics,
        )
        return dashboard_site(parts)

    def startService(self) -> None:
        super().startService()
        metrics.bind(self.api.hub)
        self.thumbnails.start()

    def stopService(self) -> None:
        super().stopService()
        self.events.close()
        self.thumbnails.stop()
        self.encoders.stop()
        metrics.unbind(self.api.hub)
