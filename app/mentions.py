"""@mentions of users in messages, and unread counts per thread and per space."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.accounts import NotFound, PolicyViolation, User
from app.clock import Clock
from app.db import Database
from app.ids import MAX_ID
from app.markup import mention_handles
from app.spaces import _VISIBLE, Space, _actor, _sees_public, _visible_space, _visible_thread
from app.work_records import (
    _MESSAGE_COLUMNS,
    LIMIT_DEFAULT,
    LIMIT_MAX,
    Message,
    Page,
    _cursor,
    _message,
    _now_ms,
    _page,
    _window,
)

# ---------------------------------------------------------------- mentions


def _user_handles(row: dict[str, Any]) -> set[str]:
    local = str(row["email"]).partition("@")[0].casefold()
    return {local, "_".join(str(row["display_name"]).split()).casefold()}


async def tenant_handles(db: Database, tenant_id: int) -> frozenset[str]:
    """The @handles of the tenant's active users (case-folded), for ``markup.render``: each
    user's e-mail local part and display name with spaces written as ``_``."""
    rows = await db.fetch(
        "SELECT email, display_name FROM users WHERE tenant_id = ? AND active = 1", tenant_id
    )
    return frozenset(handle for row in rows for handle in _user_handles(row))


async def _record_mentions(
    tx: Database, tenant_id: int, space: Space, message: Message, now: int
) -> None:
    """Notify the active users named in the body who may see the space (never the author)."""
    handles = mention_handles(message.body)
    if not handles:
        return
    rows = await tx.fetch(
        "SELECT u.id, u.email, u.display_name, u.role, sm.user_id AS member_id FROM users u"
        " LEFT JOIN space_members sm"
        " ON sm.tenant_id = u.tenant_id AND sm.user_id = u.id AND sm.space_id = ?"
        " WHERE u.tenant_id = ? AND u.active = 1",
        *(space.id, tenant_id),
    )
    for row in rows:
        sees = row["member_id"] is not None or (not space.private and row["role"] != "guest")
        if sees and row["id"] != message.author_id and handles & _user_handles(row):
            await tx.execute(
                "INSERT INTO mentions (tenant_id, message_id, user_id, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                *(tenant_id, message.id, row["id"], now),
            )


async def unread_mentions(
    db: Database,
    tenant_id: int,
    actor: User,
    *,
    limit: int = LIMIT_DEFAULT,
    before_id: int | None = None,
) -> Page[Message]:
    """Live messages mentioning the actor that they have not marked read and may still see,
    newest first (the cursor is a message id)."""
    window = _window(limit, None, before_id, ascending_default=False)
    actor = await _actor(db, tenant_id, actor)
    rows = await db.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM mentions mn"
        " JOIN messages m ON m.tenant_id = mn.tenant_id AND m.id = mn.message_id"
        " JOIN spaces s ON s.tenant_id = m.tenant_id AND s.id = m.space_id"
        " LEFT JOIN space_members sm"
        " ON sm.tenant_id = s.tenant_id AND sm.space_id = s.id AND sm.user_id = mn.user_id"
        " WHERE mn.tenant_id = ? AND mn.user_id = ? AND mn.read_at IS NULL"
        " AND m.deleted_at IS NULL" + _VISIBLE + window.sql("m.id"),
        *(tenant_id, actor.id, _sees_public(actor), *window.args()),
    )
    return _page(rows, window.limit, _message)


async def mark_mentions_read(
    db: Database,
    tenant_id: int,
    actor: User,
    message_ids: Sequence[int] | None = None,
    *,
    clock: Clock | None = None,
) -> int:
    """Mark the actor's unread mentions read (all, or those of up to LIMIT_MAX message ids);
    return how many changed."""
    ids = [_cursor(i, "message id", 0) for i in message_ids] if message_ids is not None else []
    if len(ids) > LIMIT_MAX:
        raise PolicyViolation(f"mark at most {LIMIT_MAX} mentions read at once")
    if message_ids is not None and not ids:
        return 0
    actor = await _actor(db, tenant_id, actor)
    only = f" AND message_id IN ({', '.join('?' * len(ids))})" if ids else ""
    return await db.execute(
        "UPDATE mentions SET read_at = ? WHERE tenant_id = ? AND user_id = ? AND read_at IS NULL"
        + only,
        *(_now_ms(clock), tenant_id, actor.id, *ids),
    )


# ---------------------------------------------------------------- unread counts


async def mark_thread_read(
    db: Database, tenant_id: int, actor: User, thread_id: int, up_to_id: int | None = None
) -> int:
    """Mark a thread read up to a message of it (default: its latest); never moves back.
    Return the message id now marked."""
    actor = await _actor(db, tenant_id, actor)
    await _visible_thread(db, tenant_id, actor, thread_id)
    upper = _cursor(up_to_id, "up_to_id", MAX_ID)
    last = await db.fetchval(
        "SELECT max(id) FROM messages WHERE tenant_id = ? AND thread_id = ? AND id <= ?",
        *(tenant_id, thread_id, upper),
    )
    if up_to_id is not None and last != up_to_id:
        raise NotFound("no such message in this thread")
    await db.execute(
        "INSERT INTO reads (tenant_id, user_id, thread_id, last_read_message_id)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, user_id, thread_id) DO UPDATE SET"
        " last_read_message_id = CASE WHEN excluded.last_read_message_id"
        " > reads.last_read_message_id THEN excluded.last_read_message_id"
        " ELSE reads.last_read_message_id END",
        *(tenant_id, actor.id, thread_id, int(last or 0)),
    )
    return int(last or 0)


# Messages of others, live, after the user's read mark. Parameters: user_id (reads), user_id.
_UNREAD_FROM = (
    " FROM messages m LEFT JOIN reads r"
    " ON r.tenant_id = m.tenant_id AND r.thread_id = m.thread_id AND r.user_id = ?"
    " WHERE m.deleted_at IS NULL AND m.author_id <> ?"
    " AND m.id > COALESCE(r.last_read_message_id, 0)"
)


async def thread_unread_counts(
    db: Database, tenant_id: int, actor: User, space_id: int
) -> dict[int, int]:
    """Unread messages (of others) per thread of a space the actor may see; threads with none
    are left out."""
    actor = await _actor(db, tenant_id, actor)
    await _visible_space(db, tenant_id, actor, space_id)
    rows = await db.fetch(
        "SELECT m.thread_id, count(*) AS unread"
        + _UNREAD_FROM
        + " AND m.tenant_id = ? AND m.space_id = ? GROUP BY m.thread_id",
        *(actor.id, actor.id, tenant_id, space_id),
    )
    return {int(row["thread_id"]): int(row["unread"]) for row in rows}


async def space_unread_counts(db: Database, tenant_id: int, actor: User) -> dict[int, int]:
    """Unread messages (of others) per space the actor is a member of; spaces with none are
    left out."""
    actor = await _actor(db, tenant_id, actor)
    rows = await db.fetch(
        "SELECT m.space_id, count(*) AS unread"
        + _UNREAD_FROM
        + " AND m.tenant_id = ? AND EXISTS (SELECT 1 FROM space_members sm"
        " WHERE sm.tenant_id = m.tenant_id AND sm.space_id = m.space_id AND sm.user_id = ?)"
        " GROUP BY m.space_id",
        *(actor.id, actor.id, tenant_id, actor.id),
    )
    return {int(row["space_id"]): int(row["unread"]) for row in rows}
