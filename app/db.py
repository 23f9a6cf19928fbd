"""Storage for the collaboration service: one async Database protocol over SQLite or PostgreSQL.

App code writes portable SQL with ``?`` placeholders; both backends return rows as dicts and
report constraint violations and outages as the same exceptions (Conflict, Invalid,
Unavailable). Mistakes in the SQL itself surface as the driver's error: they are bugs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiosqlite
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from app.ids import MAX_ID

Dialect = Literal["sqlite", "postgres"]
SQLITE_FILE = "app.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_READERS = 2
PG_CONNECT_TIMEOUT_S = 5.0
PG_COMMAND_TIMEOUT_S = 30.0
PG_CLOSE_TIMEOUT_S = 10.0


class DatabaseError(Exception):
    """Base of the errors every Database raises in place of its driver's."""


class Conflict(DatabaseError):
    """A unique constraint (or primary key) refused the row: it exists already."""


class Invalid(DatabaseError):
    """A foreign key, NOT NULL or CHECK constraint refused the row."""


class Unavailable(DatabaseError):
    """The database cannot be reached, opened or locked in time, or it was closed."""


class TransactionMisuse(RuntimeError):
    """A programming error: a nested transaction, or the outer Database used inside one."""


class Database(Protocol):
    """Runs portable SQL with ``?`` placeholders, on a pool or inside one transaction.

    Every statement method raises Conflict on a unique violation, Invalid on a foreign-key,
    NOT NULL or CHECK violation and Unavailable when the database cannot be reached in time.
    """

    @property
    def dialect(self) -> Dialect:
        """``"sqlite"`` or ``"postgres"``: for the few queries that differ (search)."""
        ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the rows an INSERT, UPDATE or DELETE touched, else 0."""
        ...

    async def execute_script(self, script: str) -> None:
        """Run ``;``-separated statements without parameters (migrations, fixtures)."""
        ...

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Run a query; return every row as a dict keyed by column name."""
        ...

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        """Run a query; return its first row, or None when it has none."""
        ...

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query; return the first column of its first row, or None when it has none."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Database]:
        """Begin a transaction and yield a Database bound to it.

        Commits when the block ends normally, rolls back when it raises (and re-raises).
        Raises TransactionMisuse inside a transaction of the same database, where the outer
        Database refuses every call too (also from tasks started inside it): use the one
        yielded. On SQLite a transaction holds
        the only writer, so keep it short and never wait for the network inside it.
        """
        ...

    async def close(self) -> None:
        """Wait for the running statement or transaction, then close; idempotent."""
        ...


# ---------------------------------------------------------------- transactions in progress


class _TransactionState:
    __slots__ = ("active", "owner")

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.active = True


# The transaction the current task is in (inherited by tasks it starts while it lasts).
_IN_TRANSACTION: contextvars.ContextVar[_TransactionState | None] = contextvars.ContextVar(
    "moonwatch_db_transaction", default=None
)


def _refuse_in_transaction(owner: object, what: str) -> None:
    state = _IN_TRANSACTION.get()
    if state is not None and state.active and state.owner is owner:
        raise TransactionMisuse(
            f"{what} inside a transaction of the same database: use the Database that "
            "transaction() yielded"
        )


@contextlib.contextmanager
def _mark_transaction(owner: object) -> Iterator[None]:
    state = _TransactionState(owner)
    token = _IN_TRANSACTION.set(state)
    try:
        yield
    finally:
        state.active = False
        with contextlib.suppress(ValueError):  # exited from another context: state says it
            _IN_TRANSACTION.reset(token)


def _ended(what: str) -> TransactionMisuse:
    return TransactionMisuse(f"{what} on a transaction that has ended")


# ---------------------------------------------------------------- SQLite


@contextlib.contextmanager
def _sqlite_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
            raise Conflict(str(exc)) from exc
        if name.startswith("SQLITE_CONSTRAINT"):
            raise Invalid(str(exc)) from exc
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR")):
            raise Unavailable(f"SQLite: {exc} ({name})") from exc
        raise


