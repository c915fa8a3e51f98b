"""Who is asking the admin API, and what their role lets them do.

On the Unix socket the operating system decided (only thinserve's user and
root can open it), so its peer is an administrator.  Over HTTP the
dashboard's login or an API token names an admin account, whose role is
``helpdesk`` (look, shadow, kick) or ``admin`` (everything).  Every route
says what it needs: ``READ``, ``HELPDESK`` or ``ADMIN``.
"""

from __future__ import annotations

from dataclasses import dataclass

HELPDESK_ROLE, ADMIN_ROLE = "helpdesk", "admin"
ROLES = (HELPDESK_ROLE, ADMIN_ROLE)  # in order: an admin may do all a helpdesk account may
READ, HELPDESK, ADMIN = "read", "helpdesk", "admin"  # what a route needs
_RANK = {READ: 0, HELPDESK: 1, ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``actor`` is what the audit log names ("admin:root" on the Unix socket,
    "web:alice" for a dashboard login, "token:alice/LABEL" for an API token),
    ``name`` the account and ``role`` one of ROLES.
    """

    actor: str
    name: str
    role: str

    def may(self, needs: str) -> bool:
        """Whether this role may call a route that needs ``needs``."""
        return _RANK.get(self.role, -1) >= _RANK[needs]


def socket_principal(actor: str) -> Principal:
    """The peer of the Unix socket: always an administrator."""
    return Principal(actor, actor.removeprefix("admin:"), ADMIN_ROLE)
