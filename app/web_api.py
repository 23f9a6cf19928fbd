"""The JSON API under /api/v1 of the tenant named by the Host: spaces, threads, messages,
mentions, unread counts and search, for integrations and the browser UI.

Conventions: ids are decimal strings; times (``*_at``) are unix milliseconds (integers, as
``new Date(ms)`` takes them); every list answers ``{"items": [...], "next": cursor | null}`` and
takes ``limit`` (1 to 100) and ``cursor`` (the ``next`` of the previous page, opaque); every
error is ``{"error": message, "status": code}``. Request bodies are JSON objects of at most
MAX_BODY_BYTES. Authentication and sign-in: ``app.web_auth``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from app import work
from app.accounts import (
    AccountError,
    AlreadyExists,
    Forbidden,
    InvalidCredentials,
    NotFound,
    PolicyViolation,
    tenant_by_name,
)
from app.clock import Clock
from app.db import Conflict, Database, Invalid, Unavailable
from app.ids import MAX_ID
from app.markup import render
from app.web_auth import (
    CHALLENGE,
    ApiAuth,
    ApiError,
    Caller,
    clear_session_cookie,
    set_session_cookie,
)

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 64 * 1024
LIMIT_MAX = work.LIMIT_MAX
MAX_CURSOR = 64
_ID_DIGITS = len(str(MAX_ID))
_API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
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
_LOG = logging.getLogger(__name__)

TenantOf = Callable[[web.Request], str | None]


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The one shape of every API error; a 401 carries the Bearer challenge."""
    extra = {**(CHALLENGE if status == 401 else {}), **(headers or {})}
    return web.json_response(
        {"error": message, "status": status}, status=status, headers={**_API_HEADERS, **extra}
    )


def _answer(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=_API_HEADERS)


def _mapped(exc: Exception) -> web.Response | None:
    """The answer to a domain or storage error, or None for anything else (a bug)."""
    if isinstance(exc, Unavailable):
        return error_response(503, "the database is unavailable", {"Retry-After": "1"})
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            shown = str(exc) if isinstance(exc, AccountError) else _CONFLICT
            return error_response(status, shown)
    return None


# ---------------------------------------------------------------- input


