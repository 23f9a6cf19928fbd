"""Accounts on real SQLite files and a real PostgreSQL server: tenants and their setup link,
invitations, sign-in, sessions, API tokens, roles, and isolation between tenants."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import argon2
import pytest
from argon2 import PasswordHasher

from app import accounts
from app.accounts import (
    AccountError,
    AlreadyExists,
    Forbidden,
    InvalidCredentials,
    InvitationExpired,
    InvitationUsed,
    NotFound,
    PolicyViolation,
    Tenant,
    User,
)
from app.db import Database
from app.ids import new_id
from tests.app_support import FAST, FakeClock, clock, db, db_url, pg_dsn, pg_server

# Fixtures shared from tests.support_pg; pytest finds them as names of this module.
__all__ = ["clock", "db", "db_url", "pg_dsn", "pg_server"]  # fixtures, for pytest

START_S = 1_700_000_000.0
HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
PASSWORD = "owner password 1"
MEMBER_PASSWORD = "member password 1"
# Cheap argon2 parameters: the production ones cost a tenth of a second per sign-in.


class CountingHasher(PasswordHasher):
    """A cheap real hasher that counts verifications (the costly step of a sign-in)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


@dataclass
class Org:
    tenant: Tenant
    owner: User


async def new_org(
    db: Database, clock: FakeClock, name: str = "acme", email: str = "Boss@Example.com"
) -> Org:
    """A tenant whose owner has accepted the setup link with PASSWORD."""
    tenant, setup = await accounts.create_tenant(db, name, name.title(), email, clock)
    owner = await accounts.accept_invitation(
        db, tenant.id, setup, "The Boss", PASSWORD, clock=clock, hasher=FAST
    )
    return Org(tenant, owner)


async def add_member(
    db: Database, org: Org, email: str, role: str = "member", clock: FakeClock | None = None
) -> User:
    token = await accounts.invite(db, org.tenant.id, email, role, org.owner.id, DAY_S, clock=clock)
    return await accounts.accept_invitation(
        db, org.tenant.id, token, email.partition("@")[0], MEMBER_PASSWORD, clock=clock, hasher=FAST
    )


async def user_count(db: Database, tenant_id: int) -> int:
    return len((await accounts.list_users(db, tenant_id, limit=100)).users)


# ---------------------------------------------------------------- the whole flow


async def test_tenant_setup_sign_in_session_and_sign_out(db: Database, clock: FakeClock) -> None:
    tenant, setup = await accounts.create_tenant(db, "acme", "Acme Inc.", "Boss@Example.com", clock)
    assert await accounts.tenant_by_name(db, "acme") == tenant
    assert await accounts.tenant_by_name(db, "globex") is None
    [pending] = (await accounts.list_users(db, tenant.id)).users
    assert (pending.role, pending.email, pending.password_set) == (
        "owner",
        "boss@example.com",
        False,
    )
    with pytest.raises(InvalidCredentials):  # no password yet
        await accounts.authenticate(db, tenant.id, "boss@example.com", PASSWORD, hasher=FAST)

    clock.advance(71 * HOUR_S)
    owner = await accounts.accept_invitation(
        db, tenant.id, setup, "  The Boss ", PASSWORD, clock=clock, hasher=FAST
    )
    assert (owner.id, owner.role, owner.display_name) == (pending.id, "owner", "The Boss")
    assert owner.active and owner.password_set
    with pytest.raises(InvitationUsed):
        await accounts.accept_invitation(
            db, tenant.id, setup, "Someone", "another password", clock=clock, hasher=FAST
        )

    signed_in = await accounts.authenticate(
        db, tenant.id, " BOSS@example.COM ", PASSWORD, hasher=FAST
    )
    assert signed_in == owner
    token = await accounts.create_session(
        db, tenant.id, owner.id, "Firefox", "192.0.2.1", DAY_S, clock
    )
    assert await accounts.session_user(db, tenant.id, token, HOUR_S, clock) == owner
    [listed] = await accounts.list_sessions(db, tenant.id, owner.id, clock=clock)
    assert (listed.user_agent, listed.ip, listed.user_id) == ("Firefox", "192.0.2.1", owner.id)
    assert token not in repr(listed)

    assert await accounts.revoke_session(db, tenant.id, token, clock=clock)
    assert await accounts.session_user(db, tenant.id, token, HOUR_S, clock) is None
    assert not await accounts.revoke_session(db, tenant.id, token, clock=clock)
    assert await accounts.list_sessions(db, tenant.id, owner.id, clock=clock) == []


