"""Spaces and their membership, and who may see a space, its threads and its messages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from app.accounts import AlreadyExists, Forbidden, NotFound, PolicyViolation, User
from app.clock import Clock
from app.db import Conflict, Database
from app.ids import new_id
from app.work_records import (
    _MESSAGE_COLUMNS,
    _THREAD_COLUMNS,
    LIMIT_DEFAULT,
    Message,
    Page,
    Thread,
    _message,
    _now_ms,
    _page,
    _text,
    _thread,
    _window,
)

MAX_SPACE_NAME = 80
MAX_DESCRIPTION = 1000
MANAGERS = frozenset({"owner", "admin"})


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
