"""The JSON API under /api/v1 of the tenant named by the Host: spaces, threads, messages,
mentions, unread counts and search, for integrations and the browser UI.

Conventions: ids are decimal strings; times (``*_at``) are unix milliseconds (integers, as
``new Date(ms)`` takes them); every list answers ``{"items": [...], "next": cursor | null}`` and
takes ``limit`` (1 to 100) and ``cursor`` (the ``next`` of the previous page, opaque); every
error is ``{"error": message, "status": code}``. Request bodies are JSON objects of at most
MAX_BODY_BYTES. Authentication and sign-in: ``app.web_auth``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from app import files, work
from app.accounts import tenant_by_name
from app.clock import Clock
from app.db import Database
from app.second_factor import Proof, SecondFactorNeeded
from app.settings import DEFAULT_MAX_UPLOAD_BYTES, AppSettings
from app.web_api_security import SecurityApi
from app.web_audit_log import audit_listing
from app.web_auth import (
    CHALLENGE,
    ApiAuth,
    ApiError,
    Caller,
    clear_session_cookie,
    set_session_cookie,
)
from app.web_files import FileRoutes
from app.web_input import (
    MAX_BODY_BYTES,
    Call,
    field,
    flag,
    id_cursor,
    json_object,
    messages_window,
    page_cursor,
    page_limit,
    parse_id,
    path_id,
    text_value,
)
from app.web_output import (
    API_HEADERS,
    answer,
    edit_json,
    empty,
    error_response,
    listing,
    mapped_error,
    me_json,
    message_json,
    space_json,
    thread_json,
)

# Re-exported: the body limit and the error shape are part of this module's face.
__all__ = ["API_PREFIX", "MAX_BODY_BYTES", "TenantOf", "WebApi", "error_response"]

API_PREFIX = "/api/v1"
_LOG = logging.getLogger(__name__)

TenantOf = Callable[[web.Request], str | None]


async def _messages(call: Call, messages: list[work.Message]) -> list[dict[str, Any]]:
    handles = await work.tenant_handles(call.db, call.tenant_id) if messages else frozenset()
    return [message_json(message, handles) for message in messages]


async def _messages_with_files(call: Call, messages: list[work.Message]) -> list[dict[str, Any]]:
    """As ``_messages``, each with its ``attachments`` (one query for the whole page)."""
    handles = await work.tenant_handles(call.db, call.tenant_id) if messages else frozenset()
    ids = [message.id for message in messages]
    attached = await files.files_for_messages(call.db, call.tenant_id, call.caller.user, ids)
    return [message_json(m, handles, attached.get(m.id, [])) for m in messages]


class WebApi:
    """The /api/v1 routes of one app, and the middleware that turns failures into JSON."""

    def __init__(
        self,
        clock: Clock,
        db: Database | None,
        tenant_of: TenantOf,
        settings: AppSettings | None = None,
    ) -> None:
        """``settings`` give the file routes their storage (``data_dir``) and upload limit;
        without them the file routes answer 503."""
        self._clock = clock
        self._db = db
        self._tenant_of = tenant_of
        self._files = FileRoutes(
            None if settings is None else settings.data_dir,
            DEFAULT_MAX_UPLOAD_BYTES if settings is None else settings.max_upload_bytes,
            clock,
        )
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

    def _authed(
        self, endpoint: Callable[[Call], Awaitable[web.StreamResponse]], expired_ok: bool = False
    ) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            db, tenant_id, name = await self._tenant(request)
            auth = ApiAuth(db, self._clock)
            caller = await auth.caller(request, tenant_id, name, expired_ok=expired_ok)
            return await endpoint(Call(db, caller, request))

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
            mapped = mapped_error(exc)
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
        router.add_get(f"{p}/admin/audit", a(audit_listing))
        for method, path, endpoint in self._files.routes(p):
            router.add_route(method, path, a(endpoint))
        for method, path, endpoint, expired_ok in SecurityApi(self._clock).routes(p):
            router.add_route(method, path, a(endpoint, expired_ok))

    # ------------------------------------------------------------ session

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        """POST {email, password}: a session cookie, and the user (as /me shows it). A user
        with a second factor adds "totp_code" or "recovery_code"; without, the answer is 401
        with ``"second_factor": true``."""
        db, tenant_id, name = await self._tenant(request)
        body = await json_object(request)
        email, password = field(body, "email"), field(body, "password")
        proof = Proof.offered(field(body, "totp_code", ""), field(body, "recovery_code", ""))
        try:
            user, token = await ApiAuth(db, self._clock).sign_in(
                request, tenant_id, email, password, proof
            )
        except SecondFactorNeeded as needed:
            return web.json_response(
                {"error": str(needed), "status": 401, "second_factor": True},
                status=401,
                headers={**API_HEADERS, **CHALLENGE},
            )
        scopes = frozenset({"read", "write"})
        response = answer(me_json(Caller(tenant_id, name, user, "session", scopes)))
        set_session_cookie(request, response, token)
        return response

    async def accept(self, request: web.Request) -> web.StreamResponse:
        """POST {token, display_name, password}: accept an invitation (or the owner's setup
        link), which signs the new user in: a session cookie, and the user as /me shows it."""
        db, tenant_id, name = await self._tenant(request)
        body = await json_object(request)
        token, display = field(body, "token"), field(body, "display_name")
        password = field(body, "password")
        auth = ApiAuth(db, self._clock)
        user, session = await auth.accept(request, tenant_id, token, display, password)
        scopes = frozenset({"read", "write"})
        response = answer(me_json(Caller(tenant_id, name, user, "session", scopes)), status=201)
        set_session_cookie(request, response, session)
        return response

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        """DELETE: end the session of the cookie and clear it."""
        db, tenant_id, _ = await self._tenant(request)
        await ApiAuth(db, self._clock).sign_out(request, tenant_id)
        response = empty()
        clear_session_cookie(request, response)
        return response

    async def me(self, call: Call) -> web.Response:
        return answer(me_json(call.caller))

    # ------------------------------------------------------------ spaces

    async def list_spaces(self, call: Call) -> web.Response:
        archived = call.request.query.get("archived", "") in ("1", "true")
        page = await work.list_spaces(
            call.db, call.tenant_id, call.caller.user, limit=page_limit(call.request),
            after_id=id_cursor(call.request), include_archived=archived,
        )  # fmt: skip
        cursor = None if page.next_cursor is None else str(page.next_cursor)
        return answer(listing([space_json(space) for space in page.items], cursor))

    async def create_space(self, call: Call) -> web.Response:
        body = await json_object(call.request)
        space = await work.create_space(
            call.db, call.tenant_id, call.caller.user, field(body, "name"),
            private=flag(body, "private"), description=field(body, "description", ""),
            clock=self._clock,
        )  # fmt: skip
        return answer(space_json(space), 201)

    async def get_space(self, call: Call) -> web.Response:
        space_id = path_id(call.request, "space")
        return answer(
            space_json(await work.get_space(call.db, call.tenant_id, call.caller.user, space_id))
        )

    async def join_space(self, call: Call) -> web.Response:
        space_id = path_id(call.request, "space")
        space = await work.join_space(
            call.db, call.tenant_id, call.caller.user, space_id, clock=self._clock
        )
        return answer(space_json(space))

    async def leave_space(self, call: Call) -> web.Response:
        space_id = path_id(call.request, "space")
        await work.leave_space(call.db, call.tenant_id, call.caller.user, space_id)
        return empty()

    # ------------------------------------------------------------ threads

    async def list_threads(self, call: Call) -> web.Response:
        space_id = path_id(call.request, "space")
        page = await work.list_threads(
            call.db, call.tenant_id, call.caller.user, space_id, limit=page_limit(call.request),
            cursor=page_cursor(call.request),
        )  # fmt: skip
        return answer(listing([thread_json(thread) for thread in page.items], page.next_cursor))

    async def create_thread(self, call: Call) -> web.Response:
        space_id = path_id(call.request, "space")
        body = await json_object(call.request)
        thread = await work.create_thread(
            call.db, call.tenant_id, call.caller.user, space_id, field(body, "title"),
            clock=self._clock,
        )  # fmt: skip
        return answer(thread_json(thread), 201)

    async def get_thread(self, call: Call) -> web.Response:
        thread_id = path_id(call.request, "thread")
        thread = await work.get_thread(call.db, call.tenant_id, call.caller.user, thread_id)
        return answer(thread_json(thread))

    async def mark_thread_read(self, call: Call) -> web.Response:
        """POST {up_to?: message id}: the thread is read up to there (default: its latest)."""
        thread_id = path_id(call.request, "thread")
        body = await json_object(call.request, optional=True)
        up_to = body.get("up_to")
        up_to_id = None if up_to is None else parse_id(up_to, "up_to", 400)
        last = await work.mark_thread_read(
            call.db, call.tenant_id, call.caller.user, thread_id, up_to_id
        )
        return answer({"thread_id": str(thread_id), "last_read_message_id": str(last)})

    # ------------------------------------------------------------ messages

    async def list_messages(self, call: Call) -> web.Response:
        """Newest first; with ``after`` (or a forward cursor) oldest first from there. Each
        message carries its ``attachments`` (the files the caller may see)."""
        thread_id = path_id(call.request, "thread")
        after_id, before_id = messages_window(call.request)
        page = await work.list_messages(
            call.db, call.tenant_id, call.caller.user, thread_id, limit=page_limit(call.request),
            after_id=after_id, before_id=before_id,
        )  # fmt: skip
        direction = "a" if after_id is not None else "b"
        cursor = None if page.next_cursor is None else f"{direction}{page.next_cursor}"
        return answer(listing(await _messages_with_files(call, page.items), cursor))

    async def post_message(self, call: Call) -> web.Response:
        thread_id = path_id(call.request, "thread")
        body = await json_object(call.request)
        message = await work.post_message(
            call.db, call.tenant_id, call.caller.user, thread_id, field(body, "body"),
            clock=self._clock,
        )  # fmt: skip
        return answer((await _messages(call, [message]))[0], 201)

    async def edit_message(self, call: Call) -> web.Response:
        message_id = path_id(call.request, "message")
        body = await json_object(call.request)
        message = await work.edit_message(
            call.db, call.tenant_id, call.caller.user, message_id, field(body, "body"),
            clock=self._clock,
        )  # fmt: skip
        return answer((await _messages(call, [message]))[0])

    async def delete_message(self, call: Call) -> web.Response:
        message_id = path_id(call.request, "message")
        message = await work.delete_message(
            call.db, call.tenant_id, call.caller.user, message_id, clock=self._clock
        )
        return answer((await _messages(call, [message]))[0])

    async def message_history(self, call: Call) -> web.Response:
        """Earlier bodies, oldest first; the cursor is the id of the last edit shown."""
        message_id = path_id(call.request, "message")
        limit, after = page_limit(call.request), id_cursor(call.request) or 0
        edits = await work.message_history(call.db, call.tenant_id, call.caller.user, message_id)
        rest = [edit for edit in edits if edit.id > after]
        shown = rest[:limit]
        handles = await work.tenant_handles(call.db, call.tenant_id) if shown else frozenset()
        items = [edit_json(edit, handles) for edit in shown]
        return answer(listing(items, str(shown[-1].id) if len(rest) > limit else None))

    # ------------------------------------------------------------ mentions, unread, search

    async def mentions(self, call: Call) -> web.Response:
        """Unread mentions of the caller, newest first."""
        page = await work.unread_mentions(
            call.db, call.tenant_id, call.caller.user, limit=page_limit(call.request),
            before_id=id_cursor(call.request),
        )  # fmt: skip
        cursor = None if page.next_cursor is None else str(page.next_cursor)
        return answer(listing(await _messages(call, page.items), cursor))

    async def mark_mentions_read(self, call: Call) -> web.Response:
        """POST {message_ids?: [id, ...]}: those mentions (default: all) are read."""
        body = await json_object(call.request, optional=True)
        given = body.get("message_ids")
        if given is not None and not isinstance(given, list):
            raise ApiError(400, "message_ids must be a list of ids")
        ids = None if given is None else [parse_id(item, "message id", 400) for item in given]
        marked = await work.mark_mentions_read(
            call.db, call.tenant_id, call.caller.user, ids, clock=self._clock
        )
        return answer({"marked": marked})

    async def unread(self, call: Call) -> web.Response:
        """Unread counts per space the caller is a member of, or with ``space`` per thread."""
        space = call.request.query.get("space")
        user = call.caller.user
        if space is None:
            counts = await work.space_unread_counts(call.db, call.tenant_id, user)
            return answer({"spaces": {str(key): value for key, value in counts.items()}})
        space_id = parse_id(space, "space")
        counts = await work.thread_unread_counts(call.db, call.tenant_id, user, space_id)
        threads = {str(key): value for key, value in counts.items()}
        return answer({"space_id": str(space_id), "threads": threads})

    async def search(self, call: Call) -> web.Response:
        """Live messages with every word of ``q``, newest first."""
        query = call.request.query.get("q")
        if query is None:
            raise ApiError(400, "q is required: the words to search for")
        text = text_value(query, "q")
        page = await work.search(
            call.db, call.tenant_id, call.caller.user, text, limit=page_limit(call.request),
            before_id=id_cursor(call.request),
        )  # fmt: skip
        cursor = None if page.next_cursor is None else str(page.next_cursor)
        return answer(listing(await _messages(call, page.items), cursor))
