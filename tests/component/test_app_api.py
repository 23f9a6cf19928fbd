"""The JSON API under /api/v1, in process on a real SQLite file (and PostgreSQL for the full
flows): authentication by token and session cookie, every endpoint, error shapes, tenant
isolation by Host and hostile input that must answer 4xx, never 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from app import accounts
from app.accounts import User
from app.db import Database, open_database
from app.fence import GateStatus
from app.migrate import migrate
from app.service import build_app
from app.web_api import MAX_BODY_BYTES
from app.web_auth import SESSION_COOKIE, SESSION_IDLE_TIMEOUT_S
from tests.app_support import FakeClock
from tests.component.test_app import SETTINGS
from tests.support_pg import pg_dsn, pg_server

# Fixtures shared from tests.support_pg; pytest finds them as names of this module.
__all__ = ["pg_dsn", "pg_server"]

START_S = 1_700_000_000.0
DAY_S = 86_400.0
PASSWORD = "a long password 1"
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
V1 = "/api/v1"


@dataclass
class Org:
    """A tenant with its owner and a member, each with a read+write API token."""

    name: str
    tenant_id: int
    owner: User
    owner_token: str
    alice: User
    alice_token: str

    @property
    def host(self) -> str:
        return f"{self.name}.localhost"


@dataclass
class Reply:
    status: int
    body: Any
    response: ClientResponse


class Api:
    """A test client that names the tenant by Host and authenticates as told."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def call(
        self,
        method: str,
        path: str,
        host: str,
        token: str | None = None,
        *,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = {"Host": host, **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.client.request(
            method, V1 + path, json=json, data=data, headers=sent
        ) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            body = await response.json() if is_json else text
            return Reply(response.status, body, response)

    async def ok(self, method: str, path: str, org: Org, token: str, **kw: Any) -> Any:
        reply = await self.call(method, path, org.host, token, **kw)
        assert reply.status in (200, 201, 204), (reply.status, reply.body)
        return reply.body


def assert_error(reply: Reply, status: int) -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert isinstance(reply.body, dict), reply.body
    assert reply.body["status"] == status
    assert isinstance(reply.body["error"], str) and reply.body["error"]
    assert "Traceback" not in reply.body["error"]


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
async def db(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Database]:
    if backend == "sqlite":
        url = f"sqlite://{tmp_path / 'app.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_dsn")
    database = await open_database(url)
    try:
        await migrate(database)
        yield database
    finally:
        await database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def api(db: Database, clock: FakeClock) -> AsyncIterator[Api]:
    async with TestClient(TestServer(build_app(SETTINGS, clock, db=db))) as client:
        yield Api(client)


async def new_org(db: Database, clock: FakeClock, name: str) -> Org:
    tenant, setup = await accounts.create_tenant(db, name, name.title(), "boss@example.com", clock)
    owner = await accounts.accept_invitation(
        db, tenant.id, setup, "The Boss", PASSWORD, clock=clock, hasher=FAST
    )
    invitation = await accounts.invite(
        db, tenant.id, "alice@example.com", "member", owner.id, DAY_S
    )
    alice = await accounts.accept_invitation(
        db, tenant.id, invitation, "Alice", PASSWORD, clock=clock, hasher=FAST
    )
    tokens = [
        await accounts.create_api_token(db, tenant.id, user.id, "ci", ["read", "write"], None)
        for user in (owner, alice)
    ]
    return Org(name, tenant.id, owner, tokens[0], alice, tokens[1])


@pytest.fixture
async def acme(db: Database, clock: FakeClock) -> Org:
    return await new_org(db, clock, "acme")


@pytest.fixture
async def globex(db: Database, clock: FakeClock) -> Org:
    return await new_org(db, clock, "globex")


async def space_thread(api: Api, org: Org, name: str = "general") -> tuple[str, str]:
    space = await api.ok("POST", "/spaces", org, org.owner_token, json={"name": name})
    await api.ok("POST", f"/spaces/{space['id']}/join", org, org.alice_token)
    thread = await api.ok(
        "POST", f"/spaces/{space['id']}/threads", org, org.owner_token, json={"title": "Hello"}
    )
    return space["id"], thread["id"]


