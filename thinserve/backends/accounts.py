"""Who a desktop session runs as: a Unix account from the password database.

Starting a session as another user takes CAP_SETUID and CAP_SETGID: root has
them, and so does the packaged service, which runs as its own ``thinserve``
user with those capabilities (and no others it does not need).  A local
desktop never runs as root: its shell would own the machine.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from .base import BackendError

DESKTOP_ACCOUNT = "thinserve-desktop"  # the default desktop's user when thinserve can switch
DESKTOP_HOME = "/var/lib/thinserve-desktop"
MAKE_DESKTOP_ACCOUNT = (
    f"useradd --system --create-home --home-dir {DESKTOP_HOME} --shell /bin/bash {DESKTOP_ACCOUNT}"
)
CAP_SETGID = 6  # bit numbers in the capability sets (linux/capability.h)
CAP_SETUID = 7
PROC_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class Account:
    """Who a session runs as, from the password database."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @classmethod
    def of(cls, user: str | None) -> Account:
        """``user``'s account; None: thinserve's own."""
        try:
            entry = pwd.getpwuid(os.geteuid()) if user is None else pwd.getpwnam(user)
        except KeyError:
            raise BackendError(missing_account(user or "")) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()


def missing_account(user: str) -> str:
    """What to say when ``user`` does not exist: the command that makes it."""
    command = MAKE_DESKTOP_ACCOUNT if user == DESKTOP_ACCOUNT else f"useradd --create-home {user}"
    return f"there is no Unix user {user!r}: create it ({command}) or change the desktop's user"


def can_switch_users(status: Path = PROC_STATUS) -> bool:
    """True when this process may start programs as other users: CAP_SETUID and
    CAP_SETGID in its effective set (root, or a service given them)."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                effective = int(line.split(":", 1)[1].strip(), 16)
                needed = (1 << CAP_SETUID) | (1 << CAP_SETGID)
                return effective & needed == needed
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0  # no /proc: only root is known to switch


def account_for(desktop: str, user: str | None) -> Account:
    """The account desktop ``desktop`` runs as; a clear error if thinserve cannot switch to it."""
    account = Account.of(user)
    if not account.is_me and not can_switch_users():
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise BackendError(
            f"desktop {desktop} runs as user {account.name}, but thinserve runs as {me} "
            "without CAP_SETUID and CAP_SETGID: only root (or the packaged service) can "
            "start sessions for other users (run thinserve as root, or drop the desktop's "
            "user setting to run it as yourself)"
        )
    return account


def default_desktop_user() -> str | None:
    """The embedded default desktop's user: thinserve-desktop when thinserve can
    switch users (as root, or as the packaged service), else thinserve's own."""
    return DESKTOP_ACCOUNT if can_switch_users() else None


def local_desktop_account(desktop: str, user: str | None) -> Account:
    """The account a local desktop runs as: never root, whose shell would own the machine."""
    account = account_for(desktop, user)
    if account.uid == 0:
        raise BackendError(
            f"local desktop {desktop} would run as root ({account.name}): set user = "
            f'"{DESKTOP_ACCOUNT}" (or another unprivileged account) in its [[local_desktop]] '
            f"table; make that account with: {MAKE_DESKTOP_ACCOUNT}"
        )
    return account
