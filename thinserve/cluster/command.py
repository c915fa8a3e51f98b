"""``thinserve nodes``: the nodes sharing this site's database, alive or gone.

It reads the database named by the configuration's ``[server] database``
directly (no running server needed).  On SQLite the site is one node, and
it says so.  ``--json`` prints ``{"cluster": bool, "nodes": [...]}``.
Exit codes: 0 listed, 1 the configuration or the database failed.

``thinserve nodes secret PATH`` writes a new node secret (cluster/link.py)
to a new file; exit code 1 if the file exists or cannot be written.
``thinserve nodes forget NODE`` removes a gone node's row; exit code 1 if
the node is alive or unknown.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .nodes import NodeInfo

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK, EXIT_ERROR = 0, 1


def add_commands(sub: Subcommands) -> None:
    """Add ``nodes`` to the ``thinserve`` parser's subcommands."""
    from ..cli import add_config_options

    what = "list the nodes sharing this site's PostgreSQL database"
    parser = sub.add_parser("nodes", help=what, description=what)
    add_config_options(parser)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(operation=run)
    nodes_sub = parser.add_subparsers(title="other commands", metavar="COMMAND")
    what = "write a new node secret (every node's [cluster] secret_file) to PATH"
    secret = nodes_sub.add_parser("secret", help=what, description=what)
    secret.add_argument("path", metavar="PATH", help="a new file; it is made with mode 600")
    secret.set_defaults(operation=write_secret)
    what = "remove the record of a gone node (a live node is never removed)"
    forget = nodes_sub.add_parser("forget", help=what, description=what)
    add_config_options(forget)
    forget.add_argument("name", metavar="NODE")
    forget.set_defaults(operation=forget_gone)


def run(args: argparse.Namespace) -> int:
    """``thinserve nodes``."""
    from ..cli import config_from
    from ..config import ConfigError
    from ..store.location import is_postgres
    from .db import ClusterError
    from .nodes import list_nodes

    try:
        database = config_from(args).database_path
        if not is_postgres(database):
            return _one_node(args.json)
        from .db import Database

        db = Database(database)
        try:
            nodes = list_nodes(db)
        finally:
            db.close()
    except (ConfigError, ClusterError) as exc:
        print(f"thinserve: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        _print_json({"cluster": True, "nodes": [_json(n) for n in nodes]})
    else:
        print(nodes_table(nodes))
    return EXIT_OK


def forget_gone(args: argparse.Namespace) -> int:
    """``thinserve nodes forget NODE``: drop a gone node's row."""
    from ..cli import config_from
    from ..config import ConfigError
    from ..store.location import is_postgres
    from .db import ClusterError, Database
    from .nodes import forget_node, list_nodes

    try:
        database = config_from(args).database_path
        if not is_postgres(database):
            return _one_node(False)
        db = Database(database)
        try:
            forgotten = forget_node(db, args.name)
            listed = {n.name: n for n in list_nodes(db)}
        finally:
            db.close()
    except (ConfigError, ClusterError, ValueError) as exc:
        print(f"thinserve: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if forgotten:
        print(f"forgot node {args.name}")
        return EXIT_OK
    node = listed.get(args.name)
    if node is not None and node.alive:
        print(
            f"thinserve: node {args.name} is alive (last heartbeat {age_text(node.age)}); "
            "stop it first: a node that stops removes its own row",
            file=sys.stderr,
        )
    else:
        print(f"thinserve: no node named {args.name} in the database", file=sys.stderr)
    return EXIT_ERROR


def write_secret(args: argparse.Namespace) -> int:
    """``thinserve nodes secret PATH``: 32 random bytes as hex, in a new file of mode 600."""
    from .link import write_secret as write

    try:
        write(args.path)
    except FileExistsError:
        print(
            f"thinserve: {args.path} exists already; every node must keep the same secret, "
            "so remove it first only if no node uses it, or give another path",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except OSError as exc:
        print(f"thinserve: cannot write {args.path}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"wrote a new node secret to {args.path}; copy it to every node (mode 600, owned by "
        'thinserve\'s user) and set [cluster] secret_file = "PATH" there'
    )
    return EXIT_OK


def _one_node(as_json: bool) -> int:
    if as_json:
        _print_json({"cluster": False, "nodes": []})
    else:
        print(
            "this site runs as one node (its database is SQLite, not shared): there is no "
            "cluster; see docs/scale-out.md to run several nodes on PostgreSQL"
        )
    return EXIT_OK


def nodes_table(nodes: list[NodeInfo]) -> str:
    """Aligned columns, one node a line."""
    from ..admin.commands import table

    if not nodes:
        return "no nodes have joined yet: each server on this database joins when it starts"
    headers = ("NODE", "ADDRESS", "STATE", "HEARTBEAT", "TERMINALS", "DESKTOPS", "LEASES")
    rows = [
        (
            n.name,
            n.address,
            "alive" if n.alive else "gone",
            age_text(n.age),
            n.terminals,
            n.desktops,
            n.leases,
        )
        for n in nodes
    ]
    return table(headers, rows)


def age_text(seconds: float) -> str:
    """How long ago, in the unit that suits it."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _json(node: NodeInfo) -> dict[str, Any]:
    return {**node.as_json(), "state": "alive" if node.alive else "gone"}


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))