def split_sqlite_script(script: str) -> list[str]:
    """Split a script at the semicolons that end a statement (not those inside a trigger body,
    a string or a comment), dropping pieces that hold only comments and blanks."""
    statements: list[str] = []
    start = 0
    for index, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : index + 1]):
            statements.append(script[start : index + 1])
            start = index + 1
    statements.append(script[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(text: str) -> bool:
    lines = (line.strip() for line in text.splitlines())
    return any(line and not line.startswith("--") for line in lines)


def _is_select(sql: str) -> bool:
    return sql.lstrip().lstrip("(")[:6].upper() == "SELECT"


async def _sqlite_run(conn: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> int:
    async with conn.execute(sql, args) as cursor:
        return max(cursor.rowcount, 0)


def _probe(path: Path) -> None:
    # A failed aiosqlite.connect leaves its worker thread to report to the event loop later,
    # which fails once the loop is closed: find a file that cannot be opened before that.
    sqlite3.connect(path).close()


async def _sqlite_connect(
    path: Path, busy_timeout_ms: int, *, reader: bool
) -> aiosqlite.Connection:
    conn: aiosqlite.Connection | None = None
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)  # we BEGIN and COMMIT
        conn.row_factory = sqlite3.Row
        await _sqlite_run(conn, f"PRAGMA busy_timeout = {int(busy_timeout_ms)}", ())
        await _sqlite_run(conn, "PRAGMA foreign_keys = ON", ())
        if reader:
            await _sqlite_run(conn, "PRAGMA query_only = ON", ())
            return conn
        async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
            mode = await cursor.fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise sqlite3.OperationalError("cannot use WAL here: keep the data on a local disk")
        # A committed write must survive a crash of the machine, not just of the process:
        # the spare that takes the slot over reads this file.
        await _sqlite_run(conn, "PRAGMA synchronous = FULL", ())
    except sqlite3.Error as exc:
        if conn is not None:
            await conn.close()
        raise Unavailable(f"cannot open SQLite database {path}: {exc}") from exc
    return conn


class _SqliteRunner:
    """The statements a database and its transactions run on one aiosqlite connection."""

    dialect: Literal["sqlite"] = "sqlite"

    def _connection(
        self, sql: str, *, write: bool
    ) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._connection(sql, write=True) as conn:
            with _sqlite_errors():
                return await _sqlite_run(conn, sql, args)

    async def execute_script(self, script: str) -> None:
        async with self._connection(script, write=True) as conn:
            with _sqlite_errors():
                for statement in split_sqlite_script(script):
                    await _sqlite_run(conn, statement, ())

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self._connection(sql, write=False) as conn:
            with _sqlite_errors():
                async with conn.execute(sql, args) as cursor:
                    return [dict(row) for row in await cursor.fetchall()]

    async def _first(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        async with self._connection(sql, write=False) as conn:
            with _sqlite_errors():
                async with conn.execute(sql, args) as cursor:
                    row: sqlite3.Row | None = await cursor.fetchone()
                    return row

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        row = await self._first(sql, args)
        return None if row is None else dict(row)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self._first(sql, args)
        return None if row is None else row[0]


class _SqliteTransaction(_SqliteRunner):
    """A Database bound to the writer connection while one transaction lasts."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self.finished = False

    @contextlib.asynccontextmanager
    async def _connection(self, sql: str, *, write: bool) -> AsyncIterator[aiosqlite.Connection]:
        if self.finished:
            raise _ended("a statement")
        yield self._conn

    def transaction(self) -> AbstractAsyncContextManager[Database]:
        raise TransactionMisuse("nested transaction: transactions do not nest")

    async def close(self) -> None:
        raise TransactionMisuse("close() on a transaction: close the Database instead")


class SqliteDatabase(_SqliteRunner):
    """SQLite in WAL mode: one writer connection, writes serialized in-process by a lock, and a
    few read-only connections for SELECTs outside transactions (WAL readers never block)."""

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, readers: list[aiosqlite.Connection]
    ) -> None:
        self.path = path
        self._writer = writer
        self._connections = [writer, *readers]
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for reader in readers:
            self._readers.put_nowait(reader)
        self._write_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        readers: int = SQLITE_READERS,
        busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    ) -> SqliteDatabase:
        """Open (creating the file, not its directory) or raise Unavailable."""
        try:
            await asyncio.to_thread(_probe, path)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open SQLite database {path}: {exc}") from exc
        conns: list[aiosqlite.Connection] = []
        try:
            conns.append(await _sqlite_connect(path, busy_timeout_ms, reader=False))
            for _ in range(readers):
                conns.append(await _sqlite_connect(path, busy_timeout_ms, reader=True))
        except BaseException:
            for conn in conns:
                await conn.close()
            raise
        return cls(path, conns[0], conns[1:])

    def _check_usable(self, what: str) -> None:
        if self._closed:
            raise Unavailable(f"SQLite database {self.path} is closed")
        _refuse_in_transaction(self, what)

    @contextlib.asynccontextmanager
    async def _connection(self, sql: str, *, write: bool) -> AsyncIterator[aiosqlite.Connection]:
        self._check_usable("a statement on the outer Database")
        if write or len(self._connections) == 1 or not _is_select(sql):
            async with self._write_lock:
                yield self._writer
            return
        reader = await self._readers.get()
        try:
            yield reader
        finally:
            self._readers.put_nowait(reader)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        self._check_usable("transaction()")
        async with self._write_lock:
            with _sqlite_errors():
                # IMMEDIATE takes the write lock now, so busy_timeout applies here and a
                # reader never has to upgrade (which SQLite refuses instead of waiting).
                await _sqlite_run(self._writer, "BEGIN IMMEDIATE", ())
            bound = _SqliteTransaction(self._writer)
            try:
                with _mark_transaction(self):
                    yield bound
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                    await self._writer.rollback()
                raise
            else:
                await self._commit()
            finally:
                bound.finished = True

    async def _commit(self) -> None:
        with _sqlite_errors():
            try:
                await self._writer.commit()
            except sqlite3.Error:
                await self._writer.rollback()
                raise

    async def close(self) -> None:
        if self._closed:
            return
        _refuse_in_transaction(self, "close()")
        self._closed = True
        async with self._write_lock:
            with contextlib.suppress(sqlite3.Error):  # best effort: leave one tidy file behind
                await _sqlite_run(self._writer, "PRAGMA optimize", ())
                await _sqlite_run(self._writer, "PRAGMA wal_checkpoint(TRUNCATE)", ())
            for conn in self._connections:
                await conn.close()


# ---------------------------------------------------------------- PostgreSQL

_SQL_PLACEHOLDER = re.compile(
    r"""'(?:[^']|'')*'                      # string literal
      |"(?:[^"]|"")*"                       # quoted identifier
      |--[^\n]*                             # line comment
      |/\*.*?\*/                            # block comment
      |\$(?P<tag>[A-Za-z_]\w*|)\$.*?\$(?P=tag)\$   # dollar-quoted string
      |(?P<param>\?)""",
    re.VERBOSE | re.DOTALL,
)


@functools.lru_cache(maxsize=1024)
def postgres_placeholders(sql: str) -> str:
    """Rewrite ``?`` placeholders to ``$1..$n``, leaving those in strings, quoted names and
    comments alone. (Not handled: E'...' strings with backslash-escaped quotes, and the jsonb
    ``?`` operators, which portable SQL cannot use anyway.)"""
    numbers = itertools.count(1)

    def replace(match: re.Match[str]) -> str:
        return f"${next(numbers)}" if match.group("param") else match.group(0)

    return _SQL_PLACEHOLDER.sub(replace, sql)


def _pg_rowcount(status: str) -> int:
    words = status.split()
    if words and words[0] in ("INSERT", "UPDATE", "DELETE", "MERGE") and words[-1].isdigit():
        return int(words[-1])
    return 0


def redact_dsn(dsn: str) -> str:
    """The DSN with its password (in the user part or the query) replaced by ``***``."""
    parts = urlsplit(dsn)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        dsn = parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
    return re.sub(r"(password=)[^&]*", r"\1***", dsn)


_PG_UNAVAILABLE = (
    OSError,  # refused, unreachable, timed out (TimeoutError is an OSError)
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
)


@contextlib.contextmanager
def _pg_errors(where: str = "PostgreSQL") -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(str(exc)) from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise Invalid(str(exc)) from exc
    except _PG_UNAVAILABLE as exc:
        raise Unavailable(f"{where} is unavailable: {exc or type(exc).__name__}") from exc


class _PostgresRunner:
    """The statements a pool and a transaction's connection run alike."""

    dialect: Literal["postgres"] = "postgres"

    def _target(self) -> Any:
        """The asyncpg Pool or Connection to run on (raises when it may not be used)."""
        raise NotImplementedError

    async def execute(self, sql: str, *args: Any) -> int:
        target = self._target()
        with _pg_errors():
            status = await target.execute(postgres_placeholders(sql), *args)
        return _pg_rowcount(status)

    async def execute_script(self, script: str) -> None:
        target = self._target()
        with _pg_errors():
            await target.execute(script)  # no arguments: the simple protocol runs them all

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        target = self._target()
        with _pg_errors():
            rows = await target.fetch(postgres_placeholders(sql), *args)
        return [dict(row) for row in rows]

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        target = self._target()
        with _pg_errors():
            row = await target.fetchrow(postgres_placeholders(sql), *args)
        return None if row is None else dict(row)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        target = self._target()
        with _pg_errors():
            return await target.fetchval(postgres_placeholders(sql), *args)


