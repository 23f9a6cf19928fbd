"""Threads and messages of a space: posting, edit history and (soft) delete."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from app.accounts import Forbidden, PolicyViolation, User
from app.clock import Clock
from app.db import Database
from app.files import attach_file
from app.ids import MAX_ID, new_id
from app.mentions import _record_mentions
from app.spaces import (
    MANAGERS,
    _actor,
    _require_postable,
    _visible_message,
    _visible_space,
    _visible_thread,
)
from app.work_records import (
    _MESSAGE_COLUMNS,
    _THREAD_COLUMNS,
    LIMIT_DEFAULT,
    Message,
    Page,
    Thread,
    _cursor,
    _limit,
    _message,
    _now_ms,
    _page,
    _text,
    _thread,
    _window,
)

MAX_TITLE = 200
MAX_BODY = 10_000


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class MessageEdit:
    """An earlier body of a message, replaced (or deleted) at ``edited_at`` by ``edited_by``."""

    id: int
    body: str
    edited_at: int
    edited_by: int


@dataclass(frozen=True)
class ThreadPage:
    """One page of threads by activity; pass ``next_cursor`` back as ``cursor`` (opaque)."""

    items: list[Thread]
    next_cursor: str | None


# ---------------------------------------------------------------- input rules


def _body(value: str) -> str:
    if not value.strip() or len(value) > MAX_BODY:
        raise PolicyViolation(f"a message has 1 to {MAX_BODY} characters, not only blanks")
    return value


# ---------------------------------------------------------------- threads


async def create_thread(
    db: Database,
    tenant_id: int,
    actor: User,
    space_id: int,
    title: str,
    *,
    clock: Clock | None = None,
) -> Thread:
    """Start a thread in a live space the actor may see."""
    title = _text(title, "thread title", MAX_TITLE)
    now = _now_ms(clock)
    thread = Thread(new_id(), space_id, title, actor.id, now, now)
    async with db.transaction() as tx:
        actor = await _actor(tx, tenant_id, actor)
        _require_postable(await _visible_space(tx, tenant_id, actor, space_id))
        await tx.execute(
            "INSERT INTO threads (id, tenant_id, space_id, title, created_by, created_at,"
            " last_message_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            *(thread.id, tenant_id, space_id, title, actor.id, now, now),
        )
    return thread


async def get_thread(db: Database, tenant_id: int, actor: User, thread_id: int) -> Thread:
    """A thread of a space the actor may see; NotFound otherwise."""
    actor = await _actor(db, tenant_id, actor)
    thread, _ = await _visible_thread(db, tenant_id, actor, thread_id)
    return thread


def _thread_cursor(cursor: object) -> tuple[int, int]:
    if cursor is None:
        return MAX_ID, MAX_ID
    at, _, thread_id = cursor.partition(":") if isinstance(cursor, str) else ("", "", "")
    if not (at.isdecimal() and thread_id.isdecimal() and len(at) < 20 and len(thread_id) < 20):
        raise PolicyViolation("cursor must be a next_cursor taken from a previous page")
    return _cursor(int(at), "cursor", 0), _cursor(int(thread_id), "cursor", 0)


async def list_threads(
    db: Database,
    tenant_id: int,
    actor: User,
    space_id: int,
    *,
    limit: int = LIMIT_DEFAULT,
    cursor: str | None = None,
) -> ThreadPage:
    """Threads of a space the actor may see, latest activity first."""
    limit = _limit(limit)
    at, thread_id = _thread_cursor(cursor)
    actor = await _actor(db, tenant_id, actor)
    await _visible_space(db, tenant_id, actor, space_id)
    rows = await db.fetch(
        f"SELECT {_THREAD_COLUMNS} FROM threads t WHERE t.tenant_id = ? AND t.space_id = ?"
        " AND (t.last_message_at < ? OR (t.last_message_at = ? AND t.id < ?))"
        " ORDER BY t.last_message_at DESC, t.id DESC LIMIT ?",
        *(tenant_id, space_id, at, at, thread_id, limit + 1),
    )
    items = [_thread(row) for row in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    return ThreadPage(items, None if last is None else f"{last.last_message_at}:{last.id}")


# ---------------------------------------------------------------- messages


async def post_message(
    db: Database,
    tenant_id: int,
    actor: User,
    thread_id: int,
    body: str,
    *,
    clock: Clock | None = None,
    file_id: int | None = None,
) -> Message:
    """Post to a thread of a live space the actor may see; record its @mentions. ``file_id``:
    a file the actor stored in that space, attached in the same transaction (NotFound, and
    nothing posted, when it cannot be)."""
    body = _body(body)
    now = _now_ms(clock)
    async with db.transaction() as tx:
        actor = await _actor(tx, tenant_id, actor)
        thread, space = await _visible_thread(tx, tenant_id, actor, thread_id)
        _require_postable(space)
        message = Message(new_id(), space.id, thread.id, actor.id, body, now, None, None)
        await tx.execute(
            "INSERT INTO messages (id, tenant_id, thread_id, space_id, author_id, body,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            *(message.id, tenant_id, thread.id, space.id, actor.id, body, now),
        )
        await tx.execute(
            "UPDATE threads SET last_message_at = ? WHERE tenant_id = ? AND id = ?"
            " AND last_message_at < ?",
            *(now, tenant_id, thread.id, now),
        )
        await _record_mentions(tx, tenant_id, space, message, now)
        if file_id is not None:
            await attach_file(tx, tenant_id, file_id, message.id)
    return message


async def get_message(db: Database, tenant_id: int, actor: User, message_id: int) -> Message:
    """A message (a deleted one as a placeholder) of a space the actor may see; NotFound
    otherwise."""
    actor = await _actor(db, tenant_id, actor)
    message, _ = await _visible_message(db, tenant_id, actor, message_id)
    return message


async def edit_message(
    db: Database,
    tenant_id: int,
    actor: User,
    message_id: int,
    body: str,
    *,
    clock: Clock | None = None,
) -> Message:
    """Replace the body of one's own live message in a live space; the old body goes to the
    edit history. New @mentions are recorded (earlier ones stay)."""
    body = _body(body)
    now = _now_ms(clock)
    async with db.transaction() as tx:
        actor = await _actor(tx, tenant_id, actor)
        message, space = await _visible_message(tx, tenant_id, actor, message_id)
        if message.author_id != actor.id or message.deleted_at is not None:
            raise Forbidden("only the author may edit a message, and not once it is deleted")
        _require_postable(space)
        if body == message.body:
            return message
        await _replace_body(tx, tenant_id, actor, message, body, now, deleted=False)
        edited = dataclasses.replace(message, body=body, edited_at=now)
        await _record_mentions(tx, tenant_id, space, edited, now)
    return edited


async def delete_message(
    db: Database, tenant_id: int, actor: User, message_id: int, *, clock: Clock | None = None
) -> Message:
    """Soft-delete a message (idempotent): its author or a workspace admin. The body is kept
    only in the edit history; lists show the message as deleted and search skips it."""
    now = _now_ms(clock)
    async with db.transaction() as tx:
        actor = await _actor(tx, tenant_id, actor)
        message, _ = await _visible_message(tx, tenant_id, actor, message_id)
        if message.author_id != actor.id and actor.role not in MANAGERS:
            raise Forbidden("only the author or a workspace admin may delete a message")
        if message.deleted_at is not None:
            return message
        await _replace_body(tx, tenant_id, actor, message, "", now, deleted=True)
    return dataclasses.replace(message, body="", deleted_at=now)


async def _replace_body(
    tx: Database,
    tenant_id: int,
    actor: User,
    message: Message,
    body: str,
    now: int,
    *,
    deleted: bool,
) -> None:
    await tx.execute(
        "INSERT INTO message_edits (id, tenant_id, message_id, body, edited_at, edited_by)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, message.id, message.body, now, actor.id),
    )
    column = "deleted_at" if deleted else "edited_at"
    await tx.execute(
        f"UPDATE messages SET body = ?, {column} = ? WHERE tenant_id = ? AND id = ?",
        *(body, now, tenant_id, message.id),
    )


async def message_history(
    db: Database, tenant_id: int, actor: User, message_id: int
) -> list[MessageEdit]:
    """Earlier bodies of a message, oldest first: for its author and workspace admins."""
    actor = await _actor(db, tenant_id, actor)
    message, _ = await _visible_message(db, tenant_id, actor, message_id)
    if message.author_id != actor.id and actor.role not in MANAGERS:
        raise Forbidden("only the author or a workspace admin may see a message's history")
    rows = await db.fetch(
        "SELECT id, body, edited_at, edited_by FROM message_edits"
        " WHERE tenant_id = ? AND message_id = ? ORDER BY id",
        *(tenant_id, message_id),
    )
    return [
        MessageEdit(int(r["id"]), str(r["body"]), int(r["edited_at"]), int(r["edited_by"]))
        for r in rows
    ]


async def list_messages(
    db: Database,
    tenant_id: int,
    actor: User,
    thread_id: int,
    *,
    limit: int = LIMIT_DEFAULT,
    after_id: int | None = None,
    before_id: int | None = None,
) -> Page[Message]:
    """Messages of a thread the actor may see (deleted ones as placeholders), newest first;
    oldest first when ``after_id`` is given."""
    window = _window(limit, after_id, before_id, ascending_default=False)
    actor = await _actor(db, tenant_id, actor)
    await _visible_thread(db, tenant_id, actor, thread_id)
    rows = await db.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.tenant_id = ? AND m.thread_id = ?"
        + window.sql("m.id"),
        *(tenant_id, thread_id, *window.args()),
    )
    return _page(rows, window.limit, _message)
