"""A site on a private LAN: PostgreSQL, each node and each terminal on a host of its own.

``Site`` makes a LAN of network namespaces (tests/support/netns.py ``Lan``):
PostgreSQL on host ``db`` (SUBNET.2), nodes on hosts of their own
(``node_host``), terminals on others (``terminal_host``).  Every packet
between them crosses veth pairs and a bridge, as between machines on a
switch; nothing listens outside the namespaces.  Desktops are reached by
the nodes over Unix sockets, which namespaces do not separate (a stand-in
for a hypervisor every node can reach).
"""

from __future__ import annotations

from pathlib import Path

from .need import need
from .netns import Lan, NetNamespace, lan_problem
from .nodes import NodeHost
from .postgres import PostgresServer, need_postgres

DATABASE_HOST = 2


class Site:
    def __init__(self, subnet: str) -> None:
        self.lan = Lan(subnet, prefix="tssite")
        self.postgres: PostgresServer | None = None
        self.database = ""

    @property
    def viewers(self) -> str:
        return f"{self.lan.subnet}.0/24"

    def start(self) -> None:
        need(lan_problem() is None, f"network namespaces: {lan_problem()} (run the tests as root)")
        bin_dir = need_postgres()
        self.lan.create()
        db = self.lan.add_host("db", DATABASE_HOST)
        self.postgres = PostgresServer.start(
            bin_dir,
            host=self.lan.address(DATABASE_HOST),
            wrap=db.command([]),
            clients=self.viewers,
        )
        with self.lan.server.entered():  # the database is reached across the LAN
            self.database = self.postgres.new_database()

    def node_host(self, name: str, host: int) -> NodeHost:
        """A host for node ``name`` (its "-" left out of the host's name): its
        namespace and address."""
        netns = self.lan.add_host(name.replace("-", ""), host)
        return NodeHost(netns, self.lan.address(host), self.viewers)

    def terminal_host(self, name: str, host: int) -> NetNamespace:
        return self.lan.add_host(name, host)

    def stop(self) -> None:
        try:
            if self.postgres is not None:
                self.postgres.stop()
        finally:
            self.lan.delete()


def unix_socket(folder: Path, name: str) -> Path:
    """A path for a desktop's RFB Unix socket that every node (root) may reach."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.sock"
