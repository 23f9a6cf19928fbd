"""The server-rendered HTML pages, in process on a real SQLite file: sign-in, join links, every
page of a member, escaping, CSRF and origin checks, security headers, tenant isolation, uploads,
search and pagination."""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import DummyCookieJar, FormData
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from app import accounts, files, work
from app.accounts import User
from app.db import Database, open_database
from app.migrate import migrate
from app.service import build_app
from app.web_auth import SESSION_COOKIE, SESSION_LIFETIME_S
from app.web_forms import CSRF_COOKIE, safe_next, session_csrf
from app.web_pages_view import CSP, PAGE_SIZE
from tests.app_support import DAY_S, PASSWORD, FakeClock, People, new_people
from tests.component.test_app import SETTINGS
from tests.support_pg import pg_dsn, pg_server

# Fixtures shared from tests.support_pg; pytest finds them as names of this module.
__all__ = ["pg_dsn", "pg_server"]

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
ACME = "acme.localhost"
GLOBEX = "globex.localhost"


# ---------------------------------------------------------------- a browser without JavaScript


@dataclass
class Page:
    """One answer: status, text and headers."""

    status: int
    text: str
    headers: CIMultiDictProxy[str]

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def field(self, name: str) -> str:
        """The value of the first input called ``name``."""
        found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', self.text)
        assert found is not None, f"no field {name!r} on the page"
        return html.unescape(found.group(1))


