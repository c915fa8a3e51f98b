"""The admin API: JSON over HTTP on a local Unix socket, served by thinserve.

Every endpoint lives under /api/v1 (docs/admin.md lists them with their
bodies and answers).  The parts: what each call does (handlers, with views
and fields), the HTTP layer (http) and the socket with its peer check
(socket); ``start`` puts them together for the running server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IListeningPort

from ..desktops import DesktopManager
from ..hub import Hub
from .handlers import AdminAPI, LocalControl
from .http import AdminSite
from .socket import AdminSocketError, listen, peer_actor, socket_path

log = logging.getLogger(__name__)


async def start(
    reactor: Any,  # any reactor providing IReactorUNIX (a zope interface mypy cannot read)
    hub: Hub,
    configured: str | None,
    info: Callable[[], dict[str, Any]] | None = None,
    desktops: DesktopManager | None = None,
    local: LocalControl | None = None,
) -> IListeningPort | None:
    """Serve the admin API for ``hub`` where ``configured`` says (see socket_path).

    With the default path, a problem is logged and thinserve runs without the
    API; a configured path must work (AdminSocketError otherwise).  A
    coroutine, as the service awaits each of its listeners.
    """
    try:
        path = socket_path(configured)
        if path is None:
            log.info("admin API off ([server] admin_socket is empty)")
            return None
        port = listen(reactor, path, AdminSite(AdminAPI(hub, info, desktops, local), peer_actor))
    except (AdminSocketError, OSError) as exc:
        if configured is not None:
            raise AdminSocketError(str(exc)) from None
        log.warning("admin API off: %s", exc)
        return None
    log.info("admin API on %s", path)
    return port
