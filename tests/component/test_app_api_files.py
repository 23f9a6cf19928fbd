"""The file routes of /api/v1 in process on a real SQLite file (and PostgreSQL for one flow):
multipart uploads under their own size limit, byte-exact downloads with safe headers, refused
content, hostile names, tenant and space isolation, credentials and scopes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, hdrs, web
from aiohttp.test_utils import TestClient, TestServer

from app import accounts
from app.db import Database, Dialect
from app.files import tenant_files_dir
from app.service import tenant_for_host
from app.settings import AppSettings
from app.web_api import WebApi
from app.web_auth import SESSION_COOKIE
from tests.component.test_app import SETTINGS
from tests.component.test_app_api import (
    PASSWORD,
    Api,
    FakeClock,
    Org,
    Reply,
    acme,
    assert_error,
    backend,
    clock,
    db,
    globex,
)
from tests.support_pg import pg_dsn, pg_server

# Fixtures shared with the API tests; pytest finds them as names of this module.
__all__ = ["acme", "backend", "clock", "db", "globex", "pg_dsn", "pg_server"]

MAX_UPLOAD = 64 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 40
TEXT = "naïve notes\nline two\n".encode() * 100
HTML = b"<!DOCTYPE html><html><script>alert(1)</script></html>"


@pytest.fixture
def settings(tmp_path: Path) -> AppSettings:
    return dataclasses.replace(SETTINGS, data_dir=tmp_path / "slot", max_upload_bytes=MAX_UPLOAD)


def api_app(settings: AppSettings, clock: FakeClock, db: Database) -> web.Application:
    """The API as ``build_app`` mounts it, with file storage under ``settings.data_dir``."""

    def tenant_of(request: web.Request) -> str | None:
        host = request.headers.get(hdrs.HOST, "")
        return tenant_for_host(host, settings.base_domain, settings.tenants)

    api = WebApi(clock, db, tenant_of, settings)
    app = web.Application(middlewares=[api.errors])
    api.add_routes(app.router)
    return app


@pytest.fixture
async def api(settings: AppSettings, db: Database, clock: FakeClock) -> AsyncIterator[Api]:
    async with TestClient(TestServer(api_app(settings, clock, db))) as client:
        yield Api(client)


def form(data: bytes, name: str, content_type: str, message: str | None = None) -> FormData:
    sent = FormData()
    if message is not None:
        sent.add_field("message", message)
    sent.add_field("file", data, filename=name, content_type=content_type)
    return sent


async def upload(api: Api, org: Org, token: str, space: str, body: Any, **kw: Any) -> Reply:
    return await api.call("POST", f"/spaces/{space}/files", org.host, token, data=body, **kw)


async def new_space(api: Api, org: Org, *, private: bool = False) -> str:
    body = {"name": "docs", "private": private}
    space = await api.ok("POST", "/spaces", org, org.owner_token, json=body)
    return str(space["id"])


async def download(api: Api, org: Org, token: str | None, file_id: str) -> tuple[Reply, bytes]:
    sent = {"Host": org.host, **({} if token is None else {"Authorization": f"Bearer {token}"})}
    async with api.client.get(f"/api/v1/files/{file_id}", headers=sent) as response:
        data = await response.read()
        body = await response.json() if response.content_type == "application/json" else None
        return Reply(response.status, body, response), data


async def raw_upload(api: Api, org: Org, space: str, name_param: bytes) -> Reply:
    """An upload of TEXT whose file part names itself exactly as ``name_param`` says."""
    raw = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; ' + name_param + b"\r\n"
        b"Content-Type: text/plain\r\n\r\n" + TEXT + b"\r\n--b0undary--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    return await upload(api, org, org.owner_token, space, raw, headers=headers)


def stored_files(settings: AppSettings, org: Org) -> list[Path]:
    directory = tenant_files_dir(settings.data_dir, org.tenant_id)
    return sorted(directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_upload_list_download_delete(api: Api, acme: Org, settings: AppSettings) -> None:
    space = await new_space(api, acme)
    png = await upload(api, acme, acme.owner_token, space, form(PNG, "pic.png", "image/png"))
    assert png.status == 201, png.body
    assert png.body["content_type"] == "image/png" and png.body["size"] == len(PNG)
    assert png.body["space_id"] == space and isinstance(png.body["id"], str)
    assert png.body["uploader_id"] == str(acme.owner.id) and png.body["message_id"] is None
    text = await upload(api, acme, acme.owner_token, space, form(TEXT, "notes.txt", "text/plain"))
    assert text.status == 201, text.body
    assert text.body["content_type"] == "text/plain; charset=utf-8"

    for record, data in ((png.body, PNG), (text.body, TEXT)):
        reply, got = await download(api, acme, acme.alice_token, record["id"])
        assert reply.status == 200 and got == data
        headers = reply.response.headers
        assert headers["Content-Type"] == record["content_type"]
        assert headers["Content-Disposition"].startswith("attachment; filename=")
        assert record["name"] in headers["Content-Disposition"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "private, no-store"
        assert headers["Content-Security-Policy"] == "sandbox"

    listed = await api.ok("GET", f"/spaces/{space}/files?limit=1", acme, acme.alice_token)
    assert [item["id"] for item in listed["items"]] == [text.body["id"]]
    rest = await api.ok(
        "GET", f"/spaces/{space}/files?limit=1&cursor={listed['next']}", acme, acme.alice_token
    )
    assert [item["id"] for item in rest["items"]] == [png.body["id"]] and rest["next"] is None

    refused = await api.call("DELETE", f"/files/{png.body['id']}", acme.host, acme.alice_token)
    assert_error(refused, 403)
    await api.ok("DELETE", f"/files/{png.body['id']}", acme, acme.owner_token)
    assert_error((await download(api, acme, acme.owner_token, png.body["id"]))[0], 404)
    assert_error(
        await api.call("DELETE", f"/files/{png.body['id']}", acme.host, acme.owner_token), 404
    )
    assert stored_files(settings, acme) == [
        tenant_files_dir(settings.data_dir, acme.tenant_id) / text.body["id"]
    ]


async def test_upload_to_own_message(api: Api, acme: Org) -> None:
    space = await new_space(api, acme)
    thread = await api.ok(
        "POST", f"/spaces/{space}/threads", acme, acme.owner_token, json={"title": "t"}
    )
    message = await api.ok(
        "POST", f"/threads/{thread['id']}/messages", acme, acme.owner_token, json={"body": "see"}
    )
    body = form(PNG, "pic.png", "image/png", message=message["id"])
    reply = await upload(api, acme, acme.owner_token, space, body)
    assert reply.status == 201 and reply.body["message_id"] == message["id"]
    bad = await upload(api, acme, acme.owner_token, space, form(PNG, "p.png", "", message="x"))
    assert_error(bad, 400)
    listed = await api.ok("GET", f"/threads/{thread['id']}/messages", acme, acme.alice_token)
    assert [item["attachments"] for item in listed["items"]] == [[reply.body]]


class CountingDatabase:
    """A Database that keeps the SQL of every ``fetch`` it passes on."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.fetched: list[str] = []

    @property
    def dialect(self) -> Dialect:
        return self.db.dialect

    async def execute(self, sql: str, *args: Any) -> int:
        return await self.db.execute(sql, *args)

    async def execute_script(self, script: str) -> None:
        await self.db.execute_script(script)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.fetched.append(sql)
        return await self.db.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        return await self.db.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.db.fetchval(sql, *args)

    def transaction(self) -> AbstractAsyncContextManager[Database]:
        return self.db.transaction()

    async def close(self) -> None:
        await self.db.close()