@dataclass
class Browser:
    """A client of one workspace host that keeps its own cookies and follows no redirect."""

    client: TestClient[Any, Any]
    host: str = ACME
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def csrf(self) -> str:
        return session_csrf(self.cookies[SESSION_COOKIE])

    def _keep(self, headers: CIMultiDictProxy[str]) -> None:
        for header in headers.getall("Set-Cookie", []):
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)

    async def request(
        self, method: str, path: str, data: Any = None, headers: dict[str, str] | None = None
    ) -> Page:
        sent = {"Host": self.host, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{key}={value}" for key, value in self.cookies.items())
        async with self.client.request(
            method, path, data=data, headers=sent, allow_redirects=False
        ) as response:
            text = await response.text()
            self._keep(response.headers)
            return Page(response.status, text, response.headers)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Page:
        return await self.request("GET", path, headers=headers)

    async def post(
        self, path: str, fields: dict[str, str] | None = None, *, csrf: bool = True, **kw: Any
    ) -> Page:
        """POST a form; with ``csrf`` the session's token is added."""
        data = {**({"csrf": self.csrf} if csrf else {}), **(fields or {})}
        return await self.request("POST", path, data, **kw)


def assert_html_headers(page: Page) -> None:
    assert page.headers["Content-Security-Policy"] == CSP
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"


# ---------------------------------------------------------------- fixtures


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
async def client(
    db: Database, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = dataclasses.replace(SETTINGS, data_dir=tmp_path / "data")
    app = build_app(settings, clock, db=db)
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as test_client:
        yield test_client


@pytest.fixture
async def acme(db: Database, clock: FakeClock) -> People:
    return await new_people(db, clock, "acme")


@pytest.fixture
async def globex(db: Database, clock: FakeClock) -> People:
    return await new_people(db, clock, "globex")


async def as_user(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, people: People, user: User
) -> Browser:
    """A browser with a fresh session of ``user`` (no password hashing)."""
    token = await accounts.create_session(
        db, people.tenant_id, user.id, "pytest", "127.0.0.1", SESSION_LIFETIME_S, clock
    )
    tenant = await db.fetchval("SELECT name FROM tenants WHERE id = ?", people.tenant_id)
    return Browser(client, f"{tenant}.localhost", {SESSION_COOKIE: token})


async def space_with_thread(
    db: Database, people: People, name: str = "general", body: str = "hello world"
) -> tuple[work.Space, work.Thread, work.Message]:
    """A public space of the owner that alice joined, a thread and alice's first message."""
    space = await work.create_space(db, people.tenant_id, people.owner, name)
    await work.join_space(db, people.tenant_id, people.alice, space.id)
    thread = await work.create_thread(db, people.tenant_id, people.owner, space.id, "Topic")
    message = await work.post_message(db, people.tenant_id, people.alice, thread.id, body)
    return space, thread, message


async def sign_in(browser: Browser, email: str, password: str, target: str = "") -> Page:
    """Fill in the sign-in form as a browser would (its CSRF cookie and field included)."""
    form = await browser.get("/login" + (f"?next={quote(target, safe='')}" if target else ""))
    assert form.status == 200
    fields = {"csrf": form.field("csrf"), "next": form.field("next")}
    return await browser.post(
        "/login", {**fields, "email": email, "password": password}, csrf=False
    )


# ---------------------------------------------------------------- landing, sign-in, sign-out


async def test_landing_signed_out_and_in(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    page = await Browser(client).get("/")
    assert page.status == 200
    assert page.text.startswith("<!doctype html>")
    assert "acme — hosted on slot s1 by server m1 (epoch 3)" in page.text
    assert 'href="/login"' in page.text and "Acme" in page.text
    assert_html_headers(page)
    signed_in = await (await as_user(client, db, clock, acme, acme.alice)).get("/")
    assert (signed_in.status, signed_in.location) == (303, "/spaces")


async def test_landing_of_a_workspace_not_created_yet(client: TestClient[Any, Any]) -> None:
    page = await Browser(client).get("/")
    assert page.status == 200
    assert "acme — hosted on slot s1 by server m1 (epoch 3)" in page.text
    assert (await Browser(client).get("/static/app.css")).status == 200
    assert (await Browser(client).get("/login")).status == 404


@pytest.mark.parametrize("path", ["/", "/login", "/spaces", "/join?token=x", "/static/app.css"])
async def test_unknown_host_is_the_404_page(
    client: TestClient[Any, Any], acme: People, path: str
) -> None:
    page = await Browser(client, "nobody.localhost").get(path)
    assert page.status == 404
    assert "does not exist here" in page.text


@pytest.mark.parametrize(
    "path",
    [
        "/spaces", "/spaces/1", "/threads/1", "/messages/1/edit", "/messages/1/history",
        "/mentions", "/search?q=a%20b", "/settings", "/admin",
    ],
)  # fmt: skip
async def test_signed_out_goes_to_sign_in(
    client: TestClient[Any, Any], acme: People, path: str
) -> None:
    page = await Browser(client).get(path)
    assert page.status == 303
    assert page.location == "/login?next=" + quote(path, safe="/")


async def test_signed_out_post_changes_nothing(
    client: TestClient[Any, Any], db: Database, acme: People
) -> None:
    page = await Browser(client).post("/spaces", {"name": "sneaky"}, csrf=False)
    assert (page.status, page.location) == (303, "/login")
    assert await db.fetchval("SELECT count(*) FROM spaces") == 0


async def test_sign_in_and_out(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    browser = Browser(client)
    form = await browser.get("/login")
    assert form.field("csrf") == browser.cookies[CSRF_COOKIE]
    cookie = form.headers.getall("Set-Cookie")[0]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    page = await sign_in(browser, "Alice@Example.com", PASSWORD)
    assert (page.status, page.location) == (303, "/spaces")
    assert "HttpOnly" in page.headers["Set-Cookie"] and "SameSite=Lax" in page.headers["Set-Cookie"]
    spaces = await browser.get("/spaces")
    assert spaces.status == 200 and "Sign out" in spaces.text
    assert spaces.field("csrf") == browser.csrf
    session = browser.cookies[SESSION_COOKIE]

    refused = await browser.post("/logout", {"csrf": "0" * 64}, csrf=False)
    assert refused.status == 403
    assert (await browser.get("/spaces")).status == 200

    out = await browser.post("/logout")
    assert (out.status, out.location) == (303, "/login")
    assert SESSION_COOKIE not in browser.cookies
    assert (await Browser(client, cookies={SESSION_COOKIE: session}).get("/spaces")).status == 303


@pytest.mark.parametrize(
    ("email", "password"),
    [("alice@example.com", "wrong password 1"), ("nobody@example.com", PASSWORD)],
)
async def test_sign_in_failure_is_generic(
    client: TestClient[Any, Any], acme: People, email: str, password: str
) -> None:
    browser = Browser(client)
    page = await sign_in(browser, email, password)
    assert page.status == 401
    assert "wrong e-mail or password" in page.text
    assert page.field("email") == email
    assert password not in page.text
    assert SESSION_COOKIE not in browser.cookies


@pytest.mark.parametrize(
    ("target", "landing"),
    [
        ("/threads/5?x=1", "/threads/5?x=1"),
        ("//evil.example", "/spaces"),
        ("https://evil", "/spaces"),
        ("/\\evil", "/spaces"),
    ],
)
async def test_sign_in_goes_to_a_safe_next(
    client: TestClient[Any, Any], acme: People, target: str, landing: str
) -> None:
    page = await sign_in(Browser(client), "alice@example.com", PASSWORD, target)
    assert (page.status, page.location) == (303, landing)


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/spaces/1", "/spaces/1"),
        ("/search?q=a&before=3", "/search?q=a&before=3"),
        (None, "/spaces"),
        ("", "/spaces"),
        ("spaces", "/spaces"),
        ("//evil.example/x", "/spaces"),
        ("/\\evil.example", "/spaces"),
        ("\\\\evil", "/spaces"),
        ("https://evil.example", "/spaces"),
        ("javascript:alert(1)", "/spaces"),
        ("/\tevil", "/spaces"),
        ("/ok\r\nSet-Cookie: x=1", "/spaces"),
    ],
)
def test_safe_next(target: str | None, safe: str) -> None:
    assert safe_next(target) == safe


async def test_sign_in_needs_its_csrf_cookie_and_origin(
    client: TestClient[Any, Any], db: Database, acme: People
) -> None:
    credentials = {"email": "alice@example.com", "password": PASSWORD}
    no_cookie = await Browser(client).post("/login", {"csrf": "a" * 43, **credentials}, csrf=False)
    assert no_cookie.status == 403
    browser = Browser(client)
    form = await browser.get("/login")
    wrong = await browser.post("/login", {"csrf": "b" * 43, **credentials}, csrf=False)
    assert wrong.status == 403
    evil = await browser.post(
        "/login", {"csrf": form.field("csrf"), **credentials}, csrf=False,
        headers={"Origin": "http://evil.example"},
    )  # fmt: skip
    assert evil.status == 403
    assert SESSION_COOKIE not in browser.cookies
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE user_id = ?", acme.alice.id) == 0


# ---------------------------------------------------------------- join links


async def join(
    browser: Browser, token: str, name: str = "Newbie", password: str = PASSWORD
) -> Page:
    form = await browser.get(f"/join?token={token}")
    assert form.status == 200, form.text
    fields = {"csrf": form.field("csrf"), "token": form.field("token"), "display_name": name}
    return await browser.post(
        "/join", {**fields, "password": password, "confirm": password}, csrf=False
    )


async def test_join_link(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    token = await accounts.invite(
        db, acme.tenant_id, "new@example.com", "member", acme.owner.id, DAY_S
    )
    browser = Browser(client)
    form = await browser.get(f"/join?token={token}")
    assert form.headers["Referrer-Policy"] == "same-origin"
    assert "new@example.com" in form.text
    assert form.field("token") == token
    mismatch = await browser.post(
        "/join", {"csrf": form.field("csrf"), "token": token, "display_name": "N",
                  "password": PASSWORD, "confirm": PASSWORD + "x"}, csrf=False,
    )  # fmt: skip
    assert mismatch.status == 400 and "differ" in mismatch.text
    assert PASSWORD not in mismatch.text
    cookieless = Browser(client)
    forged = await cookieless.post(
        "/join", {"csrf": form.field("csrf"), "token": token, "display_name": "Forged",
                  "password": PASSWORD, "confirm": PASSWORD}, csrf=False,
    )  # fmt: skip
    assert forged.status == 403 and SESSION_COOKIE not in cookieless.cookies
    page = await join(browser, token, "Newbie")
    assert (page.status, page.location) == (303, "/spaces")
    spaces = await browser.get("/spaces")
    assert spaces.status == 200 and "Newbie" in spaces.text  # the top bar names them
    again = await Browser(client).get(f"/join?token={token}")
    assert again.status == 410 and "used" in again.text
    reused = Browser(client)
    await reused.get("/login")  # a CSRF cookie of its own
    posted = await reused.post(
        "/join", {"csrf": reused.cookies[CSRF_COOKIE], "token": token, "display_name": "Evil",
                  "password": PASSWORD, "confirm": PASSWORD}, csrf=False,
    )  # fmt: skip
    assert posted.status == 410
    assert SESSION_COOKIE not in reused.cookies


async def test_expired_and_unknown_join_links(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    token = await accounts.invite(
        db, acme.tenant_id, "late@example.com", "member", acme.owner.id, DAY_S, clock=clock
    )
    form = await Browser(client).get(f"/join?token={token}")
    assert form.status == 200
    clock.advance(DAY_S + 1)
    expired = await Browser(client).get(f"/join?token={token}")
    assert expired.status == 410 and "expired" in expired.text
    assert expired.headers["Referrer-Policy"] == "same-origin"
    browser = Browser(client)
    await browser.get("/login")
    fields = {"csrf": browser.cookies[CSRF_COOKIE], "display_name": "Late"}
    passwords = {"password": PASSWORD, "confirm": PASSWORD}
    posted = await browser.post("/join", {**fields, **passwords, "token": token}, csrf=False)
    assert posted.status == 410
    for unknown in ("nope", "x" * 43, ""):
        assert (await Browser(client).get(f"/join?token={unknown}")).status == 404
    unknown_post = await browser.post(
        "/join", {**fields, **passwords, "token": "y" * 43}, csrf=False
    )
    assert unknown_post.status == 404
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = 'late@example.com'") == 0


# ---------------------------------------------------------------- the member's pages


async def test_every_page_of_a_member(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    space, thread, message = await space_with_thread(db, acme)
    await work.edit_message(db, acme.tenant_id, acme.alice, message.id, "hello again")
    alice = await as_user(client, db, clock, acme, acme.alice)
    for path in [
        "/spaces", f"/spaces/{space.id}", f"/threads/{thread.id}",
        f"/messages/{message.id}/edit", f"/messages/{message.id}/edit?thread={thread.id}",
        f"/messages/{message.id}/edit?thread=7", f"/messages/{message.id}/history",
        "/mentions", "/search", "/search?q=again", "/settings",
    ]:  # fmt: skip
        page = await alice.get(path)
        assert page.status == 200, (path, page.status, page.text)
        assert page.text.startswith("<!doctype html>")
        assert_html_headers(page)
        assert page.headers["Referrer-Policy"] == "same-origin"
        assert "Strict-Transport-Security" not in page.headers
        assert 'href="/admin"' not in page.text
    admin = await alice.get("/admin")
    assert admin.status == 403 and "Not allowed" in admin.text
    owner = await as_user(client, db, clock, acme, acme.owner)
    assert 'href="/admin"' in (await owner.get("/spaces")).text
    assert (await owner.get("/admin")).status == 200


async def test_missing_things_are_404_pages(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    alice = await as_user(client, db, clock, acme, acme.alice)
    for path in [
        "/spaces/123", "/spaces/x", "/threads/99999999", "/messages/5/edit",
        "/messages/5/edit?thread=7",
    ]:  # fmt: skip
        page = await alice.get(path)
        assert page.status == 404, path
        assert "Not found" in page.text and "Traceback" not in page.text
        assert_html_headers(page)
    bad_cursor = await alice.get("/spaces?after=abc")
    assert bad_cursor.status == 400


async def test_https_pages_get_hsts(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    alice = await as_user(client, db, clock, acme, acme.alice)
    page = await alice.get("/spaces", headers={"X-Forwarded-Proto": "https"})
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    login = await Browser(client).get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in login.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in (await alice.get("/spaces")).headers


async def test_stylesheet_and_nothing_else_under_static(
    client: TestClient[Any, Any], acme: People
) -> None:
    browser = Browser(client)
    css = await browser.get("/static/app.css")
    assert css.status == 200
    assert css.headers["Content-Type"].startswith("text/css")
    assert css.headers["X-Content-Type-Options"] == "nosniff"
    assert "max-age=31536000" in css.headers["Cache-Control"]
    assert "prefers-color-scheme" in css.text
    for path in [
        "/static/",
        "/static/other.css",
        "/static/../web_pages.py",
        "/static/%2e%2e/db.py",
    ]:
        assert (await browser.get(path)).status == 404, path


# ---------------------------------------------------------------- escaping


async def test_hostile_text_is_escaped_everywhere(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People, tmp_path: Path
) -> None:
    tid = acme.tenant_id
    await accounts.update_profile(db, tid, acme.alice.id, acme.alice.id, display_name=XSS)
    space = await work.create_space(db, tid, acme.alice, XSS, description=XSS)
    thread = await work.create_thread(db, tid, acme.alice, space.id, XSS)
    message = await work.post_message(
        db, tid, acme.alice, thread.id, XSS + " @alice http://x.test/<b>"
    )
    await files.store_file(
        db, tid, acme.alice, space.id, b"plain text", XSS + ".txt", "text/plain",
        root=tmp_path / "data", max_bytes=1000, message_id=message.id,
    )  # fmt: skip
    await work.edit_message(db, tid, acme.alice, message.id, XSS + " edited")
    await accounts.create_api_token(db, tid, acme.alice.id, XSS, ["read"], None)
    alice = await as_user(client, db, clock, acme, acme.alice)
    owner = await as_user(client, db, clock, acme, acme.owner)
    await work.post_message(db, tid, acme.owner, thread.id, "hi @alice")
    await accounts.invite(db, tid, "<script>x</script>@example.com", "member", acme.owner.id, DAY_S)
    pages = [
        await alice.get("/spaces"), await alice.get(f"/spaces/{space.id}"),
        await alice.get(f"/threads/{thread.id}"),
        await alice.get(f"/messages/{message.id}/history"),
        await alice.get("/search?q=edited"), await alice.get("/mentions"),
        await alice.get("/settings"), await owner.get("/admin"),
        await alice.get(f"/search?q={quote(XSS)}"),
    ]  # fmt: skip
    for page in pages:
        assert page.status == 200
        assert "<script" not in page.text.lower()
        assert "<img" not in page.text.lower()
        assert "&lt;script&gt;" in page.text
    assert '<span class="mention">@alice</span>' in pages[2].text  # markup.render's own tags


# ---------------------------------------------------------------- CSRF and origin


async def test_forms_need_the_sessions_csrf_token(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    alice = await as_user(client, db, clock, acme, acme.alice)
    bob = await as_user(client, db, clock, acme, acme.bob)
    other_alice = await as_user(client, db, clock, acme, acme.alice)
    for token in [None, "", "0" * 64, bob.csrf, other_alice.csrf]:
        fields = {"name": "forged"} if token is None else {"name": "forged", "csrf": token}
        page = await alice.post("/spaces", fields, csrf=False)
        assert page.status == 403, token
        assert "expired" in page.text
    assert await db.fetchval("SELECT count(*) FROM spaces") == 0
    ok = await alice.post("/spaces", {"name": "real"})
    assert ok.status == 303 and ok.location.startswith("/spaces/")


async def test_cross_origin_posts_are_refused(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    alice = await as_user(client, db, clock, acme, acme.alice)
    for origin in ["http://evil.example", "http://globex.localhost", "null"]:
        page = await alice.post("/spaces", {"name": "x"}, headers={"Origin": origin})
        assert page.status == 403, origin
    assert await db.fetchval("SELECT count(*) FROM spaces") == 0
    own = await alice.post("/spaces", {"name": "x"}, headers={"Origin": "http://acme.localhost"})
    assert own.status == 303


# ---------------------------------------------------------------- tenant isolation


async def test_tenants_are_isolated(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People, globex: People
) -> None:
    space, thread, _ = await space_with_thread(db, acme)
    alice = await as_user(client, db, clock, acme, acme.alice)
    stolen = Browser(client, GLOBEX, dict(alice.cookies))
    page = await stolen.get("/spaces")
    assert (page.status, page.location) == (303, "/login?next=/spaces")
    assert (await stolen.post("/spaces", {"name": "x"})).status == 303
    gus = await as_user(client, db, clock, globex, globex.alice)
    assert gus.host == GLOBEX
    for path in [f"/spaces/{space.id}", f"/threads/{thread.id}"]:
        assert (await gus.get(path)).status == 404
    joined = await gus.post(f"/spaces/{space.id}/join")
    assert joined.status == 404


# ---------------------------------------------------------------- spaces, threads, messages


async def test_spaces_threads_and_messages_by_form(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    owner = await as_user(client, db, clock, acme, acme.owner)
    alice = await as_user(client, db, clock, acme, acme.alice)
    created = await owner.post("/spaces", {"name": "Plans", "description": "d", "private": "1"})
    space_path = created.location
    duplicate = await owner.post("/spaces", {"name": "Plans", "description": "kept text"})
    assert duplicate.status == 400 and "already" in duplicate.text and "kept text" in duplicate.text
    assert (await alice.get(space_path)).status == 404  # private
    public = await owner.post("/spaces", {"name": "Open"})
    join = await alice.post(public.location + "/join")
    assert (join.status, join.location) == (303, public.location)
    no_body = await alice.post(public.location + "/threads", {"title": "T", "body": " "})
    assert no_body.status == 400 and "first message" in no_body.text
    assert await db.fetchval("SELECT count(*) FROM threads") == 0
    started = await alice.post(public.location + "/threads", {"title": "Lunch", "body": "at noon?"})
    thread_path = started.location
    assert thread_path.startswith("/threads/")
    assert "at noon?" in (await owner.get(thread_path)).text
    space_page = await owner.get(public.location)
    assert "Lunch" in space_page.text and "Leave" in space_page.text
    leave = await alice.post(public.location + "/leave")
    assert (leave.status, leave.location) == (303, "/spaces")


async def test_edit_delete_and_history(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    _, thread, message = await space_with_thread(db, acme, body="first text")
    alice = await as_user(client, db, clock, acme, acme.alice)
    bob = await as_user(client, db, clock, acme, acme.bob)
    admin = await as_user(client, db, clock, acme, acme.admin)
    edit_path = f"/messages/{message.id}/edit"
    form = await alice.get(edit_path)
    assert form.status == 200 and "first text" in form.text
    assert f'action="{edit_path}"' in form.text
    assert f'href="{edit_path}"' in (await alice.get(f"/threads/{thread.id}")).text
    empty = await alice.post(edit_path, {"body": "  "})
    assert empty.status == 400 and "a message has" in empty.text
    saved = await alice.post(edit_path, {"body": "second text"})
    assert (saved.status, saved.location) == (303, f"/threads/{thread.id}#m{message.id}")
    page = await alice.get(f"/threads/{thread.id}")
    assert "second text" in page.text and "(edited)" in page.text
    assert f"/messages/{message.id}/history" in page.text
    history = await alice.get(f"/messages/{message.id}/history?thread={thread.id}")
    assert "first text" in history.text
    assert (await bob.get(edit_path)).status == 403
    assert (await bob.post(edit_path, {"body": "hijack"})).status == 403
    assert (await bob.get(f"/messages/{message.id}/history")).status == 403
    assert (await bob.post(f"/messages/{message.id}/delete")).status == 403
    deleted = await admin.post(f"/messages/{message.id}/delete")
    assert (deleted.status, deleted.location) == (303, f"/threads/{thread.id}")
    after = await bob.get(f"/threads/{thread.id}")
    assert "This message was deleted." in after.text and "second text" not in after.text


async def test_mentions_and_unread_counts(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    space, thread, _ = await space_with_thread(db, acme)
    await work.post_message(db, acme.tenant_id, acme.owner, thread.id, "ping @alice please")
    alice = await as_user(client, db, clock, acme, acme.alice)
    spaces = await alice.get("/spaces")
    assert '<span class="badge">1</span>' in spaces.text  # the mention, in the top bar
    assert 'title="unread messages">1<' in spaces.text  # the owner's message, in the space
    mentions = await alice.get("/mentions")
    assert "ping" in mentions.text and f"/threads/{thread.id}#m" in mentions.text
    read = await alice.post("/mentions/read")
    assert (read.status, read.location) == (303, "/mentions")
    assert "No unread mentions." in (await alice.get("/mentions")).text
    await alice.get(f"/threads/{thread.id}")  # viewing marks the thread read
    assert 'title="unread messages"' not in (await alice.get(f"/spaces/{space.id}")).text
    assert await work.space_unread_counts(db, acme.tenant_id, acme.alice) == {}


async def test_upload_with_a_message_then_download(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    space, thread, _ = await space_with_thread(db, acme)
    alice = await as_user(client, db, clock, acme, acme.alice)
    form = FormData()
    form.add_field("csrf", alice.csrf)
    form.add_field("body", "see the notes")
    form.add_field("file", b"the notes\n", filename="notes.txt", content_type="text/plain")
    posted = await alice.request("POST", f"/threads/{thread.id}/messages", form)
    assert posted.status == 303, posted.text
    page = await alice.get(f"/threads/{thread.id}")
    link = re.search(r'href="(/api/v1/files/\d+)">notes.txt<', page.text)
    assert link is not None
    download = await alice.get(link.group(1))
    assert download.status == 200 and download.text == "the notes\n"
    assert download.headers["Content-Disposition"].startswith("attachment;")

    no_file = FormData()
    no_file.add_field("csrf", alice.csrf)
    no_file.add_field("body", "just words")
    no_file.add_field("file", b"", filename="", content_type="application/octet-stream")
    words = await alice.request("POST", f"/threads/{thread.id}/messages", no_file)
    assert words.status == 303, words.text
    assert await db.fetchval("SELECT count(*) FROM files") == 1

    refused = FormData()
    refused.add_field("csrf", alice.csrf)
    refused.add_field("body", "and a program")
    refused.add_field("file", b"\x7fELF\x00\x01", filename="a.txt", content_type="text/plain")
    bad = await alice.request("POST", f"/threads/{thread.id}/messages", refused)
    assert bad.status == 400 and "may be uploaded" in bad.text and "and a program" in bad.text
    assert await db.fetchval("SELECT count(*) FROM messages WHERE body = 'and a program'") == 0
    assert await db.fetchval("SELECT count(*) FROM files") == 1

    no_token = FormData()
    no_token.add_field("body", "forged")
    no_token.add_field("file", b"x", filename="x.txt", content_type="text/plain")
    assert (await alice.request("POST", f"/threads/{thread.id}/messages", no_token)).status == 403
    assert await db.fetchval("SELECT count(*) FROM messages WHERE body = 'forged'") == 0

    upload = FormData()
    upload.add_field("csrf", alice.csrf)
    upload.add_field("file", b"col\n1\n", filename="data.csv", content_type="text/csv")
    stored = await alice.request("POST", f"/spaces/{space.id}/files", upload)
    assert (stored.status, stored.location) == (303, f"/spaces/{space.id}")
    assert "data.csv" in (await alice.get(f"/spaces/{space.id}")).text


def file_form(csrf: str, body: str, data: bytes, name: str = "notes.txt") -> FormData:
    form = FormData()
    form.add_field("csrf", csrf)
    form.add_field("body", body)
    form.add_field("file", data, filename=name, content_type="text/plain")
    return form


def stored_bytes(data_dir: Path) -> list[Path]:
    return sorted(path for path in data_dir.rglob("*") if path.is_file())


async def test_a_message_with_a_file_is_posted_whole_or_not_at_all(
    db: Database, clock: FakeClock, acme: People, tmp_path: Path
) -> None:
    settings = dataclasses.replace(SETTINGS, data_dir=tmp_path / "data", max_upload_bytes=1024)
    app = build_app(settings, clock, db=db)
    _, thread, _ = await space_with_thread(db, acme)
    posts = f"/threads/{thread.id}/messages"
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as client:
        alice = await as_user(client, db, clock, acme, acme.alice)
        too_large = await alice.request("POST", posts, file_form(alice.csrf, "big", b"x" * 2000))
        assert too_large.status == 400 and "at most 1024 bytes" in too_large.text
        html_file = file_form(alice.csrf, "a page", b"<html><script>x</script>", "a.txt")
        refused = await alice.request("POST", posts, html_file)
        assert refused.status == 400 and "a page" in refused.text
        blank = await alice.request("POST", posts, file_form(alice.csrf, "  ", b"fine\n"))
        assert blank.status == 400 and "a message has" in blank.text
        assert await db.fetchval("SELECT count(*) FROM messages") == 1  # the first one only
        assert await db.fetchval("SELECT count(*) FROM files") == 0
        assert stored_bytes(settings.data_dir) == []
        posted = await alice.request("POST", posts, file_form(alice.csrf, "ok", b"fine\n"))
        assert posted.status == 303, posted.text
        message_id = int(posted.location.rpartition("#m")[2])
        file_id = await db.fetchval("SELECT id FROM files WHERE message_id = ?", message_id)
        assert stored_bytes(settings.data_dir) == [
            files.tenant_files_dir(settings.data_dir, acme.tenant_id) / str(file_id)
        ]


async def test_old_messages_keep_their_attachments(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People, tmp_path: Path
) -> None:
    space, thread, message = await space_with_thread(db, acme)
    root, t = tmp_path / "data", acme.tenant_id
    await files.store_file(
        db, t, acme.alice, space.id, b"old\n", "old-notes.txt", "text/plain", root=root,
        max_bytes=1000, message_id=message.id,
    )  # fmt: skip
    for number in range(work.LIMIT_MAX + 1):  # newer files of the space, on no message
        await files.store_file(
            db, t, acme.alice, space.id, b"new\n", f"new-{number}.txt", "text/plain", root=root,
            max_bytes=1000,
        )  # fmt: skip
    bob = await as_user(client, db, clock, acme, acme.bob)
    page = await bob.get(f"/threads/{thread.id}")
    assert ">old-notes.txt<" in page.text and "new-0.txt" not in page.text


async def test_search_finds_a_posted_message(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    _, thread, _ = await space_with_thread(db, acme)
    alice = await as_user(client, db, clock, acme, acme.alice)
    posted = await alice.post(f"/threads/{thread.id}/messages", {"body": "quarterly zebra report"})
    assert posted.status == 303
    found = await alice.get("/search?q=zebra")
    assert "quarterly zebra report" in found.text and f'href="/threads/{thread.id}#m' in found.text
    assert "Nothing found" in (await alice.get("/search?q=giraffe")).text
    empty = await alice.get("/search?q=")
    assert empty.status == 200 and "Nothing found" not in empty.text


async def test_pagination_links(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    tid, extra = acme.tenant_id, 5
    for number in range(PAGE_SIZE + extra):
        await work.create_space(db, tid, acme.owner, f"space-{number:02d}")
    space = await work.create_space(db, tid, acme.owner, "zz-busy")
    thread = await work.create_thread(db, tid, acme.owner, space.id, "long thread")
    for number in range(PAGE_SIZE + extra):
        await work.post_message(db, tid, acme.owner, thread.id, f"message-{number:02d}")
        await work.create_thread(db, tid, acme.owner, space.id, f"thread-{number:02d}")
    alice = await as_user(client, db, clock, acme, acme.alice)

    first = await alice.get("/spaces")
    assert "space-00" in first.text and f"space-{PAGE_SIZE:02d}" not in first.text
    more = re.search(r'href="(/spaces\?after=\d+)">More<', first.text)
    assert more is not None
    second = await alice.get(more.group(1))
    assert f"space-{PAGE_SIZE:02d}" in second.text and "space-00" not in second.text

    newest = await alice.get(f"/threads/{thread.id}")
    assert f"message-{PAGE_SIZE + extra - 1:02d}" in newest.text and "message-00" not in newest.text
    older = re.search(r'href="(/threads/\d+\?before=\d+)">Older messages<', newest.text)
    assert older is not None
    oldest = await alice.get(older.group(1))
    assert "message-00" in oldest.text and f"message-{PAGE_SIZE + extra - 1:02d}" not in oldest.text

    threads = await alice.get(f"/spaces/{space.id}")
    assert "thread-00" not in threads.text
    more_threads = re.search(r'href="([^"]+)">More threads<', threads.text)
    assert more_threads is not None
    assert "thread-00" in (await alice.get(html.unescape(more_threads.group(1)))).text


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_full_flow_on_each_database(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    owner = await as_user(client, db, clock, acme, acme.owner)
    created = await owner.post("/spaces", {"name": "Both"})
    started = await owner.post(created.location + "/threads", {"title": "T", "body": "first"})
    await owner.post(started.location + "/messages", {"body": "second @alice"})
    alice = await as_user(client, db, clock, acme, acme.alice)
    assert "second" in (await alice.get("/mentions")).text
    assert "first" in (await alice.get("/search?q=first")).text
    assert "second" in (await alice.get(started.location)).text
