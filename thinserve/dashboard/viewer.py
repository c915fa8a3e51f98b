"""The admin's viewer: a desktop in the dashboard, view-only or taken over.

An admin asks for a viewer with ``POST /api/v1/viewers`` (CSRF-checked like
every change) and gets a ticket: random, single use, valid for TICKET_TTL
seconds, bound to the admin who asked.  The viewer page opens noVNC on
``/api/v1/viewers/rfb?ticket=T``; the WebSocket upgrade must carry the same
admin's login and a live ticket, so neither a stolen ticket alone nor a page
of another origin (refused by the WebSocket's origin check) opens a viewer.
The RFB connection then belongs to ``Hub.viewer_session``: the broker lets
it watch the desktop or take it over (``Broker.viewer_connected``), and both
are audited.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.web import resource, server

from protocols.rfb.constants import SecurityType

from ..admin.errors import ApiError
from ..admin.fields import only_keys, text
from ..admin.handlers import Call, Route
from ..admin.http import error_reply
from ..admin.principal import ADMIN_ROLE, HELPDESK, Principal
from ..hub import Hub
from ..rfbserver import RFBServerFactory, ServerOptions
from ..web.websocket import RFBWebSocketFactory, RFBWebSocketResource, WebSocketOptions

log = logging.getLogger(__name__)

TICKET_TTL = 30.0  # seconds from the ticket to the WebSocket upgrade
MAX_TICKETS = 200  # outstanding; the oldest is dropped beyond
MODES = ("view", "control")

Clock = Callable[[], float]
Authenticate = Callable[[server.Request], Principal]


@dataclass(frozen=True)
class Ticket:
    admin: str
    actor: str
    desktop: str
    control: bool
    expires: float


class Tickets:
    """Single-use viewer tickets, bounded in number and time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._tickets: OrderedDict[str, Ticket] = OrderedDict()

    def issue(self, principal: Principal, desktop: str, control: bool) -> str:
        self._expire()
        while len(self._tickets) >= MAX_TICKETS:
            self._tickets.popitem(last=False)
        token = secrets.token_urlsafe(24)
        expires = self.clock() + TICKET_TTL
        self._tickets[token] = Ticket(principal.name, principal.actor, desktop, control, expires)
        return token

    def take(self, token: str, principal: Principal) -> Ticket | None:
        """The ticket, once, if it is live and was issued to ``principal``'s account."""
        self._expire()
        ticket = self._tickets.get(token)
        if ticket is None or ticket.admin != principal.name:
            return None
        del self._tickets[token]
        return ticket

    def _expire(self) -> None:
        now = self.clock()
        for token in [t for t, ticket in self._tickets.items() if ticket.expires <= now]:
            del self._tickets[token]


VIEWER_ROUTES = (
    Route(
        "POST",
        ("viewers",),
        "post_viewers",
        HELPDESK,
        owner="viewers",
        summary="A ticket for a viewer: view-only (helpdesk) or take over (admin)",
    ),
)


class ViewersAPI:
    """``POST /api/v1/viewers``: a ticket for the viewer page."""

    def __init__(self, hub: Hub, tickets: Tickets) -> None:
        self.hub = hub
        self.tickets = tickets

    def post_viewers(self, call: Call) -> dict[str, Any]:
        only_keys(call.body, {"desktop", "mode"}, "field")
        desktop = text(call.body, "desktop")
        mode = call.body.get("mode", "view")
        if mode not in MODES:
            raise ApiError(
                400, '\'mode\' must be "view" or "control"', "view: watch; control: take over"
            )
        principal = call.principal
        if principal is None:
            raise ApiError(401, "viewers are for the dashboard's logins", "log in first")
        if mode == "control" and principal.role != ADMIN_ROLE:
            raise ApiError(403, "taking over a desktop needs the admin role", "ask an admin")
        if not self.hub.broker.is_registered(desktop):
            known = sorted(self.hub.mirrors)
            raise ApiError(404, f"no desktop {desktop!r}", "see the desktops page", known=known)
        ticket = self.tickets.issue(principal, desktop, mode == "control")
        return {
            "ticket": ticket,
            "desktop": desktop,
            "mode": mode,
            "expires_in": TICKET_TTL,
            "url": f"/viewer.html#ticket={ticket}&desktop={desktop}&mode={mode}",
        }


class ViewerSocket(resource.Resource):
    """``/api/v1/viewers/rfb?ticket=T``: the viewer's RFB over WebSocket."""

    isLeaf = True

    def __init__(self, hub: Hub, tickets: Tickets, authenticate: Authenticate) -> None:
        super().__init__()  # Twisted leaves it unannotated
        self.hub = hub
        self.tickets = tickets
        self.authenticate = authenticate

    def render(self, request: server.Request) -> bytes | int:
        try:
            principal = self.authenticate(request)
            ticket = self._ticket(request, principal)
        except ApiError as exc:
            return error_reply(request, exc)
        factory = RFBServerFactory(
            ServerOptions(methods=(SecurityType.NONE,)),
            lambda: self.hub.viewer_session(
                ticket.actor, ticket.admin, ticket.desktop, ticket.control
            ),
        )
        socket = RFBWebSocketResource(RFBWebSocketFactory(factory, WebSocketOptions()))
        return socket.render(request)

    def _ticket(self, request: server.Request, principal: Principal) -> Ticket:
        args: dict[bytes, list[bytes]] = request.args or {}
        raw = (args.get(b"ticket") or [b""])[-1][:64]
        token = raw.decode("ascii", "replace")
        ticket = self.tickets.take(token, principal) if token else None
        if ticket is None:
            raise ApiError(
                403,
                "no live viewer ticket for this login",
                "open the viewer again from the dashboard (tickets last 30 s, once)",
            )
        return ticket
