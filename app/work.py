"""Spaces, threads and messages of a tenant: who may see and post, mentions, unread counts, search.

Every function takes ``(db, tenant_id, actor, ...)``; every query names ``tenant_id``, so ids of
another tenant's rows are simply not found. The actor is re-read from the database on each call
(a stale ``User`` cannot keep a revoked role). A space the actor may not see is reported as
NotFound, exactly like one that does not exist. *_at are unix ms; ids are ``app.ids`` ids.

This module is the public face: spaces and membership live in ``app.spaces``, threads and
messages in ``app.messages``, mentions and unread counts in ``app.mentions``, the shared records
and input rules in ``app.work_records``; search is here.
"""

from __future__ import annotations

# Not part of __all__: the errors and the clock seam stay importable from here, as they were.
from app.accounts import AlreadyExists as AlreadyExists
from app.accounts import Forbidden as Forbidden
from app.accounts import NotFound as NotFound
from app.accounts import PolicyViolation, User
from app.clock import Clock as Clock
from app.db import Database, search_messages
from app.mentions import (
    mark_mentions_read,
    mark_thread_read,
    space_unread_counts,
    tenant_handles,
    thread_unread_counts,
    unread_mentions,
)
from app.messages import (
    MAX_BODY,
    MAX_TITLE,
    MessageEdit,
    ThreadPage,
    create_thread,
    delete_message,
    edit_message,
    get_message,
    get_thread,
    list_messages,
    list_threads,
    message_history,
    post_message,
)
from app.spaces import (
    MANAGERS,
    MAX_DESCRIPTION,
    MAX_SPACE_NAME,
    Space,
    _actor,
    add_member,
    archive_space,
    create_space,
    get_space,
    join_space,
    leave_space,
    list_spaces,
    remove_member,
)
from app.work_records import (
    LIMIT_DEFAULT,
    LIMIT_MAX,
    Message,
    Page,
    T,
    Thread,
    _message,
    _page,
    _window,
)

__all__ = [
    "LIMIT_DEFAULT",
    "LIMIT_MAX",
    "MANAGERS",
    "MAX_BODY",
    "MAX_DESCRIPTION",
    "MAX_SEARCH_TEXT",
    "MAX_SPACE_NAME",
    "MAX_TITLE",
    "Message",
    "MessageEdit",
    "Page",
    "Space",
    "T",
    "Thread",
    "ThreadPage",
    "add_member",
    "archive_space",
    "create_space",
    "create_thread",
    "delete_message",
    "edit_message",
    "get_message",
    "get_space",
    "get_thread",
    "join_space",
    "leave_space",
    "list_messages",
    "list_spaces",
    "list_threads",
    "mark_mentions_read",
    "mark_thread_read",
    "message_history",
    "post_message",
    "remove_member",
    "search",
    "space_unread_counts",
    "tenant_handles",
    "thread_unread_counts",
    "unread_mentions",
]

MAX_SEARCH_TEXT = 500


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