async def test_message_pages_carry_their_attachments_in_one_query(
    acme: Org, settings: AppSettings, clock: FakeClock, db: Database
) -> None:
    counting = CountingDatabase(db)
    async with TestClient(TestServer(api_app(settings, clock, counting))) as client:
        api, token = Api(client), acme.owner_token
        space = await new_space(api, acme)
        thread = await api.ok("POST", f"/spaces/{space}/threads", acme, token, json={"title": "t"})
        posts = f"/threads/{thread['id']}/messages"
        ids = [
            (await api.ok("POST", posts, acme, token, json={"body": body}))["id"]
            for body in ("one", "two", "three")
        ]
        a = await upload(api, acme, token, space, form(PNG, "a.png", "", message=ids[0]))
        b = await upload(api, acme, token, space, form(TEXT, "b.txt", "", message=ids[0]))
        c = await upload(api, acme, token, space, form(PNG, "c.png", "", message=ids[2]))
        await upload(api, acme, token, space, form(PNG, "loose.png", ""))  # on no message
        counting.fetched.clear()
        listed = await api.ok("GET", posts, acme, acme.alice_token)
        assert [item["id"] for item in listed["items"]] == ids[::-1]
        attachments = [item["attachments"] for item in listed["items"]]
        assert attachments == [[c.body], [], [a.body, b.body]]
        assert sum("FROM files" in sql for sql in counting.fetched) == 1  # not one per message
        newest = await api.ok("GET", posts + "?limit=1", acme, acme.alice_token)
        assert [item["attachments"] for item in newest["items"]] == [[c.body]]
        counting.fetched.clear()
        after = await api.ok("GET", f"{posts}?after={ids[2]}", acme, acme.alice_token)
        assert after["items"] == [] and not any("FROM files" in s for s in counting.fetched)


