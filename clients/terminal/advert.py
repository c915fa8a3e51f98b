"""Announce the terminal with mDNS/DNS-SD, as docs/terminal-advert.md describes.

``TerminalAdvertiser`` registers one ``_thinserve-term._tcp`` service with
python-zeroconf, in the asyncio loop that Twisted's asyncio reactor runs,
and withdraws it (a DNS-SD goodbye) on ``stop``.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Sequence

from zeroconf import ServiceInfo

from protocols.terminal import SERVICE_TYPE, TerminalAdvert
from thinserve.discovery import ServiceAdvertiser

log = logging.getLogger(__name__)


class TerminalAdvertiser(ServiceAdvertiser):
    """Registers one ``_thinserve-term._tcp`` service for ``advert``."""

    def __init__(
        self,
        advert: TerminalAdvert,
        interfaces: Sequence[str] = (),
        ipv4_only: bool = False,
    ) -> None:
        info = ServiceInfo(
            SERVICE_TYPE,
            advert.service_name,
            port=advert.port,
            properties=advert.build(),  # raises AdvertError now rather than on the network
            parsed_addresses=list(advert.addresses),
            server=host_name(advert.terminal_id),
        )
        super().__init__(info, list(interfaces) or None, ipv4_only)
        self.advert = advert


def host_name(terminal_id: str) -> str:
    """A host name of the terminal's own: ``thinserve-terminal-<id>.local.``."""
    label = re.sub(r"[^a-z0-9-]", "-", terminal_id.lower()).strip("-")[:40]
    return f"thinserve-terminal-{label or 'x'}.local."


def default_instance_name() -> str:
    """``Terminal <host name>``, cut to one DNS label."""
    name = f"Terminal {socket.gethostname().split('.')[0]}"
    return name.encode("utf-8")[:63].decode("utf-8", "ignore")
