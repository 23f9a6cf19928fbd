"""The tenant's account security on the pages and the JSON API: password policy, history and
expiry, reset links, lockout, session lifetime and idle timeout, signing users out everywhere,
and the audit records of each (with the client's address and the reason of a refusal)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from app import accounts, audit
from app.accounts import InvalidCredentials
from app.audit import AuditEntry, AuditFilter
from app.db import Database
from app.tenant_settings import SecuritySettings, load_settings, save_settings
from app.web_auth import SESSION_COOKIE
from tests.app_support import DAY_S, FAST, PASSWORD, FakeClock, People, new_people
from tests.component.test_app_pages import (
    Browser,
    acme,
    as_user,
    backend,
    client,
    clock,
    db,
    globex,
    join,
    sign_in,
)

# Fixtures shared from tests.component.test_app_pages; pytest finds them as names of this module.
__all__ = ["acme", "backend", "client", "clock", "db", "globex"]

STRONG = "Correct-Horse-Battery-9"
STRONGER = "Another-Strong-Secret-7"
HOST = "acme.localhost"
EXPIRED = "your password has expired: change it"


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any


async def call(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    *,
    token: str | None = None,
    cookie: str | None = None,
    json: Any = None,
    host: str = HOST,
) -> Reply:
    """One /api/v1 request as a token or a session cookie (with a same-origin Origin)."""
    headers = {"Host": host, "Origin": f"http://{host}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    async with client.request(method, "/api/v1" + path, json=json, headers=headers) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return Reply(response.status, body, response.headers)


async def configure(db: Database, tenant_id: int, **values: Any) -> SecuritySettings:
    settings = (await load_settings(db, tenant_id)).changed(**values)
    await save_settings(db, tenant_id, settings)
    return settings


async def records(db: Database, tenant_id: int, action: str) -> list[AuditEntry]:
    """The tenant's records of ``action``, oldest first."""
    entries, _ = await audit.list_entries(db, tenant_id, AuditFilter(action=action), limit=200)
    return entries[::-1]


async def token_of(db: Database, people: People, user: accounts.User) -> str:
    return await accounts.create_api_token(
        db, people.tenant_id, user.id, "ci", ["read", "write"], None
    )


# ---------------------------------------------------------------- password policy and history


