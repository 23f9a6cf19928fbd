"""How an HTML page is answered: its workspace and signed-in viewer, the template, the security
headers and the friendly error pages; every page handler goes through a ``PageSite`` wrapper."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from app import work
from app.accounts import (
    AccountError,
    Forbidden,
    InvitationExpired,
    InvitationUsed,
    NotFound,
    Tenant,
    User,
    get_user,
    tenant_by_name,
)
from app.clock import Clock
from app.db import Conflict, Database, Invalid, Unavailable
from app.password_policy import password_expired
from app.people import now_ms
from app.second_factor import enrolment_required
from app.settings import AppSettings
from app.web_auth import (
    SAFE_METHODS,
    SESSION_COOKIE,
    ApiAuth,
    forwarded_https,
    same_origin,
)
from app.web_forms import CSRF_FIELD, Form, read_form, session_csrf, tokens_match

_LOG = logging.getLogger(__name__)
PAGE_SIZE = 20
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)
HSTS = "max-age=31536000"
CSRF_REFUSED = "This form has expired or did not come from this workspace. Go back and try again."
CROSS_ORIGIN = "A form of another site may not change anything here."
# Where a user whose password has expired is sent, and all such a session may do.
EXPIRED_PAGE = "/settings#password"
EXPIRED_MAY = frozenset({("GET", "/settings"), ("POST", "/settings/password"), ("POST", "/logout")})
# Where a user is sent who must enrol a second factor first, and all such a session may reach.
ENROL_PAGE = "/settings/2fa?required=1"
ENROLLING_MAY = ("/settings/2fa", "/logout")
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (Forbidden, 403),
    (InvitationUsed, 410),
    (InvitationExpired, 410),
    (AccountError, 400),
    (Conflict, 409),
    (Invalid, 409),
    (Unavailable, 503),
)
_HEADINGS = {
    400: "That did not work",
    401: "Sign-in failed",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    410: "Link no longer valid",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}
_HIDDEN = {
    409: "The request conflicts with the current state of the workspace.",
    500: "The request failed on our side. Please try again.",
    503: "The workspace's storage is unavailable. Please try again in a moment.",
}

TenantOf = Callable[[web.Request], str | None]


def when(ms: int | None) -> str:
    """A unix-ms timestamp as shown on pages (UTC, to the minute)."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Notice:
    """What a page shows again after a refused form: the message and the values typed."""

    error: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of one page request, in the workspace of its Host."""

    request: web.Request
    db: Database
    tenant: Tenant
    user: User
    session: str
    password_expired: bool = False  # then only the password may be changed

    @property
    def tenant_id(self) -> int:
        return self.tenant.id

    @property
    def csrf(self) -> str:
        return session_csrf(self.session)

    @property
    def manager(self) -> bool:
        return self.user.role in work.MANAGERS


PageView = Callable[[Viewer, Notice], Awaitable[web.StreamResponse]]
Action = Callable[[Viewer, Form], Awaitable[web.StreamResponse]]
Public = Callable[[web.Request, Database, Tenant], Awaitable[web.StreamResponse]]


def redirect(location: str) -> web.Response:
    """303 See Other to a path of this site."""
    return web.Response(status=303, headers={hdrs.LOCATION: location})


def protect(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Put the security headers of every HTML page on ``response``."""
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    # Never a Referer to another site (the join page's address carries its token). Not
    # no-referrer: with it, browsers send "Origin: null" on the page's own form posts.
    headers["Referrer-Policy"] = "same-origin"
    headers[hdrs.CACHE_CONTROL] = "no-store"
    if forwarded_https(request):
        headers["Strict-Transport-Security"] = HSTS
    return response


def _to_login(request: web.Request) -> web.Response:
    if request.method in SAFE_METHODS:
        return redirect("/login?next=" + quote(request.path_qs, safe="/"))
    return redirect("/login")


