"""A PostgreSQL database ready for the cluster's tests: the store's schema in it."""

from __future__ import annotations

import psycopg

from thinserve.store.postgres import PostgresStore


def with_schema(url: str) -> str:
    """``url`` after the store has created its tables there (nodes and leases among them)."""
    PostgresStore(url).close()
    return url


def execute(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    """One statement on a connection of its own (a test's view of the database); its rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []
