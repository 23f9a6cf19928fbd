"""Client addresses from trusted proxies only, the per-tenant network restriction (refusal and
the Basic gate), the audit log viewer and its JSON and CSV forms, recorded downloads, retention
and the API's security headers; in process on a real SQLite file."""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from app import accounts, audit, work
from app.access import GATE_FAILURES, NETWORK_ACCESS, basic_credentials
from app.access_log import PathOnlyAccessLogger
from app.audit import AuditFilter
from app.audit_retention import AuditRetention, prune_pass
from app.client_address import parse_networks, resolve
from app.db import Database, open_database
from app.files import store_file
from app.migrate import migrate
from app.service import build_app
from app.settings import AppSettings
from app.tenant_settings import SecuritySettings, load_settings, save_settings
from app.web_auth import SESSION_COOKIE
from tests.app_support import DAY_S, FAST, PASSWORD, FakeClock, People, new_people
from tests.component.test_app import SETTINGS
from tests.component.test_app_pages import Browser, Page, as_user, sign_in

INSIDE = "10.1.2.3"
OUTSIDE = "203.0.113.5"
OTHER_OUTSIDE = "198.51.100.7"
GATE_USER = "gate"
GATE_PASSWORD = "the gate password 1"
REALM = 'Basic realm="acme", charset="UTF-8"'
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite://{tmp_path / 'app.sqlite3'}")
    try:
        await migrate(database)
        yield database
    finally:
        await database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> AppSettings:
    # The test client connects from 127.0.0.1: as a trusted proxy, its X-Forwarded-For counts.
    return dataclasses.replace(
        SETTINGS, data_dir=tmp_path / "data", trusted_proxies=("127.0.0.1/32",)
    )


@pytest.fixture
async def app(settings: AppSettings, db: Database, clock: FakeClock) -> web.Application:
    return build_app(settings, clock, db=db)


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.fixture
async def acme(db: Database, clock: FakeClock) -> People:
    return await new_people(db, clock, "acme")


@dataclass
class From(Browser):
    """A browser that reaches the app from ``ip`` (through the trusted proxy), with ``extra``
    headers on every request."""

    ip: str = OUTSIDE
    extra: dict[str, str] = field(default_factory=dict)

    async def request(
        self, method: str, path: str, data: Any = None, headers: dict[str, str] | None = None
    ) -> Page:
        sent = {"X-Forwarded-For": self.ip, **self.extra, **(headers or {})}
        return await super().request(method, path, data, sent)


async def member(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, people: People, ip: str
) -> From:
    signed_in = await as_user(client, db, clock, people, people.alice)
    return From(client, signed_in.host, signed_in.cookies, ip)


async def token_of(db: Database, people: People, user: accounts.User) -> str:
    return await accounts.create_api_token(db, people.tenant_id, user.id, "t", ["read"], None)


async def restrict(db: Database, people: People, networks: tuple[str, ...], **more: Any) -> None:
    settings = await load_settings(db, people.tenant_id)
    await save_settings(db, people.tenant_id, settings.changed(allowed_networks=networks, **more))


async def gate(db: Database, people: People, password: str = GATE_PASSWORD) -> None:
    await restrict(
        db, people, ("10.0.0.0/8",), outside_networks="basic", gate_user=GATE_USER,
        gate_password_hash=FAST.hash(password),
    )  # fmt: skip


async def api_get(
    client: TestClient[Any, Any], path: str, ip: str, token: str | None = None, **headers: str
) -> tuple[int, Any, Any]:
    sent = {"Host": "acme.localhost", "X-Forwarded-For": ip, **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with client.get("/api/v1" + path, headers=sent) as response:
        is_json = response.content_type == "application/json"
        body = await response.json() if is_json else await response.read()
        return response.status, body, response.headers


async def stored_file(db: Database, people: People, settings: AppSettings) -> int:
    space = await work.create_space(db, people.tenant_id, people.owner, "general")
    await work.join_space(db, people.tenant_id, people.alice, space.id)
    record = await store_file(
        db, people.tenant_id, people.alice, space.id, b"hello notes\n", "notes.txt",
        "text/plain", root=settings.data_dir, max_bytes=1 << 20,
    )  # fmt: skip
    return record.id


async def refusals(db: Database, people: People) -> list[audit.AuditEntry]:
    wanted = AuditFilter(action="access_refused")
    entries, _ = await audit.list_entries(db, people.tenant_id, wanted, limit=200)
    return entries


# ---------------------------------------------------------------- the client's address

TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.1", ["203.0.113.5"], "203.0.113.5"),  # one edge
        ("10.0.0.1", ["198.51.100.1, 203.0.113.5, 10.0.0.2"], "203.0.113.5"),  # a chain
        ("10.0.0.1", ["203.0.113.5", "10.0.0.2"], "203.0.113.5"),  # two header lines
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # every hop ours: the first
        ("10.0.0.1", [], "10.0.0.1"),  # no header: the proxy itself
        ("203.0.113.9", ["10.9.9.9"], "203.0.113.9"),  # forged by an untrusted peer
        ("203.0.113.9", ["garbage"], "203.0.113.9"),
        ("10.0.0.1", ["203.0.113.5, garbage"], "10.0.0.1"),  # malformed: the peer
        ("10.0.0.1", ["203.0.113.5,"], "10.0.0.1"),
        ("10.0.0.1", ["unknown"], "10.0.0.1"),
        ("10.0.0.1", ["[2001:db8::1]:443"], "10.0.0.1"),
        ("10.0.0.1", [", ".join(["203.0.113.5"] * 21)], "10.0.0.1"),  # too many hops
        ("fd00::1", ["2001:db8::7"], "2001:db8::7"),  # IPv6
        ("fd00::1", ["2001:db8::7, fd00::2"], "2001:db8::7"),
        ("2001:db8::9", ["10.0.0.5"], "2001:db8::9"),
        ("::ffff:10.0.0.1", ["203.0.113.5"], "203.0.113.5"),  # IPv4-mapped peer
        ("127.0.0.1", ["::ffff:203.0.113.5"], "203.0.113.5"),
        ("", ["203.0.113.5"], ""),  # no peer (a Unix socket)
    ],
)
def test_client_address(peer: str, forwarded: list[str], client: str) -> None:
    assert resolve(peer, forwarded, TRUSTED) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert resolve("10.0.0.1", ["203.0.113.5"], ()) == "10.0.0.1"


@pytest.mark.parametrize(
    ("header", "found"),
    [
        (basic("gate", "pw:with:colons"), ("gate", "pw:with:colons")),
        (basic("", ""), ("", "")),
        ("basic " + base64.b64encode(b"u:p").decode(), ("u", "p")),
        ("Basic " + base64.b64encode(b"no colon").decode(), None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), None),
        ("Bearer abc", None),
        ("", None),
    ],
)
def test_basic_credentials(header: str, found: tuple[str, str] | None) -> None:
    assert basic_credentials(header) == found


async def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(
    db: Database, clock: FakeClock, acme: People, tmp_path: Path
) -> None:
    untrusted = dataclasses.replace(SETTINGS, data_dir=tmp_path / "data")  # trusts nobody
    await restrict(db, acme, ("10.0.0.0/8",))
    async with TestClient(TestServer(build_app(untrusted, clock, db=db))) as client:
        page = await From(client, ip=INSIDE).get("/login")
        assert page.status == 403
    [entry] = await refusals(db, acme)
    assert entry.ip == "127.0.0.1"


# ---------------------------------------------------------------- refusal


