"""The conversation pages: a thread's messages with posting, editing, deleting and the edit
history, unread mentions, and search."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from aiohttp import BodyPartReader, web
from markupsafe import Markup

from app import files, work
from app.accounts import Forbidden
from app.markup import render
from app.web_forms import Form, query_id, query_text, route_id
from app.web_pages_spaces import file_view, store_upload
from app.web_pages_view import PAGE_SIZE, Notice, PageSite, Viewer, redirect, user_names


class ThreadPages:
    """/threads/{id}, /messages/{id}/..., /mentions and /search."""

    def __init__(self, site: PageSite) -> None:
        self.site = site

    def add_routes(self, router: web.UrlDispatcher) -> None:
        site = self.site
        router.add_get("/threads/{id}", site.page(self.thread))
        router.add_post("/threads/{id}/messages", site.action(self.post, self.thread))
        router.add_get("/messages/{id}/edit", site.page(self.edit_form))
        router.add_post("/messages/{id}/edit", site.action(self.save_edit, self.edit_form))
        router.add_post("/messages/{id}/delete", site.action(self.delete))
        router.add_get("/messages/{id}/history", site.page(self.history))
        router.add_get("/mentions", site.page(self.mentions))
        router.add_post("/mentions/read", site.action(self.mark_mentions))
        router.add_get("/search", site.page(self.search))

    # ------------------------------------------------------------ a thread

    async def _shown(
        self, viewer: Viewer, messages: list[work.Message], space: work.Space
    ) -> list[dict[str, Any]]:
        db, tenant_id, me = viewer.db, viewer.tenant_id, viewer.user.id
        handles = await work.tenant_handles(db, tenant_id)
        names = await user_names(db, tenant_id, (m.author_id for m in messages))
        attached = await files.files_for_messages(
            db, tenant_id, viewer.user, (m.id for m in messages)
        )
        shown = []
        for m in messages:
            live, mine = m.deleted_at is None, m.author_id == me
            shown.append({
                "message": m, "author": names[m.author_id], "html": Markup(render(m.body, handles)),
                "can_edit": live and mine and not space.archived,
                "can_delete": live and (mine or viewer.manager),
                "history": (mine or viewer.manager) and (not live or m.edited_at is not None),
                "files": [file_view(record) for record in attached.get(m.id, [])],
            })  # fmt: skip
        return shown

    async def thread(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        """Messages oldest to newest (the latest page, or older ones); marks the thread read."""
        request, db, tenant_id, user = viewer.request, viewer.db, viewer.tenant_id, viewer.user
        thread_id = route_id(request, "thread")
        thread = await work.get_thread(db, tenant_id, user, thread_id)
        space = await work.get_space(db, tenant_id, user, thread.space_id)
        before = query_id(request, "before")
        page = await work.list_messages(
            db, tenant_id, user, thread_id, limit=PAGE_SIZE, before_id=before
        )
        await work.mark_thread_read(db, tenant_id, user, thread_id)
        here = f"/threads/{thread_id}"
        context = {
            "thread": thread,
            "space": space,
            "messages": await self._shown(viewer, list(reversed(page.items)), space),
            "older": None if page.next_cursor is None else f"{here}?before={page.next_cursor}",
            "newer": here if before is not None else None,
            "error": notice.error,
            "values": notice.values,
        }
        return await self.site.render(request, viewer.tenant, "thread.html", context, viewer=viewer)

    async def post(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        """A new message, with the file of the same form attached: both or neither."""
        thread_id = route_id(viewer.request, "thread")
        if form.upload is None:
            message = await work.post_message(
                viewer.db, viewer.tenant_id, viewer.user, thread_id, form.text("body"),
                clock=self.site.clock,
            )  # fmt: skip
        else:
            message = await self._post_with_file(viewer, thread_id, form.text("body"), form.upload)
        return redirect(f"/threads/{thread_id}#m{message.id}")

    async def _post_with_file(
        self, viewer: Viewer, thread_id: int, body: str, upload: BodyPartReader
    ) -> work.Message:
        """Store the file, then post the message and attach the file in one transaction; a
        message that is not posted takes the stored file (row and bytes) with it."""
        db, tenant_id, user = viewer.db, viewer.tenant_id, viewer.user
        thread = await work.get_thread(db, tenant_id, user, thread_id)
        record = await store_upload(self.site, viewer, thread.space_id, upload)
        try:
            return await work.post_message(
                db, tenant_id, user, thread_id, body, clock=self.site.clock, file_id=record.id
            )
        except BaseException:
            root = self.site.settings.data_dir
            await asyncio.shield(files.discard_file(db, tenant_id, record.id, root=root))
            raise

    # ------------------------------------------------------------ one message

    async def edit_form(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        message_id = route_id(viewer.request, "message")  # a ``thread`` query is ignored
        message = await work.get_message(viewer.db, viewer.tenant_id, viewer.user, message_id)
        if message.author_id != viewer.user.id or message.deleted_at is not None:
            raise Forbidden("only the author may edit a message, and not once it is deleted")
        context = {
            "message": message,
            "body": notice.values.get("body", message.body),
            "error": notice.error,
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "edit.html", context, viewer=viewer
        )

    async def save_edit(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        message_id = route_id(viewer.request, "message")
        edited = await work.edit_message(
            viewer.db, viewer.tenant_id, viewer.user, message_id, form.text("body"),
            clock=self.site.clock,
        )  # fmt: skip
        return redirect(f"/threads/{edited.thread_id}#m{message_id}")

    async def delete(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        message_id = route_id(viewer.request, "message")
        deleted = await work.delete_message(
            viewer.db, viewer.tenant_id, viewer.user, message_id, clock=self.site.clock
        )
        return redirect(f"/threads/{deleted.thread_id}")

    async def history(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        """Earlier versions of a message, oldest first (its author and admins)."""
        db, tenant_id = viewer.db, viewer.tenant_id
        message_id = route_id(viewer.request, "message")
        edits = await work.message_history(db, tenant_id, viewer.user, message_id)
        handles = await work.tenant_handles(db, tenant_id)
        names = await user_names(db, tenant_id, (edit.edited_by for edit in edits))
        thread_id = query_id(viewer.request, "thread")
        context = {
            "message_id": message_id,
            "back": None if thread_id is None else f"/threads/{thread_id}#m{message_id}",
            "edits": [
                {"edit": e, "by": names[e.edited_by], "html": Markup(render(e.body, handles))}
                for e in edits
            ],
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "history.html", context, viewer=viewer
        )

    # ------------------------------------------------------------ mentions and search

    async def _found(self, viewer: Viewer, messages: Iterable[work.Message]) -> list[Any]:
        """Messages of many threads, with their authors and thread titles."""
        db, tenant_id, user = viewer.db, viewer.tenant_id, viewer.user
        shown = list(messages)
        handles = await work.tenant_handles(db, tenant_id) if shown else frozenset()
        names = await user_names(db, tenant_id, (m.author_id for m in shown))
        titles: dict[int, str] = {}
        for thread_id in {m.thread_id for m in shown}:
            titles[thread_id] = (await work.get_thread(db, tenant_id, user, thread_id)).title
        return [
            {
                "message": m,
                "author": names[m.author_id],
                "thread": titles[m.thread_id],
                "html": Markup(render(m.body, handles)),
            }
            for m in shown
        ]

    async def mentions(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        before = query_id(viewer.request, "before")
        page = await work.unread_mentions(
            viewer.db, viewer.tenant_id, viewer.user, limit=PAGE_SIZE, before_id=before
        )
        more = page.next_cursor
        context = {
            "found": await self._found(viewer, page.items),
            "more": None if more is None else f"/mentions?before={more}",
        }
        return await self.site.render(
            viewer.request, viewer.tenant, "mentions.html", context, viewer=viewer
        )

    async def mark_mentions(self, viewer: Viewer, form: Form) -> web.StreamResponse:
        await work.mark_mentions_read(
            viewer.db, viewer.tenant_id, viewer.user, None, clock=self.site.clock
        )
        return redirect("/mentions")

    async def search(self, viewer: Viewer, notice: Notice) -> web.StreamResponse:
        """Live messages with every word of ``q``, newest first; no ``q``: just the form."""
        request = viewer.request
        text = query_text(request, "q", work.MAX_SEARCH_TEXT).strip()
        found: list[Any] = []
        more = None
        if text:
            page = await work.search(
                viewer.db, viewer.tenant_id, viewer.user, text, limit=PAGE_SIZE,
                before_id=query_id(request, "before"),
            )  # fmt: skip
            found = await self._found(viewer, page.items)
            if page.next_cursor is not None:
                more = "/search?" + urlencode({"q": text, "before": page.next_cursor})
        context = {"q": text, "found": found, "more": more}
        return await self.site.render(request, viewer.tenant, "search.html", context, viewer=viewer)
