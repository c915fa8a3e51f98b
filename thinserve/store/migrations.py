"""The SQLite schema as an ordered list of migrations.

Migration ``n`` (1-based) takes a database from schema version ``n - 1`` to
``n``; a new database runs them all.  Append new migrations at the end and
never edit a released one: databases in the field have already run it.

The SQL stays close to what PostgreSQL accepts (TEXT, INTEGER, REAL, named
constraints); the SQLite-only parts are ``INTEGER PRIMARY KEY`` as the row id
and the version kept in ``PRAGMA user_version`` (see sqlite.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "terminals, desktops, pairings, pairing codes, users, sessions, audit",
        (
            """CREATE TABLE terminals (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL DEFAULT '',
                model TEXT NOT NULL DEFAULT '',
                address TEXT NOT NULL DEFAULT '',
                screen_width INTEGER NOT NULL DEFAULT 0,
                screen_height INTEGER NOT NULL DEFAULT 0,
                last_seen REAL NOT NULL
            )""",
            """CREATE TABLE desktops (
                name TEXT PRIMARY KEY,
                backend TEXT NOT NULL,
                pool TEXT
            )""",
            """CREATE TABLE pairings (
                terminal_id TEXT PRIMARY KEY,
                desktop TEXT NOT NULL UNIQUE REFERENCES desktops (name),
                created REAL NOT NULL,
                actor TEXT NOT NULL
            )""",
            """CREATE TABLE pairing_codes (
                code TEXT PRIMARY KEY,
                terminal_id TEXT NOT NULL UNIQUE,
                created REAL NOT NULL,
                expires REAL NOT NULL,
                failures INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX pairing_codes_expires ON pairing_codes (expires)",
            """CREATE TABLE users (
                name TEXT PRIMARY KEY,
                secret_hash TEXT NOT NULL,
                desktop TEXT REFERENCES desktops (name),
                created REAL NOT NULL
            )""",
            "CREATE INDEX users_desktop ON users (desktop)",
            """CREATE TABLE sessions (
                id INTEGER PRIMARY KEY,
                terminal_id TEXT NOT NULL,
                desktop TEXT NOT NULL,
                user_name TEXT,
                started REAL NOT NULL,
                ended REAL
            )""",
            "CREATE INDEX sessions_terminal ON sessions (terminal_id, id)",
            "CREATE INDEX sessions_open ON sessions (ended)",
            """CREATE TABLE audit (
                id INTEGER PRIMARY KEY,
                time REAL NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                subject TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX audit_subject ON audit (subject, id)",
        ),
    ),
    Migration(
        "admin accounts, API tokens, disabled users",
        (
            "ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0",
            """CREATE TABLE admins (
                name TEXT PRIMARY KEY,
                role TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                created REAL NOT NULL,
                disabled INTEGER NOT NULL DEFAULT 0,
                locked_until REAL NOT NULL DEFAULT 0,
                failures INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY,
                admin TEXT NOT NULL REFERENCES admins (name),
                label TEXT NOT NULL,
                token_hash TEXT NOT NULL,
                created REAL NOT NULL,
                last_used REAL,
                CONSTRAINT api_tokens_label UNIQUE (admin, label)
            )""",
        ),
    ),
    Migration(
        "nodes of a site, their leases, and who is logged in where",
        (
            """CREATE TABLE nodes (
                name TEXT PRIMARY KEY,
                address TEXT NOT NULL DEFAULT '',
                started REAL NOT NULL,
                heartbeat REAL NOT NULL,
                expires REAL NOT NULL,
                terminals INTEGER NOT NULL DEFAULT 0,
                desktops INTEGER NOT NULL DEFAULT 0,
                version TEXT NOT NULL DEFAULT '',
                fingerprint TEXT NOT NULL DEFAULT ''
            )""",
            """CREATE TABLE leases (
                kind TEXT NOT NULL,
                subject TEXT NOT NULL,
                node TEXT NOT NULL,
                holder TEXT NOT NULL DEFAULT '',
                acquired REAL NOT NULL,
                expires REAL NOT NULL,
                CONSTRAINT leases_key PRIMARY KEY (kind, subject)
            )""",
            "CREATE INDEX leases_node ON leases (node)",
            """CREATE TABLE logins (
                user_name TEXT PRIMARY KEY,
                terminal_id TEXT NOT NULL,
                node TEXT NOT NULL,
                since REAL NOT NULL
            )""",
        ),
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