class _PostgresTransaction(_PostgresRunner):
    """A Database bound to one pooled connection while one transaction lasts."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.finished = False

    def _target(self) -> Any:
        if self.finished:
            raise _ended("a statement")
        return self._conn

    def transaction(self) -> AbstractAsyncContextManager[Database]:
        raise TransactionMisuse("nested transaction: transactions do not nest")

    async def close(self) -> None:
        raise TransactionMisuse("close() on a transaction: close the Database instead")


class PostgresDatabase(_PostgresRunner):
    """PostgreSQL through an asyncpg pool."""

    def __init__(self, pool: Any, display_dsn: str) -> None:
        self._pool = pool
        self.display_dsn = display_dsn
        self._closed = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = PG_CONNECT_TIMEOUT_S,
        command_timeout_s: float = PG_COMMAND_TIMEOUT_S,
    ) -> PostgresDatabase:
        """Open a pool (connecting ``min_size`` connections now) or raise Unavailable."""
        display = redact_dsn(dsn)
        with _pg_errors(f"PostgreSQL at {display}"):
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
                server_settings={"application_name": "moonwatch-app"},
            )
        return cls(pool, display)

    def _target(self, what: str = "a statement on the outer Database") -> Any:
        if self._closed:
            raise Unavailable(f"PostgreSQL database {self.display_dsn} is closed")
        _refuse_in_transaction(self, what)
        return self._pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        pool = self._target("transaction()")
        with _pg_errors():
            conn = await pool.acquire()
        try:
            with _pg_errors():
                tx = conn.transaction()
                await tx.start()
            bound = _PostgresTransaction(conn)
            try:
                with _mark_transaction(self):
                    yield bound
            except BaseException:
                # The original error matters more than a failed rollback on a broken link.
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await tx.rollback()
                raise
            else:
                with _pg_errors():
                    await tx.commit()
            finally:
                bound.finished = True
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        if self._closed:
            return
        _refuse_in_transaction(self, "close()")
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), PG_CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._pool.terminate()


# ---------------------------------------------------------------- opening


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


# ---------------------------------------------------------------- full-text search

_SEARCH_COLUMNS = (
    "SELECT m.id, m.space_id, m.thread_id, m.author_id, m.body, m.created_at, m.edited_at"
)
# Parameters, in order: match, tenant_id, before_id, public_spaces (1 or 0), user_id, limit.
_SEARCH_VISIBLE = """
  AND ((s.private = 0 AND ? = 1)
       OR EXISTS (SELECT 1 FROM space_members sm
                  WHERE sm.tenant_id = m.tenant_id AND sm.space_id = m.space_id
                    AND sm.user_id = ?))"""
SEARCH_SQL: dict[Dialect, str] = {
    # CROSS JOIN makes SQLite walk the full-text matches first, newest first, and stop at
    # LIMIT, instead of probing the index once for every message of the tenant.
    "sqlite": _SEARCH_COLUMNS
    + """
