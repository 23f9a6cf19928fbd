"""The storage seam: the Database protocol, its errors and the rule that a task inside a
transaction uses the Database that transaction yielded (shared by both backends)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgres"]


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


def refuse_in_transaction(owner: object, what: str) -> None:
    """Raise TransactionMisuse when the current task is inside a transaction of ``owner``."""
    state = _IN_TRANSACTION.get()
    if state is not None and state.active and state.owner is owner:
        raise TransactionMisuse(
            f"{what} inside a transaction of the same database: use the Database that "
            "transaction() yielded"
        )


@contextlib.contextmanager
def mark_transaction(owner: object) -> Iterator[None]:
    """Mark the current task (and tasks it starts) as inside a transaction of ``owner``."""
    state = _TransactionState(owner)
    token = _IN_TRANSACTION.set(state)
    try:
        yield
    finally:
        state.active = False
        with contextlib.suppress(ValueError):  # exited from another context: state says it
            _IN_TRANSACTION.reset(token)


def ended_transaction(what: str) -> TransactionMisuse:
    """The error for ``what`` used on a transaction that has committed or rolled back."""
    return TransactionMisuse(f"{what} on a transaction that has ended")
