"""The TOTP second factor in process on SQLite: enrolment, the sign-in's second step on pages and
in the API, replay protection, recovery codes, the pending sign-in's expiry and try limit, a
workspace that requires a factor, an administrator's reset, and secrets kept out of logs."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pyotp
import pytest
from aiohttp.test_utils import TestClient

from app import accounts, second_factor
from app.accounts import User
from app.db import Database
from app.pending_sign_ins import MAX_TRIES, PENDING_TTL_S
from app.tenant_settings import load_settings, save_settings
from app.web_auth import ENROL_FIRST, SESSION_COOKIE
from tests.app_support import PASSWORD, FakeClock, People
from tests.component.test_app_pages import (
    ACME,
    Browser,
    Page,
    acme,
    as_user,
    backend,
    client,
    clock,
    db,
    sign_in,
)

# Fixtures shared from the page tests; pytest finds them as names of this module.
__all__ = ["acme", "backend", "client", "clock", "db"]

STEP_S = 30


def code_at(secret: str, clock: FakeClock, steps: int = 0) -> str:
    """The code an authenticator app shows ``steps`` steps from the clock's now."""
    return pyotp.TOTP(secret).at(clock.now + steps * STEP_S)


async def enrolled(
    db: Database, clock: FakeClock, people: People, user: User
) -> tuple[str, list[str]]:
    """Turn ``user``'s factor on (domain calls); the clock moves past the confirming step."""
    secret = await second_factor.enrol(db, people.tenant_id, user.id, clock)
    codes = await second_factor.confirm(
        db, people.tenant_id, user.id, code_at(secret, clock), clock=clock
    )
    clock.advance(STEP_S)
    return secret, codes


async def password_step(client: TestClient[Any, Any], email: str) -> tuple[Browser, Page]:
    """The right password of a user with a factor: the code form, and no session yet."""
    browser = Browser(client)
    page = await sign_in(browser, email, PASSWORD, "/spaces")
    assert page.status == 200, page.text
    assert 'action="/login/2fa"' in page.text
    assert SESSION_COOKIE not in browser.cookies
    return browser, page


async def code_step(browser: Browser, form: Page, code: str) -> Page:
    fields = {name: form.field(name) for name in ("csrf", "token", "next")}
    return await browser.post("/login/2fa", {**fields, "code": code}, csrf=False)


async def api_sign_in(
    client: TestClient[Any, Any], body: dict[str, str]
) -> tuple[int, dict[str, Any], bool]:
    """POST /api/v1/session: status, JSON body, whether a session cookie came back."""
    async with client.post("/api/v1/session", json=body, headers={"Host": ACME}) as reply:
        cookie = reply.cookies.get(SESSION_COOKIE)
        return reply.status, await reply.json(), cookie is not None and bool(cookie.value)


async def audit_rows(db: Database, people: People, action: str) -> list[dict[str, Any]]:
    return await db.fetch(
        "SELECT action, result, ip, user_id, detail FROM audit_log"
        " WHERE tenant_id = ? AND action = ? ORDER BY id",
        people.tenant_id,
        action,
    )


def events(rows: list[dict[str, Any]]) -> list[str]:
    return [json.loads(row["detail"]).get("event", "") for row in rows]


# ---------------------------------------------------------------- enrolment


async def test_enrol_and_confirm_on_the_page(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    browser = await as_user(client, db, clock, acme, acme.alice)
    settings = await browser.get("/settings")
    assert 'href="/settings/2fa"' in settings.text
    page = await browser.get("/settings/2fa")
    assert page.status == 200
    assert "<svg" in page.text and "data:" not in page.text  # inline, no data: URI
    shown = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page.text)
    assert shown is not None
    secret = shown.group(1).replace(" ", "")
    assert (await browser.get("/settings/2fa")).text.count(shown.group(1)) == 1  # same secret
    wrong = await browser.post("/settings/2fa/confirm", {"code": "000000"})
    assert wrong.status == 400 and "not right" in wrong.text
    done = await browser.post("/settings/2fa/confirm", {"code": code_at(secret, clock)})
    assert done.status == 200
    codes = re.findall(r'<code class="secret">([0-9a-z-]+)</code>', done.text)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert "shown only now" in done.text
    stored = await db.fetch("SELECT code_hash FROM recovery_codes")
    assert len(stored) == 10 and not {row["code_hash"] for row in stored} & set(codes)
    assert await second_factor.is_enabled(db, acme.tenant_id, acme.alice.id)
    again = await browser.get("/settings/2fa")
    assert "Two-step sign-in is on" in again.text and "Recovery codes left: 10" in again.text
    assert secret not in again.text
    rows = await audit_rows(db, acme, "second_factor")
    assert events(rows) == ["enrolled"] and rows[0]["user_id"] == acme.alice.id


