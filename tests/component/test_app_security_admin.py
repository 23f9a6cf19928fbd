"""The security settings of a workspace on /admin/security and /api/v1/admin/security (each
group saved, validated, CSRF-protected and recorded; members refused), and the audit records
of the administration and self-service actions on pages and the API."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from app import accounts
from app.db import Database
from app.tenant_settings import SecuritySettings, load_settings
from tests.app_support import PASSWORD, FakeClock, People
from tests.component.test_app_pages import (
    Browser,
    acme,
    as_user,
    backend,
    client,
    clock,
    db,
    sign_in,
)
from tests.component.test_app_security_accounts import call, records, token_of

# Fixtures shared from tests.component.test_app_pages; pytest finds them as names of this module.
__all__ = ["acme", "backend", "client", "clock", "db"]

GROUP_FORMS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "password",
        {"password_min_length": "14", "password_history": "5", "password_max_age_days": "90",
         "password_classes": ["digit", "upper"]},
        {"password_min_length": 14, "password_history": 5, "password_max_age_days": 90,
         "password_classes": frozenset({"digit", "upper"})},
    ),
    ("lockout", {"lockout_attempts": "4", "lockout_minutes": "0"},
     {"lockout_attempts": 4, "lockout_minutes": 0}),
    ("sessions", {"session_lifetime_hours": "12", "session_idle_minutes": "30"},
     {"session_lifetime_hours": 12, "session_idle_minutes": 30}),
    ("second_factor", {"require_totp": "1"}, {"require_totp": True}),
    ("audit", {"audit_retention_days": "90"}, {"audit_retention_days": 90}),
]  # fmt: skip


def form_data(browser: Browser, fields: dict[str, Any]) -> list[tuple[str, str]]:
    data = [("csrf", browser.csrf)]
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value]
        data.extend((name, item) for item in values)
    return data


@pytest.mark.parametrize(("group", "fields", "expected"), GROUP_FORMS)
async def test_each_group_is_saved_and_recorded(
    client: TestClient[Any, Any],
    db: Database,
    clock: FakeClock,
    acme: People,
    group: str,
    fields: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    admin = await as_user(client, db, clock, acme, acme.admin)
    page = await admin.get("/admin")
    assert 'href="/admin/security"' in page.text
    form = await admin.get("/admin/security")
    assert form.status == 200 and f'action="/admin/security/{group}"' in form.text
    saved = await admin.request("POST", f"/admin/security/{group}", form_data(admin, fields))
    assert (saved.status, saved.location) == (303, f"/admin/security?done={group}")
    settings = await load_settings(db, acme.tenant_id)
    assert settings == SecuritySettings().changed(**expected)
    if group != "second_factor":  # with it required, the admin is sent to enrol first
        assert "saved" in (await admin.get(saved.location)).text
    (change,) = await records(db, acme.tenant_id, "setting_change")
    assert (change.user_id, change.ip, change.result) == (acme.admin.id, "127.0.0.1", "ok")
    assert set(change.detail) == set(expected)
    unchanged = await admin.request("POST", f"/admin/security/{group}", form_data(admin, fields))
    assert unchanged.status == 303
    assert len(await records(db, acme.tenant_id, "setting_change")) == 1  # nothing differed


async def test_networks_and_the_gate_password(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    owner = await as_user(client, db, clock, acme, acme.owner)
    fields = {
        # The test client connects from loopback: keep it inside, or the gate stops it at once.
        "allowed_networks": "10.0.0.0/8\n192.0.2.7\n127.0.0.0/8\n",
        "outside_networks": "basic",
        "gate_user": "gate",
        "gate_password": "gate secret 1",
    }
    saved = await owner.post("/admin/security/networks", fields)
    assert saved.status == 303, saved.text
    settings = await load_settings(db, acme.tenant_id)
    assert settings.allowed_networks == ("10.0.0.0/8", "192.0.2.7", "127.0.0.0/8")
    assert settings.outside_networks == "basic" and settings.gate_user == "gate"
    assert PasswordHasher().verify(settings.gate_password_hash, "gate secret 1")
    raw = await db.fetchval("SELECT settings FROM tenants WHERE id = ?", acme.tenant_id)
    assert "gate secret 1" not in raw
    (change,) = await records(db, acme.tenant_id, "setting_change")
    assert change.detail["gate_password_hash"] == ["(hidden)", "(changed)"]
    assert settings.gate_password_hash not in str(change.detail)
    page = await owner.get("/admin/security")
    assert settings.gate_password_hash not in page.text and "leave empty to keep it" in page.text
    kept = await owner.post("/admin/security/networks", {**fields, "gate_password": ""})
    assert kept.status == 303
    assert (await load_settings(db, acme.tenant_id)).gate_password_hash == (
        settings.gate_password_hash
    )


@pytest.mark.parametrize(
    ("group", "fields", "named"),
    [
        ("password", {"password_min_length": "2", "password_history": "0",
                      "password_max_age_days": "0"}, "password_min_length must be 3 to 128"),
        ("password", {"password_min_length": "twelve", "password_history": "0",
                      "password_max_age_days": "0"}, "password_min_length must be a whole number"),
        ("lockout", {"lockout_attempts": "5", "lockout_minutes": "7"}, "lockout_minutes"),
        ("sessions", {"session_lifetime_hours": "0", "session_idle_minutes": "30"},
         "session_lifetime_hours must be 1 to 2160"),
        ("networks", {"allowed_networks": "10.0.0.0/8\nnot a range", "outside_networks": "refuse",
                      "gate_user": "", "gate_password": ""}, "is not an IP range"),
        ("networks", {"allowed_networks": "", "outside_networks": "basic", "gate_user": "",
                      "gate_password": ""}, "the Basic-authentication gate needs a user"),
        ("audit", {"audit_retention_days": "7"}, "audit_retention_days must be 30 to 3650"),
    ],
)  # fmt: skip
async def test_out_of_range_settings_are_refused_by_name(
    client: TestClient[Any, Any],
    db: Database,
    clock: FakeClock,
    acme: People,
    group: str,
    fields: dict[str, str],
    named: str,
) -> None:
    owner = await as_user(client, db, clock, acme, acme.owner)
    refused = await owner.post(f"/admin/security/{group}", fields)
    assert refused.status == 400 and named in refused.text
    assert f'action="/admin/security/{group}"' in refused.text  # the form, shown again
    assert await load_settings(db, acme.tenant_id) == SecuritySettings()
    assert await records(db, acme.tenant_id, "setting_change") == []


async def test_the_settings_forms_want_a_manager_and_the_csrf_token(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    member = await as_user(client, db, clock, acme, acme.alice)
    assert (await member.get("/admin/security")).status == 403
    lowered = await member.post("/admin/security/lockout", {"lockout_attempts": "0",
                                                            "lockout_minutes": "15"})  # fmt: skip
    assert lowered.status == 403
    owner = await as_user(client, db, clock, acme, acme.owner)
    forged = await owner.post(
        "/admin/security/lockout",
        {"csrf": "0" * 64, "lockout_attempts": "0", "lockout_minutes": "15"},
    )
    assert forged.status == 403
    cross = await owner.post(
        "/admin/security/lockout",
        {"lockout_attempts": "0", "lockout_minutes": "15"},
        headers={"Origin": "http://evil.example"},
    )
    assert cross.status == 403
    assert (await owner.post("/admin/security/colour", {})).status == 404
    assert await load_settings(db, acme.tenant_id) == SecuritySettings()
    assert (await Browser(client).get("/admin/security")).status == 303  # to sign-in


# ---------------------------------------------------------------- the API


async def test_the_settings_api(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    token = await token_of(db, acme, acme.owner)
    shown = await call(client, "GET", "/admin/security", token=token)
    assert shown.status == 200 and shown.body == {
        k: v for k, v in SecuritySettings().to_json().items() if k != "gate_password_hash"
    }
    patch = {"password_min_length": 20, "password_classes": ["symbol"], "lockout_minutes": 60,
             "allowed_networks": ["2001:db8::/32", "127.0.0.0/8"], "outside_networks": "basic",
             "gate_user": "g", "gate_password": "api gate secret"}  # fmt: skip
    patched = await call(client, "PATCH", "/admin/security", token=token, json=patch)
    assert patched.status == 200, patched.body
    assert "gate_password_hash" not in patched.body and "gate_password" not in patched.body
    assert patched.body["password_classes"] == ["symbol"]
    settings = await load_settings(db, acme.tenant_id)
    assert settings.password_min_length == 20 and settings.lockout_minutes == 60
    assert PasswordHasher().verify(settings.gate_password_hash, "api gate secret")
    (change,) = await records(db, acme.tenant_id, "setting_change")
    assert change.detail["password_min_length"] == [12, 20]
    assert "api gate secret" not in str(change.detail)
    assert change.detail["gate_password_hash"] == ["(hidden)", "(changed)"]

    for bad, named in [
        ({"lockout_minutes": 5}, "lockout_minutes"),
        ({"password_history": 99}, "password_history must be 1 to 15"),
        ({"session_idle_minutes": "10"}, "session_idle_minutes must be a whole number"),
        ({"require_totp": "yes"}, "require_totp must be true or false"),
        ({"password_classes": "upper"}, "password_classes must be a list"),
        ({"gate_password_hash": "$argon2id$forged"}, "gate_password_hash"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"password_min_length": 16, "audit_retention_days": 1}, "audit_retention_days"),
    ]:
        reply = await call(client, "PATCH", "/admin/security", token=token, json=bad)
        assert reply.status == 400 and named in reply.body["error"], (bad, reply.body)
    assert await load_settings(db, acme.tenant_id) == settings  # nothing changed

    member = await token_of(db, acme, acme.alice)
    assert (await call(client, "GET", "/admin/security", token=member)).status == 403
    refused = await call(client, "PATCH", "/admin/security", token=member, json={})
    assert refused.status == 403
    cookie_only = await sign_in(Browser(client), "boss@example.com", PASSWORD)
    assert cookie_only.status == 303


# ---------------------------------------------------------------- audit records


async def test_administration_and_self_service_are_recorded(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    tid = acme.tenant_id
    owner = await as_user(client, db, clock, acme, acme.owner)
    await owner.post(f"/admin/users/{acme.bob.id}/role", {"role": "admin"})
    await owner.post(f"/admin/users/{acme.bob.id}/deactivate")
    await owner.post(f"/admin/users/{acme.bob.id}/reactivate")
    await owner.post("/admin/invitations", {"email": "New@Example.com", "role": "guest"})
    (invitation,) = await accounts.list_invitations(db, tid, acme.owner.id, clock=clock)
    await owner.post(f"/admin/invitations/{invitation.id}/withdraw")

    alice = Browser(client)
    assert (await sign_in(alice, "alice@example.com", PASSWORD)).status == 303
    made = await alice.post("/settings/tokens", {"name": "ci", "scope": "read"})
    assert made.status == 200
    (info,) = await accounts.list_api_tokens(db, tid, acme.alice.id)
    await alice.post(f"/settings/tokens/{info.id}/revoke")
    other = await as_user(client, db, clock, acme, acme.alice)
    await alice.post("/settings/sessions/others")
    assert (await other.get("/spaces")).status == 303
    await alice.post("/logout")
    api_in = await call(
        client, "POST", "/session", json={"email": "alice@example.com", "password": PASSWORD}
    )
    cookie = re.search(r"mw_session=([^;]+)", api_in.headers["Set-Cookie"])
    assert cookie is not None
    assert (await call(client, "DELETE", "/session", cookie=cookie.group(1))).status == 204

    expected = {
        "role_change": (acme.owner.id, f"user {acme.bob.id}", {"from": "member", "to": "admin"}),
        "user_deactivated": (acme.owner.id, f"user {acme.bob.id}", {}),
        "user_reactivated": (acme.owner.id, f"user {acme.bob.id}", {}),
        "invitation": (acme.owner.id, "new@example.com", {"role": "guest", "days": 7}),
        "invitation_withdrawn": (acme.owner.id, f"invitation {invitation.id}", {}),
        "token_created": (acme.alice.id, f"user {acme.alice.id}",
                          {"name": "ci", "scopes": ["read"]}),
        "token_revoked": (acme.alice.id, f"API token {info.id}", {}),
        "session_revoked": (acme.alice.id, f"user {acme.alice.id}",
                            {"sessions": 1, "others": True}),
    }  # fmt: skip
    for action, (user_id, target, detail) in expected.items():
        (entry,) = await records(db, tid, action)
        assert (entry.user_id, entry.target, entry.detail) == (user_id, target, detail), action
        assert (entry.ip, entry.result) == ("127.0.0.1", "ok"), action
    outs = await records(db, tid, "sign_out")
    assert [(e.user_id, e.actor, e.ip) for e in outs] == [
        (acme.alice.id, "alice@example.com", "127.0.0.1")
    ] * 2
    ins = [e for e in await records(db, tid, "sign_in") if e.result == "ok"]
    assert [(e.user_id, e.ip) for e in ins] == [(acme.alice.id, "127.0.0.1")] * 2
