"""The doctor's checks of a site's shared parts: its PostgreSQL database, this
node's name among the live nodes, and the node secret.

On an SQLite database the site is one node and these checks say so and pass.
Each database check is one short statement, bounded by the cluster's
connection and statement timeouts (thinserve/cluster/db.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Config
from ..store.location import is_postgres
from ..store.migrations import SCHEMA_VERSION
from .report import Check, fail, ok, warn

if TYPE_CHECKING:
    from ..cluster.db import Database

SCHEMA = "SELECT version FROM thinserve_schema"


def site(config: Config) -> list[Check]:
    """The database, the schema it holds, this node's name, and the node secret."""
    if not is_postgres(config.database_path):
        return [ok("site", "one node: the database is SQLite (docs/scale-out.md for several)")]
    from ..cluster.db import ClusterError, Database, where

    database = Database(config.database_path)
    place = where(config.database_path)
    try:
        rows = database.fetch("SELECT to_regclass('thinserve_schema')::text")
        checks = [ok("database", f"PostgreSQL at {place} answers")]
        checks.append(_schema(database) if rows and rows[0][0] else _empty(place))
        checks.append(_name(database, config.cluster.node_name))
    except ClusterError as exc:
        return [
            fail(
                "database",
                str(exc),
                "start PostgreSQL there, or fix [server] database (docs/scale-out.md)",
            ),
            _secret(config),
        ]
    finally:
        database.close()
    return [*checks, _secret(config)]


def _empty(place: str) -> Check:
    return ok("schema", f"{place} is empty: the first node to start makes the tables")


def _schema(database: Database) -> Check:
    rows = database.fetch(SCHEMA)
    version = int(rows[0][0]) if rows else 0
    if version > SCHEMA_VERSION:
        return fail(
            "schema",
            f"the database has schema version {version}, newer than this thinserve's "
            f"{SCHEMA_VERSION}: a newer thinserve wrote it",
            "install the thinserve version the other nodes run",
        )
    if version < SCHEMA_VERSION:
        return warn(
            "schema",
            f"schema version {version}; this thinserve brings it to {SCHEMA_VERSION} when it "
            "starts, and older nodes then refuse it",
            "upgrade every node of the site together",
        )
    return ok("schema", f"schema version {version}, as this thinserve expects")


def _name(database: Database, name: str) -> Check:
    from ..cluster.nodes import list_nodes

    node = next((n for n in list_nodes(database) if n.name == name), None)
    if node is None or not node.alive:
        return ok("node name", f"{name!r} is free among the live nodes")
    return warn(
        "node name",
        f"a live node is named {name!r} (at {node.address or 'no address'}, last heartbeat "
        f"{node.age:.1f} s ago); if that is not this server, this one will not start",
        'give this node another [cluster] node_name, e.g. "thinserve-2"',
    )


def _secret(config: Config) -> Check:
    path = config.cluster.secret_file
    if path is None:
        return ok("node secret", "none: this node neither links to nor serves other nodes")
    from ..cluster.link import SecretError, read_secret

    try:
        read_secret(path)
    except SecretError as exc:
        return fail("node secret", str(exc), f"thinserve nodes secret {path} (on one node)")
    return ok("node secret", f"{path} holds a usable secret")
