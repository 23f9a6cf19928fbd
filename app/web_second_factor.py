"""The pages of the second factor: enrolment at /settings/2fa, the sign-in's second step at
/login/2fa, and an administrator's reset."""

from __future__ import annotations

import segno
from aiohttp import web
from markupsafe import Markup

from app import pending_sign_ins, second_factor
from app.accounts import NotFound, Tenant, User, get_user
from app.client_address import client_ip
from app.db import Database
from app.second_factor import Proof, SecondFactorNeeded, SecondFactorRefused
from app.web_auth import ApiAuth, set_session_cookie
from app.web_forms import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Form,
    cookie_csrf,
    read_form,
    route_id,
    safe_next,
    set_csrf_cookie,
    tokens_match,
)
from app.web_pages_view import CSRF_REFUSED, Notice, PageSite, Viewer, redirect

__all__ = ["SecondFactorNeeded", "SecondFactorPages", "qr_svg"]

ENROL_PATH = "/settings/2fa"
DONE = {"disabled": "Two-step sign-in is off."}
EXPIRED = "This sign-in has expired or was used already: sign in again."
TOO_MANY = "Too many wrong codes: sign in again."


def qr_svg(uri: str) -> Markup:
    """The QR code of ``uri`` as inline SVG (made here, so nothing is loaded from elsewhere)."""
    code = segno.make(uri, error="m")
    svg = code.svg_inline(scale=4, border=4, dark="#000", light="#fff", title="QR code")
    return Markup(svg)  # segno's own markup: path data and our title, no outside text


def grouped(secret: str) -> str:
    """A base32 secret in groups of four, as people copy it by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


class SecondFactorPages:
    """/settings/2fa and its forms, /login/2fa, and the administrator's reset."""

    def __init__(self, site: PageSite) -> None:
        self.site = site

    def add_routes(self, router: web.UrlDispatcher) -> None:
        site, page = self.site, self.enrolment
        router.add_get(ENROL_PATH, site.page(page))
        router.add_post(f"{ENROL_PATH}/confirm", site.action(self.confirm, page))
        router.add_post(f"{ENROL_PATH}/recovery-codes", site.action(self.regenerate, page))
        router.add_post(f"{ENROL_PATH}/disable", site.action(self.disable, page))
        router.add_post("/admin/users/{id}/second-factor/reset", site.action(self.reset))
        router.add_post("/login/2fa", site.public(self.second_step))

    # ------------------------------------------------------------ enrolment

    async def enrolment(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        """The factor's state; without one, a pending secret as QR code and text."""
        db, tenant_id, user = viewer.db, viewer.tenant_id, viewer.user
        query = viewer.request.query
        factor = await second_factor.status(db, tenant_id, user.id)
        context = {
            "factor": factor,
            "required": "required" in query and not factor.enabled,
            "done": DONE.get(query.get("done", "")),
            "error": notice.error,
        }
        if not factor.enabled:
            secret = await second_factor.enrol(db, tenant_id, user.id, self.site.clock)
            uri = second_factor.provisioning_uri(secret, user.email, viewer.tenant.name)
            context |= {"qr": qr_svg(uri), "secret": grouped(secret)}
        return await self.site.render(
            viewer.request, viewer.tenant, "second_factor.html", context, viewer=viewer
        )

    async def _codes(self, viewer: Viewer, codes: list[str], enrolled: bool) -> web.Response:
        context = {"codes": codes, "enrolled": enrolled}
        return await self.site.render(
            viewer.request, viewer.tenant, "recovery_codes.html", context, viewer=viewer
        )

    async def confirm(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """Turn the factor on with a first code; the answer shows the recovery codes, once."""
        codes = await second_factor.confirm(
            viewer.db, viewer.tenant_id, viewer.user.id, form.text("code"),
            ip=client_ip(viewer.request), clock=self.site.clock,
        )  # fmt: skip
        return await self._codes(viewer, codes, enrolled=True)

    async def regenerate(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        codes = await second_factor.regenerate_recovery_codes(
            viewer.db, viewer.tenant_id, viewer.user.id, Proof.typed(form.text("code")),
            ip=client_ip(viewer.request), clock=self.site.clock,
        )  # fmt: skip
        return await self._codes(viewer, codes, enrolled=False)

    async def disable(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        await second_factor.disable(
            viewer.db, viewer.tenant_id, viewer.user.id, form.text("password"),
            Proof.typed(form.text("code")), ip=client_ip(viewer.request), clock=self.site.clock,
        )  # fmt: skip
        return redirect(f"{ENROL_PATH}?done=disabled")

    async def reset(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """An owner or admin resets a user's factor (the domain checks who may): the user
        signs in with the password alone and enrols again."""
        user_id = route_id(viewer.request, "user")
        await second_factor.reset(
            viewer.db, viewer.tenant_id, user_id, viewer.user.id,
            ip=client_ip(viewer.request), clock=self.site.clock,
        )  # fmt: skip
        return redirect("/admin?done=second_factor_reset")

    # ------------------------------------------------------------ the sign-in's second step

    async def challenge(
        self, request: web.Request, db: Database, tenant: Tenant, user: User, target: str
    ) -> web.StreamResponse:
        """The answer to a right password of a user with a second factor: the code form,
        carrying a fresh pending sign-in token (the session starts only after the code)."""
        token = await pending_sign_ins.start(db, tenant.id, user.id, self.site.clock)
        return await self._second_page(request, tenant, token, target)

    async def _second_page(
        self,
        request: web.Request,
        tenant: Tenant,
        token: str | None,
        target: str,
        error: str | None = None,
        status: int = 200,
    ) -> web.StreamResponse:
        csrf = cookie_csrf(request)
        context = {"token": token, "next": safe_next(target), "login_csrf": csrf, "error": error}
        response = await self.site.render(request, tenant, "login_2fa.html", context, status=status)
        set_csrf_cookie(request, response, csrf)
        return response

    async def second_step(
        self, request: web.Request, db: Database, tenant: Tenant
    ) -> web.StreamResponse:
        """A code for a pending sign-in: the session and its cookie when it is right."""
        form = await read_form(request)
        if not tokens_match(request.cookies.get(CSRF_COOKIE, ""), form.text(CSRF_FIELD)):
            return await self.site.error_page(request, tenant, 403, CSRF_REFUSED)
        token, target, clock = form.text("token"), form.text("next"), self.site.clock
        pending = await pending_sign_ins.claim_try(db, tenant.id, token, clock)
        if pending is None:
            return await self._second_page(request, tenant, None, target, EXPIRED, 401)
        auth = ApiAuth(db, clock)
        try:
            user = await get_user(db, tenant.id, pending.user_id)
            await auth.second_step(request, tenant.id, user, Proof.typed(form.text("code")))
        except SecondFactorRefused as refused:
            if pending.tries_left == 0:
                return await self._second_page(request, tenant, None, target, TOO_MANY, 401)
            return await self._second_page(request, tenant, token, target, str(refused), 401)
        if not await pending_sign_ins.finish(db, tenant.id, pending.id, clock):
            return await self._second_page(request, tenant, None, target, EXPIRED, 401)
        try:
            session = await auth.start_session(request, tenant.id, user)
        except NotFound:  # deactivated meanwhile
            return await self._second_page(request, tenant, None, target, EXPIRED, 401)
        response = redirect(safe_next(target))
        set_session_cookie(request, response, session)
        return response
