"""The broker: which desktop (or which screen) each terminal shows.

Pure logic over a Store: no sockets, no reactor.  The relay feeds it events
and applies the ``Change`` values it returns.  See docs/broker.md.
"""

from __future__ import annotations

from ..desktop_state import DesktopState
from .assignment import (
    FALLBACK_SCREENS,
    Assignment,
    Change,
    ScreenKind,
    ShowDesktop,
    ShowScreen,
)
from .codes import ALPHABET, format_code, normalise_code
from .config import BrokerConfig, BrokerConfigError, from_mapping
from .core import (
    SYSTEM,
    AlreadyConnectedError,
    Broker,
    BrokerError,
    BrokerState,
    NotConnectedError,
    PairingCodeError,
    TerminalInfo,
    by_address_id,
    viewer_terminal_id,
)
from .ratelimit import RateLimit

__all__ = [
    "ALPHABET",
    "FALLBACK_SCREENS",
    "SYSTEM",
    "AlreadyConnectedError",
    "Assignment",
    "Broker",
    "BrokerConfig",
    "BrokerConfigError",
    "BrokerError",
    "BrokerState",
    "Change",
    "DesktopState",
    "NotConnectedError",
    "PairingCodeError",
    "RateLimit",
    "ScreenKind",
    "ShowDesktop",
    "ShowScreen",
    "TerminalInfo",
    "by_address_id",
    "format_code",
    "from_mapping",
    "normalise_code",
    "viewer_terminal_id",
]
