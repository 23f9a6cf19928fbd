"""Spaces, threads, messages, mentions, unread counts and search on real SQLite files and a real
PostgreSQL server: permissions, isolation between tenants, pagination abuse and stored XSS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from app import accounts, work
from app.accounts import AlreadyExists, Forbidden, NotFound, PolicyViolation, User
from app.db import Database
from app.ids import MAX_ID
from app.markup import render
from tests.app_support import (
    FakeClock,
    People,
    clock,
    db,
    db_url,
    new_people,
    pg_dsn,
    pg_server,
)

# Fixtures shared from tests.support_pg; pytest finds them as names of this module.
__all__ = ["clock", "db", "db_url", "pg_dsn", "pg_server"]  # fixtures, for pytest

START_S = 1_700_000_000.0
DAY_S = 86_400.0
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)> javascript:alert(1)'


Org = People


async def new_org(db: Database, clock: FakeClock, name: str) -> Org:
    return await new_people(db, clock, name)


@pytest.fixture
async def org(db: Database, clock: FakeClock) -> Org:
    return await new_org(db, clock, "acme")


async def space_names(db: Database, org: Org, who: User, **options: Any) -> list[str]:
    page = await work.list_spaces(db, org.tenant_id, who, **options)
    return [space.name for space in page.items]


async def bodies(db: Database, org: Org, who: User, thread_id: int, **options: Any) -> list[str]:
    page = await work.list_messages(db, org.tenant_id, who, thread_id, **options)
    return [message.body for message in page.items]


# ---------------------------------------------------------------- spaces


async def test_create_and_list_spaces_by_visibility(db: Database, org: Org) -> None:
    t = org.tenant_id
    general = await work.create_space(db, t, org.alice, " general ", description="all")
    assert (general.name, general.private, general.is_member) == ("general", False, True)
    await work.create_space(db, t, org.alice, "secret", private=True)
    await work.create_space(db, t, org.bob, "bobs", private=True)
    assert await space_names(db, org, org.alice) == ["general", "secret"]
    assert await space_names(db, org, org.bob) == ["general", "bobs"]
    assert await space_names(db, org, org.owner) == ["general"]  # admins do not see private
    assert await space_names(db, org, org.guest) == []
    with pytest.raises(AlreadyExists):
        await work.create_space(db, t, org.owner, "secret")
    with pytest.raises(Forbidden):
        await work.create_space(db, t, org.guest, "guests")
    for bad in ("", "   ", "x" * 81, "tab\there"):
        with pytest.raises(PolicyViolation):
            await work.create_space(db, t, org.alice, bad)
    with pytest.raises(PolicyViolation):
        await work.create_space(db, t, org.alice, "long", description="d" * 1001)


async def test_join_leave_and_members(db: Database, org: Org) -> None:
    t = org.tenant_id
    general = await work.create_space(db, t, org.alice, "general")
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    joined = await work.join_space(db, t, org.bob, general.id)
    assert joined.is_member
    assert (await work.join_space(db, t, org.bob, general.id)).is_member  # idempotent
    with pytest.raises(NotFound):
        await work.join_space(db, t, org.bob, secret.id)
    with pytest.raises(NotFound):  # a guest cannot see, so cannot join, a public space
        await work.join_space(db, t, org.guest, general.id)
    with pytest.raises(Forbidden):  # a member who is not the creator
        await work.add_member(db, t, org.bob, general.id, org.guest.id)
    await work.add_member(db, t, org.alice, secret.id, org.bob.id)  # the creator
    await work.add_member(db, t, org.admin, general.id, org.guest.id)  # an admin
    assert await space_names(db, org, org.bob) == ["general", "secret"]
    assert await space_names(db, org, org.guest) == ["general"]
    with pytest.raises(Forbidden):
        await work.remove_member(db, t, org.bob, secret.id, org.alice.id)
    with pytest.raises(NotFound):
        await work.add_member(db, t, org.alice, secret.id, 12345)
    await work.remove_member(db, t, org.owner, secret.id, org.bob.id)  # admin not a member
    assert await space_names(db, org, org.bob) == ["general"]
    await work.leave_space(db, t, org.alice, secret.id)
    assert await space_names(db, org, org.alice) == ["general"]
    with pytest.raises(NotFound):
        await work.get_space(db, t, org.alice, secret.id)
    await work.leave_space(db, t, org.guest, general.id)
    assert await space_names(db, org, org.guest) == []


async def test_archive_makes_a_space_read_only(db: Database, org: Org) -> None:
    t = org.tenant_id
    space = await work.create_space(db, t, org.alice, "old")
    thread = await work.create_thread(db, t, org.alice, space.id, "topic")
    message = await work.post_message(db, t, org.alice, thread.id, "hello")
    with pytest.raises(Forbidden):
        await work.archive_space(db, t, org.bob, space.id)
    assert (await work.archive_space(db, t, org.alice, space.id)).archived
    assert await space_names(db, org, org.bob) == []
    assert await space_names(db, org, org.bob, include_archived=True) == ["old"]
    with pytest.raises(Forbidden):
        await work.post_message(db, t, org.alice, thread.id, "more")
    with pytest.raises(Forbidden):
        await work.create_thread(db, t, org.alice, space.id, "another")
    with pytest.raises(Forbidden):
        await work.edit_message(db, t, org.alice, message.id, "changed")
    with pytest.raises(Forbidden):
        await work.join_space(db, t, org.bob, space.id)
    assert await bodies(db, org, org.bob, thread.id) == ["hello"]  # still readable


async def test_stale_or_foreign_actor_is_refused(db: Database, org: Org, clock: FakeClock) -> None:
    t = org.tenant_id
    space = await work.create_space(db, t, org.alice, "general")
    await accounts.deactivate(db, t, org.bob.id, org.owner.id, clock=clock)
    with pytest.raises(Forbidden):
        await work.list_spaces(db, t, org.bob)
    await accounts.set_role(db, t, org.alice.id, "guest", org.owner.id)
    with pytest.raises(Forbidden):  # the User passed in still says member
        await work.create_space(db, t, org.alice, "mine")
    assert await space_names(db, org, org.alice) == ["general"]  # a member of it
    await work.leave_space(db, t, org.alice, space.id)
    assert await space_names(db, org, org.alice) == []


# ---------------------------------------------------------------- threads and messages


async def test_threads_by_latest_activity(db: Database, org: Org, clock: FakeClock) -> None:
    t = org.tenant_id
    space = await work.create_space(db, t, org.alice, "general")
    threads = []
    for title in ("one", "two", "three"):
        threads.append(await work.create_thread(db, t, org.alice, space.id, title, clock=clock))
        clock.advance(1)
    await work.post_message(db, t, org.bob, threads[0].id, "bump", clock=clock)
    page = await work.list_threads(db, t, org.bob, space.id, limit=2)
    assert [th.title for th in page.items] == ["one", "three"]
    assert page.next_cursor is not None
    rest = await work.list_threads(db, t, org.bob, space.id, limit=2, cursor=page.next_cursor)
    assert ([th.title for th in rest.items], rest.next_cursor) == (["two"], None)
    assert (await work.get_thread(db, t, org.bob, threads[1].id)).title == "two"
    for bad in ("", " ", "x" * 201, "new\nline"):
        with pytest.raises(PolicyViolation):
            await work.create_thread(db, t, org.alice, space.id, bad)
    with pytest.raises(NotFound):
        await work.create_thread(db, t, org.guest, space.id, "guest")


async def test_post_edit_delete_and_history(db: Database, org: Org, clock: FakeClock) -> None:
    t = org.tenant_id
    space = await work.create_space(db, t, org.alice, "general")
    thread = await work.create_thread(db, t, org.alice, space.id, "topic")
    first = await work.post_message(db, t, org.alice, thread.id, "first", clock=clock)
    second = await work.post_message(db, t, org.bob, thread.id, "second\nline")
    for bad in ("", "  \n", "x" * 10_001):
        with pytest.raises(PolicyViolation):
            await work.post_message(db, t, org.bob, thread.id, bad)
    await work.post_message(db, t, org.bob, thread.id, "x" * 10_000)
    with pytest.raises(Forbidden):
        await work.edit_message(db, t, org.bob, first.id, "hijack")
    clock.advance(5)
    edited = await work.edit_message(db, t, org.alice, first.id, "first, fixed", clock=clock)
    assert (edited.body, edited.edited_at) == ("first, fixed", int(clock.now * 1000))
    with pytest.raises(Forbidden):
        await work.delete_message(db, t, org.bob, first.id)
    deleted = await work.delete_message(db, t, org.admin, first.id)
    assert (deleted.body, deleted.deleted_at is not None) == ("", True)
    await work.delete_message(db, t, org.bob, second.id)
    await work.delete_message(db, t, org.bob, second.id)  # idempotent
    assert await bodies(db, org, org.alice, thread.id, after_id=0) == ["", "", "x" * 10_000]
    with pytest.raises(Forbidden):
        await work.edit_message(db, t, org.alice, first.id, "back")
    history = await work.message_history(db, t, org.alice, first.id)
    assert [(e.body, e.edited_by) for e in history] == [
        ("first", org.alice.id),
        ("first, fixed", org.admin.id),
    ]
    assert len(await work.message_history(db, t, org.owner, first.id)) == 2
    with pytest.raises(Forbidden):
        await work.message_history(db, t, org.bob, first.id)


async def test_get_message_as_the_actor_may_see_it(db: Database, org: Org) -> None:
    t = org.tenant_id
    public = await work.create_space(db, t, org.alice, "general")
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    thread = await work.create_thread(db, t, org.alice, public.id, "topic")
    message = await work.post_message(db, t, org.alice, thread.id, "hello")
    assert await work.get_message(db, t, org.bob, message.id) == message
    deleted = await work.delete_message(db, t, org.alice, message.id)
    assert await work.get_message(db, t, org.bob, message.id) == deleted  # a placeholder
    hidden_thread = await work.create_thread(db, t, org.alice, secret.id, "secret topic")
    hidden = await work.post_message(db, t, org.alice, hidden_thread.id, "hidden words")
    assert (await work.get_message(db, t, org.alice, hidden.id)).body == "hidden words"
    for who, message_id in [
        (org.bob, hidden.id), (org.owner, hidden.id), (org.guest, hidden.id),
        (org.guest, message.id), (org.alice, 12345),
    ]:  # fmt: skip
        with pytest.raises(NotFound):
            await work.get_message(db, t, who, message_id)


async def test_guests_and_private_spaces(db: Database, org: Org) -> None:
    t = org.tenant_id
    public = await work.create_space(db, t, org.alice, "general")
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    pub_thread = await work.create_thread(db, t, org.alice, public.id, "public topic")
    sec_thread = await work.create_thread(db, t, org.alice, secret.id, "secret topic")
    sec_message = await work.post_message(db, t, org.alice, sec_thread.id, "hidden words")
    for who in (org.bob, org.guest, org.owner):
        with pytest.raises(NotFound):
            await work.list_messages(db, t, who, sec_thread.id)
        with pytest.raises(NotFound):
            await work.post_message(db, t, who, sec_thread.id, "let me in")
        with pytest.raises(NotFound):
            await work.list_threads(db, t, who, secret.id)
        with pytest.raises(NotFound):
            await work.delete_message(db, t, who, sec_message.id)
        with pytest.raises(NotFound):
            await work.thread_unread_counts(db, t, who, secret.id)
        with pytest.raises(NotFound):
            await work.mark_thread_read(db, t, who, sec_thread.id)
        assert (await work.search(db, t, who, "hidden")).items == []
    with pytest.raises(NotFound):
        await work.post_message(db, t, org.guest, pub_thread.id, "guest here")
    await work.add_member(db, t, org.alice, public.id, org.guest.id)
    await work.post_message(db, t, org.guest, pub_thread.id, "guest here")
    assert await bodies(db, org, org.guest, pub_thread.id) == ["guest here"]


# ---------------------------------------------------------------- mentions and unread counts


async def test_mentions_notify_only_those_who_may_see(db: Database, org: Org) -> None:
    t = org.tenant_id
    public = await work.create_space(db, t, org.owner, "general")
    secret = await work.create_space(db, t, org.owner, "secret", private=True)
    pub = await work.create_thread(db, t, org.owner, public.id, "topic")
    sec = await work.create_thread(db, t, org.owner, secret.id, "topic")
    one = await work.post_message(db, t, org.owner, pub.id, "@Alice @gus @bob. @the_boss @nobody")
    await work.post_message(db, t, org.owner, sec.id, "@alice in secret")
    two = await work.post_message(db, t, org.bob, pub.id, "cc @alice")
    alice = await work.unread_mentions(db, t, org.alice)
    assert [m.id for m in alice.items] == [two.id, one.id]
    assert [m.id for m in (await work.unread_mentions(db, t, org.bob)).items] == [one.id]
    assert (await work.unread_mentions(db, t, org.guest)).items == []  # not a member
    assert (await work.unread_mentions(db, t, org.owner)).items == []  # not of oneself
    page = await work.unread_mentions(db, t, org.alice, limit=1)
    assert (page.next_cursor, len(page.items)) == (two.id, 1)
    older = await work.unread_mentions(db, t, org.alice, before_id=page.next_cursor)
    assert [m.id for m in older.items] == [one.id]
    assert await work.mark_mentions_read(db, t, org.alice, [two.id]) == 1
    assert [m.id for m in (await work.unread_mentions(db, t, org.alice)).items] == [one.id]
    assert await work.mark_mentions_read(db, t, org.alice) == 1
    assert (await work.unread_mentions(db, t, org.alice)).items == []
    await work.edit_message(db, t, org.bob, two.id, "cc @admin")
    assert len((await work.unread_mentions(db, t, org.admin)).items) == 1
    await work.delete_message(db, t, org.bob, two.id)
    assert (await work.unread_mentions(db, t, org.admin)).items == []
    handles = await work.tenant_handles(db, t)
    assert {"alice", "the_boss", "gus"} <= handles
    with pytest.raises(PolicyViolation):
        await work.mark_mentions_read(db, t, org.alice, list(range(1, 200)))


async def test_unread_counts_and_mark_read(db: Database, org: Org) -> None:
    t = org.tenant_id
    space = await work.create_space(db, t, org.alice, "general")
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    await work.join_space(db, t, org.bob, space.id)
    one = await work.create_thread(db, t, org.alice, space.id, "one")
    two = await work.create_thread(db, t, org.alice, space.id, "two")
    hidden = await work.create_thread(db, t, org.alice, secret.id, "hidden")
    first = await work.post_message(db, t, org.alice, one.id, "a")
    await work.post_message(db, t, org.alice, one.id, "b")
    await work.post_message(db, t, org.alice, two.id, "c")
    await work.post_message(db, t, org.bob, two.id, "mine")
    await work.post_message(db, t, org.alice, hidden.id, "secret")
    assert await work.thread_unread_counts(db, t, org.bob, space.id) == {one.id: 2, two.id: 1}
    assert await work.space_unread_counts(db, t, org.bob) == {space.id: 3}
    assert await work.space_unread_counts(db, t, org.alice) == {space.id: 1}
    assert await work.mark_thread_read(db, t, org.bob, one.id, first.id) == first.id
    assert await work.thread_unread_counts(db, t, org.bob, space.id) == {one.id: 1, two.id: 1}
    await work.mark_thread_read(db, t, org.bob, one.id)
    await work.mark_thread_read(db, t, org.bob, one.id, first.id)  # never moves back
    assert await work.thread_unread_counts(db, t, org.bob, space.id) == {two.id: 1}
    with pytest.raises(NotFound):  # a message of another thread
        await work.mark_thread_read(db, t, org.bob, two.id, first.id)
    assert await work.space_unread_counts(db, t, org.owner) == {}  # not a member anywhere


# ---------------------------------------------------------------- search


async def test_search_sees_what_the_actor_may_see(db: Database, org: Org) -> None:
    t = org.tenant_id
    public = await work.create_space(db, t, org.alice, "general")
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    pub = await work.create_thread(db, t, org.alice, public.id, "topic")
    sec = await work.create_thread(db, t, org.alice, secret.id, "topic")
    ids = [(await work.post_message(db, t, org.alice, pub.id, f"apple {i}")).id for i in range(3)]
    gone = await work.post_message(db, t, org.alice, pub.id, "apple gone")
    await work.delete_message(db, t, org.alice, gone.id)
    in_secret = await work.post_message(db, t, org.alice, sec.id, "apple secret")
    found = await work.search(db, t, org.alice, "APPLE")
    assert [m.id for m in found.items] == [in_secret.id, *reversed(ids)]
    assert [m.id for m in (await work.search(db, t, org.bob, "apple")).items] == ids[::-1]
    assert (await work.search(db, t, org.guest, "apple")).items == []
    page = await work.search(db, t, org.bob, "apple", 2)
    assert (len(page.items), page.next_cursor) == (2, ids[1])
    rest = await work.search(db, t, org.bob, "apple", 2, page.next_cursor)
    assert ([m.id for m in rest.items], rest.next_cursor) == ([ids[0]], None)
    assert (await work.search(db, t, org.bob, "  ?! ")).items == []
    with pytest.raises(PolicyViolation):
        await work.search(db, t, org.bob, "x" * 501)


# ---------------------------------------------------------------- pagination abuse


async def test_pagination_abuse(db: Database, org: Org) -> None:
    t = org.tenant_id
    space = await work.create_space(db, t, org.alice, "general")
    thread = await work.create_thread(db, t, org.alice, space.id, "topic")
    for i in range(105):
        await work.post_message(db, t, org.alice, thread.id, f"m{i}")
    calls: list[Callable[..., Awaitable[object]]] = [
        lambda **kw: work.list_spaces(db, t, org.alice, **kw),
        lambda **kw: work.list_messages(db, t, org.alice, thread.id, **kw),
        lambda **kw: work.unread_mentions(db, t, org.alice, **kw),
        lambda **kw: work.search(db, t, org.alice, "m1", **kw),
    ]
    for call in calls:
        for limit in (0, -1, True, 2.5, "10"):
            with pytest.raises(PolicyViolation):
                await call(limit=limit)
        for cursor in (-1, MAX_ID + 1, 10**30, "abc", 1.5, False):
            with pytest.raises(PolicyViolation):
                await call(before_id=cursor)
    huge = await work.list_messages(db, t, org.alice, thread.id, limit=10**9)
    assert (len(huge.items), huge.items[0].body) == (100, "m104")
    assert huge.next_cursor == huge.items[-1].id
    assert len((await work.list_messages(db, t, org.alice, thread.id, after_id=0)).items) == 50
    assert (await work.list_messages(db, t, org.alice, thread.id, before_id=0)).items == []
    for cursor in ("", "abc", "1:", ":1", "1:2:3", "-1:5", f"{MAX_ID + 1}:1", "9" * 40 + ":1"):
        with pytest.raises(PolicyViolation):
            await work.list_threads(db, t, org.alice, space.id, cursor=cursor)
    with pytest.raises(PolicyViolation):
        await work.list_threads(db, t, org.alice, space.id, limit=0)
    with pytest.raises(PolicyViolation):
        await work.mark_thread_read(db, t, org.alice, thread.id, -5)


# ---------------------------------------------------------------- tenant isolation


@dataclass
class Content:
    space: work.Space
    secret: work.Space
    thread: work.Thread
    message: work.Message


async def _fill(db: Database, org: Org, word: str) -> Content:
    t = org.tenant_id
    space = await work.create_space(db, t, org.alice, "general")
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    thread = await work.create_thread(db, t, org.alice, space.id, "topic")
    message = await work.post_message(db, t, org.alice, thread.id, f"{word} hello @bob")
    await work.join_space(db, t, org.bob, space.id)
    return Content(space, secret, thread, message)


async def test_tenants_are_isolated(db: Database, org: Org, clock: FakeClock) -> None:
    other = await new_org(db, clock, "globex")  # same e-mails and space names
    mine, theirs = await _fill(db, org, "acmeword"), await _fill(db, other, "globexword")
    t, a, b = org.tenant_id, org.alice, other.alice
    cross: list[Callable[[], Awaitable[object]]] = [
        lambda: work.get_space(db, t, a, theirs.space.id),
        lambda: work.join_space(db, t, a, theirs.space.id),
        lambda: work.leave_space(db, t, a, theirs.space.id),
        lambda: work.add_member(db, t, org.owner, theirs.secret.id, a.id),
        lambda: work.add_member(db, t, org.owner, mine.secret.id, b.id),
        lambda: work.remove_member(db, t, org.owner, theirs.space.id, b.id),
        lambda: work.archive_space(db, t, org.owner, theirs.space.id),
        lambda: work.create_thread(db, t, a, theirs.space.id, "in"),
        lambda: work.list_threads(db, t, a, theirs.space.id),
        lambda: work.get_thread(db, t, a, theirs.thread.id),
        lambda: work.post_message(db, t, a, theirs.thread.id, "in"),
        lambda: work.list_messages(db, t, a, theirs.thread.id),
        lambda: work.edit_message(db, t, a, theirs.message.id, "changed"),
        lambda: work.delete_message(db, t, org.owner, theirs.message.id),
        lambda: work.message_history(db, t, org.owner, theirs.message.id),
        lambda: work.get_message(db, t, org.owner, theirs.message.id),
        lambda: work.mark_thread_read(db, t, a, theirs.thread.id),
        lambda: work.mark_thread_read(db, t, a, mine.thread.id, theirs.message.id),
        lambda: work.thread_unread_counts(db, t, a, theirs.space.id),
    ]
    for call in cross:
        with pytest.raises(NotFound):
            await call()
    with pytest.raises(Forbidden):  # a user of B acting under A's id
        await work.list_spaces(db, t, b)
    with pytest.raises(Forbidden):
        await work.post_message(db, t, b, mine.thread.id, "in")
    assert (await work.search(db, t, org.owner, "globexword")).items == []
    assert (await work.search(db, t, a, "hello")).items == [mine.message]
    assert await work.mark_mentions_read(db, t, a, [theirs.message.id]) == 0
    assert await work.space_unread_counts(db, t, org.bob) == {mine.space.id: 1}
    assert [m.id for m in (await work.unread_mentions(db, t, org.bob)).items] == [mine.message.id]
    # B is untouched.
    tb = other.tenant_id
    assert await space_names(db, other, b) == ["general", "secret"]
    assert await bodies(db, other, b, theirs.thread.id) == ["globexword hello @bob"]
    assert [m.id for m in (await work.unread_mentions(db, tb, other.bob)).items] == [
        theirs.message.id
    ]
    assert await work.space_unread_counts(db, tb, other.bob) == {theirs.space.id: 1}
    assert not (await work.get_space(db, tb, b, theirs.space.id)).archived


# ---------------------------------------------------------------- stored XSS


async def test_hostile_text_is_stored_verbatim_and_rendered_escaped(db: Database, org: Org) -> None:
    t = org.tenant_id
    space = await work.create_space(db, t, org.alice, XSS[:80])
    thread = await work.create_thread(db, t, org.alice, space.id, XSS)
    message = await work.post_message(db, t, org.alice, thread.id, XSS + " @bob")
    assert (await work.get_space(db, t, org.bob, space.id)).name == XSS[:80]
    assert (await work.get_thread(db, t, org.bob, thread.id)).title == XSS
    [stored] = (await work.list_messages(db, t, org.bob, thread.id)).items
    assert stored.body == message.body == XSS + " @bob"
    html = render(stored.body, await work.tenant_handles(db, t))
    assert "<script" not in html and "<img" not in html and "href" not in html
    assert html.endswith('<span class="mention">@bob</span>')
