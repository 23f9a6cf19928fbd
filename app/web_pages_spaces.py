"""The spaces pages: the list with unread counts, a space with its threads and files, creating,
joining and leaving spaces, starting threads and uploading files."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import BodyPartReader, hdrs, web

from app import files, work
from app.accounts import PolicyViolation
from app.files import FileRecord
from app.web_forms import Form, query_id, query_text, route_id, upload_chunks
from app.web_pages_view import PAGE_SIZE, Notice, PageSite, Viewer, redirect, user_names

MAX_THREAD_CURSOR = 64


def file_size(size: int) -> str:
    """A byte count as people read it."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def file_view(record: FileRecord) -> dict[str, Any]:
    """A file as the pages list it; downloads go through the JSON API's file route."""
    return {
        "id": record.id,
        "name": record.original_name,
        "size": file_size(record.size),
        "at": record.created_at,
        "url": f"/api/v1/files/{record.id}",
    }


async def store_upload(
    site: PageSite,
    viewer: Viewer,
    space_id: int,
    part: BodyPartReader,
    message_id: int | None = None,
) -> FileRecord:
    """Store the file part of a form in a space (and on a message of the viewer's)."""
    declared = part.headers.get(hdrs.CONTENT_TYPE, "")
    return await files.store_file(
        viewer.db, viewer.tenant_id, viewer.user, space_id, upload_chunks(part),
        part.filename or "", declared, root=site.settings.data_dir,
        max_bytes=site.settings.max_upload_bytes, message_id=message_id, clock=site.clock,
    )  # fmt: skip


class SpacePages:
    """/spaces and /spaces/{id} with their forms."""

    def __init__(self, site: PageSite) -> None:
        self.site = site

    def add_routes(self, router: web.UrlDispatcher) -> None:
        site = self.site
        router.add_get("/spaces", site.page(self.spaces))
        router.add_post("/spaces", site.action(self.create, self.spaces))
        router.add_get("/spaces/{id}", site.page(self.space))
        router.add_post("/spaces/{id}/join", site.action(self.join))
        router.add_post("/spaces/{id}/leave", site.action(self.leave))
        router.add_post("/spaces/{id}/threads", site.action(self.new_thread, self.space))
        router.add_post("/spaces/{id}/files", site.action(self.upload, self.space))

    # ------------------------------------------------------------ the list

    async def spaces(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        db, tenant_id, user = viewer.db, viewer.tenant_id, viewer.user
        after = query_id(viewer.request, "after")
        page = await work.list_spaces(db, tenant_id, user, limit=PAGE_SIZE, after_id=after)
        unread = await work.space_unread_counts(db, tenant_id, user)
        context = {
            "spaces": [{"space": s, "unread": unread.get(s.id, 0)} for s in page.items],
            "more": None if page.next_cursor is None else f"/spaces?after={page.next_cursor}",
            "error": notice.error,
            "values": notice.values,
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "spaces.html", context, viewer=viewer
        )

    async def create(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        space = await work.create_space(
            viewer.db, viewer.tenant_id, viewer.user, form.text("name"),
            private=form.checked("private"), description=form.text("description"),
            clock=self.site.clock,
        )  # fmt: skip
        return redirect(f"/spaces/{space.id}")

    # ------------------------------------------------------------ one space

    async def space(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        request, db, tenant_id, user = viewer.request, viewer.db, viewer.tenant_id, viewer.user
        space_id = route_id(request, "space")
        space = await work.get_space(db, tenant_id, user, space_id)
        cursor = query_text(request, "cursor", MAX_THREAD_CURSOR) or None
        threads = await work.list_threads(
            db, tenant_id, user, space_id, limit=PAGE_SIZE, cursor=cursor
        )
        unread = await work.thread_unread_counts(db, tenant_id, user, space_id)
        found = await files.list_files(
            db, tenant_id, user, space_id, limit=PAGE_SIZE,
            before_id=query_id(request, "files_before"),
        )  # fmt: skip
        starters = await user_names(db, tenant_id, (t.created_by for t in threads.items))
        here = f"/spaces/{space_id}"
        context = {
            "space": space,
            "threads": [
                {"thread": t, "unread": unread.get(t.id, 0), "by": starters[t.created_by]}
                for t in threads.items
            ],
            "more_threads": _more(here, "cursor", threads.next_cursor),
            "files": [file_view(record) for record in found.items],
            "more_files": _more(here, "files_before", found.next_cursor),
            "error": notice.error,
            "values": notice.values,
        }
        return await self.site.render(request, viewer.tenant, "space.html", context, viewer=viewer)

    async def join(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        space_id = route_id(viewer.request, "space")
        await work.join_space(
            viewer.db, viewer.tenant_id, viewer.user, space_id, clock=self.site.clock
        )
        return redirect(f"/spaces/{space_id}")

    async def leave(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        space_id = route_id(viewer.request, "space")
        await work.leave_space(viewer.db, viewer.tenant_id, viewer.user, space_id)
        return redirect("/spaces")

    async def new_thread(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """A thread with its first message (checked before the thread is made)."""
        space_id = route_id(viewer.request, "space")
        body = form.text("body")
        if not body.strip() or len(body) > work.MAX_BODY:
            raise PolicyViolation(f"write a first message of 1 to {work.MAX_BODY} characters")
        db, tenant_id, user, clock = viewer.db, viewer.tenant_id, viewer.user, self.site.clock
        thread = await work.create_thread(
            db, tenant_id, user, space_id, form.text("title"), clock=clock
        )
        await work.post_message(db, tenant_id, user, thread.id, body, clock=clock)
        return redirect(f"/threads/{thread.id}")

    async def upload(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        space_id = route_id(viewer.request, "space")
        if form.upload is None:
            raise PolicyViolation("choose a file to upload")
        await store_upload(self.site, viewer, space_id, form.upload)
        return redirect(f"/spaces/{space_id}")


def _more(path: str, name: str, cursor: object) -> str | None:
    """The link to the next page of a list, or None on its last page."""
    return None if cursor is None else f"{path}?{urlencode({name: str(cursor)})}"