# ---------------------------------------------------------------- authentication

ENDPOINTS = [
    ("GET", "/me"),
    ("GET", "/spaces"),
    ("POST", "/spaces"),
    ("GET", "/spaces/1"),
    ("POST", "/spaces/1/join"),
    ("POST", "/spaces/1/leave"),
    ("GET", "/spaces/1/threads"),
    ("POST", "/spaces/1/threads"),
    ("GET", "/threads/1"),
    ("GET", "/threads/1/messages"),
    ("POST", "/threads/1/messages"),
    ("POST", "/threads/1/read"),
    ("PATCH", "/messages/1"),
    ("DELETE", "/messages/1"),
    ("GET", "/messages/1/history"),
    ("GET", "/mentions"),
    ("POST", "/mentions/read"),
    ("GET", "/unread"),
    ("GET", "/search?q=x"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_endpoint_wants_credentials(
    api: Api, acme: Org, method: str, path: str
) -> None:
    reply = await api.call(method, path, acme.host)
    assert_error(reply, 401)
    assert reply.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert reply.response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer " + "x" * 43},
        {"Authorization": "Basic Ym9zczpwdw=="},
        {"Authorization": "Bearer"},
        {"Cookie": f"{SESSION_COOKIE}=" + "y" * 43},
    ],
)
async def test_bad_credentials_are_401(api: Api, acme: Org, headers: dict[str, str]) -> None:
    reply = await api.call("GET", "/spaces", acme.host, headers=headers)
    assert_error(reply, 401)


async def test_scopes_are_enforced(api: Api, db: Database, acme: Org) -> None:
    read_only = await accounts.create_api_token(
        db, acme.tenant_id, acme.owner.id, "reader", ["read"], None
    )
    write_only = await accounts.create_api_token(
        db, acme.tenant_id, acme.owner.id, "writer", ["write"], None
    )
    assert (await api.ok("GET", "/spaces", acme, read_only)) == {"items": [], "next": None}
    assert_error(await api.call("POST", "/spaces", acme.host, read_only, json={"name": "x"}), 403)
    assert_error(await api.call("GET", "/spaces", acme.host, write_only), 403)
    created = await api.call("POST", "/spaces", acme.host, write_only, json={"name": "x"})
    assert created.status == 201
    me = await api.ok("GET", "/me", acme, read_only)
    assert me["auth"] == {"via": "token", "scopes": ["read"]}
    assert (me["id"], me["email"], me["workspace"]) == (
        str(acme.owner.id),
        "boss@example.com",
        "acme",
    )


async def test_revoked_token_is_401(api: Api, db: Database, acme: Org) -> None:
    token = await accounts.create_api_token(db, acme.tenant_id, acme.owner.id, "t", ["read"], None)
    tokens = await accounts.list_api_tokens(db, acme.tenant_id, acme.owner.id)
    await api.ok("GET", "/me", acme, token)
    await accounts.revoke_api_token(db, acme.tenant_id, tokens[0].id, acme.owner.id)
    assert_error(await api.call("GET", "/me", acme.host, token), 401)


def session_cookie(reply: Reply) -> Any:
    cookies: SimpleCookie = SimpleCookie()
    for header in reply.response.headers.getall("Set-Cookie"):
        cookies.load(header)
    return cookies[SESSION_COOKIE]


