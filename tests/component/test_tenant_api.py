"""POST /v1/tenants on the agent: an operator provisions a configured tenant in its slot's data
(through the app's admin module, as `moonwatch tenant create` does) and gets the setup link."""

from __future__ import annotations

import pytest

from app.accounts import tenant_by_name
from app.db import open_database, sqlite_path
from tests.component.test_stops_api import AUTH, Api, api

__all__ = ["api"]  # the fixture, imported for pytest

BODY = {"name": "acme", "admin_email": "Boss@Acme.test", "display_name": "Acme Inc."}


async def test_an_operator_creates_a_tenant_once_and_gets_its_setup_link(api: Api) -> None:
    status, answer, _ = await api.post("/v1/tenants", json=BODY)
    assert status == 201, answer
    assert answer["tenant"] == "acme" and answer["slot"] == "s1"
    assert answer["setup_link"].startswith("http://acme.localhost:")
    assert answer["setup_link"].endswith(f"/join?token={answer['setup_token']}")
    db = await open_database(sqlite_path(api.config.data_dir / "slots" / "s1"))
    try:
        tenant = await tenant_by_name(db, "acme")
    finally:
        await db.close()
    assert tenant is not None and tenant.display_name == "Acme Inc."

    status, again, _ = await api.post("/v1/tenants", json=BODY)
    assert status == 409 and "taken" in again["error"]


async def test_without_the_operator_token_nothing_is_created(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        status, answer, reply_headers = await api.post("/v1/tenants", json=BODY, headers=headers)
        assert status == 401 and answer["error"] == "operator token required"
        assert reply_headers["WWW-Authenticate"].startswith("Bearer")
    assert not (api.config.data_dir / "slots" / "s1" / "app.sqlite3").exists()


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"not json", 400, "the body must be a JSON object"),
        (b"[1, 2]", 400, "the body must be a JSON object"),
        (b'{"name": "acme"}', 400, "name and admin_email are required strings"),
        (b'{"name": 5, "admin_email": "a@b.test"}', 400, "name and admin_email are required"),
        (b'{"name": "acme", "admin_email": "a@b.test", "display_name": []}', 400, "display_name"),
        (b'{"name": "nowhere", "admin_email": "a@b.test"}', 400, "'nowhere' is in no slot"),
        (b'{"name": "acme", "admin_email": "not an address"}', 400, "e-mail"),
        (b'{"name": "' + b"x" * 5000 + b'"}', 413, "the body takes at most 4096 bytes"),
    ],
)
async def test_bad_requests_get_a_clear_error_and_create_nothing(
    api: Api, body: bytes, status: int, error: str
) -> None:
    got, answer, _ = await api.post("/v1/tenants", data=body, headers=AUTH)
    assert (got, answer["status"]) == (status, status), answer
    assert error in answer["error"]
    status, created, _ = await api.post("/v1/tenants", json=BODY)
    assert status == 201, created  # the bad request left the name free
