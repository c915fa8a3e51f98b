"""The desktops: their settings, their lifecycle manager, and the pool policies.

- config.py: PoolPolicy and DesktopsConfig.
- record.py: one ManagedDesktop (its state machine, mirror, link, bookkeeping).
- policy.py: the pool policies' decisions (room, spares, idle, victims).
- manager.py: DesktopManager, which carries them out.
- holders.py: who uses which desktop, from the broker.
- bridge.py: asyncio backends as Deferreds.

Desktop states live in thinserve/desktop_state.py.
"""

from .bridge import bridge
from .config import DesktopsConfig, PoolPolicy
from .holders import Holders, desktops_in_use
from .manager import DesktopListener, DesktopManager
from .record import ManagedDesktop

__all__ = [
    "DesktopListener",
    "DesktopManager",
    "DesktopsConfig",
    "Holders",
    "ManagedDesktop",
    "PoolPolicy",
    "bridge",
    "desktops_in_use",
]