async def user_names(db: Database, tenant_id: int, ids: Iterable[int]) -> dict[int, str]:
    """Display names of users by id (people who left stay named)."""
    names: dict[int, str] = {}
    for user_id in set(ids):
        try:
            names[user_id] = (await get_user(db, tenant_id, user_id)).display_name
        except NotFound:
            names[user_id] = "unknown user"
    return names


def error_status(exc: Exception) -> int | None:
    """The page status of a domain or storage error; None for anything else (a bug)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return None


class PageSite:
    """What every page of one app shares: the workspace lookup, the viewer, rendering."""

    def __init__(
        self, clock: Clock, db: Database | None, tenant_of: TenantOf, settings: AppSettings
    ) -> None:
        self.clock = clock
        self.db = db
        self.settings = settings
        self._tenant_of = tenant_of
        self._tenants: dict[str, Tenant] = {}  # tenants are never renamed nor reused
        css = (STATIC / "app.css").read_bytes()
        self.css = css
        self.css_url = "/static/app.css?v=" + hashlib.sha256(css).hexdigest()[:12]

    # ------------------------------------------------------------ who and where

    async def workspace(self, request: web.Request) -> tuple[Database | None, Tenant]:
        """The database and the tenant of the Host (without a database, a stand-in named by
        the label); HTTPNotFound when the Host names none of ours."""
        name = self._tenant_of(request)
        if name is None:
            raise web.HTTPNotFound
        if self.db is None:
            return None, Tenant(0, name, name, 0)
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = await tenant_by_name(self.db, name)
            if tenant is None:
                raise web.HTTPNotFound
            self._tenants[name] = tenant
        return self.db, tenant

    async def landing_workspace(self, request: web.Request) -> tuple[Database | None, Tenant]:
        """Like ``workspace``, but a workspace of this slot that its database does not know
        (yet), or cannot tell right now, gets the stand-in and no database."""
        name = self._tenant_of(request)
        if name is None:
            raise web.HTTPNotFound
        try:
            return await self.workspace(request)
        except (web.HTTPNotFound, Unavailable):
            return None, Tenant(0, name, name, 0)

    async def viewer(self, request: web.Request, db: Database, tenant: Tenant) -> Viewer | None:
        """The signed-in user of the request's session cookie, or None."""
        token = request.cookies.get(SESSION_COOKIE)
        if token is None:
            return None
        auth = ApiAuth(db, self.clock)
        user = await auth.session_user(token, tenant.id)
        if user is None:
            return None
        settings = await auth.settings(tenant.id)
        expired = password_expired(user, settings, now_ms(self.clock))
        return Viewer(request, db, tenant, user, token, expired)

    # ------------------------------------------------------------ rendering

    async def _nav(self, viewer: Viewer) -> dict[str, Any]:
        try:
            page = await work.unread_mentions(
                viewer.db, viewer.tenant_id, viewer.user, limit=work.LIMIT_MAX
            )
            mentions = f"{len(page.items)}{'+' if page.next_cursor else ''}"
        except (AccountError, Unavailable):
            mentions = ""
        user = viewer.user
        return {
            "name": user.display_name, "email": user.email, "role": user.role,
            "manager": viewer.manager, "mentions": mentions,
        }  # fmt: skip

    async def render(
        self,
        request: web.Request,
        tenant: Tenant,
        template: str,
        context: Mapping[str, Any],
        *,
        viewer: Viewer | None = None,
        status: int = 200,
    ) -> web.Response:
        """Render ``template`` with the layout's context (workspace, viewer, CSRF token)."""
        full = {
            "workspace": tenant.display_name,
            "tenant": tenant.name,
            "css_url": self.css_url,
            "viewer": None if viewer is None else await self._nav(viewer),
            "csrf": "" if viewer is None else viewer.csrf,
            "path": request.path,
            "error": None,
            "values": {},
            **context,
        }
        return aiohttp_jinja2.render_template(template, request, full, status=status)

    async def error_page(
        self,
        request: web.Request,
        tenant: Tenant,
        status: int,
        message: str,
        viewer: Viewer | None = None,
    ) -> web.Response:
        """The friendly page of a refused or failed request."""
        context = {"heading": _HEADINGS.get(status, "Error"), "message": message}
        return await self.render(
            request, tenant, "error.html", context, viewer=viewer, status=status
        )

    async def failure(
        self, request: web.Request, tenant: Tenant, exc: Exception, viewer: Viewer | None = None
    ) -> web.Response:
        """The error page of an exception a handler let out; bugs are logged, never shown."""
        status = error_status(exc)
        if status is None:
            _LOG.error("page %s %s failed", request.method, request.path, exc_info=exc)
            status = 500
        message = _HIDDEN.get(status, str(exc))
        if status in _HIDDEN:
            viewer = None  # the database may be what failed: no navigation counts
        return await self.error_page(request, tenant, status, message, viewer)

    # ------------------------------------------------------------ wrappers

    def public(self, handler: Public) -> Handler:
        """A page for anyone (sign-in, join): the workspace must exist and have a database."""

        async def handle(request: web.Request) -> web.StreamResponse:
            db, tenant = await self.workspace(request)
            try:
                if db is None:
                    raise Unavailable("no database is configured")
                if request.method not in SAFE_METHODS and not _origin_ok(request):
                    response: web.StreamResponse = await self.error_page(
                        request, tenant, 403, CROSS_ORIGIN
                    )
                else:
                    response = await handler(request, db, tenant)
            except web.HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error page
                response = await self.failure(request, tenant, exc)
            return protect(request, response)

        return handle

    async def _member(
        self, request: web.Request, run: Callable[[Viewer], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        db, tenant = await self.workspace(request)
        viewer: Viewer | None = None
        try:
            if db is None:
                raise Unavailable("no database is configured")
            viewer = await self.viewer(request, db, tenant)
            if viewer is None:
                response: web.StreamResponse = _to_login(request)
            elif viewer.password_expired and (request.method, request.path) not in EXPIRED_MAY:
                response = redirect(EXPIRED_PAGE)
            elif not enrolling_may(request.path) and await enrolment_required(
                db, tenant.id, viewer.user.id
            ):
                response = redirect(ENROL_PAGE)
            elif request.method not in SAFE_METHODS and not _origin_ok(request):
                response = await self.error_page(request, tenant, 403, CROSS_ORIGIN, viewer)
            else:
                response = await run(viewer)
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error page
            response = await self.failure(request, tenant, exc, viewer)
        return protect(request, response)

    def page(self, view: PageView) -> Handler:
        """A page for signed-in users (others go to the sign-in page)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._member(request, lambda viewer: view(viewer, Notice()))

        return handle

    def action(self, act: Action, retry: PageView | None = None) -> Handler:
        """A form's POST for signed-in users, refused (403) without the session's CSRF token.
        A refused input (AccountError but NotFound, Forbidden) shows ``retry`` again with
        the message, status 400; without ``retry`` it is an error page."""

        async def run(viewer: Viewer) -> web.StreamResponse:
            form = await read_form(viewer.request)
            if not tokens_match(viewer.csrf, form.text(CSRF_FIELD)):
                request, tenant = viewer.request, viewer.tenant
                return await self.error_page(request, tenant, 403, CSRF_REFUSED, viewer)
            try:
                return await act(viewer, form)
            except AccountError as exc:
                if retry is None or error_status(exc) != 400:
                    raise
                response = await retry(viewer, Notice(str(exc), form.kept()))
                response.set_status(400)
                return response

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._member(request, run)

        return handle


def enrolling_may(path: str) -> bool:
    """Whether a user who must enrol a second factor first may reach ``path``."""
    return any(path == open_ or path.startswith(open_ + "/") for open_ in ENROLLING_MAY)


def _origin_ok(request: web.Request) -> bool:
    """A POST may carry no Origin (old browsers); one that it carries must be ours."""
    return hdrs.ORIGIN not in request.headers or same_origin(request)
