"""The ``[cluster]`` table: this node's name and address, and its timing.

Only meaningful when ``[server] database`` is a PostgreSQL URL (several
nodes share it); on SQLite the site is one node and the table is unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config_reader import ConfigError, Table
from .nodes import (
    DEFAULT_EXPIRY,
    DEFAULT_HEARTBEAT,
    MAX_ADDRESS,
    NAME_RULE,
    check_name,
    default_name,
)


@dataclass(frozen=True)
class ClusterConfig:
    """node_name: unique among the nodes sharing the database (default: the
    short host name, made valid).  node_address: where the other nodes reach
    this one (shown by ``thinserve nodes``).  heartbeat: seconds between
    heartbeats.  lease: seconds a silent node (and its leases) stays alive.
    node_listen: where other nodes connect for the desktops this node runs
    (a Twisted endpoint; None: nowhere).  secret_file: the site's node
    secret, the same file on every node (cluster/link.py)."""

    node_name: str = field(default_factory=default_name)
    node_address: str = ""
    heartbeat: float = DEFAULT_HEARTBEAT
    lease: float = DEFAULT_EXPIRY
    node_listen: str | None = None
    secret_file: str | None = None


def from_table(table: Table) -> ClusterConfig:
    """``[cluster]``, checked: a valid name, a printable address, lease >= 2 heartbeats."""
    name = table.optional_text("node_name")
    if name is not None:
        try:
            check_name(name)
        except ValueError:
            raise table.error("node_name", f'use {NAME_RULE}, e.g. "thinserve-2"', name) from None
    address = table.optional_text("node_address") or ""
    if len(address) > MAX_ADDRESS or not address.isprintable() or " " in address:
        raise table.error(
            "node_address",
            f"a host name or address without spaces, at most {MAX_ADDRESS} characters, e.g. "
            '"10.1.2.3"',
        )
    heartbeat = table.number("heartbeat", DEFAULT_HEARTBEAT, 0.1, 60.0, "seconds")
    lease = table.number("lease", DEFAULT_EXPIRY, 1.0, 3600.0, "seconds")
    if lease < 2 * heartbeat:
        raise ConfigError(
            f"{table.where}: lease ({lease:g} s) must be at least twice the heartbeat "
            f"({heartbeat:g} s), so that one late heartbeat does not make the node gone"
        )
    node_listen = table.optional_text("node_listen") or None
    secret_file = table.optional_text("secret_file") or None
    if node_listen is not None and secret_file is None:
        raise table.error(
            "secret_file",
            "node_listen needs the site's node secret: make one with `thinserve nodes secret "
            'PATH`, copy it to every node and set secret_file = "PATH"',
        )
    table.done()
    return ClusterConfig(
        name or default_name(), address, heartbeat, lease, node_listen, secret_file
    )
