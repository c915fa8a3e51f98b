"""DNS-SD adverts published with python-zeroconf from a child process.

The child runs in a network namespace when given one, on one interface
address, so the adverts come from another "machine" than the test's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

from .children import Child
from .netns import NetNamespace

ZEROCONF_PUBLISHER = r"""
import asyncio, json, sys
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

TYPE, INTERFACE = sys.argv[1], sys.argv[2]

def info_for(cmd):
    return ServiceInfo(
        TYPE, cmd["name"] + "." + TYPE, port=cmd["port"], properties=cmd["properties"],
        parsed_addresses=cmd["addresses"], server=cmd["host"] + ".local.",
    )

async def main():
    zc = AsyncZeroconf(interfaces=[INTERFACE], ip_version=IPVersion.V4Only)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        if cmd["op"] == "register":
            await (await zc.async_register_service(info_for(cmd)))
        elif cmd["op"] == "update":
            # Announce twice, a second apart, as RFC 6762 (8.3, 8.4) asks of an
            # update, so the cache-flush also covers records refreshed just
            # before the change (python-zeroconf's own repeats come 225 ms apart).
            await (await zc.async_update_service(info_for(cmd)))
            await asyncio.sleep(1.1)
            await (await zc.async_update_service(info_for(cmd)))
        elif cmd["op"] == "unregister":
            await (await zc.async_unregister_service(info_for(cmd)))
        print("done", cmd["seq"], flush=True)
    await zc.async_close()

asyncio.run(main())
"""


class ZeroconfPublisher:
    """Registers and withdraws DNS-SD services from a child process that
    runs python-zeroconf on ``interface`` (an IPv4 address), inside
    ``netns`` when given."""

    def __init__(
        self, service_type: str, interface: str, netns: NetNamespace | None = None
    ) -> None:
        args = [sys.executable, "-c", ZEROCONF_PUBLISHER, service_type, interface]
        self.child = Child.spawn(netns.command(args) if netns is not None else args)
        self.seq = 0

    async def ready(self, timeout: float = 15.0) -> None:
        await self.child.wait_for(r"ready\n", timeout)

    async def send(
        self,
        op: str,
        name: str,
        port: int,
        address: str,
        host: str | None = None,
        **properties: str,
    ) -> None:
        """``op`` "register", "update" or "unregister" the service ``name`` at
        ``address``:``port`` (host name ``host``.local, default ``name``) with
        TXT ``properties``; returns once announced."""
        self.seq += 1
        command = {"op": op, "seq": self.seq, "name": name, "port": port, "host": host or name}
        command.update(addresses=[address], properties=properties)
        self.child.write(json.dumps(command))
        await self.child.wait_for(rf"done {self.seq}\n", timeout=15)

    async def stop(self) -> None:
        await self.child.stop()

    def kill(self) -> None:
        """End the child now, where nothing can wait (a fixture's teardown)."""
        if self.child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signal.SIGKILL)
