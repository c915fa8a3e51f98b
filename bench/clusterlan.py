"""The cluster benchmark's network: a private LAN in namespaces of its own.

``run_outside`` makes a LAN (tests/support/netns.py ``Lan``): the bench runs
in its server namespace, PostgreSQL in a host namespace on the same bridge,
so every query crosses veth and a bridge as it would cross a switch.  Two
more hosts (``nodea``, ``nodeb``) are where the node benchmarks run their
nodes (bench/clusternodes.py), and the server namespace's bridge gets
TERMINALS addresses more, so that the bench's terminals each come from an
address of their own.  It starts PostgreSQL (durable: PostgreSQL's own
fsync and commit settings), runs ``python -m bench cluster`` again inside
the server namespace with the database's URL in THINSERVE_BENCH_DATABASE
and the node hosts in NODES_ENV, and takes everything down afterwards.
Only root can make namespaces.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.netns import Lan, lan_problem, run_ip
from tests.support.postgres import PostgresServer

DATABASE_ENV = "THINSERVE_BENCH_DATABASE"  # the same name in bench/__main__.py
NODES_ENV = "THINSERVE_BENCH_NODE_HOSTS"  # NAME=NAMESPACE@ADDRESS, comma separated
SUBNET = "10.231.7"
DATABASE_HOST = 2
NODE_HOSTS = {"nodea": 11, "nodeb": 12}
FIRST_TERMINAL = 100  # terminals' addresses on br0: SUBNET.100 and on
TERMINALS = 150
PORT = 5432
# Counting every statement as it ends (pg_stat_database's counters lag by seconds).
STATEMENTS = "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"


def run_outside(argv: list[str]) -> int:
    """Run the cluster benchmark inside a LAN whose other host is the database."""
    problem = lan_problem()
    if problem is not None:
        print(f"error: the cluster benchmark needs network namespaces: {problem}", file=sys.stderr)
        return 1
    lan = Lan(SUBNET, prefix="tsbench")
    server: PostgresServer | None = None
    try:
        lan.create()
        db_host = lan.add_host("db", DATABASE_HOST)
        address = lan.address(DATABASE_HOST)
        print(
            f"[cluster] PostgreSQL at {address}:{PORT} in namespace {db_host.name}", file=sys.stderr
        )
        server = PostgresServer.start(
            host=address,
            wrap=db_host.command([]),
            durable=True,
            port=PORT,
            clients=f"{SUBNET}.0/24",
            options=STATEMENTS,
        )
        env = {**os.environ, DATABASE_ENV: server.url(), NODES_ENV: add_node_hosts(lan)}
        command = lan.server.command([sys.executable, "-m", "bench", *argv])
        return subprocess.run(command, env=env, check=False).returncode
    finally:
        if server is not None:
            server.stop()
        lan.delete()


def add_node_hosts(lan: Lan) -> str:
    """The node hosts and the terminals' addresses on the LAN; the hosts as NODES_ENV
    says them."""
    hosts = []
    for name, host in NODE_HOSTS.items():
        hosts.append(f"{name}={lan.add_host(name, host).name}@{lan.address(host)}")
    for host in range(FIRST_TERMINAL, FIRST_TERMINAL + TERMINALS):
        run_ip(
            ["ip", "-n", lan.server.name, "addr", "add", f"{lan.address(host)}/24", "dev", "br0"]
        )
    return ",".join(hosts)


def terminal_addresses() -> list[str]:
    """The addresses on the server namespace's bridge that terminals may come from."""
    return [f"{SUBNET}.{host}" for host in range(FIRST_TERMINAL, FIRST_TERMINAL + TERMINALS)]


def parse_hosts(text: str) -> dict[str, tuple[str, str]]:
    """NODES_ENV's value: {host name: (namespace, address)}."""
    hosts = {}
    for item in filter(None, text.split(",")):
        name, _, rest = item.partition("=")
        namespace, _, address = rest.partition("@")
        hosts[name] = (namespace, address)
    return hosts