async def test_tokens_and_hashes_are_all_that_is_stored(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    session = await accounts.create_session(db, org.tenant.id, org.owner.id, "", "", DAY_S, clock)
    api = await accounts.create_api_token(db, org.tenant.id, org.owner.id, "ci", ["read"], None)
    invitation = await accounts.invite(
        db, org.tenant.id, "x@example.com", "member", org.owner.id, 60
    )
    stored = [
        str(row)
        for table in ("users", "sessions", "api_tokens", "invitations")
        for row in await db.fetch(f"SELECT * FROM {table} WHERE tenant_id = ?", org.tenant.id)
    ]
    for secret in (session, api, invitation, PASSWORD):
        assert not any(secret in text for text in stored)


async def test_create_tenant_refuses_bad_and_taken_names(db: Database, clock: FakeClock) -> None:
    await accounts.create_tenant(db, "acme", "Acme", "a@example.com", clock)
    with pytest.raises(AlreadyExists):
        await accounts.create_tenant(db, "acme", "Other", "b@example.com", clock)
    for bad in ("Acme", "-acme", "ac me", "a" * 64, ""):
        with pytest.raises(PolicyViolation):
            await accounts.create_tenant(db, bad, "Bad", "c@example.com", clock)
    with pytest.raises(PolicyViolation):
        await accounts.create_tenant(db, "globex", "Globex", "not-an-address", clock)
    assert await accounts.tenant_by_name(db, "globex") is None


# ---------------------------------------------------------------- invitations


async def test_setup_link_expires_after_72_hours(db: Database, clock: FakeClock) -> None:
    tenant, setup = await accounts.create_tenant(db, "acme", "Acme", "boss@example.com", clock)
    clock.advance(72 * HOUR_S)
    with pytest.raises(InvitationExpired):
        await accounts.accept_invitation(db, tenant.id, setup, "Boss", PASSWORD, clock=clock)
    [owner] = (await accounts.list_users(db, tenant.id)).users
    assert not owner.password_set  # nothing changed


async def test_invitation_expires_and_changes_nothing(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    token = await accounts.invite(
        db, org.tenant.id, "late@example.com", "member", org.owner.id, HOUR_S, clock=clock
    )
    clock.advance(HOUR_S + 1)
    with pytest.raises(InvitationExpired) as expired:
        await accounts.accept_invitation(
            db, org.tenant.id, token, "Late", MEMBER_PASSWORD, clock=clock, hasher=FAST
        )
    assert MEMBER_PASSWORD not in str(expired.value)
    assert await user_count(db, org.tenant.id) == 1
    clock.advance(-2)  # back inside the window: the failed attempt did not use it up
    member = await accounts.accept_invitation(
        db, org.tenant.id, token, "Late", MEMBER_PASSWORD, clock=clock, hasher=FAST
    )
    assert (member.email, member.role) == ("late@example.com", "member")


async def test_invitation_works_once(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    token = await accounts.invite(
        db, org.tenant.id, "new@example.com", "admin", org.owner.id, HOUR_S, clock=clock
    )
    admin = await accounts.accept_invitation(
        db, org.tenant.id, token, "New", MEMBER_PASSWORD, clock=clock, hasher=FAST
    )
    assert admin.role == "admin"
    with pytest.raises(InvitationUsed):
        await accounts.accept_invitation(
            db, org.tenant.id, token, "Again", "another password", clock=clock, hasher=FAST
        )
    clock.advance(2 * HOUR_S)  # used beats expired: the more useful answer
    with pytest.raises(InvitationUsed):
        await accounts.accept_invitation(
            db, org.tenant.id, token, "Again", "another password", clock=clock, hasher=FAST
        )
    signed_in = await accounts.authenticate(
        db, org.tenant.id, "new@example.com", MEMBER_PASSWORD, hasher=FAST
    )
    assert signed_in == admin


@pytest.mark.parametrize("token", ["", "x" * 43, "../../../etc/passwd", "a" * 5000, "🔑"])
async def test_unknown_invitation_is_not_found(db: Database, clock: FakeClock, token: str) -> None:
    org = await new_org(db, clock)
    with pytest.raises(NotFound):
        await accounts.accept_invitation(
            db, org.tenant.id, token, "Who", MEMBER_PASSWORD, clock=clock, hasher=FAST
        )


async def test_accept_checks_name_and_password_first(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    token = await accounts.invite(
        db, org.tenant.id, "m@example.com", "member", org.owner.id, HOUR_S, clock=clock
    )
    for name, password in [("Ok", "short"), ("", MEMBER_PASSWORD), ("Ok", " " * 20)]:
        with pytest.raises(PolicyViolation) as refused:
            await accounts.accept_invitation(
                db, org.tenant.id, token, name, password, clock=clock, hasher=FAST
            )
        assert password.strip() == "" or password not in str(refused.value)
    await accounts.accept_invitation(
        db, org.tenant.id, token, "Ok", MEMBER_PASSWORD, clock=clock, hasher=FAST
    )


async def test_who_may_invite_whom(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid = org.tenant.id
    member = await add_member(db, org, "member@example.com", clock=clock)
    admin = await add_member(db, org, "admin@example.com", "admin", clock=clock)
    with pytest.raises(Forbidden):
        await accounts.invite(db, tid, "x@example.com", "member", member.id, HOUR_S)
    with pytest.raises(Forbidden):
        await accounts.invite(db, tid, "x@example.com", "owner", admin.id, HOUR_S)
    await accounts.invite(db, tid, "x@example.com", "guest", admin.id, HOUR_S)
    await accounts.invite(db, tid, "y@example.com", "owner", org.owner.id, HOUR_S)
    with pytest.raises(AlreadyExists):
        await accounts.invite(db, tid, "MEMBER@example.com", "member", admin.id, HOUR_S)
    with pytest.raises(PolicyViolation):
        await accounts.invite(db, tid, "z@example.com", "superuser", admin.id, HOUR_S)
    with pytest.raises(PolicyViolation):
        await accounts.invite(db, tid, "no at sign", "member", admin.id, HOUR_S)
    await accounts.deactivate(db, tid, admin.id, org.owner.id, clock=clock)
    with pytest.raises(Forbidden):  # an inactive admin invites no one
        await accounts.invite(db, tid, "w@example.com", "member", admin.id, HOUR_S)


async def test_two_invitations_for_one_address_make_one_account(
    db: Database, clock: FakeClock
) -> None:
    org = await new_org(db, clock)
    args = (db, org.tenant.id, "twice@example.com", "member", org.owner.id, HOUR_S)
    first, second = await accounts.invite(*args), await accounts.invite(*args)
    await accounts.accept_invitation(db, org.tenant.id, first, "One", MEMBER_PASSWORD, hasher=FAST)
    with pytest.raises(AlreadyExists):
        await accounts.accept_invitation(
            db, org.tenant.id, second, "Two", "another password", hasher=FAST
        )
    assert await user_count(db, org.tenant.id) == 2


# ---------------------------------------------------------------- sign-in


async def test_every_failed_sign_in_is_the_same_answer_and_cost(
    db: Database, clock: FakeClock
) -> None:
    org = await new_org(db, clock)
    tid = org.tenant.id
    gone = await add_member(db, org, "gone@example.com", clock=clock)
    await accounts.deactivate(db, tid, gone.id, org.owner.id, clock=clock)
    await accounts.create_tenant(db, "globex", "Globex", "pending@example.com", clock)
    await accounts.invite(db, tid, "invited@example.com", "member", org.owner.id, HOUR_S)
    attempts = [
        ("boss@example.com", "wrong password 1"),  # wrong password
        ("nobody@example.com", PASSWORD),  # unknown user
        ("gone@example.com", MEMBER_PASSWORD),  # inactive user, right password
        ("invited@example.com", MEMBER_PASSWORD),  # invited, not joined
        ("pending@example.com", PASSWORD),  # an address of another tenant
        ("", ""),
    ]
    messages = set()
    for email, password in attempts:
        hasher = CountingHasher()
        with pytest.raises(InvalidCredentials) as refused:
            await accounts.authenticate(db, tid, email, password, hasher=hasher)
        assert hasher.verifications == 1, email  # one argon2 verification on every path
        messages.add(str(refused.value))
        assert password not in str(refused.value) or not password
        assert email not in str(refused.value) or not email
    assert messages == {"wrong e-mail address or password"}


async def test_overlong_password_is_refused_without_hashing(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    hasher = CountingHasher()
    with pytest.raises(InvalidCredentials):
        await accounts.authenticate(
            db, org.tenant.id, "boss@example.com", "x" * 5000, hasher=hasher
        )
    assert hasher.verifications == 0


async def test_sign_in_rehashes_when_parameters_change(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid, sql = org.tenant.id, "SELECT password_hash FROM users WHERE tenant_id = ? AND id = ?"
    before = await db.fetchval(sql, tid, org.owner.id)
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    await accounts.authenticate(db, tid, "boss@example.com", PASSWORD, hasher=stronger)
    after = await db.fetchval(sql, tid, org.owner.id)
    assert after != before
    assert argon2.extract_parameters(after).time_cost == 2
    await accounts.authenticate(db, tid, "boss@example.com", PASSWORD, hasher=stronger)
    assert await db.fetchval(sql, tid, org.owner.id) == after  # current: left alone
    with pytest.raises(InvalidCredentials):
        await accounts.authenticate(db, tid, "boss@example.com", "wrong password!", hasher=stronger)


# ---------------------------------------------------------------- sessions


async def test_session_lifetime_and_idle_timeout(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid, uid = org.tenant.id, org.owner.id
    token = await accounts.create_session(db, tid, uid, "ua", "ip", 2 * HOUR_S, clock)
    for _ in range(11):  # active every 10 minutes: never idle for 15
        clock.advance(600)
        assert await accounts.session_user(db, tid, token, 900, clock) is not None
    clock.advance(600)  # 2 h since sign-in: the lifetime is over, however active
    assert await accounts.session_user(db, tid, token, 900, clock) is None

    idle = await accounts.create_session(db, tid, uid, "ua", "ip", 2 * HOUR_S, clock)
    clock.advance(901)
    assert await accounts.session_user(db, tid, idle, 900, clock) is None


async def test_last_seen_moves_at_most_once_a_minute(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid, uid = org.tenant.id, org.owner.id
    token = await accounts.create_session(db, tid, uid, "ua", "ip", DAY_S, clock)
    created_ms = int(clock.now * 1000)

    async def last_seen() -> int:
        [session] = await accounts.list_sessions(db, tid, uid, clock=clock)
        return session.last_seen_at

    clock.advance(59)
    await accounts.session_user(db, tid, token, HOUR_S, clock)
    assert await last_seen() == created_ms
    clock.advance(1)
    await accounts.session_user(db, tid, token, HOUR_S, clock)
    assert await last_seen() == created_ms + 60_000


async def test_revoke_sessions_by_id_and_all(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid, uid = org.tenant.id, org.owner.id
    member = await add_member(db, org, "m@example.com", clock=clock)
    mine = [await accounts.create_session(db, tid, uid, f"ua{i}", "", DAY_S, clock) for i in "123"]
    theirs = await accounts.create_session(db, tid, member.id, "", "", DAY_S, clock)
    newest = (await accounts.list_sessions(db, tid, uid, clock=clock))[0]
    assert newest.user_agent == "ua3"
    assert not await accounts.revoke_session_by_id(db, tid, member.id, newest.id, clock=clock)
    assert await accounts.revoke_session_by_id(db, tid, uid, newest.id, clock=clock)
    assert await accounts.session_user(db, tid, mine[2], HOUR_S, clock) is None
    assert await accounts.revoke_all_sessions(db, tid, uid, clock=clock) == 2
    for token in mine:
        assert await accounts.session_user(db, tid, token, HOUR_S, clock) is None
    assert await accounts.session_user(db, tid, theirs, HOUR_S, clock) == member


async def test_sessions_only_for_active_users_of_the_tenant(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    with pytest.raises(NotFound):
        await accounts.create_session(db, org.tenant.id, new_id(), "", "", HOUR_S, clock)
    with pytest.raises(ValueError, match="lifetime_s"):
        await accounts.create_session(db, org.tenant.id, org.owner.id, "", "", 0, clock)
    long_agent = await accounts.create_session(
        db, org.tenant.id, org.owner.id, "u" * 5000, "i" * 500, HOUR_S, clock
    )
    assert await accounts.session_user(db, org.tenant.id, long_agent, HOUR_S, clock) == org.owner
    [listed] = await accounts.list_sessions(db, org.tenant.id, org.owner.id, clock=clock)
    assert (len(listed.user_agent), len(listed.ip)) == (512, 64)


# ---------------------------------------------------------------- users and roles


async def test_deactivate_revokes_everything_and_needs_a_manager(
    db: Database, clock: FakeClock
) -> None:
    org = await new_org(db, clock)
    tid = org.tenant.id
    member = await add_member(db, org, "m@example.com", clock=clock)
    other = await add_member(db, org, "o@example.com", clock=clock)
    session = await accounts.create_session(db, tid, member.id, "", "", DAY_S, clock)
    api = await accounts.create_api_token(db, tid, member.id, "bot", ["read"], None, clock=clock)
    with pytest.raises(Forbidden):
        await accounts.deactivate(db, tid, member.id, other.id, clock=clock)
    assert await accounts.session_user(db, tid, session, HOUR_S, clock) == member

    gone = await accounts.deactivate(db, tid, member.id, org.owner.id, clock=clock)
    assert not gone.active
    assert await accounts.deactivate(db, tid, member.id, org.owner.id, clock=clock) == gone
    assert await accounts.session_user(db, tid, session, HOUR_S, clock) is None
    assert await accounts.token_user(db, tid, api, clock) is None
    assert await accounts.list_sessions(db, tid, member.id, clock=clock) == []
    assert await accounts.list_api_tokens(db, tid, member.id) == []
    with pytest.raises(InvalidCredentials):
        await accounts.authenticate(db, tid, "m@example.com", MEMBER_PASSWORD, hasher=FAST)
    with pytest.raises(NotFound):
        await accounts.create_session(db, tid, member.id, "", "", HOUR_S, clock)
    with pytest.raises(NotFound):
        await accounts.deactivate(db, tid, new_id(), org.owner.id, clock=clock)


async def test_last_owner_is_protected(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid, first = org.tenant.id, org.owner
    admin = await add_member(db, org, "admin@example.com", "admin", clock=clock)
    with pytest.raises(Forbidden, match="last owner"):
        await accounts.deactivate(db, tid, first.id, first.id, clock=clock)
    with pytest.raises(Forbidden, match="needs an owner"):
        await accounts.set_role(db, tid, first.id, "admin", first.id)
    with pytest.raises(Forbidden):  # an admin touches no owner
        await accounts.deactivate(db, tid, first.id, admin.id, clock=clock)
    with pytest.raises(Forbidden):
        await accounts.set_role(db, tid, admin.id, "owner", admin.id)

    second = await accounts.set_role(db, tid, admin.id, "owner", first.id)
    assert second.role == "owner"
    assert not (await accounts.deactivate(db, tid, first.id, second.id, clock=clock)).active
    with pytest.raises(Forbidden, match="last owner"):  # the deactivated one does not count
        await accounts.deactivate(db, tid, second.id, second.id, clock=clock)
    with pytest.raises(Forbidden, match="needs an owner"):
        await accounts.set_role(db, tid, second.id, "member", second.id)


async def test_set_role_rules(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid = org.tenant.id
    member = await add_member(db, org, "m@example.com", clock=clock)
    admin = await add_member(db, org, "a@example.com", "admin", clock=clock)
    with pytest.raises(Forbidden):
        await accounts.set_role(db, tid, member.id, "admin", member.id)
    assert (await accounts.set_role(db, tid, member.id, "guest", admin.id)).role == "guest"
    with pytest.raises(PolicyViolation):
        await accounts.set_role(db, tid, member.id, "root", admin.id)
    with pytest.raises(NotFound):
        await accounts.set_role(db, tid, new_id(), "member", admin.id)


async def test_update_profile(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid = org.tenant.id
    member = await add_member(db, org, "m@example.com", clock=clock)
    other = await add_member(db, org, "o@example.com", clock=clock)
    renamed = await accounts.update_profile(db, tid, member.id, member.id, display_name=" Mia ")
    assert renamed.display_name == "Mia"
    with pytest.raises(Forbidden):
        await accounts.update_profile(db, tid, member.id, other.id, display_name="Hacked")
    by_owner = await accounts.update_profile(db, tid, member.id, org.owner.id, display_name="M")
    assert by_owner.display_name == "M"
    for bad in ("", "   ", "x" * 101, "line\nbreak"):
        with pytest.raises(PolicyViolation):
            await accounts.update_profile(db, tid, member.id, member.id, display_name=bad)


async def test_list_users_pages_with_a_cursor_and_a_cap(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid = org.tenant.id
    async with db.transaction() as tx:
        for i in range(129):
            await tx.execute(
                "INSERT INTO users (id, tenant_id, email, display_name, role, created_at)"
                " VALUES (?, ?, ?, ?, 'member', ?)",
                *(new_id(), tid, f"user{i}@example.com", f"User {i}", int(clock.now * 1000)),
            )
    capped = await accounts.list_users(db, tid, limit=1000)
    assert len(capped.users) == 100
    assert capped.next_after_id == capped.users[-1].id

    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        page = await accounts.list_users(db, tid, limit=7, after_id=cursor)
        seen += [user.id for user in page.users]
        pages += 1
        cursor = page.next_after_id
        if cursor is None:
            break
    assert pages == 19  # 130 users, 7 a page
    assert seen == sorted(seen) and len(set(seen)) == 130
    assert seen[0] == org.owner.id
    assert len((await accounts.list_users(db, tid, limit=0)).users) == 1
    assert (await accounts.list_users(db, tid, limit=5, after_id=seen[-1])).users == []


# ---------------------------------------------------------------- API tokens


async def test_api_token_scopes_expiry_and_listing(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid, uid = org.tenant.id, org.owner.id
    forever = await accounts.create_api_token(
        db, tid, uid, "deploy", ["spaces:read", "read", "read"], None, clock=clock
    )
    hourly = await accounts.create_api_token(db, tid, uid, "ci", ["write"], HOUR_S, clock=clock)
    assert await accounts.token_user(db, tid, forever, clock) == (
        org.owner,
        frozenset({"read", "spaces:read"}),
    )
    clock.advance(HOUR_S)
    assert await accounts.token_user(db, tid, hourly, clock) is None
    clock.advance(365 * DAY_S)
    assert await accounts.token_user(db, tid, forever, clock) is not None

    listed = await accounts.list_api_tokens(db, tid, uid)
    assert [(t.name, t.scopes) for t in listed] == [
        ("ci", frozenset({"write"})),
        ("deploy", frozenset({"read", "spaces:read"})),
    ]
    assert listed[1].expires_at is None
    assert listed[1].last_used_at == int(clock.now * 1000)
    assert listed[0].expires_at == listed[0].created_at + 3_600_000
    assert not any(forever in repr(t) or hourly in repr(t) for t in listed)


async def test_api_token_revocation(db: Database, clock: FakeClock) -> None:
    org = await new_org(db, clock)
    tid = org.tenant.id
    member = await add_member(db, org, "m@example.com", clock=clock)
    other = await add_member(db, org, "o@example.com", clock=clock)
    token = await accounts.create_api_token(db, tid, member.id, "bot", [], None, clock=clock)
    [info] = await accounts.list_api_tokens(db, tid, member.id)
    with pytest.raises(Forbidden):
        await accounts.revoke_api_token(db, tid, info.id, other.id, clock=clock)
    assert await accounts.token_user(db, tid, token, clock) == (member, frozenset())
    assert await accounts.revoke_api_token(db, tid, info.id, member.id, clock=clock)
    assert await accounts.token_user(db, tid, token, clock) is None
    assert not await accounts.revoke_api_token(db, tid, info.id, org.owner.id, clock=clock)
    assert await accounts.list_api_tokens(db, tid, member.id) == []
    with pytest.raises(NotFound):
        await accounts.revoke_api_token(db, tid, new_id(), org.owner.id, clock=clock)


@pytest.mark.parametrize(
    ("name", "scopes"),
    [("", ["read"]), ("x" * 101, ["read"]), ("ok", ["Read"]), ("ok", ["read write"]), ("ok", [""])],
)
async def test_api_token_input_rules(
    db: Database, clock: FakeClock, name: str, scopes: list[str]
) -> None:
    org = await new_org(db, clock)
    with pytest.raises(PolicyViolation):
        await accounts.create_api_token(db, org.tenant.id, org.owner.id, name, scopes, None)
    assert await accounts.list_api_tokens(db, org.tenant.id, org.owner.id) == []


# ---------------------------------------------------------------- tenant isolation


async def test_nothing_of_one_tenant_works_in_another(db: Database, clock: FakeClock) -> None:
    a = await new_org(db, clock, "acme", "boss@example.com")
    b = await new_org(db, clock, "globex", "boss@example.com")
    a_member = await add_member(db, a, "same@example.com", clock=clock)
    b_member = await add_member(db, b, "same@example.com", clock=clock)
    assert a_member.email == b_member.email and a_member.id != b_member.id
    a_session = await accounts.create_session(db, a.tenant.id, a_member.id, "", "", DAY_S, clock)
    a_api = await accounts.create_api_token(db, a.tenant.id, a_member.id, "t", ["read"], None)
    a_invite = await accounts.invite(
        db, a.tenant.id, "new@example.com", "admin", a.owner.id, DAY_S, clock=clock
    )
    b_id = b.tenant.id

    assert await accounts.session_user(db, b_id, a_session, HOUR_S, clock) is None
    assert await accounts.token_user(db, b_id, a_api, clock) is None
    with pytest.raises(NotFound):
        await accounts.accept_invitation(
            db, b_id, a_invite, "New", MEMBER_PASSWORD, clock=clock, hasher=FAST
        )
    assert not await accounts.revoke_session(db, b_id, a_session, clock=clock)
    assert await accounts.revoke_all_sessions(db, b_id, a_member.id, clock=clock) == 0
    [a_token_info] = await accounts.list_api_tokens(db, a.tenant.id, a_member.id)
    with pytest.raises(NotFound):
        await accounts.revoke_api_token(db, b_id, a_token_info.id, b.owner.id, clock=clock)
    assert await accounts.list_sessions(db, b_id, a_member.id, clock=clock) == []
    assert await accounts.list_api_tokens(db, b_id, a_member.id) == []
    # Ids of A's users mean nothing in B, even to B's owner.
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: accounts.deactivate(db, b_id, a_member.id, b.owner.id, clock=clock),
        lambda: accounts.set_role(db, b_id, a_member.id, "guest", b.owner.id),
        lambda: accounts.get_user(db, b_id, a_member.id),
        lambda: accounts.create_session(db, b_id, a_member.id, "", "", HOUR_S, clock),
        lambda: accounts.create_api_token(db, b_id, a_member.id, "t", [], None),
        lambda: accounts.update_profile(db, b_id, a_member.id, b.owner.id, display_name="X"),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            await call()
    # And A's owner has no powers in B.
    with pytest.raises(Forbidden):
        await accounts.deactivate(db, b_id, b_member.id, a.owner.id, clock=clock)
    with pytest.raises(Forbidden):
        await accounts.invite(db, b_id, "x@example.com", "member", a.owner.id, HOUR_S)
    # Everything still works at home.
    assert await accounts.session_user(db, a.tenant.id, a_session, HOUR_S, clock) == a_member
    assert await accounts.token_user(db, a.tenant.id, a_api, clock) is not None


async def test_same_email_signs_in_per_tenant(db: Database, clock: FakeClock) -> None:
    a = await new_org(db, clock, "acme", "boss@example.com")
    tenant_b, _setup = await accounts.create_tenant(db, "globex", "G", "boss@example.com", clock)
    with pytest.raises(InvalidCredentials):  # B's owner has not set a password: A's is no use
        await accounts.authenticate(db, tenant_b.id, "boss@example.com", PASSWORD, hasher=FAST)
    assert (
        await accounts.authenticate(db, a.tenant.id, "boss@example.com", PASSWORD, hasher=FAST)
        == a.owner
    )


async def test_deactivating_in_one_tenant_leaves_the_other_alone(
    db: Database, clock: FakeClock
) -> None:
    a = await new_org(db, clock, "acme", "boss@example.com")
    b = await new_org(db, clock, "globex", "boss@example.com")
    a_member = await add_member(db, a, "same@example.com", clock=clock)
    b_member = await add_member(db, b, "same@example.com", clock=clock)
    b_session = await accounts.create_session(db, b.tenant.id, b_member.id, "", "", DAY_S, clock)
    b_api = await accounts.create_api_token(db, b.tenant.id, b_member.id, "t", ["read"], None)

    await accounts.deactivate(db, a.tenant.id, a_member.id, a.owner.id, clock=clock)
    await accounts.revoke_all_sessions(db, a.tenant.id, a_member.id, clock=clock)

    assert (await accounts.get_user(db, b.tenant.id, b_member.id)).active
    assert await accounts.session_user(db, b.tenant.id, b_session, HOUR_S, clock) == b_member
    assert await accounts.token_user(db, b.tenant.id, b_api, clock) is not None
    signed_in = await accounts.authenticate(
        db, b.tenant.id, "same@example.com", MEMBER_PASSWORD, hasher=FAST
    )
    assert signed_in == b_member
    page_b = await accounts.list_users(db, b.tenant.id)
    assert {u.id for u in page_b.users} == {b.owner.id, b_member.id}


def test_errors_form_one_hierarchy() -> None:
    for error in (
        NotFound,
        Forbidden,
        AlreadyExists,
        InvitationExpired,
        InvitationUsed,
        InvalidCredentials,
        PolicyViolation,
    ):
        assert issubclass(error, AccountError)
