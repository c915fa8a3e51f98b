"""Ordinary VNC viewers in listen mode, dialled by thinserve.

A viewer started with ``vncviewer -listen`` (TigerVNC), Remmina's "listen
for incoming connections", or any "listening viewer" waits on a TCP port
(5500 by default).  thinserve connects out to each configured address and
keeps retrying with backoff, exactly as it does for terminals it discovers
over zeroconf.  Such a viewer is identified by its address, like a viewer
that connects in, so an administrator pairs it the same way.
"""

from __future__ import annotations

import re

from protocols.terminal import TerminalAdvert

from .broker import viewer_terminal_id

LISTEN_PORT = 5500
_ADDRESS = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d{1,5}))?$"
)


class ViewerAddressError(ValueError):
    pass


def listening_viewer(address: str) -> TerminalAdvert:
    """The advert-equivalent of a listening viewer at ``host[:port]``."""
    match = _ADDRESS.match(address.strip())
    if not match:
        raise ViewerAddressError(f"{address!r}: write host, host:port or [ipv6]:port")
    host = match["v6"] or match["host"]
    port = int(match["port"] or LISTEN_PORT)
    if not 0 < port < 65536:
        raise ViewerAddressError(f"{address!r}: port {port} is out of range")
    terminal_id = viewer_terminal_id(host)
    return TerminalAdvert(
        instance=f"listening viewer {host}:{port}",
        terminal_id=terminal_id,
        model="VNC viewer",
        width=1024,
        height=768,
        port=port,
        addresses=(host,),
    )
