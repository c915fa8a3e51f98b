"""Which terminal a connection is: decided from what it proved, never from what it claims.

- A connection that proved a key (protocols/identity.py) is the terminal
  ``key-…`` of that key, wherever it connects from.  Only such a proven
  terminal may take the place of its own older connection (a reboot).
- A keyless connection (a plain VNC viewer, a terminal of advert contract 1,
  a browser without WebCrypto) is known by its address, ``viewer-ADDR``,
  only where the administrator chose so: a pairing made with
  ``--by-address`` or an ``address_pairing`` subnet; and only while no other
  connection from that address holds the id.  Otherwise it is a terminal of
  its own for as long as it stays connected, ``viewer-ADDR~XXXXXX``: it
  shows its own pairing screen, and everything about it is forgotten when
  it goes away.
- An advert's id and key are claims: a dialled terminal whose advert named
  a key but that proved another (or none) is keyless.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from protocols.identity import terminal_id

from .broker import viewer_terminal_id
from .terminal_ids import ONE_CONNECTION, address_of


@dataclass(frozen=True)
class Identified:
    terminal_id: str
    kind: str  # "key", "address" or "connection"
    note: str = ""  # why a claim was not believed, for the log and the screen


class IdentityRules:
    """Names connections as the module docstring says."""

    def __init__(
        self,
        address_subnets: tuple[str, ...],
        address_bound: Callable[[str], bool],
        taken: Callable[[str], bool],
    ) -> None:
        self._subnets = [ipaddress.ip_network(s, strict=False) for s in address_subnets]
        self._address_bound = address_bound  # a --by-address pairing exists for this id
        self._taken = taken  # a live connection holds this id

    def identify(
        self, host: str, proven_key: str | None, advertised_key: str | None = None
    ) -> Identified:
        if proven_key is not None and advertised_key in (None, proven_key):
            return Identified(terminal_id(proven_key), "key")
        note = ""
        if advertised_key is not None:
            note = "This terminal did not prove the key its advert names."
        return self._keyless(host, note)

    def _keyless(self, host: str, note: str) -> Identified:
        by_address = viewer_terminal_id(host)
        bound = self._address_bound(by_address) or self._in_subnets(host)
        if bound and not self._taken(by_address):
            return Identified(by_address, "address", note)
        suffix = secrets.token_hex(3)
        return Identified(f"{by_address}{ONE_CONNECTION}{suffix}", "connection", note)

    def _in_subnets(self, host: str) -> bool:
        address = address_of(viewer_terminal_id(host))
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in subnet for subnet in self._subnets)