async def test_inside_clients_are_unaffected(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await restrict(db, acme, ("10.0.0.0/8", "2001:db8::/32"))
    for ip in (INSIDE, "2001:db8::5"):
        browser = await member(client, db, clock, acme, ip)
        assert (await browser.get("/spaces")).status == 200
        status, body, _ = await api_get(client, "/me", ip, await token_of(db, acme, acme.alice))
        assert (status, body["email"]) == (200, "alice@example.com")
    assert await refusals(db, acme) == []


async def test_outside_clients_are_refused_on_pages_api_and_downloads(
    client: TestClient[Any, Any],
    db: Database,
    clock: FakeClock,
    acme: People,
    settings: AppSettings,
) -> None:
    file_id = await stored_file(db, acme, settings)
    token = await token_of(db, acme, acme.alice)
    status, _, _ = await api_get(client, f"/files/{file_id}", OUTSIDE, token)
    assert status == 200  # no restriction yet
    await restrict(db, acme, ("10.0.0.0/8",))
    clock.advance(3)
    browser = await member(client, db, clock, acme, OUTSIDE)
    for path in ("/", "/login", "/spaces", "/static/app.css"):
        page = await browser.get(path)
        assert page.status == 403, path
        assert "does not accept requests from your network" in page.text
        assert page.headers["Content-Type"].startswith("text/html")
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/me", f"/files/{file_id}"):
        status, body, headers = await api_get(client, path, OUTSIDE, token)
        assert status == 403
        assert body == {"error": body["error"], "status": 403}
        assert headers["Content-Security-Policy"] == API_CSP
    page = await browser.post("/login", {"email": "alice@example.com", "password": PASSWORD})
    assert page.status == 403


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_the_probes_are_never_restricted(
    client: TestClient[Any, Any], db: Database, acme: People, path: str
) -> None:
    await restrict(db, acme, ("10.0.0.0/8",))
    headers = {"Host": "acme.localhost", "X-Forwarded-For": OUTSIDE}
    async with client.get(path, headers=headers) as response:
        assert response.status == 200


async def test_a_workspace_without_networks_and_other_workspaces_are_open(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    globex = await new_people(db, clock, "globex")
    await restrict(db, globex, ("10.0.0.0/8",))
    assert (await From(client, ip=OUTSIDE).get("/login")).status == 200
    assert (await From(client, "globex.localhost", ip=OUTSIDE).get("/login")).status == 403


async def test_a_settings_change_takes_effect_within_seconds(
    client: TestClient[Any, Any], app: web.Application, db: Database, clock: FakeClock,
    acme: People,
) -> None:  # fmt: skip
    browser = From(client, ip=OUTSIDE)
    assert (await browser.get("/login")).status == 200
    await restrict(db, acme, ("10.0.0.0/8",))
    assert (await browser.get("/login")).status == 200  # the cached settings, for a moment
    clock.advance(3)
    assert (await browser.get("/login")).status == 403
    await restrict(db, acme, ("203.0.113.0/24",))
    app[NETWORK_ACCESS].forget("acme")  # what a settings change may do to apply at once
    assert (await browser.get("/login")).status == 200
    assert (await From(client, ip=INSIDE).get("/login")).status == 403
    await restrict(db, acme, ())
    clock.advance(3)
    assert (await From(client, ip=INSIDE).get("/login")).status == 200


async def test_a_refusal_is_recorded_once_a_minute_per_address(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await restrict(db, acme, ("10.0.0.0/8",))
    for _ in range(5):
        assert (await From(client, ip=OUTSIDE).get("/spaces")).status == 403
    status, _, _ = await api_get(client, "/me", OUTSIDE)
    assert status == 403
    assert (await From(client, ip=OTHER_OUTSIDE).get("/login")).status == 403
    entries = await refusals(db, acme)
    assert sorted(entry.ip for entry in entries) == [OTHER_OUTSIDE, OUTSIDE]
    first = entries[-1]
    assert (first.result, first.target, first.detail) == (
        "refused", "/spaces", {"method": "GET", "path": "/spaces"},
    )  # fmt: skip
    clock.advance(61)
    assert (await From(client, ip=OUTSIDE).get("/spaces")).status == 403
    assert len(await refusals(db, acme)) == 3


# ---------------------------------------------------------------- the Basic gate


async def test_the_gate_asks_for_its_credentials_first(
    client: TestClient[Any, Any], db: Database, acme: People
) -> None:
    await gate(db, acme)
    page = await From(client).get("/login")
    assert page.status == 401
    assert page.headers["WWW-Authenticate"] == REALM
    status, body, headers = await api_get(client, "/me", OUTSIDE)
    assert (status, body["status"], headers["WWW-Authenticate"]) == (401, 401, REALM)
    for wrong in (basic(GATE_USER, "wrong password"), basic("other", GATE_PASSWORD), "Basic %%"):
        page = await From(client, extra={"Authorization": wrong}).get("/login")
        assert page.status == 401
        assert page.headers["WWW-Authenticate"] == REALM
    [entry] = await refusals(db, acme)  # the wrong credentials, once this minute
    assert entry.result == "wrong_gate_credentials"
    assert (await From(client, ip=INSIDE).get("/login")).status == 200  # inside: no gate


async def test_past_the_gate_the_normal_sign_in_applies(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await gate(db, acme)
    browser = From(client, extra={"Authorization": basic(GATE_USER, GATE_PASSWORD)})
    page = await browser.get("/spaces")
    assert (page.status, page.location) == (303, "/login?next=/spaces")
    assert (await sign_in(browser, "alice@example.com", "wrong password")).status == 401
    page = await sign_in(browser, "alice@example.com", PASSWORD, "/spaces")
    assert (page.status, page.location) == (303, "/spaces")
    assert (await browser.get("/spaces")).status == 200
    # The browser's session answers the API too: the Basic header is the gate's, not a token.
    gate_header = basic(GATE_USER, GATE_PASSWORD)
    cookie = f"{SESSION_COOKIE}={browser.cookies[SESSION_COOKIE]}"
    status, body, _ = await api_get(
        client, "/me", OUTSIDE, Authorization=gate_header, Cookie=cookie
    )
    assert (status, body["email"]) == (200, "alice@example.com")
    await gate(db, acme, "another gate password")  # the old one no longer opens it
    clock.advance(3)
    assert (await browser.get("/spaces")).status == 401


async def test_wrong_gate_passwords_are_limited_per_address(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await gate(db, acme)
    wrong = From(client, extra={"Authorization": basic(GATE_USER, "guess")})
    for _ in range(GATE_FAILURES):
        assert (await wrong.get("/login")).status == 401
    right = From(client, extra={"Authorization": basic(GATE_USER, GATE_PASSWORD)})
    page = await right.get("/login")
    assert page.status == 429
    assert int(page.headers["Retry-After"]) > 0
    right_elsewhere = From(client, ip=OTHER_OUTSIDE, extra=right.extra)
    assert (await right_elsewhere.get("/login")).status == 200
    clock.advance(301)
    assert (await right.get("/login")).status == 200


# ---------------------------------------------------------------- the audit log viewer


async def seeded(db: Database, clock: FakeClock, people: People) -> None:
    """Records over three days: sign-ins of alice (one failed), a download of bob's."""
    tid = people.tenant_id
    alice, bob = people.alice, people.bob
    await audit.record(db, tid, "sign_in", user_id=alice.id, actor=alice.email, clock=clock)
    clock.advance(DAY_S)
    await audit.record(
        db, tid, "sign_in", "wrong_password", actor=alice.email, ip=OUTSIDE, clock=clock
    )
    clock.advance(DAY_S)
    await audit.record(
        db, tid, "file_download", user_id=bob.id, actor=bob.email, target="=cmd()", clock=clock
    )


async def test_the_audit_page_filters_and_pages(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await seeded(db, clock, acme)
    owner = await as_user(client, db, clock, acme, acme.owner)
    assert 'href="/admin/audit"' in (await owner.get("/admin")).text
    page = await owner.get("/admin/audit")
    assert page.status == 200
    assert page.text.count("<tr>") == 4  # the header row and three records
    only = await owner.get("/admin/audit?action=file_download")
    assert only.text.count("<tr>") == 2 and "bob@example.com" in only.text
    failed = await owner.get("/admin/audit?result=failed")
    assert failed.text.count("<tr>") == 2 and "wrong_password" in failed.text
    by_user = await owner.get("/admin/audit?user=bob@example.com")
    assert by_user.text.count("<tr>") == 2
    assert (await owner.get(f"/admin/audit?user={acme.bob.id}")).text.count("<tr>") == 2
    # FakeClock starts 2023-11-14 22:13 UTC: the records are on the 14th, 15th and 16th.
    days = await owner.get("/admin/audit?from=2023-11-15&to=2023-11-15")
    assert days.text.count("<tr>") == 2 and "wrong_password" in days.text
    for bad in ("action=nonsense", "result=maybe", "from=yesterday", "user=nobody@example.com",
                "from=2023-11-16&to=2023-11-15", "before=abc"):  # fmt: skip
        refused = await owner.get("/admin/audit?" + bad)
        assert refused.status == 400, bad


async def test_the_audit_page_has_older_pages(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    for n in range(55):
        await audit.record(db, acme.tenant_id, "sign_out", target=f"n{n}", clock=clock)
    owner = await as_user(client, db, clock, acme, acme.owner)
    first = await owner.get("/admin/audit?action=sign_out")
    assert first.text.count("<tr>") == 51
    more = first.text.split('class="more" href="')[1].split('"')[0].replace("&amp;", "&")
    assert "action=sign_out" in more and "before=" in more
    second = await owner.get(more)
    assert second.text.count("<tr>") == 6 and 'class="more"' not in second.text
    assert "n0<" in second.text and "n54<" in first.text


async def test_the_audit_csv_download(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await seeded(db, clock, acme)
    owner = await as_user(client, db, clock, acme, acme.owner)
    page = await owner.get("/admin/audit.csv?action=file_download")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/csv; charset=utf-8"
    disposition = page.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and 'filename="audit-acme-' in disposition
    lines = page.text.splitlines()
    assert lines[0] == ",".join(audit.CSV_COLUMNS)
    assert len(lines) == 2 and "'=cmd()" in lines[1]
    assert len((await owner.get("/admin/audit.csv")).text.splitlines()) == 5  # + the export
    wanted = AuditFilter(action="audit_export")
    exports, _ = await audit.list_entries(db, acme.tenant_id, wanted)
    assert [e.user_id for e in exports] == [acme.owner.id, acme.owner.id]
    assert exports[-1].detail == {"action": "file_download"}


async def test_the_audit_log_is_for_owners_and_admins(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    admin = await as_user(client, db, clock, acme, acme.admin)
    assert (await admin.get("/admin/audit")).status == 200
    for user in (acme.alice, acme.guest):
        browser = await as_user(client, db, clock, acme, user)
        assert (await browser.get("/admin/audit")).status == 403
        assert (await browser.get("/admin/audit.csv")).status == 403
    status, _, _ = await api_get(client, "/admin/audit", INSIDE, await token_of(db, acme, user))
    assert status == 403
    assert (await Browser(client).get("/admin/audit")).status == 303  # to the sign-in page


async def test_the_audit_json_endpoint(
    client: TestClient[Any, Any], db: Database, clock: FakeClock, acme: People
) -> None:
    await seeded(db, clock, acme)
    token = await token_of(db, acme, acme.admin)
    status, body, _ = await api_get(client, "/admin/audit?limit=2", INSIDE, token)
    assert status == 200
    assert [item["action"] for item in body["items"]] == ["file_download", "sign_in"]
    assert body["next"] is not None
    item = body["items"][0]
    assert item["user_id"] == str(acme.bob.id) and isinstance(item["at"], int)
    status, rest, _ = await api_get(
        client, f"/admin/audit?limit=2&cursor={body['next']}", INSIDE, token
    )
    assert [item["result"] for item in rest["items"]] == ["ok"] and rest["next"] is None
    status, failed, _ = await api_get(client, "/admin/audit?result=failed", INSIDE, token)
    assert [item["ip"] for item in failed["items"]] == [OUTSIDE]
    for bad in ("action=x", "cursor=x", "to=2023-02-30"):
        status, error, _ = await api_get(client, "/admin/audit?" + bad, INSIDE, token)
        assert (status, error["status"]) == (400, 400), bad


# ---------------------------------------------------------------- downloads, retention, headers


async def test_a_download_is_recorded_with_the_client_address(
    client: TestClient[Any, Any],
    db: Database,
    acme: People,
    settings: AppSettings,
) -> None:
    file_id = await stored_file(db, acme, settings)
    token = await token_of(db, acme, acme.alice)
    status, data, headers = await api_get(client, f"/files/{file_id}", OUTSIDE, token)
    assert (status, data) == (200, b"hello notes\n")
    assert headers["Content-Security-Policy"] == "sandbox"  # a download keeps its own policy
    async with client.head(
        f"/api/v1/files/{file_id}",
        headers={"Host": "acme.localhost", "Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 200
    status, _, _ = await api_get(client, "/files/999", OUTSIDE, token)
    assert status == 404
    entries, _ = await audit.list_entries(db, acme.tenant_id, AuditFilter(action="file_download"))
    [entry] = entries
    assert (entry.user_id, entry.actor, entry.ip) == (acme.alice.id, "alice@example.com", OUTSIDE)
    assert entry.detail == {"file_id": str(file_id), "name": "notes.txt"}
    assert entry.target == f"file {file_id}"


async def test_a_retention_pass_prunes_each_tenant_to_its_days(
    db: Database, clock: FakeClock, acme: People
) -> None:
    globex = await new_people(db, clock, "globex")
    await restrict(db, acme, (), audit_retention_days=30)
    for people in (acme, globex):
        await audit.record(db, people.tenant_id, "sign_in", target="old", clock=clock)
    clock.advance(40 * DAY_S)
    for people in (acme, globex):
        await audit.record(db, people.tenant_id, "sign_in", target="new", clock=clock)
    assert await prune_pass(db, ("acme", "globex", "initech"), clock) == {"acme": 1, "globex": 0}
    kept, _ = await audit.list_entries(db, acme.tenant_id)
    assert [entry.target for entry in kept] == ["new"]
    clock.advance(330 * DAY_S)
    assert await prune_pass(db, ("acme", "globex"), clock) == {"acme": 1, "globex": 1}


async def test_a_failed_retention_pass_is_logged_not_raised(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    broken = await open_database(f"sqlite://{tmp_path / 'broken.sqlite3'}")
    await broken.close()
    with caplog.at_level(logging.ERROR, logger="app.audit_retention"):
        assert await prune_pass(broken, ("acme",), clock) == {}
    assert "audit retention failed for tenant acme" in caplog.text


async def test_the_retention_task_starts_and_stops_with_the_app(
    db: Database, clock: FakeClock
) -> None:
    retention = AuditRetention(db, ("acme",), clock)
    app = web.Application()
    app.on_startup.append(retention.start)
    app.on_cleanup.append(retention.stop)
    async with TestClient(TestServer(app)):
        pass
    await retention.stop(app)  # idempotent


async def test_api_answers_carry_the_security_headers(
    client: TestClient[Any, Any], db: Database, acme: People
) -> None:
    token = await token_of(db, acme, acme.alice)
    for sent_token, status in ((token, 200), (None, 401), ("bad", 401)):
        got, _, headers = await api_get(client, "/me", INSIDE, sent_token)
        assert got == status
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Content-Security-Policy"] == API_CSP
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "Strict-Transport-Security" not in headers
    _, _, headers = await api_get(client, "/me", INSIDE, token, **{"X-Forwarded-Proto": "https"})
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    _, _, headers = await api_get(client, "/nowhere", INSIDE, token)
    assert headers["Content-Security-Policy"] == API_CSP


def test_access_lines_never_carry_the_query(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access")
    access = PathOnlyAccessLogger(logger, "")
    request = make_mocked_request(
        "GET", "/join?token=secret-token", headers={"Referer": "https://x/join?token=secret-token"}
    )
    with caplog.at_level(logging.INFO, logger="test.access"):
        assert access.enabled
        access.log(request, web.Response(status=200, text="hi"), 0.01)
    assert "/join" in caplog.text and "secret-token" not in caplog.text
    assert SecuritySettings().allowed_networks == ()


async def test_a_change_through_the_admin_api_applies_at_the_next_request(
    client: TestClient[Any, Any], db: Database, acme: People
) -> None:
    browser = From(client, ip=OUTSIDE)
    assert (await browser.get("/login")).status == 200  # the open settings are now cached
    token = await accounts.create_api_token(
        db, acme.tenant_id, acme.owner.id, "admin", ["read", "write"], None
    )
    headers = {
        "Host": "acme.localhost", "X-Forwarded-For": INSIDE, "Authorization": f"Bearer {token}"
    }  # fmt: skip
    body = {"allowed_networks": ["10.0.0.0/8"]}
    async with client.patch("/api/v1/admin/security", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
    assert (await browser.get("/login")).status == 403  # no wait for the cache