def _text(value: object, name: str) -> str:
    """A JSON string that the databases can store: UTF-8 encodable and without NUL."""
    if not isinstance(value, str) or "\x00" in value:
        raise ApiError(400, f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{name} must be valid Unicode text") from None
    return value


def _id(text: object, what: str, status: int = 404, *, lowest: int = 1) -> int:
    """An id written as decimal digits (or a JSON integer) that can exist; else ``status``."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if isinstance(text, str) and text.isascii() and text.isdecimal() and len(text) <= _ID_DIGITS:
        value = int(text)
        if lowest <= value <= MAX_ID:
            return value
    raise ApiError(status, f"no such {what}" if status == 404 else f"{what} must be an id")


def _path_id(request: web.Request, what: str) -> int:
    return _id(request.match_info["id"], what)


def _limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return work.LIMIT_DEFAULT
    if text.isascii() and text.isdecimal() and 0 < len(text) <= 3 and 1 <= int(text) <= LIMIT_MAX:
        return int(text)
    raise ApiError(400, f"limit must be a whole number from 1 to {LIMIT_MAX}")


def _cursor(request: web.Request) -> str | None:
    text = request.query.get("cursor")
    if text is not None and not 0 < len(text) <= MAX_CURSOR:
        raise ApiError(400, "cursor must be the next cursor of a previous page")
    return text


def _id_cursor(request: web.Request) -> int | None:
    text = _cursor(request)
    return None if text is None else _id(text, "cursor", 400)


async def _read_body(request: web.Request) -> bytes:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY_BYTES + 1 - size):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (``{}`` for an empty body when ``optional``)."""
    data = await _read_body(request)
    if optional and not data.strip():
        return {}
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return value


def _field(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None:
        raise ApiError(400, f"{name} is required")
    return _text(value, name)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false")
    return value


# ---------------------------------------------------------------- output


def _page(items: list[Any], next_cursor: str | None) -> dict[str, Any]:
    return {"items": items, "next": next_cursor}


def _space(space: work.Space) -> dict[str, Any]:
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


def _thread(thread: work.Thread) -> dict[str, Any]:
    return {
        "id": str(thread.id),
        "space_id": str(thread.space_id),
        "title": thread.title,
        "created_by": str(thread.created_by),
        "created_at": thread.created_at,
        "last_message_at": thread.last_message_at,
    }


def _message(message: work.Message, handles: frozenset[str]) -> dict[str, Any]:
    return {
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


def _me(caller: Caller) -> dict[str, Any]:
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


@dataclass(frozen=True)
class _Call:
    """One authenticated API request: the database, the caller and the request."""

    db: Database
    caller: Caller
    request: web.Request

    @property
    def tenant_id(self) -> int:
        return self.caller.tenant_id

    async def messages(self, messages: list[work.Message]) -> list[dict[str, Any]]:
        handles = await work.tenant_handles(self.db, self.tenant_id) if messages else frozenset()
        return [_message(message, handles) for message in messages]


def _empty() -> web.Response:
    return web.Response(status=204, headers=_API_HEADERS)


def _messages_window(request: web.Request) -> tuple[int | None, int | None]:
    """(after_id, before_id) of a message list: ``cursor`` ("a<id>" forwards, "b<id>"
    backwards), else ``after`` (a message id, 0: from the first), else the newest."""
    text = _cursor(request)
    if text is None:
        after = request.query.get("after")
        return (None if after is None else _id(after, "after", 400, lowest=0)), None
    direction, position = text[:1], _id(text[1:], "cursor", 400)
    if direction == "a":
        return position, None
    if direction == "b":
        return None, position
    raise ApiError(400, "cursor must be the next cursor of a previous page")


class WebApi:
    """The /api/v1 routes of one app, and the middleware that turns failures into JSON."""

    def __init__(self, clock: Clock, db: Database | None, tenant_of: TenantOf) -> None:
        self._clock = clock
        self._db = db
        self._tenant_of = tenant_of
        self._tenant_ids: dict[str, int] = {}  # tenants are never renamed nor reused

    async def _tenant(self, request: web.Request) -> tuple[Database, int, str]:
        name = self._tenant_of(request)
        if name is None:
            raise ApiError(404, "no such workspace")
        if self._db is None:
            raise ApiError(503, "no database is configured", {"Retry-After": "1"})
        tenant_id = self._tenant_ids.get(name)
        if tenant_id is None:
            tenant = await tenant_by_name(self._db, name)
            if tenant is None:
                raise ApiError(404, "no such workspace")
            tenant_id = self._tenant_ids[name] = tenant.id
        return self._db, tenant_id, name

    def _authed(self, endpoint: Callable[[_Call], Awaitable[web.Response]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            db, tenant_id, name = await self._tenant(request)
            caller = await ApiAuth(db, self._clock).caller(request, tenant_id, name)
            return await endpoint(_Call(db, caller, request))

        return handle

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """For /api paths: an unknown workspace is a 404, and every failure a JSON error."""
        if request.path != API_PREFIX and not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        try:
            if self._tenant_of(request) is None:
                raise ApiError(404, "no such workspace")
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, str(exc), exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else {}
            return error_response(exc.status, exc.reason.lower(), allow)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, no trace
            mapped = _mapped(exc)
            if mapped is None:
                _LOG.exception("API request %s %s failed", request.method, request.path)
                return error_response(500, "internal error")
            return mapped

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register every /api/v1 route on ``router``."""
        p, a = API_PREFIX, self._authed
        router.add_post(f"{p}/session", self.sign_in)
        router.add_delete(f"{p}/session", self.sign_out)
        router.add_post(f"{p}/invitations/accept", self.accept)
        router.add_get(f"{p}/me", a(self.me))
        router.add_get(f"{p}/spaces", a(self.list_spaces))
        router.add_post(f"{p}/spaces", a(self.create_space))
        router.add_get(f"{p}/spaces/{{id}}", a(self.get_space))
        router.add_post(f"{p}/spaces/{{id}}/join", a(self.join_space))
        router.add_post(f"{p}/spaces/{{id}}/leave", a(self.leave_space))
        router.add_get(f"{p}/spaces/{{id}}/threads", a(self.list_threads))
        router.add_post(f"{p}/spaces/{{id}}/threads", a(self.create_thread))
        router.add_get(f"{p}/threads/{{id}}", a(self.get_thread))
        router.add_get(f"{p}/threads/{{id}}/messages", a(self.list_messages))
        router.add_post(f"{p}/threads/{{id}}/messages", a(self.post_message))
        router.add_post(f"{p}/threads/{{id}}/read", a(self.mark_thread_read))
        router.add_patch(f"{p}/messages/{{id}}", a(self.edit_message))
        router.add_delete(f"{p}/messages/{{id}}", a(self.delete_message))
        router.add_get(f"{p}/messages/{{id}}/history", a(self.message_history))
        router.add_get(f"{p}/mentions", a(self.mentions))
        router.add_post(f"{p}/mentions/read", a(self.mark_mentions_read))
        router.add_get(f"{p}/unread", a(self.unread))
        router.add_get(f"{p}/search", a(self.search))

    # ------------------------------------------------------------ session

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        """POST {email, password}: a session cookie, and the user (as /me shows it)."""
        db, tenant_id, name = await self._tenant(request)
        body = await _json_object(request)
        email, password = _field(body, "email"), _field(body, "password")
        user, token = await ApiAuth(db, self._clock).sign_in(request, tenant_id, email, password)
        scopes = frozenset({"read", "write"})
        response = _answer(_me(Caller(tenant_id, name, user, "session", scopes)))
        set_session_cookie(request, response, token)
        return response

    async def accept(self, request: web.Request) -> web.StreamResponse:
        """POST {token, display_name, password}: accept an invitation (or the owner's setup
        link), which signs the new user in: a session cookie, and the user as /me shows it."""
        db, tenant_id, name = await self._tenant(request)
        body = await _json_object(request)
        token, display = _field(body, "token"), _field(body, "display_name")
        password = _field(body, "password")
        auth = ApiAuth(db, self._clock)
        user, session = await auth.accept(request, tenant_id, token, display, password)
        scopes = frozenset({"read", "write"})
        response = _answer(_me(Caller(tenant_id, name, user, "session", scopes)), status=201)
        set_session_cookie(request, response, session)
        return response

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        """DELETE: end the session of the cookie and clear it."""
        db, tenant_id, _ = await self._tenant(request)
        await ApiAuth(db, self._clock).sign_out(request, tenant_id)
        response = _empty()
        clear_session_cookie(request, response)
        return response

    async def me(self, call: _Call) -> web.Response:
        return _answer(_me(call.caller))

    # ------------------------------------------------------------ spaces

    async def list_spaces(self, call: _Call) -> web.Response:
        archived = call.request.query.get("archived", "") in ("1", "true")
        page = await work.list_spaces(
            call.db, call.tenant_id, call.caller.user, limit=_limit(call.request),
            after_id=_id_cursor(call.request), include_archived=archived,
        )  # fmt: skip
        cursor = None if page.next_cursor is None else str(page.next_cursor)
        return _answer(_page([_space(space) for space in page.items], cursor))

    async def create_space(self, call: _Call) -> web.Response:
        body = await _json_object(call.request)
        space = await work.create_space(
            call.db, call.tenant_id, call.caller.user, _field(body, "name"),
            private=_flag(body, "private"), description=_field(body, "description", ""),
            clock=self._clock,
        )  # fmt: skip
        return _answer(_space(space), 201)

    async def get_space(self, call: _Call) -> web.Response:
        space_id = _path_id(call.request, "space")
        return _answer(
            _space(await work.get_space(call.db, call.tenant_id, call.caller.user, space_id))
        )

    async def join_space(self, call: _Call) -> web.Response:
        space_id = _path_id(call.request, "space")
        space = await work.join_space(
            call.db, call.tenant_id, call.caller.user, space_id, clock=self._clock
        )
        return _answer(_space(space))

    async def leave_space(self, call: _Call) -> web.Response:
        space_id = _path_id(call.request, "space")
        await work.leave_space(call.db, call.tenant_id, call.caller.user, space_id)
        return _empty()

    # ------------------------------------------------------------ threads

    async def list_threads(self, call: _Call) -> web.Response:
        space_id = _path_id(call.request, "space")
        page = await work.list_threads(
            call.db, call.tenant_id, call.caller.user, space_id, limit=_limit(call.request),
            cursor=_cursor(call.request),
        )  # fmt: skip
        return _answer(_page([_thread(thread) for thread in page.items], page.next_cursor))

    async def create_thread(self, call: _Call) -> web.Response:
        space_id = _path_id(call.request, "space")
        body = await _json_object(call.request)
        thread = await work.create_thread(
            call.db, call.tenant_id, call.caller.user, space_id, _field(body, "title"),
            clock=self._clock,
        )  # fmt: skip
        return _answer(_thread(thread), 201)

    async def get_thread(self, call: _Call) -> web.Response:
        thread_id = _path_id(call.request, "thread")
        thread = await work.get_thread(call.db, call.tenant_id, call.caller.user, thread_id)
        return _answer(_thread(thread))

    async def mark_thread_read(self, call: _Call) -> web.Response:
        """POST {up_to?: message id}: the thread is read up to there (default: its latest)."""
        thread_id = _path_id(call.request, "thread")
        body = await _json_object(call.request, optional=True)
        up_to = body.get("up_to")
        up_to_id = None if up_to is None else _id(up_to, "up_to", 400)
        last = await work.mark_thread_read(
            call.db, call.tenant_id, call.caller.user, thread_id, up_to_id
        )
        return _answer({"thread_id": str(thread_id), "last_read_message_id": str(last)})

    # ------------------------------------------------------------ messages

    async def list_messages(self, call: _Call) -> web.Response:
        """Newest first; with ``after`` (or a forward cursor) oldest first from there."""
        thread_id = _path_id(call.request, "thread")
        after_id, before_id = _messages_window(call.request)
        page = await work.list_messages(
            call.db, call.tenant_id, call.caller.user, thread_id, limit=_limit(call.request),
            after_id=after_id, before_id=before_id,
        )  # fmt: skip
        direction = "a" if after_id is not None else "b"
        cursor = None if page.next_cursor is None else f"{direction}{page.next_cursor}"
        return _answer(_page(await call.messages(page.items), cursor))

    async def post_message(self, call: _Call) -> web.Response:
        thread_id = _path_id(call.request, "thread")
        body = await _json_object(call.request)
        message = await work.post_message(
            call.db, call.tenant_id, call.caller.user, thread_id, _field(body, "body"),
            clock=self._clock,
        )  # fmt: skip
        return _answer((await call.messages([message]))[0], 201)

    async def edit_message(self, call: _Call) -> web.Response:
        message_id = _path_id(call.request, "message")
        body = await _json_object(call.request)
        message = await work.edit_message(
            call.db, call.tenant_id, call.caller.user, message_id, _field(body, "body"),
            clock=self._clock,
        )  # fmt: skip
        return _answer((await call.messages([message]))[0])

    async def delete_message(self, call: _Call) -> web.Response:
        message_id = _path_id(call.request, "message")
        message = await work.delete_message(
            call.db, call.tenant_id, call.caller.user, message_id, clock=self._clock
        )
        return _answer((await call.messages([message]))[0])

    async def message_history(self, call: _Call) -> web.Response:
        """Earlier bodies, oldest first; the cursor is the id of the last edit shown."""
        message_id = _path_id(call.request, "message")
        limit, after = _limit(call.request), _id_cursor(call.request) or 0
        edits = await work.message_history(call.db, call.tenant_id, call.caller.user, message_id)
        rest = [edit for edit in edits if edit.id > after]
        shown = rest[:limit]
        handles = await work.tenant_handles(call.db, call.tenant_id) if shown else frozenset()
        items = [
            {
                "id": str(edit.id),
                "body": edit.body,
                "html": render(edit.body, handles),
                "edited_at": edit.edited_at,
                "edited_by": str(edit.edited_by),
            }
            for edit in shown
        ]
        return _answer(_page(items, str(shown[-1].id) if len(rest) > limit else None))

    # ------------------------------------------------------------ mentions, unread, search

    async def mentions(self, call: _Call) -> web.Response:
        """Unread mentions of the caller, newest first."""
        page = await work.unread_mentions(
            call.db, call.tenant_id, call.caller.user, limit=_limit(call.request),
            before_id=_id_cursor(call.request),
        )  # fmt: skip
        cursor = None if page.next_cursor is None else str(page.next_cursor)
        return _answer(_page(await call.messages(page.items), cursor))

    async def mark_mentions_read(self, call: _Call) -> web.Response:
        """POST {message_ids?: [id, ...]}: those mentions (default: all) are read."""
        body = await _json_object(call.request, optional=True)
        given = body.get("message_ids")
        if given is not None and not isinstance(given, list):
            raise ApiError(400, "message_ids must be a list of ids")
        ids = None if given is None else [_id(item, "message id", 400) for item in given]
        marked = await work.mark_mentions_read(
            call.db, call.tenant_id, call.caller.user, ids, clock=self._clock
        )
        return _answer({"marked": marked})

    async def unread(self, call: _Call) -> web.Response:
        """Unread counts per space the caller is a member of, or with ``space`` per thread."""
        space = call.request.query.get("space")
        user = call.caller.user
        if space is None:
            counts = await work.space_unread_counts(call.db, call.tenant_id, user)
            return _answer({"spaces": {str(key): value for key, value in counts.items()}})
        space_id = _id(space, "space")
        counts = await work.thread_unread_counts(call.db, call.tenant_id, user, space_id)
        threads = {str(key): value for key, value in counts.items()}
        return _answer({"space_id": str(space_id), "threads": threads})

    async def search(self, call: _Call) -> web.Response:
        """Live messages with every word of ``q``, newest first."""
        query = call.request.query.get("q")
        if query is None:
            raise ApiError(400, "q is required: the words to search for")
        text = _text(query, "q")
        page = await work.search(
            call.db, call.tenant_id, call.caller.user, text, limit=_limit(call.request),
            before_id=_id_cursor(call.request),
        )  # fmt: skip
        cursor = None if page.next_cursor is None else str(page.next_cursor)
        return _answer(_page(await call.messages(page.items), cursor))
