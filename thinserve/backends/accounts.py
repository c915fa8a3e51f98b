"""Who a desktop session runs as: a Unix account from the password database."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from .base import BackendError


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
            raise BackendError(
                f"there is no Unix user {user!r}: create it (useradd --create-home {user}) "
                "or change the desktop's user"
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()


def account_for(desktop: str, user: str | None) -> Account:
    """The account desktop ``desktop`` runs as; a clear error if thinserve cannot switch to it."""
    account = Account.of(user)
    if not account.is_me and os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise BackendError(
            f"desktop {desktop} runs as user {account.name}, but thinserve runs as {me}: "
            "only root can start sessions for other users (run thinserve as root, or drop "
            "the desktop's user setting to run it as yourself)"
        )
    return account