FROM messages_fts
CROSS JOIN messages m ON m.id = messages_fts.rowid
CROSS JOIN spaces s ON s.tenant_id = m.tenant_id AND s.id = m.space_id
WHERE messages_fts MATCH ? AND m.tenant_id = ? AND m.deleted_at IS NULL
  AND messages_fts.rowid < ?"""
    + _SEARCH_VISIBLE
    + """
ORDER BY messages_fts.rowid DESC
LIMIT ?""",
    "postgres": _SEARCH_COLUMNS
    + """
FROM messages m
JOIN spaces s ON s.tenant_id = m.tenant_id AND s.id = m.space_id
WHERE to_tsvector('simple', m.body) @@ plainto_tsquery('simple', ?)
  AND m.tenant_id = ? AND m.deleted_at IS NULL AND m.id < ?"""
    + _SEARCH_VISIBLE
    + """
ORDER BY m.id DESC
LIMIT ?""",
}


def search_sql(dialect: Dialect) -> str:
    """The message search query of a dialect; see ``search_messages`` for its parameters."""
    return SEARCH_SQL[dialect]


def search_match(dialect: Dialect, text: str) -> str | None:
    """User text to the match parameter: every word must occur (no operators, so no syntax
    errors); None when the text has no word. Both sides fold case and keep diacritics."""
    words = [word for word in text.split() if any(char.isalnum() for char in word)]
    if not words:
        return None
    if dialect == "postgres":
        return " ".join(words)  # plainto_tsquery ANDs the words
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


async def search_messages(
    db: Database,
    tenant_id: int,
    user_id: int,
    text: str,
    *,
    public_spaces: bool = True,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Live messages of one tenant matching every word of ``text``, newest first, from the
    spaces ``user_id`` is a member of and, with ``public_spaces`` (False for guests), every
    non-private space. Pass the last id of a page as ``before_id`` for the next page."""
    match = search_match(db.dialect, text)
    if match is None:
        return []
    cursor = MAX_ID if before_id is None else before_id
    public = 1 if public_spaces else 0
    return await db.fetch(search_sql(db.dialect), match, tenant_id, cursor, public, user_id, limit)
