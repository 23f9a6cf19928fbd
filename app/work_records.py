"""Records, limits, input rules and row mapping shared by spaces, messages and mentions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.accounts import PolicyViolation
from app.clock import Clock, SystemClock
from app.ids import MAX_ID

LIMIT_MAX = 100
LIMIT_DEFAULT = 50
T = TypeVar("T")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Thread:
    """A topic thread of a space; lists order them by ``last_message_at``, newest first."""

    id: int
    space_id: int
    title: str
    created_by: int
    created_at: int
    last_message_at: int


@dataclass(frozen=True)
class Message:
    """A message; a deleted one has ``deleted_at`` set and an empty ``body``."""

    id: int
    space_id: int
    thread_id: int
    author_id: int
    body: str
    created_at: int
    edited_at: int | None
    deleted_at: int | None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` back as the same cursor for the next page
    (``after_id`` when paging forwards, ``before_id`` backwards). None: the last page."""

    items: list[T]
    next_cursor: int | None


# ---------------------------------------------------------------- input rules


def _now_ms(clock: Clock | None) -> int:
    return int((clock or SystemClock()).wall_now() * 1000)


def _text(value: str, what: str, max_length: int) -> str:
    text = value.strip()
    if not 0 < len(text) <= max_length or not text.isprintable():
        raise PolicyViolation(f"a {what} has 1 to {max_length} printable characters")
    return text


def _cursor(value: object, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise PolicyViolation(f"{name} must be an id taken from a previous page")
    return value


@dataclass(frozen=True)
class _Window:
    limit: int
    low: int  # exclusive
    high: int  # exclusive
    ascending: bool

    def sql(self, column: str) -> str:
        order = "ASC" if self.ascending else "DESC"
        return f" AND {column} > ? AND {column} < ? ORDER BY {column} {order} LIMIT ?"

    def args(self) -> tuple[int, int, int]:
        return self.low, self.high, self.limit + 1


def _limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise PolicyViolation(f"limit must be a whole number from 1 to {LIMIT_MAX}")
    return min(limit, LIMIT_MAX)


def _window(
    limit: object, after_id: object, before_id: object, *, ascending_default: bool
) -> _Window:
    """Ids strictly between the cursors; ascending when ``after_id`` is given (or by default
    without cursors), else newest first. Limits above LIMIT_MAX are clamped."""
    low = _cursor(after_id, "after_id", 0)
    high = _cursor(before_id, "before_id", MAX_ID)
    ascending = after_id is not None or (before_id is None and ascending_default)
    return _Window(_limit(limit), low, high, ascending)


def _page(rows: list[dict[str, Any]], limit: int, make: Callable[[dict[str, Any]], T]) -> Page[T]:
    items = [make(row) for row in rows[:limit]]
    return Page(items, int(rows[limit - 1]["id"]) if len(rows) > limit else None)


# ---------------------------------------------------------------- rows


_THREAD_COLUMNS = "t.id, t.space_id, t.title, t.created_by, t.created_at, t.last_message_at"
_MESSAGE_COLUMNS = (
    "m.id, m.space_id, m.thread_id, m.author_id, m.body, m.created_at, m.edited_at, m.deleted_at"
)


def _thread(row: dict[str, Any]) -> Thread:
    return Thread(
        id=int(row["id"]),
        space_id=int(row["space_id"]),
        title=str(row["title"]),
        created_by=int(row["created_by"]),
        created_at=int(row["created_at"]),
        last_message_at=int(row["last_message_at"]),
    )


def _optional(value: Any) -> int | None:
    return None if value is None else int(value)


def _message(row: dict[str, Any]) -> Message:
    deleted_at = _optional(row["deleted_at"])
    return Message(
        id=int(row["id"]),
        space_id=int(row["space_id"]),
        thread_id=int(row["thread_id"]),
        author_id=int(row["author_id"]),
        body="" if deleted_at is not None else str(row["body"]),
        created_at=int(row["created_at"]),
        edited_at=_optional(row["edited_at"]),
        deleted_at=deleted_at,
    )
