"""The SQLite backend of the Database protocol: WAL, one writer connection and a few readers."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from app.db_protocol import (
    Conflict,
    Database,
    Invalid,
    TransactionMisuse,
    Unavailable,
    ended_transaction,
    mark_transaction,
    refuse_in_transaction,
)

SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_READERS = 2


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
            raise ended_transaction("a statement")
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
        refuse_in_transaction(self, what)

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
                with mark_transaction(self):
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
        refuse_in_transaction(self, "close()")
        self._closed = True
        async with self._write_lock:
            with contextlib.suppress(sqlite3.Error):  # best effort: leave one tidy file behind
                await _sqlite_run(self._writer, "PRAGMA optimize", ())
                await _sqlite_run(self._writer, "PRAGMA wal_checkpoint(TRUNCATE)", ())
            for conn in self._connections:
                await conn.close()
