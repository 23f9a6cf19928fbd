"""The audit log page of the admin console (owners and admins): filters, pages of records
and the CSV download of every matching record."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import hdrs, web

from app import audit
from app.accounts import PolicyViolation
from app.client_address import client_ip
from app.web_audit_log import AuditQuery, parse_query, require_manager
from app.web_pages_view import Notice, PageSite, Viewer

PAGE_SIZE = 50


def _link(path: str, asked: AuditQuery, **extra: str) -> str:
    fields = {name: value for name, value in asked.values.items() if value}
    fields.update(extra)
    return path + ("?" + urlencode(fields) if fields else "")


class AuditPages:
    """/admin/audit and /admin/audit.csv."""

    def __init__(self, site: PageSite) -> None:
        self.site = site

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/admin/audit", self.site.page(self.audit_log))
        router.add_get("/admin/audit.csv", self.site.page(self.export))

    async def audit_log(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        require_manager(viewer.user.role)
        query = viewer.request.query
        try:
            asked = await parse_query(viewer.db, viewer.tenant_id, query)
        except PolicyViolation as exc:
            return await self._page(viewer, [], None, str(exc), dict(query.items()), 400)
        entries, following = await audit.list_entries(
            viewer.db, viewer.tenant_id, asked.wanted, limit=PAGE_SIZE,
            before_id=asked.before_id,
        )  # fmt: skip
        more = None if following is None else _link("/admin/audit", asked, before=str(following))
        context = {"csv": _link("/admin/audit.csv", asked), "more": more}
        return await self._page(viewer, entries, context, None, asked.values, 200)

    async def _page(
        self,
        viewer: Viewer,
        entries: list[audit.AuditEntry],
        links: dict[str, str | None] | None,
        error: str | None,
        values: dict[str, str],
        status: int,
    ) -> web.StreamResponse:
        context = {
            "entries": entries, "actions": audit.ACTIONS, "error": error, "values": values,
            "csv": None, "more": None, **(links or {}),
        }  # fmt: skip
        return await self.site.render(
            viewer.request, viewer.tenant, "audit.html", context, viewer=viewer, status=status
        )

    async def export(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        """Every matching record as a CSV attachment; the export itself is recorded."""
        require_manager(viewer.user.role)
        asked = await parse_query(viewer.db, viewer.tenant_id, viewer.request.query)
        text = await audit.export_csv(viewer.db, viewer.tenant_id, asked.wanted)
        user, clock = viewer.user, self.site.clock
        filters = {name: value for name, value in asked.values.items() if value}
        await audit.record(
            viewer.db, viewer.tenant_id, "audit_export", user_id=user.id, actor=user.email,
            target="audit log", ip=client_ip(viewer.request), detail=filters, clock=clock,
        )  # fmt: skip
        day = datetime.fromtimestamp(clock.wall_now(), UTC).strftime("%Y-%m-%d")
        name = f"audit-{viewer.tenant.name}-{day}.csv"
        return web.Response(
            text=text, content_type="text/csv", charset="utf-8",
            headers={hdrs.CONTENT_DISPOSITION: f'attachment; filename="{name}"'},
        )  # fmt: skip