def test_provisioning_uri_names_the_workspace_and_the_user() -> None:
    uri = second_factor.provisioning_uri(
        "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "alice@example.com", "acme"
    )
    assert uri.startswith("otpauth://totp/moonwatch%20acme:alice%40example.com?")
    assert "issuer=moonwatch%20acme" in uri and "secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP" in uri


# ---------------------------------------------------------------- signing in


async def test_sign_in_with_a_code_on_the_pages(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, _ = await enrolled(db, clock, acme, acme.alice)
    browser, form = await password_step(client, "alice@example.com")
    assert str(acme.alice.id) not in form.text.replace(form.field("token"), "")
    signed = await code_step(browser, form, code_at(secret, clock))
    assert (signed.status, signed.location) == (303, "/spaces")
    assert SESSION_COOKIE in browser.cookies
    assert (await browser.get("/spaces")).status == 200
    again = await code_step(browser, form, code_at(secret, clock, 1))  # the token works once
    assert again.status == 401 and "expired or was used" in again.text


async def test_a_replayed_code_is_refused(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, _ = await enrolled(db, clock, acme, acme.alice)
    code = code_at(secret, clock)
    browser, form = await password_step(client, "alice@example.com")
    assert (await code_step(browser, form, code)).status == 303
    browser, form = await password_step(client, "alice@example.com")
    same = await code_step(browser, form, code)  # the same code twice
    assert same.status == 401 and "wrong or was used already" in same.text
    older = await code_step(browser, form, code_at(secret, clock, -1))  # an older step
    assert older.status == 401 and SESSION_COOKIE not in browser.cookies
    results = [row["result"] for row in await audit_rows(db, acme, "sign_in")]
    assert results[-2:] == ["second_factor_replayed", "second_factor_replayed"]
    clock.advance(STEP_S)  # the next step's code is fresh
    assert (await code_step(browser, form, code_at(secret, clock))).status == 303


async def test_a_wrong_code_is_a_failed_sign_in(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, _ = await enrolled(db, clock, acme, acme.alice)
    browser, form = await password_step(client, "alice@example.com")
    right = code_at(secret, clock)
    wrong = next(c for c in ("123456", "654321") if c not in {right, code_at(secret, clock, -1)})
    page = await code_step(browser, form, wrong)
    assert page.status == 401 and SESSION_COOKIE not in browser.cookies
    (row,) = [r for r in await audit_rows(db, acme, "sign_in") if r["result"] != "ok"]
    assert row["result"] == "wrong_second_factor" and row["ip"] == "127.0.0.1"
    assert row["user_id"] == acme.alice.id
    assert (await code_step(browser, page, right)).status == 303  # the same form, next try


async def test_recovery_codes_work_once(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    _, codes = await enrolled(db, clock, acme, acme.alice)
    browser, form = await password_step(client, "alice@example.com")
    assert (await code_step(browser, form, codes[0].upper())).status == 303
    browser, form = await password_step(client, "alice@example.com")
    used = await code_step(browser, form, codes[0])
    assert used.status == 401
    assert (await audit_rows(db, acme, "sign_in"))[-1]["result"] == "second_factor_replayed"
    assert (await code_step(browser, form, codes[1].replace("-", " "))).status == 303
    status = await second_factor.status(db, acme.tenant_id, acme.alice.id)
    assert status.recovery_codes_left == 8
    assert events(await audit_rows(db, acme, "second_factor")).count("recovery_code_used") == 2


async def test_the_pending_sign_in_expires(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, _ = await enrolled(db, clock, acme, acme.alice)
    browser, form = await password_step(client, "alice@example.com")
    clock.advance(PENDING_TTL_S + 1)
    late = await code_step(browser, form, code_at(secret, clock))
    assert late.status == 401 and "expired" in late.text and 'href="/login?next=' in late.text
    assert SESSION_COOKIE not in browser.cookies
    forged = await code_step(browser, form, code_at(secret, clock))  # and stays so
    assert forged.status == 401


async def test_the_pending_sign_in_allows_five_tries(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, _ = await enrolled(db, clock, acme, acme.alice)
    settings = await load_settings(db, acme.tenant_id)
    await save_settings(db, acme.tenant_id, settings.changed(lockout_attempts=10))
    browser, form = await password_step(client, "alice@example.com")
    right = code_at(secret, clock)
    wrong = next(c for c in ("123456", "654321") if c not in {right, code_at(secret, clock, -1)})
    for attempt in range(1, MAX_TRIES + 1):
        page = await code_step(browser, form, wrong)
        assert page.status == 401
        assert ("Too many wrong codes" in page.text) == (attempt == MAX_TRIES)
    assert (await code_step(browser, form, right)).status == 401
    assert SESSION_COOKIE not in browser.cookies


async def test_wrong_codes_lock_the_account_even_with_the_right_password(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, _ = await enrolled(db, clock, acme, acme.alice)
    body = {"email": "alice@example.com", "password": PASSWORD}
    right = code_at(secret, clock)
    wrong = next(c for c in ("123456", "654321") if c not in {right, code_at(secret, clock, -1)})
    for _ in range(5):  # the default lockout: 5 in a row, though each password was right
        status, _reply, _cookie = await api_sign_in(client, {**body, "totp_code": wrong})
        assert status == 401
    assert len(await audit_rows(db, acme, "lockout")) == 1
    locked = await db.fetchval(
        "SELECT locked_until FROM users WHERE tenant_id = ? AND id = ?",
        acme.tenant_id,
        acme.alice.id,
    )
    assert locked is not None and locked > clock.now * 1000
    status, _, cookie = await api_sign_in(client, {**body, "totp_code": right})
    assert (status, cookie) == (401, False)


# ---------------------------------------------------------------- the API


async def test_api_sign_in_asks_for_the_second_factor(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, codes = await enrolled(db, clock, acme, acme.alice)
    body = {"email": "alice@example.com", "password": PASSWORD}
    status, reply, cookie = await api_sign_in(client, body)
    assert (status, cookie) == (401, False)
    assert reply == {"error": "a second factor is required", "status": 401, "second_factor": True}
    status, reply, cookie = await api_sign_in(client, {**body, "totp_code": "000000"})
    assert (status, cookie) == (401, False) and "second_factor" not in reply
    status, reply, cookie = await api_sign_in(client, {**body, "totp_code": code_at(secret, clock)})
    assert (status, cookie) == (200, True) and reply["email"] == "alice@example.com"
    status, _, _ = await api_sign_in(client, {**body, "totp_code": code_at(secret, clock)})
    assert status == 401  # replayed
    status, _, cookie = await api_sign_in(client, {**body, "recovery_code": codes[3]})
    assert (status, cookie) == (200, True)
    wrong_password = {**body, "password": "not it at all", "totp_code": code_at(secret, clock, 1)}
    assert (await api_sign_in(client, wrong_password))[0] == 401


# ---------------------------------------------------------------- a workspace that requires it


async def test_a_required_factor_must_be_enrolled_first(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    settings = await load_settings(db, acme.tenant_id)
    await save_settings(db, acme.tenant_id, settings.changed(require_totp=True))
    browser = await as_user(client, db, clock, acme, acme.bob)
    for path in ("/spaces", "/settings", "/admin", "/search"):
        page = await browser.get(path)
        assert (page.status, page.location) == (303, "/settings/2fa?required=1")
    page = await browser.get("/settings/2fa?required=1")
    assert page.status == 200 and "requires a second factor" in page.text
    cookie = {"Host": ACME, "Cookie": f"{SESSION_COOKIE}={browser.cookies[SESSION_COOKIE]}"}
    async with client.get("/api/v1/me", headers=cookie) as reply:
        assert reply.status == 403
        assert (await reply.json())["error"] == ENROL_FIRST
    token = await accounts.create_api_token(
        db, acme.tenant_id, acme.bob.id, "ci", ["read"], None, clock=clock
    )
    bearer = {"Host": ACME, "Authorization": f"Bearer {token}"}
    async with client.get("/api/v1/me", headers=bearer) as reply:
        assert reply.status == 200  # a token was made on purpose: it keeps working
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page.text)
    assert secret is not None
    code = code_at(secret.group(1).replace(" ", ""), clock)
    assert (await browser.post("/settings/2fa/confirm", {"code": code})).status == 200
    assert (await browser.get("/spaces")).status == 200
    out = await browser.post("/logout")
    assert (out.status, out.location) == (303, "/login")


# ---------------------------------------------------------------- changing and resetting it


async def test_disable_needs_the_password_and_a_code(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, _ = await enrolled(db, clock, acme, acme.alice)
    browser = await as_user(client, db, clock, acme, acme.alice)
    code = code_at(secret, clock)
    no_password = await browser.post("/settings/2fa/disable", {"password": "nope", "code": code})
    assert no_password.status == 400 and "password is wrong" in no_password.text
    no_code = await browser.post("/settings/2fa/disable", {"password": PASSWORD, "code": "1"})
    assert no_code.status == 400
    assert await second_factor.is_enabled(db, acme.tenant_id, acme.alice.id)
    off = await browser.post("/settings/2fa/disable", {"password": PASSWORD, "code": code})
    assert (off.status, off.location) == (303, "/settings/2fa?done=disabled")
    assert not await second_factor.is_enabled(db, acme.tenant_id, acme.alice.id)
    assert await db.fetchval("SELECT count(*) FROM recovery_codes") == 0
    assert events(await audit_rows(db, acme, "second_factor"))[-1] == "disabled"
    page = await Browser(client).get("/login")
    assert page.status == 200
    signed = await sign_in(Browser(client), "alice@example.com", PASSWORD)
    assert signed.status == 303  # the password alone again


async def test_regenerated_recovery_codes_replace_the_old(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    secret, old = await enrolled(db, clock, acme, acme.alice)
    browser = await as_user(client, db, clock, acme, acme.alice)
    page = await browser.post("/settings/2fa/recovery-codes", {"code": code_at(secret, clock)})
    assert page.status == 200
    new = re.findall(r'<code class="secret">([0-9a-z-]+)</code>', page.text)
    assert len(new) == 10 and not set(new) & set(old)
    body = {"email": "alice@example.com", "password": PASSWORD}
    assert (await api_sign_in(client, {**body, "recovery_code": old[0]}))[0] == 401
    assert (await api_sign_in(client, {**body, "recovery_code": new[0]}))[0] == 200
    assert "recovery_codes_regenerated" in events(await audit_rows(db, acme, "second_factor"))


async def test_an_administrator_resets_a_factor(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await enrolled(db, clock, acme, acme.alice)
    await enrolled(db, clock, acme, acme.owner)
    member = await as_user(client, db, clock, acme, acme.bob)
    path = f"/admin/users/{acme.alice.id}/second-factor/reset"
    assert (await member.post(path)).status == 403
    admin = await as_user(client, db, clock, acme, acme.admin)
    assert "second-factor/reset" in (await admin.get("/admin")).text
    owners = await admin.post(f"/admin/users/{acme.owner.id}/second-factor/reset")
    assert owners.status == 403
    done = await admin.post(path)
    assert (done.status, done.location) == (303, "/admin?done=second_factor_reset")
    assert not await second_factor.is_enabled(db, acme.tenant_id, acme.alice.id)
    assert await second_factor.is_enabled(db, acme.tenant_id, acme.owner.id)
    (row,) = [r for r in await audit_rows(db, acme, "second_factor") if "reset" in r["detail"]]
    assert row["user_id"] == acme.admin.id and events([row]) == ["reset_by_admin"]
    signed = await sign_in(Browser(client), "alice@example.com", PASSWORD)
    assert signed.status == 303


# ---------------------------------------------------------------- secrets stay secret


async def test_the_secret_is_never_in_logs_urls_or_the_audit_log(
    client: TestClient[Any, Any],
    db: Database,
    clock: FakeClock,
    acme: People,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Ours at every level, and the access log (it names every URL); a driver's DEBUG output
    # echoes SQL parameters, so that stays off wherever it runs.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="app")
    browser = await as_user(client, db, clock, acme, acme.alice)
    page = await browser.get("/settings/2fa")
    shown = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page.text)
    assert shown is not None
    secret = shown.group(1).replace(" ", "")
    confirm = await browser.post("/settings/2fa/confirm", {"code": code_at(secret, clock)})
    codes = re.findall(r'<code class="secret">([0-9a-z-]+)</code>', confirm.text)
    clock.advance(STEP_S)
    signed_in, form = await password_step(client, "alice@example.com")
    done = await code_step(signed_in, form, code_at(secret, clock))
    answers = [page, confirm, form, done]
    assert all(secret not in a.location and "secret" not in a.location for a in answers)
    assert 'action="/settings/2fa/confirm"' in page.text
    assert 'name="secret"' not in page.text  # never posted back: the server keeps it
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert secret not in logged and not any(code in logged for code in codes)
    audit = json.dumps(await db.fetch("SELECT * FROM audit_log"))
    assert secret not in audit and not any(code in audit for code in codes)
