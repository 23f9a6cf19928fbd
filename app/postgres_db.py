"""The PostgreSQL backend of the Database protocol: an asyncpg pool; `?` placeholders rewritten."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

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

PG_CONNECT_TIMEOUT_S = 5.0
PG_COMMAND_TIMEOUT_S = 30.0
PG_CLOSE_TIMEOUT_S = 10.0


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
            raise ended_transaction("a statement")
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
        refuse_in_transaction(self, what)
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
                with mark_transaction(self):
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
        refuse_in_transaction(self, "close()")
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), PG_CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._pool.terminate()
