"""The settings and admin pages (passwords, sessions, API tokens, roles, deactivation,
invitations) and the account functions behind them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app import accounts
from app.accounts import Forbidden, InvalidCredentials, NotFound, PolicyViolation
from app.db import Database
from app.web_auth import SESSION_COOKIE
from tests.app_support import DAY_S, FAST, PASSWORD, FakeClock, People, add_user
from tests.component.test_app_pages import (
    Browser,
    acme,
    as_user,
    backend,
    client,
    clock,
    db,
    join,
    sign_in,
)

# Fixtures shared from tests.component.test_app_pages; pytest finds them as names of this module.
__all__ = ["acme", "backend", "client", "clock", "db"]

NEW_PASSWORD = "another long password 2"


async def bearer(client: TestClient[Any, Any], token: str) -> int:
    headers = {"Host": "acme.localhost", "Authorization": f"Bearer {token}"}
    async with client.get("/api/v1/spaces", headers=headers) as response:
        return response.status


# ---------------------------------------------------------------- admin pages


async def test_admin_pages_are_for_owners_and_admins(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    alice = await as_user(client, db, clock, acme, acme.alice)
    assert (await alice.get("/admin")).status == 403
    invited = await alice.post("/admin/invitations", {"email": "x@example.com", "role": "member"})
    assert invited.status == 403
    promoted = await alice.post(f"/admin/users/{acme.alice.id}/role", {"role": "owner"})
    assert promoted.status == 403
    assert (await alice.post(f"/admin/users/{acme.bob.id}/deactivate")).status == 403
    assert (await accounts.get_user(db, acme.tenant_id, acme.alice.id)).role == "member"
    assert (await accounts.get_user(db, acme.tenant_id, acme.bob.id)).active
    assert await accounts.list_invitations(db, acme.tenant_id, acme.owner.id) == []

    admin = await as_user(client, db, clock, acme, acme.admin)
    page = await admin.get("/admin")
    assert page.status == 200 and "alice@example.com" in page.text
    made_owner = await admin.post(f"/admin/users/{acme.alice.id}/role", {"role": "owner"})
    assert made_owner.status == 403  # only an owner makes owners
    changed = await admin.post(f"/admin/users/{acme.alice.id}/role", {"role": "guest"})
    assert (changed.status, changed.location) == (303, "/admin")
    assert (await accounts.get_user(db, acme.tenant_id, acme.alice.id)).role == "guest"
    bad_role = await admin.post(f"/admin/users/{acme.bob.id}/role", {"role": "emperor"})
    assert bad_role.status == 400 and "a role is one of" in bad_role.text


async def test_invite_join_and_sign_in(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    owner = await as_user(client, db, clock, acme, acme.owner)
    page = await owner.post(
        "/admin/invitations", {"email": "Carol@Example.com", "role": "member", "days": "3"}
    )
    assert page.status == 200
    found = re.search(r"http://acme\.localhost/join\?token=([A-Za-z0-9_-]+)", page.text)
    assert found is not None
    listed = await owner.get("/admin")
    assert "carol@example.com" in listed.text and found.group(1) not in listed.text
    joined = await join(Browser(client), found.group(1), "Carol")
    assert (joined.status, joined.location) == (303, "/spaces")
    signed = await sign_in(Browser(client), "carol@example.com", PASSWORD)
    assert (signed.status, signed.location) == (303, "/spaces")
    assert "carol@example.com" not in (await owner.get("/admin")).text.split("Pending")[1]

    secure = await owner.post(
        "/admin/invitations",
        {"email": "dave@example.com", "role": "guest", "days": "1"},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "https://acme.localhost/join?token=" in secure.text
    taken = await owner.post("/admin/invitations", {"email": "alice@example.com", "role": "member"})
    assert taken.status == 400 and "already" in taken.text
    odd_days = await owner.post(
        "/admin/invitations", {"email": "e@example.com", "role": "member", "days": "999"}
    )
    assert odd_days.status == 400


async def test_withdrawn_invitation_link_stops_working(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    owner = await as_user(client, db, clock, acme, acme.owner)
    page = await owner.post("/admin/invitations", {"email": "f@example.com", "role": "member"})
    token = re.search(r"join\?token=([A-Za-z0-9_-]+)", page.text)
    assert token is not None
    (invitation,) = await accounts.list_invitations(db, acme.tenant_id, acme.owner.id, clock=clock)
    alice = await as_user(client, db, clock, acme, acme.alice)
    assert (await alice.post(f"/admin/invitations/{invitation.id}/withdraw")).status == 403
    withdrawn = await owner.post(f"/admin/invitations/{invitation.id}/withdraw")
    assert (withdrawn.status, withdrawn.location) == (303, "/admin")
    assert (await Browser(client).get(f"/join?token={token.group(1)}")).status == 404
    again = await owner.post(f"/admin/invitations/{invitation.id}/withdraw")
    assert again.status == 404


async def test_deactivate_signs_out_and_reactivate_lets_in(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    owner = await as_user(client, db, clock, acme, acme.owner)
    bob = await as_user(client, db, clock, acme, acme.bob)
    assert (await bob.get("/spaces")).status == 200
    off = await owner.post(f"/admin/users/{acme.bob.id}/deactivate")
    assert (off.status, off.location) == (303, "/admin")
    assert "deactivated" in (await owner.get("/admin")).text
    assert (await bob.get("/spaces")).status == 303
    assert (await sign_in(Browser(client), "bob@example.com", PASSWORD)).status == 401
    on = await owner.post(f"/admin/users/{acme.bob.id}/reactivate")
    assert (on.status, on.location) == (303, "/admin")
    assert (await bob.get("/spaces")).status == 303  # old sessions stay revoked
    assert (await sign_in(Browser(client), "bob@example.com", PASSWORD)).status == 303
    last_owner = await owner.post(f"/admin/users/{acme.owner.id}/deactivate")
    assert last_owner.status == 403 and "last owner" in last_owner.text


async def test_admin_users_are_paginated(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    for number in range(20):
        await add_user(db, acme.tenant_id, acme.owner, f"user{number:02d}@example.com", "member")
    owner = await as_user(client, db, clock, acme, acme.owner)
    first = await owner.get("/admin")
    assert "<td>boss@example.com</td>" in first.text and "user19@example.com" not in first.text
    more = re.search(r'href="(/admin\?after=\d+)">More<', first.text)
    assert more is not None
    second = await owner.get(more.group(1))
    assert "<td>user19@example.com</td>" in second.text
    assert "<td>boss@example.com</td>" not in second.text


# ---------------------------------------------------------------- settings pages


async def test_profile_and_password(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    here = await as_user(client, db, clock, acme, acme.alice)
    elsewhere = await as_user(client, db, clock, acme, acme.alice)
    saved = await here.post("/settings/profile", {"display_name": "Alice B."})
    assert (saved.status, saved.location) == (303, "/settings?done=profile")
    assert "Alice B." in (await here.get("/settings")).text
    empty = await here.post("/settings/profile", {"display_name": " "})
    assert empty.status == 400

    fields = {"new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    wrong = await here.post("/settings/password", {"current_password": "not it at all", **fields})
    assert wrong.status == 400 and "the current password is wrong" in wrong.text
    assert NEW_PASSWORD not in wrong.text
    short = await here.post(
        "/settings/password", {"current_password": PASSWORD, "new_password": "x", "confirm": "x"}
    )
    assert short.status == 400 and "at least" in short.text
    assert (await elsewhere.get("/spaces")).status == 200
    changed = await here.post("/settings/password", {"current_password": PASSWORD, **fields})
    assert (changed.status, changed.location) == (303, "/settings?done=password")
    assert (await here.get("/spaces")).status == 200
    assert (await elsewhere.get("/spaces")).status == 303
    user = await accounts.authenticate(db, acme.tenant_id, "alice@example.com", NEW_PASSWORD)
    assert user.id == acme.alice.id
    with pytest.raises(InvalidCredentials):
        await accounts.authenticate(db, acme.tenant_id, "alice@example.com", PASSWORD, hasher=FAST)


async def test_sessions_can_be_signed_out(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    here = await as_user(client, db, clock, acme, acme.alice)
    other = await as_user(client, db, clock, acme, acme.alice)
    third = await as_user(client, db, clock, acme, acme.alice)
    page = await here.get("/settings")
    assert page.text.count("/revoke") >= 3 and "this session" in page.text
    sessions = await accounts.list_sessions(db, acme.tenant_id, acme.alice.id, clock=clock)
    current = await accounts.current_session_id(db, acme.tenant_id, here.cookies[SESSION_COOKIE])
    other_id = next(s.id for s in sessions if s.id != current)
    bob = await as_user(client, db, clock, acme, acme.bob)
    await bob.post(f"/settings/sessions/{other_id}/revoke")  # not bob's: nothing happens
    assert len(await accounts.list_sessions(db, acme.tenant_id, acme.alice.id, clock=clock)) == 3
    one = await here.post(f"/settings/sessions/{other_id}/revoke")
    assert one.status == 303
    assert len(await accounts.list_sessions(db, acme.tenant_id, acme.alice.id, clock=clock)) == 2
    rest = await here.post("/settings/sessions/others")
    assert (rest.status, rest.location) == (303, "/settings?done=sessions")
    statuses = [(await b.get("/spaces")).status for b in (here, other, third)]
    assert statuses == [200, 303, 303]
    own = await here.post(f"/settings/sessions/{current}/revoke")
    assert (own.status, own.location) == (303, "/login")
    assert (await here.get("/spaces")).status == 303


async def test_api_tokens_from_the_settings_page(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    alice = await as_user(client, db, clock, acme, acme.alice)
    none = await alice.post("/settings/tokens", {"name": "ci"})
    assert none.status == 400 and "scope" in none.text
    bad_days = await alice.post(
        "/settings/tokens", {"name": "ci", "scope": "read", "expires_days": "-1"}
    )
    assert bad_days.status == 400
    made = await alice.request(
        "POST",
        "/settings/tokens",
        [("csrf", alice.csrf), ("name", "ci"), ("scope", "read"), ("scope", "write"),
         ("scope", "admin"), ("expires_days", "30")],
    )  # fmt: skip
    assert made.status == 200 and "shown only once" in made.text
    token = re.search(r'<code class="secret">([A-Za-z0-9_-]+)</code>', made.text)
    assert token is not None
    assert await bearer(client, token.group(1)) == 200
    (info,) = await accounts.list_api_tokens(db, acme.tenant_id, acme.alice.id)
    assert info.scopes == {"read", "write"} and info.expires_at is not None
    listed = await alice.get("/settings")
    assert "ci" in listed.text and token.group(1) not in listed.text
    revoked = await alice.post(f"/settings/tokens/{info.id}/revoke")
    assert (revoked.status, revoked.location) == (303, "/settings?done=token")
    assert await bearer(client, token.group(1)) == 401


# ---------------------------------------------------------------- the account functions


async def test_change_password_rules(db: Database, clock: FakeClock, acme: People) -> None:
    tid, alice = acme.tenant_id, acme.alice
    keep = await accounts.create_session(db, tid, alice.id, "a", "", DAY_S, clock)
    drop = await accounts.create_session(db, tid, alice.id, "b", "", DAY_S, clock)
    with pytest.raises(PolicyViolation):
        await accounts.change_password(db, tid, alice.id, PASSWORD, "short", hasher=FAST)
    with pytest.raises(InvalidCredentials):
        await accounts.change_password(db, tid, alice.id, "wrong", NEW_PASSWORD, hasher=FAST)
    with pytest.raises(InvalidCredentials):
        await accounts.change_password(db, tid, alice.id, "x" * 5000, NEW_PASSWORD, hasher=FAST)
    revoked = await accounts.change_password(
        db, tid, alice.id, PASSWORD, NEW_PASSWORD, keep_token=keep, clock=clock, hasher=FAST
    )
    assert revoked == 1
    assert await accounts.session_user(db, tid, keep, DAY_S, clock) is not None
    assert await accounts.session_user(db, tid, drop, DAY_S, clock) is None
    await accounts.authenticate(db, tid, alice.email, NEW_PASSWORD, hasher=FAST)
    await accounts.deactivate(db, tid, alice.id, acme.owner.id)
    with pytest.raises(InvalidCredentials):
        await accounts.change_password(db, tid, alice.id, NEW_PASSWORD, PASSWORD, hasher=FAST)


async def test_reactivate_rules(db: Database, clock: FakeClock, acme: People) -> None:
    tid = acme.tenant_id
    second_owner = await add_user(db, tid, acme.owner, "owner2@example.com", "owner")
    await accounts.deactivate(db, tid, second_owner.id, acme.owner.id)
    await accounts.deactivate(db, tid, acme.bob.id, acme.admin.id)
    with pytest.raises(Forbidden):
        await accounts.reactivate(db, tid, second_owner.id, acme.admin.id)
    with pytest.raises(Forbidden):
        await accounts.reactivate(db, tid, acme.bob.id, acme.alice.id)
    with pytest.raises(NotFound):
        await accounts.reactivate(db, tid, 12345, acme.owner.id)
    assert (await accounts.reactivate(db, tid, acme.bob.id, acme.admin.id)).active
    assert (await accounts.reactivate(db, tid, acme.bob.id, acme.admin.id)).active  # idempotent
    assert (await accounts.reactivate(db, tid, second_owner.id, acme.owner.id)).active


async def test_invitation_listing_and_withdrawal_rules(
    db: Database, clock: FakeClock, acme: People
) -> None:
    tid = acme.tenant_id
    token = await accounts.invite(db, tid, "own@example.com", "owner", acme.owner.id, DAY_S)
    await accounts.invite(db, tid, "m@example.com", "member", acme.admin.id, DAY_S, clock=clock)
    with pytest.raises(Forbidden):
        await accounts.list_invitations(db, tid, acme.alice.id)
    listed = await accounts.list_invitations(db, tid, acme.admin.id, clock=clock)
    assert [(i.email, i.role) for i in listed] == [
        ("m@example.com", "member"),
        ("own@example.com", "owner"),
    ]
    opened = await accounts.open_invitation(db, tid, token, clock=clock)
    assert (opened.email, opened.role) == ("own@example.com", "owner")
    owner_invitation = listed[1]
    with pytest.raises(Forbidden):
        await accounts.withdraw_invitation(db, tid, owner_invitation.id, acme.admin.id)
    with pytest.raises(Forbidden):
        await accounts.withdraw_invitation(db, tid, listed[0].id, acme.alice.id)
    await accounts.withdraw_invitation(db, tid, owner_invitation.id, acme.owner.id)
    with pytest.raises(NotFound):
        await accounts.open_invitation(db, tid, token)
    with pytest.raises(NotFound):
        await accounts.withdraw_invitation(db, tid, owner_invitation.id, acme.owner.id)
    clock.advance(DAY_S + 1)
    assert await accounts.list_invitations(db, tid, acme.admin.id, clock=clock) == []
