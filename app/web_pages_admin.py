"""The workspace administration page (owners and admins): users, roles, deactivation and
invitations with their one-time join links."""

from __future__ import annotations

from aiohttp import hdrs, web

from app import accounts
from app.accounts import ROLES, Forbidden, PolicyViolation
from app.web_auth import forwarded_https
from app.web_forms import Form, query_id, route_id
from app.web_pages_view import PAGE_SIZE, Notice, PageSite, Viewer, redirect

DAY_S = 86_400
# How long an invitation may stay open, in days, as the form offers it.
INVITE_DAYS = (1, 3, 7, 14, 30)
DEFAULT_INVITE_DAYS = 7


def join_link(request: web.Request, token: str) -> str:
    """The full address of an invitation's join page on this workspace's host."""
    scheme = "https" if forwarded_https(request) else "http"
    return f"{scheme}://{request.headers.get(hdrs.HOST, '')}/join?token={token}"


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
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "admin.html", context, viewer=viewer
        )

    async def set_role(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        user_id = route_id(viewer.request, "user")
        await accounts.set_role(
            viewer.db, viewer.tenant_id, user_id, form.text("role"), viewer.user.id
        )
        return redirect("/admin")

    async def deactivate(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        user_id = route_id(viewer.request, "user")
        await accounts.deactivate(
            viewer.db, viewer.tenant_id, user_id, viewer.user.id, clock=self.site.clock
        )
        return redirect("/admin")

    async def reactivate(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        user_id = route_id(viewer.request, "user")
        await accounts.reactivate(viewer.db, viewer.tenant_id, user_id, viewer.user.id)
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
        return redirect("/admin")
