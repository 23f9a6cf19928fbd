"""The workspace administration page (owners and admins): users, roles, deactivation, lockout,
password resets, signing users out, and invitations with their one-time join links."""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web

from app import accounts, lockout, password_reset
from app.account_audit import note, user_target
from app.accounts import ROLES, Forbidden, PolicyViolation
from app.web_auth import forwarded_https
from app.web_forms import Form, query_id, route_id
from app.web_pages_view import PAGE_SIZE, Notice, PageSite, Viewer, redirect

DAY_S = 86_400
# How long an invitation may stay open, in days, as the form offers it.
INVITE_DAYS = (1, 3, 7, 14, 30)
DEFAULT_INVITE_DAYS = 7
# What ``/admin?done=...`` confirms; anything else shows nothing.
DONE = {
    "unlocked": "The account is unlocked.",
    "signed_out": "The user is signed out everywhere.",
    "second_factor_reset": "The second factor is reset: they sign in with the password alone.",
}


def join_link(request: web.Request, token: str, page: str = "join") -> str:
    """The full address of an invitation's join page (or another one-time link's ``page``)
    on this workspace's host."""
    scheme = "https" if forwarded_https(request) else "http"
    return f"{scheme}://{request.headers.get(hdrs.HOST, '')}/{page}?token={token}"


def _require_manager(viewer: Viewer) -> None:
    if not viewer.manager:
        raise Forbidden("only an owner or admin of this workspace may see this page")


class AdminPages:
    """/admin and its forms; the domain checks every permission again."""

    def __init__(self, site: PageSite) -> None:
        self.site = site

    def add_routes(self, router: web.UrlDispatcher) -> None:
        site, admin = self.site, self.admin
        router.add_get("/admin", site.page(admin))
        router.add_post("/admin/users/{id}/role", site.action(self.set_role, admin))
        router.add_post("/admin/users/{id}/deactivate", site.action(self.deactivate, admin))
        router.add_post("/admin/users/{id}/reactivate", site.action(self.reactivate, admin))
        router.add_post("/admin/invitations", site.action(self.invite, admin))
        router.add_post("/admin/invitations/{id}/withdraw", site.action(self.withdraw, admin))
        router.add_post("/admin/users/{id}/unlock", site.action(self.unlock, admin))
        router.add_post("/admin/users/{id}/reset", site.action(self.reset, admin))
        router.add_post("/admin/users/{id}/sign-out", site.action(self.sign_out, admin))

    async def _note(self, viewer: Viewer, action: str, **kw: Any) -> None:
        """Record an administrator's action."""
        await note(
            viewer.db, viewer.tenant_id, viewer.request, action, clock=self.site.clock,
            user=viewer.user, **kw,
        )  # fmt: skip

    async def admin(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        _require_manager(viewer)
        db, tenant_id = viewer.db, viewer.tenant_id
        after = query_id(viewer.request, "after")
        page = await accounts.list_users(db, tenant_id, limit=PAGE_SIZE, after_id=after)
        invitations = await accounts.list_invitations(
            db, tenant_id, viewer.user.id, clock=self.site.clock
        )
        more = page.next_after_id
        context = {
            "users": page.users,
            "more": None if more is None else f"/admin?after={more}",
            "invitations": invitations,
            "roles": ROLES,
            "days": INVITE_DAYS,
            "default_days": DEFAULT_INVITE_DAYS,
            "error": notice.error,
            "values": notice.values,
            "locked": await lockout.locked_user_ids(db, tenant_id, clock=self.site.clock),
            "done": DONE.get(viewer.request.query.get("done", "")),
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "admin.html", context, viewer=viewer
        )

    async def set_role(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        user_id = route_id(viewer.request, "user")
        before = await accounts.get_user(viewer.db, viewer.tenant_id, user_id)
        after = await accounts.set_role(
            viewer.db, viewer.tenant_id, user_id, form.text("role"), viewer.user.id
        )
        if after.role != before.role:
            detail = {"from": before.role, "to": after.role}
            await self._note(viewer, "role_change", target=user_target(user_id), detail=detail)
        return redirect("/admin")

    async def deactivate(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        user_id = route_id(viewer.request, "user")
        await accounts.deactivate(
            viewer.db, viewer.tenant_id, user_id, viewer.user.id, clock=self.site.clock
        )
        await self._note(viewer, "user_deactivated", target=user_target(user_id))
        return redirect("/admin")

    async def reactivate(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        user_id = route_id(viewer.request, "user")
        await accounts.reactivate(viewer.db, viewer.tenant_id, user_id, viewer.user.id)
        await self._note(viewer, "user_reactivated", target=user_target(user_id))
        return redirect("/admin")

    async def invite(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """Invite an address; the page this answers shows the join link, once."""
        days = form.text("days", str(DEFAULT_INVITE_DAYS))
        if days not in {str(choice) for choice in INVITE_DAYS}:
            raise PolicyViolation("choose how many days the invitation stays open")
        email, role = form.text("email"), form.text("role")
        token = await accounts.invite(
            viewer.db, viewer.tenant_id, email, role, viewer.user.id, int(days) * DAY_S,
            clock=self.site.clock,
        )  # fmt: skip
        detail = {"role": role, "days": int(days)}
        await self._note(viewer, "invitation", target=email.strip().lower(), detail=detail)
        context = {
            "link": join_link(viewer.request, token),
            "email": email.strip().lower(),
            "role": role,
            "days": int(days),
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "invitation_created.html", context, viewer=viewer
        )

    async def withdraw(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        invitation_id = route_id(viewer.request, "invitation")
        await accounts.withdraw_invitation(
            viewer.db, viewer.tenant_id, invitation_id, viewer.user.id
        )
        await self._note(viewer, "invitation_withdrawn", target=f"invitation {invitation_id}")
        return redirect("/admin")

    async def unlock(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        user_id = route_id(viewer.request, "user")
        await lockout.unlock(viewer.db, viewer.tenant_id, user_id, viewer.user.id)
        await self._note(viewer, "unlock", target=user_target(user_id))
        return redirect("/admin?done=unlocked")

    async def reset(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """A one-time password-reset link for a user, shown once on the page this answers."""
        user_id = route_id(viewer.request, "user")
        token = await password_reset.create_reset(
            viewer.db, viewer.tenant_id, user_id, viewer.user.id, clock=self.site.clock
        )
        target = await accounts.get_user(viewer.db, viewer.tenant_id, user_id)
        detail = {"stage": "link_created"}
        await self._note(viewer, "password_reset", target=user_target(user_id), detail=detail)
        context = {"link": join_link(viewer.request, token, "reset"), "email": target.email}
        return await self.site.render(
            viewer.request, viewer.tenant, "reset_created.html", context, viewer=viewer
        )

    async def sign_out(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """Sign a user out everywhere; with the box ticked, revoke their API tokens too."""
        user_id = route_id(viewer.request, "user")
        revoke_tokens = form.checked("revoke_tokens")
        sessions, revoked = await accounts.sign_out_everywhere(
            viewer.db, viewer.tenant_id, user_id, viewer.user.id, revoke_tokens=revoke_tokens,
            clock=self.site.clock,
        )  # fmt: skip
        target = user_target(user_id)
        detail = {"sessions": sessions, "everywhere": True}
        await self._note(viewer, "session_revoked", target=target, detail=detail)
        if revoke_tokens:
            await self._note(viewer, "token_revoked", target=target, detail={"tokens": revoked})
        if user_id == viewer.user.id:
            return redirect("/login")
        return redirect("/admin?done=signed_out")
