"""Where the store lives: a file path or a database URL, and how to open it.

``[server] database`` names either an SQLite file (a plain path or
``sqlite:///abs/path``; ``sqlite://`` alone is a throwaway memory database)
or a PostgreSQL database (``postgresql://user@host:port/name`` or
``postgres://...``).  A URL may carry a password; ``describe_location``
hides it for logs and messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..paths import DATABASE_NAME
from .migrations import MIGRATIONS, Migration

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .base import Store

POSTGRES_SCHEMES = ("postgresql", "postgres")
HIDDEN = "***"


def is_postgres(location: str) -> bool:
    """Whether ``location`` names a PostgreSQL database."""
    return location.split("://", 1)[0].lower() in POSTGRES_SCHEMES and "://" in location


def sqlite_path(location: str) -> str:
    """The file (or ":memory:") an SQLite location names.

    ValueError for a URL of another kind, saying which forms work.
    """
    if "://" not in location:
        return location
    scheme, rest = location.split("://", 1)
    if scheme.lower() != "sqlite":
        raise ValueError(
            f"unknown database URL scheme {scheme!r} in {describe_location(location)}; "
            "use a file path, sqlite:///absolute/path or postgresql://user@host/database"
        )
    if rest == "":
        return ":memory:"
    if not rest.startswith("/"):
        raise ValueError(
            f"{location}: an SQLite URL needs an absolute path after sqlite:// "
            "(sqlite:///var/lib/thinserve/thinserve.db), or none for a memory database"
        )
    return rest


def describe_location(location: str) -> str:
    """``location`` with any password replaced by ``***``, for logs and messages."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + HIDDEN
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        hidden = [(k, HIDDEN if k.lower() == "password" else v) for k, v in pairs]
        query = urlencode(hidden, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def hide_password(text: str, location: str) -> str:
    """``text`` (a database's error, say) with the password of ``location`` hidden,
    should it ever quote it: from the URL's user part or its ``password=``."""
    password = _password_of(location)
    return text.replace(password, HIDDEN) if password else text


def _password_of(location: str) -> str:
    from psycopg.conninfo import conninfo_to_dict  # only PostgreSQL URLs have passwords

    try:
        return str(conninfo_to_dict(location).get("password") or "")
    except Exception:  # a URL libpq cannot read: its user part may still hold one
        try:
            return urlsplit(location).password or ""
        except ValueError:
            return ""


def open_store(location: str, migrations: Sequence[Migration] = MIGRATIONS) -> Store:
    """The store at ``location`` (see the module's docstring), migrated and ready.

    Raises StoreFault when the database cannot be used, SchemaTooNewError
    when a newer thinserve wrote it, ValueError for a location of no known form.
    """
    if is_postgres(location):
        from .postgres import PostgresStore

        return PostgresStore(location, migrations)
    from .sqlite import SqliteStore

    return SqliteStore(sqlite_path(location), migrations)


def local_file(location: str, state_dir: Path) -> str:
    """The file that files kept beside the database (the generated certificate)
    sit next to: the SQLite file itself (or ":memory:"), and for a PostgreSQL
    database, which has no file here, state_dir/thinserve.db."""
    if is_postgres(location):
        return str(state_dir / DATABASE_NAME)
    return sqlite_path(location)