async def test_policy_and_history_on_the_settings_page_and_the_api(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await configure(
        db, acme.tenant_id, password_min_length=16, password_history=2,
        password_classes=frozenset({"upper", "digit", "symbol"}),
    )  # fmt: skip
    alice = await as_user(client, db, clock, acme, acme.alice)
    page = await alice.get("/settings")
    assert 'minlength="16"' in page.text

    def change(new: str, current: str = PASSWORD) -> dict[str, str]:
        return {"current_password": current, "new_password": new, "confirm": new}

    short = await alice.post("/settings/password", change("Short-1"))
    assert short.status == 400 and "at least 16 characters" in short.text
    plain = await alice.post("/settings/password", change("only lower case letters"))
    assert plain.status == 400
    assert "must contain an upper-case letter, a digit, a symbol" in plain.text
    same = await alice.post("/settings/password", change(PASSWORD))
    assert same.status == 400  # the policy refuses it before the history does
    changed = await alice.post("/settings/password", change(STRONG))
    assert (changed.status, changed.location) == (303, "/settings?done=password")

    token = await token_of(db, acme, acme.alice)
    body = {"current_password": STRONG, "new_password": STRONG}
    reused = await call(client, "POST", "/me/password", token=token, json=body)
    assert reused.status == 400 and "not used recently" in reused.body["error"]
    weak = await call(
        client, "POST", "/me/password", token=token,
        json={"current_password": STRONG, "new_password": "x"},
    )  # fmt: skip
    assert weak.status == 400 and "at least 16" in weak.body["error"]
    wrong = await call(
        client, "POST", "/me/password", token=token,
        json={"current_password": "not it", "new_password": STRONGER},
    )  # fmt: skip
    assert wrong.status == 401
    done = await call(
        client, "POST", "/me/password", token=token,
        json={"current_password": STRONG, "new_password": STRONGER},
    )  # fmt: skip
    assert done.status == 200 and done.body == {"sessions_revoked": 1}
    back = await alice.post("/settings/password", change(STRONG, STRONGER))
    assert (back.status, back.location) == (303, "/login")  # a token's change ends them all
    rows = await db.fetch(
        "SELECT password_hash FROM password_history WHERE tenant_id = ? AND user_id = ?",
        acme.tenant_id,
        acme.alice.id,
    )
    assert len(rows) == 2  # pruned to the newest N
    results = [(e.result, e.ip) for e in await records(db, acme.tenant_id, "password_change")]
    assert ("ok", "127.0.0.1") in results and ("wrong_password", "127.0.0.1") in results


async def test_history_check_reaches_back_n_passwords(db: Database, clock: FakeClock) -> None:
    people = await new_people(db, clock, "hist")
    tid, uid = people.tenant_id, people.alice.id
    await configure(db, tid, password_history=3)
    passwords = [PASSWORD, "second password 2", "third password 3", "fourth password 4"]
    for old, new in itertools.pairwise(passwords):
        await accounts.change_password(db, tid, uid, old, new, clock=clock, hasher=FAST)
    for recent in passwords[1:]:
        with pytest.raises(accounts.PolicyViolation, match="not used recently"):
            await accounts.change_password(db, tid, uid, passwords[-1], recent, hasher=FAST)
    # The first is four passwords back: allowed again.
    await accounts.change_password(db, tid, uid, passwords[-1], PASSWORD, hasher=FAST)


async def test_policy_applies_when_joining(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await configure(db, acme.tenant_id, password_classes=frozenset({"digit"}))
    page_token = await accounts.invite(
        db, acme.tenant_id, "p@example.com", "member", acme.owner.id, DAY_S
    )
    refused = await join(Browser(client), page_token, "P", "no digits in this one")
    assert refused.status == 400 and "must contain a digit" in refused.text
    assert (await join(Browser(client), page_token, "P", PASSWORD)).status == 303
    api_token = await accounts.invite(
        db, acme.tenant_id, "q@example.com", "member", acme.owner.id, DAY_S
    )
    body = {"token": api_token, "display_name": "Q", "password": "no digits in this one"}
    assert (await call(client, "POST", "/invitations/accept", json=body)).status == 400
    body["password"] = PASSWORD
    accepted = await call(client, "POST", "/invitations/accept", json=body)
    assert accepted.status == 201
    assert f"Max-Age={30 * 86400}" in accepted.headers["Set-Cookie"]
    joined = await records(db, acme.tenant_id, "invitation_accepted")
    assert [(e.actor, e.ip, e.result) for e in joined[-2:]] == [
        ("p@example.com", "127.0.0.1", "ok"),
        ("q@example.com", "127.0.0.1", "ok"),
    ]


# ---------------------------------------------------------------- reset links


async def test_admin_reset_link_sets_a_password_under_the_policy(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await configure(db, acme.tenant_id, password_history=1)
    bob_elsewhere = await as_user(client, db, clock, acme, acme.bob)
    member = await as_user(client, db, clock, acme, acme.alice)
    assert (await member.post(f"/admin/users/{acme.bob.id}/reset")).status == 403
    admin = await as_user(client, db, clock, acme, acme.admin)
    assert (await admin.post(f"/admin/users/{acme.owner.id}/reset")).status == 403
    made = await admin.post(f"/admin/users/{acme.bob.id}/reset")
    assert made.status == 200 and "shown only now" in made.text
    found = re.search(r"http://acme\.localhost/reset\?token=([A-Za-z0-9_-]+)", made.text)
    assert found is not None
    link = found.group(1)
    assert link not in (await admin.get("/admin")).text

    bob = Browser(client)
    form = await bob.get(f"/reset?token={link}")
    assert form.status == 200 and "bob@example.com" in form.text
    fields = {"csrf": form.field("csrf"), "token": link}
    reused = await bob.post(
        "/reset", {**fields, "password": PASSWORD, "confirm": PASSWORD}, csrf=False
    )
    assert reused.status == 400 and "not used recently" in reused.text
    differ = await bob.post("/reset", {**fields, "password": STRONG, "confirm": "x"}, csrf=False)
    assert differ.status == 400
    no_csrf = await bob.post(
        "/reset", {"token": link, "password": STRONG, "confirm": STRONG}, csrf=False
    )
    assert no_csrf.status == 403
    done = await bob.post("/reset", {**fields, "password": STRONG, "confirm": STRONG}, csrf=False)
    assert (done.status, done.location) == (303, "/login")
    assert (await bob_elsewhere.get("/spaces")).status == 303  # signed out everywhere
    assert (await bob.get(f"/reset?token={link}")).status == 410
    assert (await sign_in(Browser(client), "bob@example.com", STRONG)).status == 303
    stages = [e.detail["stage"] for e in await records(db, acme.tenant_id, "password_reset")]
    assert stages == ["link_created", "completed"]

    clock.advance(1)
    expiring = await admin.post(f"/admin/users/{acme.bob.id}/reset")
    later = re.search(r"reset\?token=([A-Za-z0-9_-]+)", expiring.text)
    assert later is not None
    clock.advance(DAY_S + 1)
    assert (await Browser(client).get(f"/reset?token={later.group(1)}")).status == 410
    assert (await Browser(client).get("/reset?token=nonsense")).status == 404


# ---------------------------------------------------------------- expiry


async def test_an_expired_password_may_only_be_changed(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await configure(db, acme.tenant_id, password_max_age_days=30)
    await db.execute(  # the people were made on the system clock: set them now on this one
        "UPDATE users SET password_changed_at = ? WHERE tenant_id = ?",
        int(clock.now * 1000),
        acme.tenant_id,
    )
    token = await token_of(db, acme, acme.alice)
    assert (await call(client, "GET", "/spaces", token=token)).status == 200
    clock.advance(31 * DAY_S)

    browser = Browser(client)
    signed = await sign_in(browser, "alice@example.com", PASSWORD)
    assert (signed.status, signed.location) == (303, "/spaces")  # sign-in itself works
    for path in ("/spaces", "/search?q=x", "/admin", "/mentions"):
        page = await browser.get(path)
        assert (page.status, page.location) == (303, "/settings#password"), path
    made = await browser.post("/settings/tokens", {"name": "sneaky", "scope": "read"})
    assert (made.status, made.location) == (303, "/settings#password")
    assert await accounts.list_api_tokens(db, acme.tenant_id, acme.alice.id) != []  # only ci
    settings = await browser.get("/settings")
    assert settings.status == 200 and "Your password has expired" in settings.text

    cookie = browser.cookies[SESSION_COOKIE]
    for method, path in (("GET", "/spaces"), ("GET", "/me"), ("POST", "/spaces")):
        for credentials in ({"cookie": cookie}, {"token": token}):
            reply = await call(client, method, path, json={"name": "x"}, **credentials)
            assert (reply.status, reply.body["error"]) == (403, EXPIRED)

    body = {"current_password": PASSWORD, "new_password": STRONG}
    assert (await call(client, "POST", "/me/password", cookie=cookie, json=body)).status == 200
    assert (await browser.get("/spaces")).status == 200
    assert (await call(client, "GET", "/spaces", token=token)).status == 200
    clock.advance(29 * DAY_S)
    assert (await call(client, "GET", "/spaces", token=token)).status == 200

    bob = Browser(client)
    await sign_in(bob, "bob@example.com", PASSWORD)
    fields = {"current_password": PASSWORD, "new_password": STRONGER, "confirm": STRONGER}
    changed = await bob.post("/settings/password", fields)
    assert (changed.status, changed.location) == (303, "/settings?done=password")
    assert (await bob.get("/spaces")).status == 200


# ---------------------------------------------------------------- lockout


class CountingHasher(PasswordHasher):
    """A cheap real hasher that counts verifications (the costly step of a sign-in)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


async def api_sign_in(client: TestClient[Any, Any], email: str, password: str) -> Reply:
    return await call(client, "POST", "/session", json={"email": email, "password": password})


async def test_a_locked_account_answers_like_a_wrong_password(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await configure(db, acme.tenant_id, lockout_attempts=3, lockout_minutes=15)
    wrong_pages = [await sign_in(Browser(client), "alice@example.com", "wrong!") for _ in range(2)]
    wrong_api = await api_sign_in(client, "alice@example.com", "wrong!")  # the third: locks
    assert {page.status for page in wrong_pages} == {401}
    locked_page = await sign_in(Browser(client), "alice@example.com", PASSWORD)
    locked_api = await api_sign_in(client, "alice@example.com", PASSWORD)
    unknown_api = await api_sign_in(client, "nobody@example.com", PASSWORD)
    assert locked_page.status == 401 and SESSION_COOKIE not in str(locked_page.headers)

    def message(text: str) -> str:
        return re.sub(r'name="csrf" value="[^"]*"', "", text)

    assert message(locked_page.text) == message(wrong_pages[0].text)
    assert (locked_api.status, locked_api.body) == (wrong_api.status, wrong_api.body)
    assert (unknown_api.status, unknown_api.body) == (wrong_api.status, wrong_api.body)
    assert "Set-Cookie" not in locked_api.headers

    clock.advance(15 * 60 + 1)
    assert (await api_sign_in(client, "alice@example.com", PASSWORD)).status == 200
    reasons = [(e.result, e.target, e.ip) for e in await records(db, acme.tenant_id, "sign_in")]
    alice = f"user {acme.alice.id}"
    assert reasons == [
        *[("wrong_password", alice, "127.0.0.1")] * 3,
        *[("locked", alice, "127.0.0.1")] * 2,
        ("unknown_user", "", "127.0.0.1"),
        ("ok", "", "127.0.0.1"),
    ]
    (lock,) = await records(db, acme.tenant_id, "lockout")
    assert (lock.target, lock.detail) == (alice, {"attempts": 3, "minutes": 15})

    await accounts.deactivate(db, acme.tenant_id, acme.bob.id, acme.owner.id)
    assert (await api_sign_in(client, "bob@example.com", PASSWORD)).body == wrong_api.body
    assert (await records(db, acme.tenant_id, "sign_in"))[-1].result == "inactive"


async def test_success_resets_the_count_and_a_lock_costs_one_verification(
    db: Database, clock: FakeClock, acme: People
) -> None:
    tid = acme.tenant_id
    await configure(db, tid, lockout_attempts=3, lockout_minutes=3)
    hasher = CountingHasher()
    for _ in range(2):
        with pytest.raises(InvalidCredentials):
            await accounts.authenticate(db, tid, "alice@example.com", "wrong", clock=clock)
    await accounts.authenticate(db, tid, "alice@example.com", PASSWORD, clock=clock)
    for _ in range(2):  # the count started again: two more do not lock
        with pytest.raises(InvalidCredentials):
            await accounts.authenticate(db, tid, "alice@example.com", "wrong", clock=clock)
    await accounts.authenticate(db, tid, "alice@example.com", PASSWORD, clock=clock)
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await accounts.authenticate(db, tid, "alice@example.com", "wrong", clock=clock)
    with pytest.raises(InvalidCredentials) as refused:
        await accounts.authenticate(
            db, tid, "alice@example.com", PASSWORD, clock=clock, hasher=hasher
        )
    assert str(refused.value) == "wrong e-mail address or password"
    assert hasher.verifications == 1


async def test_a_lock_without_end_waits_for_an_administrator(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await configure(db, acme.tenant_id, lockout_attempts=3, lockout_minutes=0)
    for _ in range(3):
        await api_sign_in(client, "bob@example.com", "wrong!")
    clock.advance(30 * DAY_S)
    assert (await api_sign_in(client, "bob@example.com", PASSWORD)).status == 401
    admin = await as_user(client, db, clock, acme, acme.admin)
    page = await admin.get("/admin")
    assert f"/admin/users/{acme.bob.id}/unlock" in page.text and "locked" in page.text
    member = await as_user(client, db, clock, acme, acme.alice)
    assert (await member.post(f"/admin/users/{acme.bob.id}/unlock")).status == 403
    assert (await api_sign_in(client, "bob@example.com", PASSWORD)).status == 401
    unlocked = await admin.post(f"/admin/users/{acme.bob.id}/unlock")
    assert (unlocked.status, unlocked.location) == (303, "/admin?done=unlocked")
    assert f"/admin/users/{acme.bob.id}/unlock" not in (await admin.get("/admin")).text
    assert (await api_sign_in(client, "bob@example.com", PASSWORD)).status == 200
    (unlock,) = await records(db, acme.tenant_id, "unlock")
    assert (unlock.user_id, unlock.target, unlock.ip) == (
        acme.admin.id, f"user {acme.bob.id}", "127.0.0.1"
    )  # fmt: skip


# ---------------------------------------------------------------- sessions


async def test_the_tenants_session_lifetime_and_idle_timeout_apply(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await configure(db, acme.tenant_id, session_lifetime_hours=1, session_idle_minutes=10)
    signed = await api_sign_in(client, "alice@example.com", PASSWORD)
    assert "Max-Age=3600" in signed.headers["Set-Cookie"]
    cookie = re.search(rf"{SESSION_COOKIE}=([^;]+)", signed.headers["Set-Cookie"])
    assert cookie is not None
    session = cookie.group(1)
    clock.advance(11 * 60)
    assert (await call(client, "GET", "/me", cookie=session)).status == 401  # idle too long

    page = await sign_in(Browser(client), "alice@example.com", PASSWORD)
    assert "Max-Age=3600" in page.headers["Set-Cookie"]
    browser = await as_user(client, db, clock, acme, acme.alice)  # made for 30 days
    for _ in range(6):
        clock.advance(9 * 60)
        assert (await browser.get("/spaces")).status == 200
    clock.advance(9 * 60)  # 63 minutes after it started: the tenant's lifetime is over
    assert (await browser.get("/spaces")).status == 303


async def test_sign_out_everywhere_keeps_tokens_unless_asked(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    bob_page = await as_user(client, db, clock, acme, acme.bob)
    bob_api = (await api_sign_in(client, "bob@example.com", PASSWORD)).headers["Set-Cookie"]
    bob_cookie = re.search(rf"{SESSION_COOKIE}=([^;]+)", bob_api)
    assert bob_cookie is not None
    token = await token_of(db, acme, acme.bob)
    member = await as_user(client, db, clock, acme, acme.alice)
    assert (await member.post(f"/admin/users/{acme.bob.id}/sign-out")).status == 403
    admin = await as_user(client, db, clock, acme, acme.admin)
    assert (await admin.post(f"/admin/users/{acme.owner.id}/sign-out")).status == 403
    out = await admin.post(f"/admin/users/{acme.bob.id}/sign-out")
    assert (out.status, out.location) == (303, "/admin?done=signed_out")
    assert (await bob_page.get("/spaces")).status == 303
    assert (await call(client, "GET", "/me", cookie=bob_cookie.group(1))).status == 401
    assert (await call(client, "GET", "/me", token=token)).status == 200
    again = await admin.post(f"/admin/users/{acme.bob.id}/sign-out", {"revoke_tokens": "1"})
    assert again.status == 303
    assert (await call(client, "GET", "/me", token=token)).status == 401
    revoked = await records(db, acme.tenant_id, "session_revoked")
    assert [(e.detail["sessions"], e.target) for e in revoked] == [
        (2, f"user {acme.bob.id}"),
        (0, f"user {acme.bob.id}"),
    ]
    (tokens,) = await records(db, acme.tenant_id, "token_revoked")
    assert (tokens.detail, tokens.user_id) == ({"tokens": 1}, acme.admin.id)


# ---------------------------------------------------------------- tenants


FAMILIES = [
    ("GET", "/me"),
    ("POST", "/me/password"),
    ("GET", "/spaces"),
    ("POST", "/spaces"),
    ("GET", "/spaces/1/threads"),
    ("GET", "/threads/1/messages"),
    ("PATCH", "/messages/1"),
    ("GET", "/mentions"),
    ("GET", "/unread"),
    ("GET", "/search?q=x"),
    ("GET", "/files/1"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/security"),
    ("PATCH", "/admin/security"),
]


@pytest.mark.parametrize(("method", "path"), FAMILIES)
async def test_a_token_of_another_tenant_is_refused(
    client: TestClient[Any, Any],
    db: Database,
    acme: People,
    globex: People,
    method: str,
    path: str,
) -> None:
    foreign = await token_of(db, globex, globex.owner)
    reply = await call(client, method, path, token=foreign, json={})
    assert reply.status == 401, (reply.status, reply.body)
    assert (await load_settings(db, acme.tenant_id)) == SecuritySettings()
    home = await call(client, "GET", "/me", token=foreign, host="globex.localhost")
    assert home.status == 200
