"""The server-rendered HTML face of a workspace: wiring of every page, the landing page,
sign-in and sign-out, the join link and the one stylesheet.

Pages are plain forms and links (no JavaScript). Every state-changing form carries a CSRF token:
derived from the session for signed-in users, a double-submit cookie before there is one.
"""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from app.account_audit import note
from app.accounts import (
    AlreadyExists,
    InvalidCredentials,
    PolicyViolation,
    Tenant,
    open_invitation,
    revoke_session,
)
from app.clock import Clock
from app.db import Database, Unavailable
from app.settings import AppSettings
from app.tenant_settings import load_settings
from app.web_auth import ApiAuth, clear_session_cookie, set_session_cookie
from app.web_forms import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Form,
    cookie_csrf,
    read_form,
    safe_next,
    set_csrf_cookie,
    tokens_match,
)
from app.web_pages_admin import AdminPages
from app.web_pages_audit import AuditPages
from app.web_pages_security import SecurityPages
from app.web_pages_settings import SettingsPages
from app.web_pages_spaces import SpacePages
from app.web_pages_threads import ThreadPages
from app.web_pages_view import (
    CSRF_REFUSED,
    TEMPLATES,
    PageSite,
    TenantOf,
    Viewer,
    protect,
    redirect,
    when,
)
from app.web_second_factor import SecondFactorNeeded, SecondFactorPages

STATIC_HEADERS = {
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
}
SIGN_IN_FAILED = "wrong e-mail or password"


