"""The settings pages of the signed-in user: profile, password, sessions and API tokens."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app import accounts
from app.account_audit import note
from app.accounts import InvalidCredentials, PolicyViolation
from app.password_policy import EXPIRED
from app.tenant_settings import load_settings
from app.web_auth import READ_SCOPE, WRITE_SCOPE, clear_session_cookie
from app.web_forms import Form, route_id
from app.web_pages_view import Notice, PageSite, Viewer, redirect

SCOPES = (READ_SCOPE, WRITE_SCOPE)
MAX_TOKEN_DAYS = 3650
DAY_S = 86_400
EXPIRED_NOTICE = EXPIRED[0].upper() + EXPIRED[1:] + "."
# What ``/settings?done=...`` confirms; anything else shows nothing.
DONE = {
    "profile": "Your profile is saved.",
    "password": "Your password is changed; your other sessions are signed out.",
    "session": "That session is signed out.",
    "sessions": "Your other sessions are signed out.",
    "token": "The API token is revoked.",
}


def token_ttl_s(text: str) -> float | None:
    """An optional lifetime in whole days (empty: until revoked) as seconds."""
    days = text.strip()
    if not days:
        return None
    if days.isascii() and days.isdecimal() and 1 <= int(days) <= MAX_TOKEN_DAYS:
        return int(days) * DAY_S
    raise PolicyViolation(f"a token expires after 1 to {MAX_TOKEN_DAYS} days, or never")


class SettingsPages:
    """/settings and its forms."""

    def __init__(self, site: PageSite) -> None:
        self.site = site

    def add_routes(self, router: web.UrlDispatcher) -> None:
        site, settings = self.site, self.settings
        router.add_get("/settings", site.page(settings))
        router.add_post("/settings/profile", site.action(self.profile, settings))
        router.add_post("/settings/password", site.action(self.password, settings))
        router.add_post("/settings/sessions/others", site.action(self.sign_out_others))
        router.add_post("/settings/sessions/{id}/revoke", site.action(self.sign_out_session))
        router.add_post("/settings/tokens", site.action(self.create_token, settings))
        router.add_post("/settings/tokens/{id}/revoke", site.action(self.revoke_token))

    async def settings(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        db, tenant_id, user = viewer.db, viewer.tenant_id, viewer.user
        sessions = await accounts.list_sessions(db, tenant_id, user.id, clock=self.site.clock)
        context = {
            "user": user,
            "sessions": sessions,
            "current": await accounts.current_session_id(db, tenant_id, viewer.session),
            "tokens": await accounts.list_api_tokens(db, tenant_id, user.id),
            "scopes": SCOPES,
            "done": DONE.get(viewer.request.query.get("done", "")),
            "error": notice.error or (EXPIRED_NOTICE if viewer.password_expired else None),
            "values": notice.values,
            "min_length": (await load_settings(db, tenant_id)).password_min_length,
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "settings.html", context, viewer=viewer
        )

    async def profile(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        user_id = viewer.user.id
        await accounts.update_profile(
            viewer.db, viewer.tenant_id, user_id, user_id, display_name=form.text("display_name")
        )
        return redirect("/settings?done=profile")

    async def password(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """A new password (typed twice) for the right current one; other sessions end."""
        new = form.text("new_password")
        if new != form.text("confirm"):
            raise PolicyViolation("the two new passwords differ")
        try:
            revoked = await accounts.change_password(
                viewer.db, viewer.tenant_id, viewer.user.id, form.text("current_password"), new,
                keep_token=viewer.session, clock=self.site.clock,
            )  # fmt: skip
        except InvalidCredentials:
            await self._note(viewer, "password_change", "wrong_password")
            raise
        await self._note(viewer, "password_change", detail={"sessions_revoked": revoked})
        return redirect("/settings?done=password")

    async def _note(self, viewer: Viewer, action: str, result: str = "ok", **kw: Any) -> None:
        """Record an action of the viewer on their own account."""
        kw.setdefault("target", f"user {viewer.user.id}")
        await note(
            viewer.db, viewer.tenant_id, viewer.request, action, result, clock=self.site.clock,
            user=viewer.user, **kw,
        )  # fmt: skip

    async def sign_out_session(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        db, tenant_id = viewer.db, viewer.tenant_id
        session_id = route_id(viewer.request, "session")
        current = await accounts.current_session_id(db, tenant_id, viewer.session)
        if await accounts.revoke_session_by_id(
            db, tenant_id, viewer.user.id, session_id, clock=self.site.clock
        ):
            await self._note(viewer, "session_revoked", detail={"session": str(session_id)})
        if session_id != current:
            return redirect("/settings?done=session")
        response = redirect("/login")
        clear_session_cookie(viewer.request, response)
        return response

    async def sign_out_others(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        revoked = await accounts.revoke_other_sessions(
            viewer.db, viewer.tenant_id, viewer.user.id, viewer.session, clock=self.site.clock
        )
        await self._note(viewer, "session_revoked", detail={"sessions": revoked, "others": True})
        return redirect("/settings?done=sessions")

    async def create_token(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """A new API token, shown once on the page this answers."""
        scopes = sorted(set(form.all("scope")) & set(SCOPES))
        if not scopes:
            raise PolicyViolation("choose the read scope, the write scope or both")
        ttl_s = token_ttl_s(form.text("expires_days"))
        name = form.text("name")
        token = await accounts.create_api_token(
            viewer.db, viewer.tenant_id, viewer.user.id, name, scopes, ttl_s,
            clock=self.site.clock,
        )  # fmt: skip
        await self._note(viewer, "token_created", detail={"name": name.strip(), "scopes": scopes})
        context = {"token": token, "name": name.strip(), "scopes": scopes, "ttl_s": ttl_s}
        return await self.site.render(
            viewer.request, viewer.tenant, "token_created.html", context, viewer=viewer
        )

    async def revoke_token(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        token_id = route_id(viewer.request, "API token")
        if await accounts.revoke_api_token(
            viewer.db, viewer.tenant_id, token_id, viewer.user.id, clock=self.site.clock
        ):
            await self._note(viewer, "token_revoked", target=f"API token {token_id}")
        return redirect("/settings?done=token")
