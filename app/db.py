"""Storage for the collaboration service: one async Database protocol over SQLite or PostgreSQL.

App code writes portable SQL with ``?`` placeholders; both backends return rows as dicts and
report constraint violations and outages as the same exceptions (Conflict, Invalid,
Unavailable). Mistakes in the SQL itself surface as the driver's error: they are bugs.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.db_protocol import (
    Conflict,
    Database,
    DatabaseError,
    Dialect,
    Invalid,
    TransactionMisuse,
    Unavailable,
)
from app.postgres_db import (
    PG_CLOSE_TIMEOUT_S,
    PG_COMMAND_TIMEOUT_S,
    PG_CONNECT_TIMEOUT_S,
    PostgresDatabase,
    postgres_placeholders,
    redact_dsn,
)
from app.search import SEARCH_SQL, search_match, search_messages, search_sql
from app.sqlite_db import (
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_READERS,
    SqliteDatabase,
    split_sqlite_script,
)

__all__ = [
    "PG_CLOSE_TIMEOUT_S",
    "PG_COMMAND_TIMEOUT_S",
    "PG_CONNECT_TIMEOUT_S",
    "SEARCH_SQL",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SQLITE_FILE",
    "SQLITE_READERS",
    "Conflict",
    "Database",
    "DatabaseError",
    "Dialect",
    "Invalid",
    "PostgresDatabase",
    "SqliteDatabase",
    "TransactionMisuse",
    "Unavailable",
    "open_database",
    "postgres_placeholders",
    "redact_dsn",
    "search_match",
    "search_messages",
    "search_sql",
    "split_sqlite_script",
    "sqlite_path",
]

SQLITE_FILE = "app.sqlite3"


def sqlite_path(data_dir: Path) -> Path:
    """Where a slot keeps its SQLite database inside its data directory."""
    return data_dir / SQLITE_FILE


async def open_database(target: str | os.PathLike[str]) -> Database:
    """Open ``postgresql://...`` (or ``postgres://``) with PostgreSQL; ``sqlite:///abs/path.db``
    or a plain path with SQLite. Raises ValueError for anything else and Unavailable when the
    database cannot be reached or opened."""
    text = os.fspath(target)
    scheme = text.partition("://")[0] if "://" in text else ""
    if scheme in ("postgresql", "postgres"):
        return await PostgresDatabase.open(text)
    if scheme == "sqlite":
        text = text.removeprefix("sqlite://")
        if not text.startswith("/"):
            raise ValueError("a sqlite URL names an absolute path: sqlite:///abs/path.db")
    elif scheme:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use postgresql://... or sqlite:///path"
        )
    if text in ("", ":memory:"):
        raise ValueError("SQLite needs a database file (the connections must share it)")
    return await SqliteDatabase.open(Path(text))
