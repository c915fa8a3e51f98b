"""The browser terminal: noVNC in a web page, RFB over WebSocket.

``terminal_site(rfb_factory, options)`` gives a twisted.web Site serving the
terminal page, noVNC and the WebSocket endpoint on one port; listen on it
with the same RFBServerFactory the TCP listener uses.
"""

from .limits import HTTPLimits
from .site import NoVNCMissing, WebOptions, find_novnc, terminal_site
from .websocket import WebSocketOptions, origin_allowed, rfb_websocket_resource

__all__ = [
    "HTTPLimits",
    "NoVNCMissing",
    "WebOptions",
    "WebSocketOptions",
    "find_novnc",
    "origin_allowed",
    "rfb_websocket_resource",
    "terminal_site",
]
