"""What the JSON API answers: the one error shape, domain errors mapped to statuses, pages,
and the JSON form of records (ids as decimal strings, times as unix milliseconds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from app import work
from app.accounts import (
    AccountError,
    AlreadyExists,
    Forbidden,
    InvalidCredentials,
    NotFound,
    PolicyViolation,
)
from app.db import Conflict, Invalid, Unavailable
from app.files import FileRecord
from app.markup import render
from app.web_auth import CHALLENGE, Caller

API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# First match wins: subclasses before their bases.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (Forbidden, 403),
    (AlreadyExists, 409),
    (InvalidCredentials, 401),
    (PolicyViolation, 400),
    (AccountError, 400),
    (Conflict, 409),
    (Invalid, 409),
)
_CONFLICT = "the request conflicts with the current state of the workspace"


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The one shape of every API error; a 401 carries the Bearer challenge."""
    extra = {**(CHALLENGE if status == 401 else {}), **(headers or {})}
    return web.json_response(
        {"error": message, "status": status}, status=status, headers={**API_HEADERS, **extra}
    )


def answer(data: Any, status: int = 200) -> web.Response:
    """A JSON answer with the API's headers."""
    return web.json_response(data, status=status, headers=API_HEADERS)


def empty() -> web.Response:
    """204 No Content with the API's headers."""
    return web.Response(status=204, headers=API_HEADERS)


def mapped_error(exc: Exception) -> web.Response | None:
    """The answer to a domain or storage error, or None for anything else (a bug)."""
    if isinstance(exc, Unavailable):
        return error_response(503, "the database is unavailable", {"Retry-After": "1"})
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            shown = str(exc) if isinstance(exc, AccountError) else _CONFLICT
            return error_response(status, shown)
    return None


def listing(items: list[Any], next_cursor: str | None) -> dict[str, Any]:
    """The shape of every list."""
    return {"items": items, "next": next_cursor}


def space_json(space: work.Space) -> dict[str, Any]:
    return {
        "id": str(space.id),
        "name": space.name,
        "description": space.description,
        "private": space.private,
        "archived": space.archived,
        "is_member": space.is_member,
        "created_by": str(space.created_by),
        "created_at": space.created_at,
    }


def thread_json(thread: work.Thread) -> dict[str, Any]:
    return {
        "id": str(thread.id),
        "space_id": str(thread.space_id),
        "title": thread.title,
        "created_by": str(thread.created_by),
        "created_at": thread.created_at,
        "last_message_at": thread.last_message_at,
    }


def message_json(
    message: work.Message,
    handles: frozenset[str],
    attachments: Sequence[FileRecord] | None = None,
) -> dict[str, Any]:
    """A message; with ``attachments`` (its files) an ``attachments`` list of file records."""
    shown = {
        "id": str(message.id),
        "space_id": str(message.space_id),
        "thread_id": str(message.thread_id),
        "author_id": str(message.author_id),
        "body": message.body,
        "html": render(message.body, handles),
        "created_at": message.created_at,
        "edited_at": message.edited_at,
        "deleted_at": message.deleted_at,
    }
    if attachments is not None:
        shown["attachments"] = [file_json(record) for record in attachments]
    return shown


def edit_json(edit: work.MessageEdit, handles: frozenset[str]) -> dict[str, Any]:
    return {
        "id": str(edit.id),
        "body": edit.body,
        "html": render(edit.body, handles),
        "edited_at": edit.edited_at,
        "edited_by": str(edit.edited_by),
    }


def file_json(record: FileRecord) -> dict[str, Any]:
    """A file's record; ``name`` is the cleaned name, ``content_type`` the checked type."""
    return {
        "id": str(record.id),
        "space_id": str(record.space_id),
        "message_id": None if record.message_id is None else str(record.message_id),
        "uploader_id": str(record.uploader_id),
        "name": record.original_name,
        "content_type": record.content_type,
        "size": record.size,
        "sha256": record.sha256,
        "created_at": record.created_at,
    }


def me_json(caller: Caller) -> dict[str, Any]:
    user = caller.user
    return {
        "id": str(user.id),
        "email": user.email,
        "display_name": user.display_name,
        "role": user.role,
        "workspace": caller.tenant,
        "created_at": user.created_at,
        "auth": {"via": caller.via, "scopes": sorted(caller.scopes)},
    }
