"""One node dials each listening terminal: the ``dial`` lease.

Every node of a site may see a terminal's zeroconf advert (or have the same
listening viewer in ``[server] dial``); only the node holding the
terminal's ``dial`` lease (subject: its terminal id) dials it.  The
heartbeats renew the lease while the node keeps the link; when the node
dies the lease expires and the next node to ask gets it, within a few
heartbeats (thinserve/reverse.py asks again every heartbeat).
"""

from __future__ import annotations

import logging
from typing import Protocol

from twisted.internet import defer

from protocols.terminal import TerminalAdvert

log = logging.getLogger(__name__)

DIAL = "dial"


class Claims(Protocol):
    def acquire(self, kind: str, subject: str) -> defer.Deferred[bool]: ...

    def release(self, kind: str, subject: str) -> defer.Deferred[None]: ...


class DialLeases:
    """A reverse.DialGate over the cluster's leases."""

    def __init__(self, claims: Claims) -> None:
        self.claims = claims
        self.dialling: set[str] = set()  # terminal ids this node holds the lease of

    def may_dial(self, advert: TerminalAdvert) -> defer.Deferred[bool]:
        subject = advert.terminal_id

        def won(yes: bool) -> bool:
            if yes and subject not in self.dialling:
                self.dialling.add(subject)
                log.info("this node dials terminal %s (%s)", advert.instance, subject)
            elif not yes:
                self.dialling.discard(subject)
            return yes

        return self.claims.acquire(DIAL, subject).addCallback(won)

    def done_with(self, advert: TerminalAdvert) -> None:
        subject = advert.terminal_id
        self.dialling.discard(subject)
        released = self.claims.release(DIAL, subject)
        released.addErrback(
            lambda failure: log.warning(
                "terminal %s: giving up its dial lease failed (%s); it expires by itself",
                subject,
                failure.getErrorMessage(),
            )
        )
