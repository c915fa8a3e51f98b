"""thinserve running in the test's own process and reactor."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import reactor

from thinserve.broker import BrokerConfig
from thinserve.config import Config, DesktopConfig
from thinserve.service import ThinServe


def first_free(desktops: Sequence[DesktopConfig]) -> BrokerConfig:
    """Every terminal gets the first free desktop (a pool of them all)."""
    names = tuple(d.name for d in desktops)
    return BrokerConfig(unknown_terminal="pool", pools={"all": names}, default_pool="all")


async def start_thinserve(
    desktops: Sequence[DesktopConfig],
    broker: BrokerConfig | None = None,
    web: bool = False,
    database: str = ":memory:",
    discovery_interfaces: tuple[str, ...] | None = None,
    dial: tuple[str, ...] = (),
    address_pairing: tuple[str, ...] = ("127.0.0.0/8",),
) -> ThinServe:
    """thinserve in this process; terminals get desktops by ``broker`` (default:
    first free).  Discovery runs only when interfaces are given.  Keyless
    viewers on loopback are known by address (``viewer-127.0.0.N``), as an
    admin may choose for a subnet, unless ``address_pairing`` says otherwise."""
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=("tcp:port=0:interface=127.0.0.1",) if web else (),
        broker=broker or first_free(desktops),
        database=database,
        admin_socket="",  # no admin API unless a test asks for one
        dashboard_listen=(),  # nor a dashboard
        discovery=discovery_interfaces is not None,
        discovery_interfaces=discovery_interfaces or (),
        dial=dial,
        address_pairing=address_pairing,
        desktops=tuple(desktops),
        local_desktops=(),
        source="test",
    )
    server = ThinServe(config, reactor)
    await server.startService()
    return server