async def test_session_sign_in_and_out(api: Api, acme: Org, clock: FakeClock) -> None:
    wrong = await api.call(
        "POST", "/session", acme.host, json={"email": "boss@example.com", "password": "nope" * 4}
    )
    unknown = await api.call(
        "POST", "/session", acme.host, json={"email": "who@example.com", "password": PASSWORD}
    )
    malformed = await api.call(
        "POST", "/session", acme.host, json={"email": "not an address", "password": PASSWORD}
    )
    for reply in (wrong, unknown, malformed):
        assert_error(reply, 401)
        assert "Set-Cookie" not in reply.response.headers
    assert wrong.body == unknown.body == malformed.body  # never tells whether an account exists

    signed = await api.call(
        "POST", "/session", acme.host, json={"email": "BOSS@example.com", "password": PASSWORD}
    )
    assert signed.status == 200, signed.body
    assert signed.body["auth"]["via"] == "session"
    morsel = session_cookie(signed)
    assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
    assert not morsel["secure"] and not morsel["domain"]
    cookie = {"Cookie": f"{SESSION_COOKIE}={morsel.value}"}

    me = await api.call("GET", "/me", acme.host, headers=cookie)
    assert me.status == 200 and me.body["id"] == str(acme.owner.id)
    # Changes by cookie need the workspace's own Origin (CSRF).
    space = {"name": "by-cookie"}
    assert_error(await api.call("POST", "/spaces", acme.host, json=space, headers=cookie), 403)
    evil = {**cookie, "Origin": "http://globex.localhost"}
    assert_error(await api.call("POST", "/spaces", acme.host, json=space, headers=evil), 403)
    own = {**cookie, "Origin": "http://acme.localhost"}
    assert (await api.call("POST", "/spaces", acme.host, json=space, headers=own)).status == 201

    out = await api.call("DELETE", "/session", acme.host, headers=own)
    assert out.status == 204
    assert session_cookie(out).value == "" and session_cookie(out)["max-age"] == "0"
    assert_error(await api.call("GET", "/me", acme.host, headers=cookie), 401)
    assert_error(await api.call("DELETE", "/session", acme.host, headers=cookie), 401)


