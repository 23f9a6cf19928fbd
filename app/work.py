"""Spaces, threads and messages of a tenant: who may see and post, mentions, unread counts, search.

Every function takes ``(db, tenant_id, actor, ...)``; every query names ``tenant_id``, so ids of
another tenant's rows are simply not found. The actor is re-read from the database on each call
(a stale ``User`` cannot keep a revoked role). A space the actor may not see is reported as
NotFound, exactly like one that does not exist. *_at are unix ms; ids are ``app.ids`` ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.accounts import AlreadyExists, Forbidden, NotFound, PolicyViolation, User
from app.clock import Clock, SystemClock
from app.db import Conflict, Database, search_messages
from app.ids import MAX_ID, new_id
from app.markup import mention_handles

LIMIT_MAX = 100
LIMIT_DEFAULT = 50
MAX_SPACE_NAME = 80
MAX_DESCRIPTION = 1000
MAX_TITLE = 200
MAX_BODY = 10_000
MAX_SEARCH_TEXT = 500
MANAGERS = frozenset({"owner", "admin"})
T = TypeVar("T")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Space:
    """A space as one user sees it; ``is_member`` is that user's membership."""

    id: int
    name: str
    description: str
    private: bool
    archived: bool
    created_by: int
    created_at: int
    is_member: bool


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
class MessageEdit:
    """An earlier body of a message, replaced (or deleted) at ``edited_at`` by ``edited_by``."""

    id: int
    body: str
    edited_at: int
    edited_by: int


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` back as the same cursor for the next page
    (``after_id`` when paging forwards, ``before_id`` backwards). None: the last page."""

    items: list[T]
    next_cursor: int | None


@dataclass(frozen=True)
class ThreadPage:
    """One page of threads by activity; pass ``next_cursor`` back as ``cursor`` (opaque)."""

    items: list[Thread]
    next_cursor: str | None


# ---------------------------------------------------------------- input rules


def _now_ms(clock: Clock | None) -> int:
    return int((clock or SystemClock()).wall_now() * 1000)


def _text(value: str, what: str, max_length: int) -> str:
    text = value.strip()
    if not 0 < len(text) <= max_length or not text.isprintable():
        raise PolicyViolation(f"a {what} has 1 to {max_length} printable characters")
    return text


def _body(value: str) -> str:
    if not value.strip() or len(value) > MAX_BODY:
        raise PolicyViolation(f"a message has 1 to {MAX_BODY} characters, not only blanks")
    return value


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


_SPACE_COLUMNS = (
    "s.id, s.name, s.description, s.private, s.archived, s.created_by, s.created_at,"
    " sm.user_id AS member_id"
)
# Parameter: the user whose membership sm is.
_SPACE_FROM = (
    " FROM spaces s LEFT JOIN space_members sm"
    " ON sm.tenant_id = s.tenant_id AND sm.space_id = s.id AND sm.user_id = ?"
)
# Parameter: 1 when the user may see public spaces (not a guest), else 0.
_VISIBLE = " AND (sm.user_id IS NOT NULL OR (s.private = 0 AND ? = 1))"
_THREAD_COLUMNS = "t.id, t.space_id, t.title, t.created_by, t.created_at, t.last_message_at"
_MESSAGE_COLUMNS = (
    "m.id, m.space_id, m.thread_id, m.author_id, m.body, m.created_at, m.edited_at, m.deleted_at"
)


def _space(row: dict[str, Any]) -> Space:
    return Space(
        id=int(row["id"]),
        name=str(row["name"]),
        description=str(row["description"]),
        private=bool(row["private"]),
        archived=bool(row["archived"]),
        created_by=int(row["created_by"]),
        created_at=int(row["created_at"]),
        is_member=row["member_id"] is not None,
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


# ---------------------------------------------------------------- access


def _sees_public(actor: User) -> int:
    return 0 if actor.role == "guest" else 1


def _can_see(actor: User, space: Space) -> bool:
    return space.is_member or (not space.private and actor.role != "guest")


def _can_manage(actor: User, space: Space) -> bool:
    return actor.role in MANAGERS or (space.created_by == actor.id and actor.role != "guest")


def _require_postable(space: Space) -> None:
    if space.archived:
        raise Forbidden("this space is archived: it is read-only")


async def _actor(db: Database, tenant_id: int, actor: User) -> User:
    """The acting user as the database has it now: active and of this tenant, else Forbidden."""
    row = await db.fetchrow(
        "SELECT role, active FROM users WHERE tenant_id = ? AND id = ?", tenant_id, actor.id
    )
    if actor.tenant_id != tenant_id or row is None or not row["active"]:
        raise Forbidden("you are not an active user of this workspace")
    return dataclasses.replace(actor, role=row["role"])


async def _any_space(db: Database, tenant_id: int, actor: User, space_id: int) -> Space | None:
    row = await db.fetchrow(
        f"SELECT {_SPACE_COLUMNS}{_SPACE_FROM} WHERE s.tenant_id = ? AND s.id = ?",
        *(actor.id, tenant_id, space_id),
    )
    return None if row is None else _space(row)


async def _visible_space(db: Database, tenant_id: int, actor: User, space_id: int) -> Space:
    space = await _any_space(db, tenant_id, actor, space_id)
    if space is None or not _can_see(actor, space):
        raise NotFound("no such space")
    return space


async def _managed_space(db: Database, tenant_id: int, actor: User, space_id: int) -> Space:
    """A space the actor may manage; NotFound when it cannot even see it, else Forbidden."""
    space = await _any_space(db, tenant_id, actor, space_id)
    if space is None or not (_can_see(actor, space) or actor.role in MANAGERS):
        raise NotFound("no such space")
    if not _can_manage(actor, space):
        raise Forbidden("only the space's creator or a workspace admin may do that")
    return space


async def _visible_thread(
    db: Database, tenant_id: int, actor: User, thread_id: int
) -> tuple[Thread, Space]:
    row = await db.fetchrow(
        f"SELECT {_THREAD_COLUMNS} FROM threads t WHERE t.tenant_id = ? AND t.id = ?",
        *(tenant_id, thread_id),
    )
    if row is None:
        raise NotFound("no such thread")
    thread = _thread(row)
    try:
        return thread, await _visible_space(db, tenant_id, actor, thread.space_id)
    except NotFound:
        raise NotFound("no such thread") from None


async def _visible_message(
    db: Database, tenant_id: int, actor: User, message_id: int
) -> tuple[Message, Space]:
    row = await db.fetchrow(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.tenant_id = ? AND m.id = ?",
        *(tenant_id, message_id),
    )
    if row is None:
        raise NotFound("no such message")
    message = _message(row)
    try:
        return message, await _visible_space(db, tenant_id, actor, message.space_id)
    except NotFound:
        raise NotFound("no such message") from None


# ---------------------------------------------------------------- spaces


async def create_space(
    db: Database,
    tenant_id: int,
    actor: User,
    name: str,
    *,
    private: bool = False,
    description: str = "",
    clock: Clock | None = None,
) -> Space:
    """Create a space whose first member (role admin) is the actor; guests may not.
    AlreadyExists when the tenant has a space of that name (archived and private ones too)."""
    name = _text(name, "space name", MAX_SPACE_NAME)
    description = description.strip()
    if len(description) > MAX_DESCRIPTION:
        raise PolicyViolation(f"a description has at most {MAX_DESCRIPTION} characters")
    now = _now_ms(clock)
    space_id = new_id()
    try:
        async with db.transaction() as tx:
            actor = await _actor(tx, tenant_id, actor)
            if actor.role == "guest":
                raise Forbidden("guests may not create spaces")
            await tx.execute(
                "INSERT INTO spaces (id, tenant_id, name, description, private, created_by,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                *(space_id, tenant_id, name, description, int(private), actor.id, now),
            )
            await _insert_member(tx, tenant_id, space_id, actor.id, now, role="admin")
    except Conflict:
        raise AlreadyExists("this workspace has a space of that name already") from None
    return Space(space_id, name, description, private, False, actor.id, now, True)


async def _insert_member(
    tx: Database, tenant_id: int, space_id: int, user_id: int, now: int, role: str = "member"
) -> None:
    await tx.execute(
        "INSERT INTO space_members (tenant_id, space_id, user_id, role, joined_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        *(tenant_id, space_id, user_id, role, now),
    )


async def get_space(db: Database, tenant_id: int, actor: User, space_id: int) -> Space:
    """A space the actor may see; NotFound otherwise."""
    actor = await _actor(db, tenant_id, actor)
    return await _visible_space(db, tenant_id, actor, space_id)


async def list_spaces(
    db: Database,
    tenant_id: int,
    actor: User,
    *,
    limit: int = LIMIT_DEFAULT,
    after_id: int | None = None,
    before_id: int | None = None,
    include_archived: bool = False,
) -> Page[Space]:
    """Spaces the actor may see (public ones unless a guest, and those they are a member of),
    oldest first (newest first when only ``before_id`` is given)."""
    window = _window(limit, after_id, before_id, ascending_default=True)
    actor = await _actor(db, tenant_id, actor)
    rows = await db.fetch(
        f"SELECT {_SPACE_COLUMNS}{_SPACE_FROM} WHERE s.tenant_id = ? AND (s.archived = 0 OR ? = 1)"
        + _VISIBLE
        + window.sql("s.id"),
        *(actor.id, tenant_id, int(include_archived), _sees_public(actor), *window.args()),
    )
    return _page(rows, window.limit, _space)


async def join_space(
    db: Database, tenant_id: int, actor: User, space_id: int, *, clock: Clock | None = None
) -> Space:
    """Join a public, live space (idempotent). Guests are added by others, never join."""
    actor = await _actor(db, tenant_id, actor)
    space = await _visible_space(db, tenant_id, actor, space_id)
    if space.is_member:
        return space
    _require_postable(space)
    await _insert_member(db, tenant_id, space_id, actor.id, _now_ms(clock))
    return dataclasses.replace(space, is_member=True)


async def leave_space(db: Database, tenant_id: int, actor: User, space_id: int) -> None:
    """Stop being a member of a space (idempotent); a private one then disappears for them."""
    actor = await _actor(db, tenant_id, actor)
    await _visible_space(db, tenant_id, actor, space_id)
    await db.execute(
        "DELETE FROM space_members WHERE tenant_id = ? AND space_id = ? AND user_id = ?",
        *(tenant_id, space_id, actor.id),
    )


async def add_member(
    db: Database,
    tenant_id: int,
    actor: User,
    space_id: int,
    user_id: int,
    *,
    clock: Clock | None = None,
) -> None:
    """Add an active user of the tenant to a space (idempotent): the space's creator or a
    workspace admin may. This is how guests reach any space, public or private."""
    actor = await _actor(db, tenant_id, actor)
    await _managed_space(db, tenant_id, actor, space_id)
    active = await db.fetchval(
        "SELECT active FROM users WHERE tenant_id = ? AND id = ?", tenant_id, user_id
    )
    if not active:
        raise NotFound("no such user")
    await _insert_member(db, tenant_id, space_id, user_id, _now_ms(clock))


async def remove_member(
    db: Database, tenant_id: int, actor: User, space_id: int, user_id: int
) -> None:
    """Remove a user from a space (idempotent): the space's creator or a workspace admin."""
    actor = await _actor(db, tenant_id, actor)
    await _managed_space(db, tenant_id, actor, space_id)
    await db.execute(
        "DELETE FROM space_members WHERE tenant_id = ? AND space_id = ? AND user_id = ?",
        *(tenant_id, space_id, user_id),
    )


async def archive_space(db: Database, tenant_id: int, actor: User, space_id: int) -> Space:
    """Make a space read-only and hide it from default lists (idempotent): its creator or a
    workspace admin."""
    actor = await _actor(db, tenant_id, actor)
    space = await _managed_space(db, tenant_id, actor, space_id)
    await db.execute(
        "UPDATE spaces SET archived = 1 WHERE tenant_id = ? AND id = ?", tenant_id, space_id
    )
    return dataclasses.replace(space, archived=True)


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
) -> Message:
    """Post to a thread of a live space the actor may see; record its @mentions."""
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


# ---------------------------------------------------------------- search


async def search(
    db: Database,
    tenant_id: int,
    actor: User,
    text: str,
    limit: int = LIMIT_DEFAULT,
    before_id: int | None = None,
) -> Page[Message]:
    """Live messages containing every word of ``text``, newest first, from the spaces the
    actor may see (guests: only their member spaces)."""
    window = _window(limit, None, before_id, ascending_default=False)
    if len(text) > MAX_SEARCH_TEXT:
        raise PolicyViolation(f"search text has at most {MAX_SEARCH_TEXT} characters")
    actor = await _actor(db, tenant_id, actor)
    rows = await search_messages(
        db,
        tenant_id,
        actor.id,
        text,
        public_spaces=actor.role != "guest",
        before_id=window.high,
        limit=window.limit + 1,
    )
    rows = [row | {"deleted_at": None} for row in rows]  # the query returns live ones only
    return _page(rows, window.limit, _message)