async def test_oversize_is_413_and_nothing_is_stored(
    api: Api, acme: Org, settings: AppSettings
) -> None:
    space = await new_space(api, acme)
    big = b"x" * (MAX_UPLOAD + 1)
    declared = await upload(api, acme, acme.owner_token, space, form(big, "big.txt", "text/plain"))
    assert_error(declared, 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: checked as it streams
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        yield b"Content-Type: text/plain\r\n\r\n"
        for _ in range(MAX_UPLOAD // 4096 + 2):
            yield b"y" * 4096
        yield b"\r\n--b0undary--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    streamed = await upload(api, acme, acme.owner_token, space, chunks(), headers=headers)
    assert_error(streamed, 413)
    # Exactly at the limit is fine: the limit is the file's, not the JSON API's 64 KiB.
    exact = b"z" * MAX_UPLOAD
    fits = await upload(api, acme, acme.owner_token, space, form(exact, "ok.txt", "text/plain"))
    assert fits.status == 201, fits.body
    listed = await api.ok("GET", f"/spaces/{space}/files", acme, acme.owner_token)
    assert [item["id"] for item in listed["items"]] == [fits.body["id"]]
    assert [path.name for path in stored_files(settings, acme)] == [fits.body["id"]]


async def test_html_claiming_png_is_415(api: Api, acme: Org, settings: AppSettings) -> None:
    space = await new_space(api, acme)
    for name, kind in (("x.png", "image/png"), ("x.html", "text/html"), ("x", "")):
        assert_error(await upload(api, acme, acme.owner_token, space, form(HTML, name, kind)), 415)
    not_a_form = await api.call(
        "POST", f"/spaces/{space}/files", acme.host, acme.owner_token, data=PNG,
        headers={"Content-Type": "image/png"},
    )  # fmt: skip
    assert_error(not_a_form, 415)
    other_field = FormData()
    other_field.add_field("attachment", PNG, filename="p.png", content_type="image/png")
    assert_error(await upload(api, acme, acme.owner_token, space, other_field), 400)
    assert stored_files(settings, acme) == []


async def test_hostile_names_give_a_safe_disposition(
    api: Api, acme: Org, settings: AppSettings
) -> None:
    space = await new_space(api, acme)
    traversal = await raw_upload(api, acme, space, b'filename="../../../etc/passwd.txt"')
    assert traversal.status == 201, traversal.body
    assert traversal.body["name"] == "passwd.txt"
    backslashes = await raw_upload(api, acme, space, b'filename="..\\..\\x\\evil.txt"')
    assert backslashes.status == 201  # a quoted-string: the backslashes escape, and are gone
    assert backslashes.body["name"].endswith("evil.txt") and "\\" not in backslashes.body["name"]
    crlf = await raw_upload(
        api, acme, space, b"filename*=UTF-8''a%0D%0ASet-Cookie%3A%20x%3Dy%0D%0A%0D%0A%3Ch%3E.txt"
    )
    assert crlf.status == 201, crlf.body
    assert "\r" not in crlf.body["name"] and "\n" not in crlf.body["name"]
    for record in (traversal.body, crlf.body):
        reply, data = await download(api, acme, acme.owner_token, record["id"])
        assert reply.status == 200 and data == TEXT
        disposition = reply.response.headers["Content-Disposition"]
        assert "\r" not in disposition and "\n" not in disposition and "/" not in disposition
        assert "Set-Cookie" not in reply.response.headers
    stored = {path.name for path in stored_files(settings, acme)}
    assert stored == {traversal.body["id"], backslashes.body["id"], crlf.body["id"]}
    assert not (settings.data_dir.parent / "etc").exists()


async def test_other_tenants_and_non_members_get_404(api: Api, acme: Org, globex: Org) -> None:
    private = await new_space(api, acme, private=True)
    reply = await upload(api, acme, acme.owner_token, private, form(PNG, "p.png", "image/png"))
    file_id = reply.body["id"]
    assert_error((await download(api, acme, acme.alice_token, file_id))[0], 404)
    listed = await api.call("GET", f"/spaces/{private}/files", acme.host, acme.alice_token)
    assert_error(listed, 404)
    assert_error(await api.call("DELETE", f"/files/{file_id}", acme.host, acme.alice_token), 404)
    assert_error(await upload(api, acme, acme.alice_token, private, form(PNG, "p.png", "")), 404)
    # Another tenant's Host: its own valid token finds nothing of acme's.
    assert_error((await download(api, globex, globex.owner_token, file_id))[0], 404)
    elsewhere = await api.call("GET", f"/spaces/{private}/files", globex.host, globex.owner_token)
    assert_error(elsewhere, 404)
    # And acme's token is nothing on globex's Host.
    assert_error((await download(api, globex, acme.owner_token, file_id))[0], 401)
    assert (await download(api, acme, acme.owner_token, file_id))[0].status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/spaces/1/files"),
        ("GET", "/spaces/1/files"),
        ("GET", "/files/1"),
        ("DELETE", "/files/1"),
    ],
)
async def test_file_routes_want_credentials(api: Api, acme: Org, method: str, path: str) -> None:
    reply = await api.call(method, path, acme.host)
    assert_error(reply, 401)
    assert reply.response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_read_only_token_cannot_upload_or_delete(
    api: Api, db: Database, acme: Org, settings: AppSettings
) -> None:
    space = await new_space(api, acme)
    reader = await accounts.create_api_token(
        db, acme.tenant_id, acme.owner.id, "reader", ["read"], None
    )
    assert_error(await upload(api, acme, reader, space, form(PNG, "p.png", "image/png")), 403)
    assert stored_files(settings, acme) == []
    made = await upload(api, acme, acme.owner_token, space, form(PNG, "p.png", "image/png"))
    reply, data = await download(api, acme, reader, made.body["id"])
    assert reply.status == 200 and data == PNG
    assert_error(await api.call("DELETE", f"/files/{made.body['id']}", acme.host, reader), 403)


async def test_cookie_uploads_need_the_origin(api: Api, acme: Org) -> None:
    space = await new_space(api, acme)
    signed = await api.call(
        "POST", "/session", acme.host, json={"email": "boss@example.com", "password": PASSWORD}
    )
    cookie = {"Cookie": f"{SESSION_COOKIE}={signed.response.cookies[SESSION_COOKIE].value}"}
    body = form(PNG, "p.png", "image/png")
    assert_error(await upload(api, acme, None, space, body, headers=cookie), 403)
    own = {**cookie, "Origin": "http://acme.localhost"}
    again = form(PNG, "p.png", "image/png")
    assert (await upload(api, acme, None, space, again, headers=own)).status == 201


async def test_without_storage_file_routes_are_503(
    db: Database, clock: FakeClock, acme: Org
) -> None:
    api = WebApi(clock, db, lambda request: "acme")
    app = web.Application(middlewares=[api.errors])
    api.add_routes(app.router)
    async with TestClient(TestServer(app)) as client:
        reply = await Api(client).call("GET", "/files/1", acme.host, acme.owner_token)
    assert_error(reply, 503)
