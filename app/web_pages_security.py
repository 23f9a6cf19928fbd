"""The security settings page of a workspace (owners and admins), one form per group of
settings, and the public page of a one-time password-reset link."""

from __future__ import annotations

from aiohttp import web

from app import password_reset
from app.account_audit import note, user_target
from app.accounts import Forbidden, PolicyViolation, Tenant
from app.db import Database
from app.security_changes import GROUPS, apply_changes, form_values
from app.settings_cache import settings_changed
from app.tenant_settings import CHARACTER_CLASSES, LOCKOUT_MINUTES, load_settings
from app.web_forms import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Form,
    cookie_csrf,
    read_form,
    set_csrf_cookie,
    tokens_match,
)
from app.web_pages_view import CSRF_REFUSED, Notice, PageSite, Viewer, redirect

GROUP_TITLES = {
    "password": "Password policy",
    "lockout": "Account lockout",
    "sessions": "Sessions",
    "second_factor": "Second factor",
    "networks": "Allowed networks",
    "audit": "Audit log",
}


class SecurityPages:
    """/admin/security and its forms; /reset (a password-reset link)."""

    def __init__(self, site: PageSite) -> None:
        self.site = site

    def add_routes(self, router: web.UrlDispatcher) -> None:
        site, page = self.site, self.security
        router.add_get("/admin/security", site.page(page))
        router.add_post("/admin/security/{group}", site.action(self.save, page))
        router.add_get("/reset", site.public(self.reset_form))
        router.add_post("/reset", site.public(self.reset))

    # ------------------------------------------------------------ settings

    async def security(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        if not viewer.manager:
            raise Forbidden("only an owner or admin of this workspace may see this page")
        settings = await load_settings(viewer.db, viewer.tenant_id)
        done = viewer.request.query.get("done", "")
        context = {
            "settings": settings,
            "classes": CHARACTER_CLASSES,
            "lockout_minutes": LOCKOUT_MINUTES,
            "titles": GROUP_TITLES,
            "done": f"{GROUP_TITLES[done]}: saved." if done in GROUP_TITLES else None,
            "error": notice.error,
            "values": notice.values,
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "admin_security.html", context, viewer=viewer
        )

    async def save(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """Save one group's form; recorded with what changed (never the gate's password)."""
        if not viewer.manager:
            raise Forbidden("only an owner or admin of this workspace may change settings")
        group = viewer.request.match_info["group"]
        if group not in GROUPS:
            raise web.HTTPNotFound
        values = form_values(group, form.fields, form.all("password_classes"))
        _, differences = await apply_changes(viewer.db, viewer.tenant_id, values)
        if differences:
            settings_changed(viewer.request, viewer.tenant.name)
            await note(
                viewer.db, viewer.tenant_id, viewer.request, "setting_change",
                clock=self.site.clock, user=viewer.user, target=f"security: {group}",
                detail=differences,
            )  # fmt: skip
        return redirect(f"/admin/security?done={group}")

    # ------------------------------------------------------------ reset links

    async def _reset_page(
        self,
        request: web.Request,
        db: Database,
        tenant: Tenant,
        token: str,
        error: str | None = None,
    ) -> web.StreamResponse:
        reset = await password_reset.open_reset(db, tenant.id, token, clock=self.site.clock)
        csrf = cookie_csrf(request)
        context = {
            "reset": reset, "token": token, "login_csrf": csrf, "error": error,
            "min_length": (await load_settings(db, tenant.id)).password_min_length,
        }  # fmt: skip
        status = 200 if error is None else 400
        response = await self.site.render(request, tenant, "reset.html", context, status=status)
        set_csrf_cookie(request, response, csrf)
        return response

    async def reset_form(
        self, request: web.Request, db: Database, tenant: Tenant
    ) -> web.StreamResponse:
        return await self._reset_page(request, db, tenant, request.query.get("token", ""))

    async def reset(self, request: web.Request, db: Database, tenant: Tenant) -> web.StreamResponse:
        """Set the new password (typed twice) under the policy; the user's sessions end."""
        form = await read_form(request)
        if not tokens_match(request.cookies.get(CSRF_COOKIE, ""), form.text(CSRF_FIELD)):
            return await self.site.error_page(request, tenant, 403, CSRF_REFUSED)
        token, password = form.text("token"), form.text("password")
        clock = self.site.clock
        try:
            if password != form.text("confirm"):
                raise PolicyViolation("the two passwords differ")
            user = await password_reset.complete_reset(db, tenant.id, token, password, clock=clock)
        except PolicyViolation as exc:
            return await self._reset_page(request, db, tenant, token, str(exc))
        await note(
            db, tenant.id, request, "password_reset", clock=clock, user=user,
            target=user_target(user.id), detail={"stage": "completed"},
        )  # fmt: skip
        return redirect("/login")
