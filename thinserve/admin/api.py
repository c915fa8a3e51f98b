"""The admin API: JSON over HTTP on a local Unix socket, served by thinserve.

Every endpoint lives under /api/v1 (docs/admin.md lists them with their
bodies and answers).  The parts: what each call does (handlers, with views
and fields), the HTTP layer (http) and the socket with its peer check
(socket); ``start`` puts them together for the running server.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet.interfaces import IListeningPort

from .handlers import ROUTES, AdminAPI, Route
from .http import AdminSite
from .socket import AdminSocketError, listen, peer_principal, socket_path

log = logging.getLogger(__name__)


async def start(
    reactor: Any,  # any reactor providing IReactorUNIX (a zope interface mypy cannot read)
    api: AdminAPI,
    configured: str | None,
    routes: tuple[Route, ...] = ROUTES,
) -> IListeningPort | None:
    """Serve ``api`` where ``configured`` says (see socket_path).

    With the default path, a problem is logged and thinserve runs without the
    API; a configured path must work (AdminSocketError otherwise).  A
    coroutine, as the service awaits each of its listeners.
    """
    try:
        path = socket_path(configured)
        if path is None:
            log.info("admin API off ([server] admin_socket is empty)")
            return None
        port = listen(reactor, path, AdminSite(api, peer_principal, routes))
    except (AdminSocketError, OSError) as exc:
        if configured is not None:
            raise AdminSocketError(str(exc)) from None
        log.warning("admin API off: %s", exc)
        return None
    log.info("admin API on %s", path)
    return port