class HtmlPages:
    """Every HTML page of one app."""

    def __init__(
        self, clock: Clock, db: Database | None, tenant_of: TenantOf, settings: AppSettings
    ) -> None:
        self.site = PageSite(clock, db, tenant_of, settings)
        self._second_factor = SecondFactorPages(self.site)
        self._sections = (
            SpacePages(self.site),
            ThreadPages(self.site),
            SettingsPages(self.site),
            AdminPages(self.site),
            SecurityPages(self.site),
            AuditPages(self.site),
            self._second_factor,
        )

    def setup(self, app: web.Application) -> None:
        """Give ``app`` the template engine (autoescaped) and every page route."""
        aiohttp_jinja2.setup(
            app,
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            default_helpers=False,
            auto_reload=False,  # templates change only with a new release
            filters={"when": when},
        )
        router, site = app.router, self.site
        router.add_get("/", self.home)
        router.add_get("/static/app.css", self.stylesheet)
        router.add_get("/login", site.public(self.login_form))
        router.add_post("/login", site.public(self.login))
        router.add_post("/logout", site.action(self.logout))
        router.add_get("/join", site.public(self.join_form))
        router.add_post("/join", site.public(self.join))
        for section in self._sections:
            section.add_routes(router)

    async def stylesheet(self, request: web.Request) -> web.Response:
        """The one stylesheet, for the hosts of our workspaces only."""
        await self.site.landing_workspace(request)
        return web.Response(
            body=self.site.css, content_type="text/css", charset="utf-8", headers=STATIC_HEADERS
        )

    # ------------------------------------------------------------ landing

    async def home(self, request: web.Request) -> web.StreamResponse:
        """Signed out: the workspace's landing page; signed in: on to the spaces."""
        site = self.site
        db, tenant = await site.landing_workspace(request)
        try:
            signed_in = db is not None and await site.viewer(request, db, tenant) is not None
        except Unavailable:
            signed_in = False  # the landing page needs no database
        if signed_in:
            return protect(request, redirect("/spaces"))
        s = site.settings
        hosted = f"{tenant.name} — hosted on slot {s.slot} by server {s.server} (epoch {s.epoch})"
        response = await site.render(request, tenant, "landing.html", {"hosted": hosted})
        return protect(request, response)

    # ------------------------------------------------------------ sign-in and sign-out

    async def _login_page(
        self,
        request: web.Request,
        tenant: Tenant,
        *,
        email: str = "",
        target: str = "",
        error: str | None = None,
        status: int = 200,
    ) -> web.StreamResponse:
        token = cookie_csrf(request)
        context = {"email": email, "next": safe_next(target), "login_csrf": token, "error": error}
        response = await self.site.render(request, tenant, "login.html", context, status=status)
        set_csrf_cookie(request, response, token)
        return response

    async def login_form(
        self, request: web.Request, db: Database, tenant: Tenant
    ) -> web.StreamResponse:
        target = request.query.get("next", "")
        if await self.site.viewer(request, db, tenant) is not None:
            return redirect(safe_next(target))
        return await self._login_page(request, tenant, target=target)

    async def login(self, request: web.Request, db: Database, tenant: Tenant) -> web.StreamResponse:
        form = await read_form(request)
        if not _cookie_csrf_ok(request, form):
            return await self.site.error_page(request, tenant, 403, CSRF_REFUSED)
        email, target = form.text("email"), form.text("next")
        auth = ApiAuth(db, self.site.clock)
        try:
            _, session = await auth.sign_in(request, tenant.id, email, form.text("password"))
        except SecondFactorNeeded as needed:  # right password: the code comes next
            return await self._second_factor.challenge(request, db, tenant, needed.user, target)
        except InvalidCredentials:
            return await self._login_page(
                request, tenant, email=email, target=target, error=SIGN_IN_FAILED, status=401
            )
        response = redirect(safe_next(target))
        set_session_cookie(request, response, session)
        return response

    async def logout(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        db, tenant_id, clock = viewer.db, viewer.tenant_id, self.site.clock
        await revoke_session(db, tenant_id, viewer.session, clock=clock)
        await note(db, tenant_id, viewer.request, "sign_out", clock=clock, user=viewer.user)
        response = redirect("/login")
        clear_session_cookie(viewer.request, response)
        return response

    # ------------------------------------------------------------ invitations

    async def _join_page(
        self,
        request: web.Request,
        db: Database,
        tenant: Tenant,
        token: str,
        form: Form | None = None,
        error: str | None = None,
    ) -> web.StreamResponse:
        invitation = await open_invitation(db, tenant.id, token, clock=self.site.clock)
        csrf = cookie_csrf(request)
        context = {
            "invitation": invitation, "token": token, "login_csrf": csrf, "error": error,
            "display_name": "" if form is None else form.text("display_name"),
            "min_length": (await load_settings(db, tenant.id)).password_min_length,
        }  # fmt: skip
        status = 200 if error is None else 400
        response = await self.site.render(request, tenant, "join.html", context, status=status)
        set_csrf_cookie(request, response, csrf)
        return response

    async def join_form(
        self, request: web.Request, db: Database, tenant: Tenant
    ) -> web.StreamResponse:
        return await self._join_page(request, db, tenant, request.query.get("token", ""))

    async def join(self, request: web.Request, db: Database, tenant: Tenant) -> web.StreamResponse:
        form = await read_form(request)
        if not _cookie_csrf_ok(request, form):
            return await self.site.error_page(request, tenant, 403, CSRF_REFUSED)
        token, password = form.text("token"), form.text("password")
        await open_invitation(db, tenant.id, token, clock=self.site.clock)  # 404/410 first
        try:
            if password != form.text("confirm"):
                raise PolicyViolation("the two passwords differ")
            name = form.text("display_name")
            auth = ApiAuth(db, self.site.clock)
            _, session = await auth.accept(request, tenant.id, token, name, password)
        except (PolicyViolation, AlreadyExists) as exc:
            return await self._join_page(request, db, tenant, token, form, str(exc))
        response = redirect("/spaces")
        set_session_cookie(request, response, session)
        return response


def _cookie_csrf_ok(request: web.Request, form: Form) -> bool:
    """The double-submit check of a signed-out form: the field equals the cookie."""
    return tokens_match(request.cookies.get(CSRF_COOKIE, ""), form.text(CSRF_FIELD))