async def test_session_cookie_is_secure_behind_https_and_idles_out(
    api: Api, acme: Org, clock: FakeClock
) -> None:
    signed = await api.call(
        "POST",
        "/session",
        acme.host,
        json={"email": "alice@example.com", "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert signed.status == 200
    morsel = session_cookie(signed)
    assert morsel["secure"]
    cookie = {"Cookie": f"{SESSION_COOKIE}={morsel.value}"}
    assert (await api.call("GET", "/me", acme.host, headers=cookie)).status == 200
    clock.advance(SESSION_IDLE_TIMEOUT_S + 1)
    assert_error(await api.call("GET", "/me", acme.host, headers=cookie), 401)


# ---------------------------------------------------------------- the full flow


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_full_flow(api: Api, acme: Org) -> None:
    owner, alice = acme.owner_token, acme.alice_token
    space_id, thread_id = await space_thread(api, acme)
    assert (await api.ok("GET", f"/spaces/{space_id}", acme, alice))["is_member"] is True
    thread = await api.ok("GET", f"/threads/{thread_id}", acme, alice)
    assert (thread["title"], thread["space_id"]) == ("Hello", space_id)
    listed = await api.ok("GET", f"/spaces/{space_id}/threads", acme, alice)
    assert [t["id"] for t in listed["items"]] == [thread_id] and listed["next"] is None

    body = f"ping @alice {XSS} quokka"
    posted = await api.ok(
        "POST", f"/threads/{thread_id}/messages", acme, owner, json={"body": body}
    )
    message_id = posted["id"]
    assert isinstance(message_id, str) and posted["body"] == body  # stored raw
    assert "<script>" not in posted["html"] and "&lt;script&gt;" in posted["html"]
    assert "<img" not in posted["html"]
    assert '<span class="mention">@alice</span>' in posted["html"]
    assert isinstance(posted["created_at"], int)

    # Alice: one unread message, one mention; both go away once read.
    unread = await api.ok("GET", "/unread", acme, alice)
    assert unread == {"spaces": {space_id: 1}}
    threads = await api.ok("GET", f"/unread?space={space_id}", acme, alice)
    assert threads == {"space_id": space_id, "threads": {thread_id: 1}}
    mentions = await api.ok("GET", "/mentions", acme, alice)
    assert [m["id"] for m in mentions["items"]] == [message_id]
    marked = await api.ok("POST", f"/threads/{thread_id}/read", acme, alice)
    assert marked == {"thread_id": thread_id, "last_read_message_id": message_id}
    assert await api.ok("GET", "/unread", acme, alice) == {"spaces": {}}
    read = await api.ok("POST", "/mentions/read", acme, alice, json={"message_ids": [message_id]})
    assert read == {"marked": 1}
    assert (await api.ok("GET", "/mentions", acme, alice))["items"] == []

    found = await api.ok("GET", "/search?q=quokka", acme, alice)
    assert [m["id"] for m in found["items"]] == [message_id]

    edited = await api.ok(
        "PATCH", f"/messages/{message_id}", acme, owner, json={"body": "quokka 2"}
    )
    assert edited["body"] == "quokka 2" and edited["edited_at"] is not None
    assert_error(
        await api.call("PATCH", f"/messages/{message_id}", acme.host, alice, json={"body": "x"}),
        403,
    )
    history = await api.ok("GET", f"/messages/{message_id}/history", acme, owner)
    assert [h["body"] for h in history["items"]] == [body] and history["next"] is None
    assert "&lt;script&gt;" in history["items"][0]["html"]
    assert_error(await api.call("GET", f"/messages/{message_id}/history", acme.host, alice), 403)

    deleted = await api.ok("DELETE", f"/messages/{message_id}", acme, owner)
    assert (deleted["body"], deleted["html"]) == ("", "") and deleted["deleted_at"] is not None
    assert (await api.ok("GET", "/search?q=quokka", acme, alice))["items"] == []
    listed = await api.ok("GET", f"/threads/{thread_id}/messages", acme, alice)
    assert [(m["id"], m["body"]) for m in listed["items"]] == [(message_id, "")]
    history = await api.ok("GET", f"/messages/{message_id}/history", acme, owner)
    assert [h["body"] for h in history["items"]] == [body, "quokka 2"]

    assert (await api.call("POST", f"/spaces/{space_id}/leave", acme.host, alice)).status == 204
    assert (await api.ok("GET", f"/spaces/{space_id}", acme, alice))["is_member"] is False


async def test_domain_errors_map_to_statuses(api: Api, acme: Org) -> None:
    await api.ok("POST", "/spaces", acme, acme.owner_token, json={"name": "general"})
    again = await api.call("POST", "/spaces", acme.host, acme.owner_token, json={"name": "general"})
    assert_error(again, 409)
    private = await api.ok(
        "POST", "/spaces", acme, acme.owner_token, json={"name": "secret", "private": True}
    )
    assert_error(
        await api.call("GET", f"/spaces/{private['id']}", acme.host, acme.alice_token), 404
    )
    assert_error(
        await api.call("POST", "/spaces", acme.host, acme.owner_token, json={"name": " "}), 400
    )


async def test_pagination_follows_next(api: Api, acme: Org) -> None:
    token = acme.owner_token
    for index in range(5):
        await api.ok("POST", "/spaces", acme, token, json={"name": f"space-{index}"})
    names: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        page = await api.ok(
            "GET", f"/spaces?limit=2&cursor={cursor}" if cursor else "/spaces?limit=2", acme, token
        )
        names += [space["name"] for space in page["items"]]
        cursor = page["next"]
    assert names == [f"space-{index}" for index in range(5)]

    _, thread_id = await space_thread(api, acme, "chat")
    ids = [
        (
            await api.ok(
                "POST", f"/threads/{thread_id}/messages", acme, token, json={"body": f"m{i}"}
            )
        )["id"]
        for i in range(5)
    ]
    newest_first: list[str] = []
    path = f"/threads/{thread_id}/messages?limit=2"
    page = await api.ok("GET", path, acme, token)
    while True:
        newest_first += [message["id"] for message in page["items"]]
        if page["next"] is None:
            break
        page = await api.ok("GET", f"{path}&cursor={page['next']}", acme, token)
    assert newest_first == ids[::-1]
    forwards = await api.ok("GET", f"{path}&after=0", acme, token)
    assert [m["id"] for m in forwards["items"]] == ids[:2]
    rest = await api.ok("GET", f"{path}&cursor={forwards['next']}", acme, token)
    assert [m["id"] for m in rest["items"]] == ids[2:4]


# ---------------------------------------------------------------- tenants


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_tenants_are_isolated(api: Api, acme: Org, globex: Org) -> None:
    a_space, a_thread = await space_thread(api, acme)
    b_space, b_thread = await space_thread(api, globex)  # the same names
    posted = await api.ok(
        "POST", f"/threads/{b_thread}/messages", globex, globex.owner_token,
        json={"body": "globex wombat"},
    )  # fmt: skip
    b_message = posted["id"]
    # A's token on B's Host: not a credential there.
    assert_error(await api.call("GET", "/spaces", globex.host, acme.owner_token), 401)
    assert_error(await api.call("GET", f"/spaces/{b_space}", globex.host, acme.owner_token), 401)
    # B's ids through A: not found, whatever the verb.
    token = acme.owner_token
    for method, path in [
        ("GET", f"/spaces/{b_space}"),
        ("POST", f"/spaces/{b_space}/join"),
        ("GET", f"/spaces/{b_space}/threads"),
        ("POST", f"/spaces/{b_space}/threads"),
        ("GET", f"/threads/{b_thread}"),
        ("GET", f"/threads/{b_thread}/messages"),
        ("POST", f"/threads/{b_thread}/messages"),
        ("POST", f"/threads/{b_thread}/read"),
        ("PATCH", f"/messages/{b_message}"),
        ("DELETE", f"/messages/{b_message}"),
        ("GET", f"/messages/{b_message}/history"),
        ("GET", f"/unread?space={b_space}"),
    ]:
        payload = {"title": "t", "body": "b"} if method in ("POST", "PATCH") else None
        assert_error(await api.call(method, path, acme.host, token, json=payload), 404)
    assert (await api.ok("GET", "/search?q=wombat", acme, token))["items"] == []
    a_names = await api.ok("GET", "/spaces", acme, token)
    assert [s["id"] for s in a_names["items"]] == [a_space]
    b_messages = await api.ok("GET", f"/threads/{b_thread}/messages", globex, globex.owner_token)
    assert [m["body"] for m in b_messages["items"]] == ["globex wombat"]  # untouched
    assert a_thread != b_thread


async def test_cookie_of_one_tenant_is_nothing_in_another(api: Api, acme: Org, globex: Org) -> None:
    signed = await api.call(
        "POST", "/session", acme.host, json={"email": "boss@example.com", "password": PASSWORD}
    )
    cookie = {"Cookie": f"{SESSION_COOKIE}={session_cookie(signed).value}"}
    assert_error(await api.call("GET", "/me", globex.host, headers=cookie), 401)


@pytest.mark.parametrize("host", ["nope.localhost", "globex.localhost", "acme.example.com", ""])
async def test_unknown_workspace_is_404_json(api: Api, acme: Org, host: str) -> None:
    # globex is one of the slot's tenants but has no workspace in the database yet.
    reply = await api.call("GET", "/spaces", host, acme.owner_token)
    assert_error(reply, 404)


async def test_unknown_paths_and_methods_answer_json(api: Api, acme: Org) -> None:
    assert_error(await api.call("GET", "/nothing", acme.host, acme.owner_token), 404)
    wrong = await api.call("PUT", "/spaces", acme.host, acme.owner_token)
    assert_error(wrong, 405)
    assert "GET" in wrong.response.headers["Allow"]


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "data",
    [b"{", b"[]", b'"text"', b"null", b'{"name": NaN}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000],
)
async def test_bad_json_is_400(api: Api, acme: Org, data: bytes) -> None:
    reply = await api.call(
        "POST", "/spaces", acme.host, acme.owner_token, data=data,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert_error(reply, 400)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": 5},
        {"name": None},
        {"name": ["a"]},
        {"name": "nul\x00byte"},
        {"name": "ok", "private": "yes"},
        {"name": "ok", "description": 3},
    ],
)
async def test_bad_fields_are_400(api: Api, acme: Org, body: dict[str, Any]) -> None:
    assert_error(await api.call("POST", "/spaces", acme.host, acme.owner_token, json=body), 400)


async def test_lone_surrogates_and_nul_in_messages_are_400(api: Api, acme: Org) -> None:
    _, thread_id = await space_thread(api, acme)
    for raw in (b'{"body": "\\ud800"}', b'{"body": "a\\u0000b"}'):
        reply = await api.call(
            "POST", f"/threads/{thread_id}/messages", acme.host, acme.owner_token, data=raw,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert_error(reply, 400)
    assert_error(await api.call("GET", "/search?q=%00", acme.host, acme.owner_token), 400)


async def test_oversize_bodies_are_413(api: Api, acme: Org) -> None:
    big = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert_error(await api.call("POST", "/spaces", acme.host, acme.owner_token, data=big), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * (MAX_BODY_BYTES // 4)

    chunked = await api.call("POST", "/spaces", acme.host, acme.owner_token, data=chunks())
    assert_error(chunked, 413)
    # The app is still fine afterwards.
    await api.ok("POST", "/spaces", acme, acme.owner_token, json={"name": "after"})


@pytest.mark.parametrize("limit", [str(10**9), "-1", "0", "abc", "1.5", "", "1e2", "٣"])
async def test_bad_limits_are_400(api: Api, acme: Org, limit: str) -> None:
    assert_error(await api.call("GET", f"/spaces?limit={limit}", acme.host, acme.owner_token), 400)
    assert_error(
        await api.call("GET", f"/mentions?limit={limit}", acme.host, acme.owner_token), 400
    )


async def test_garbage_cursors_are_400(api: Api, acme: Org) -> None:
    space_id, thread_id = await space_thread(api, acme)
    garbage = ["zzz", "-1", "1e9", "9" * 40, "x" * 100, "b-5", "a", "%00", "1:2:3"]
    paths = [
        "/spaces?cursor={}",
        f"/spaces/{space_id}/threads?cursor={{}}",
        f"/threads/{thread_id}/messages?cursor={{}}",
        f"/threads/{thread_id}/messages?after={{}}",
        "/mentions?cursor={}",
        "/search?q=x&cursor={}",
    ]
    for path in paths:
        for cursor in garbage:
            reply = await api.call("GET", path.format(cursor), acme.host, acme.owner_token)
            assert_error(reply, 400)


@pytest.mark.parametrize(
    "ident", ["1e9", "-1", "0", str(10**30), str(2**63), "abc", "%C3%A9", "١٢", "1.0", " 1"]
)
async def test_absurd_ids_are_404(api: Api, acme: Org, ident: str) -> None:
    token = acme.owner_token
    for method, path in [
        ("GET", f"/spaces/{ident}"),
        ("GET", f"/threads/{ident}/messages"),
        ("PATCH", f"/messages/{ident}"),
        ("DELETE", f"/messages/{ident}"),
        ("GET", f"/unread?space={ident}"),
    ]:
        body = {"body": "x"} if method == "PATCH" else None
        assert_error(await api.call(method, path, acme.host, token, json=body), 404)


async def test_search_needs_sane_text(api: Api, acme: Org) -> None:
    assert_error(await api.call("GET", "/search", acme.host, acme.owner_token), 400)
    long = "a" * 501
    assert_error(await api.call("GET", f"/search?q={long}", acme.host, acme.owner_token), 400)
    assert (await api.ok("GET", "/search?q=%20", acme, acme.owner_token))["items"] == []


async def test_bad_mark_read_bodies_are_400(api: Api, acme: Org) -> None:
    _, thread_id = await space_thread(api, acme)
    token = acme.owner_token
    for body in ({"message_ids": "1"}, {"message_ids": ["x"]}, {"message_ids": [True]}):
        assert_error(await api.call("POST", "/mentions/read", acme.host, token, json=body), 400)
    for up_to in ("x", -1, 1.5):
        reply = await api.call(
            "POST", f"/threads/{thread_id}/read", acme.host, token, json={"up_to": up_to}
        )
        assert_error(reply, 400)
    # A message id of no message of this thread.
    reply = await api.call(
        "POST", f"/threads/{thread_id}/read", acme.host, token, json={"up_to": "7"}
    )
    assert_error(reply, 404)


# ---------------------------------------------------------------- outages and the fence


async def test_database_outage_is_503(api: Api, db: Database, acme: Org) -> None:
    await db.close()
    reply = await api.call("GET", "/me", acme.host, acme.owner_token)
    assert_error(reply, 503)
    assert reply.response.headers["Retry-After"] == "1"


async def test_without_database_is_503() -> None:
    async with TestClient(TestServer(build_app(SETTINGS))) as client:
        reply = await Api(client).call("GET", "/me", "acme.localhost", "x" * 43)
    assert_error(reply, 503)


async def test_fence_comes_first(db: Database, acme: Org) -> None:
    class Closed:
        def admit(self) -> bool:
            return False

        def status(self) -> GateStatus:
            return GateStatus(serving=False, lease_remaining_s=None)

    app = build_app(SETTINGS, gate=Closed(), db=db)
    async with TestClient(TestServer(app)) as client:
        reply = await Api(client).call("GET", "/me", acme.host, acme.owner_token)
    assert reply.status == 503
    assert reply.response.headers["X-Moonwatch-Serving"] == "no"


class BrokenDatabase:
    """A Database whose every query fails with a bug-like error carrying a secret detail."""

    dialect = "sqlite"

    async def fetchrow(self, sql: str, *args: Any) -> None:
        raise RuntimeError("secret detail /etc/passwd")


async def test_bugs_answer_500_json_without_details(caplog: pytest.LogCaptureFixture) -> None:
    app = build_app(SETTINGS, db=BrokenDatabase())  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        reply = await Api(client).call("GET", "/me", "acme.localhost", "x" * 43)
    assert_error(reply, 500)
    assert "secret" not in str(reply.body)
    assert "secret detail" in caplog.text  # logged for us, not shown to them


# ---------------------------------------------------------------- invitations


async def test_the_setup_link_signs_the_owner_in_once(
    api: Api, db: Database, clock: FakeClock
) -> None:
    tenant, setup = await accounts.create_tenant(db, "globex", "Globex", "bob@x.test", clock)
    host = "globex.localhost"
    body = {"token": setup, "display_name": "Bob", "password": PASSWORD}
    reply = await api.call("POST", "/invitations/accept", host, json=body)
    assert reply.status == 201, reply.body
    assert reply.body["role"] == "owner"
    cookie = reply.response.cookies["mw_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"

    again = await api.call("POST", "/invitations/accept", host, json=body)
    assert_error(again, 400)  # single use
    unknown = {**body, "token": "x" * 43}
    assert_error(await api.call("POST", "/invitations/accept", host, json=unknown), 404)
    weak = {**body, "password": "short"}
    assert_error(await api.call("POST", "/invitations/accept", host, json=weak), 400)
    assert tenant.name == "globex"


async def test_an_invitation_of_one_tenant_is_nothing_in_another(
    api: Api, db: Database, clock: FakeClock, acme: Org
) -> None:
    invitation = await accounts.invite(
        db, acme.tenant_id, "carol@example.com", "member", acme.owner.id, DAY_S
    )
    await accounts.create_tenant(db, "globex", "Globex", "u@x.test", clock)
    body = {"token": invitation, "display_name": "Carol", "password": PASSWORD}
    elsewhere = await api.call("POST", "/invitations/accept", "globex.localhost", json=body)
    assert_error(elsewhere, 404)  # the same answer as a token that never existed
    assert (await api.call("POST", "/invitations/accept", acme.host, json=body)).status == 201
