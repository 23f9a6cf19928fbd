"""The status page on the agent port: `GET /`, `GET /decisions/{id}`, its script and CSS.

One agent's API on 127.0.0.1 over in-memory consensus with a frozen clock (the `api` fixture
of the stops API tests); the test commits the states the page shows.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from agent.dashboard import banners, dashboard
from consensus.commands import (
    MarkServerFailed,
    RecordHeld,
    ReportProbe,
    ServerUp,
    SetMode,
    StopTenant,
)
from tests.component.test_stops_api import WALL, Api, auto_stop

# The one-agent fixture, used by its name.
from tests.component.test_stops_api import api as api

CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
    "img-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HOSTILE_REASON = '</td><script>alert("reason")</script><img src=x onerror=alert(1)>'
HOSTILE_SUBJECT = "<b>globex</b>&amp;'\""
HOSTILE_MODE = "<iframe src=//evil.test></iframe> 3 of 3 servers"


class Rows(HTMLParser):
    """The text and class of every <tr> carrying a data-ATTRIBUTE, by that attribute's value;
    and the text of every element by id."""

    def __init__(self, html: str, attribute: str) -> None:
        super().__init__()
        self.attribute = f"data-{attribute}"
        self.rows: dict[str, tuple[str, str]] = {}
        self.links: list[str] = []
        self._current: tuple[str, str] | None = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get(self.attribute) is not None:
            self._current = (str(found[self.attribute]), str(found.get("class", "")))
            self._text = []
        if tag == "a" and self._current is not None:
            self.links.append(str(found.get("href")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._current is not None:
            key, cls = self._current
            self.rows[key] = (cls, " ".join(" ".join(self._text).split()))
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)


async def page(api: Api, path: str, status: int = 200) -> tuple[str, dict[str, str]]:
    async with api.http.get(api.url + path) as resp:
        assert resp.status == status, await resp.text()
        return await resp.text(), dict(resp.headers)


async def commit_trouble(api: Api) -> None:
    """Three servers up; a2 suspected by a1; a3 failed; cascade mode; acme stopped for 2 min;
    an action held back about a hostile subject."""
    for server in ("a1", "a2", "a3"):
        await api.commit(ServerUp(id=f"up-{server}", at=WALL - 50, server=server, incarnation=1))
    await api.commit(
        ReportProbe(
            id="probe", at=WALL - 30, observer="a1", target="a2", incarnation=1, reachable=False
        )
    )
    await api.commit(
        MarkServerFailed(
            id="verdict",
            at=WALL - 20,
            server="a3",
            incarnation=1,
            evidence={"observers": ["a1", "a2"], "eligible": ["a1", "a2"], "required": 2},
        )
    )
    await api.commit(
        SetMode(
            id="cascade",
            at=WALL - 15,
            mode="cascade",
            reason=HOSTILE_MODE,
            evidence={"rule": "failures_in_window"},
        )
    )
    await api.commit(
        StopTenant(
            id="stop",
            at=WALL - 10,
            subdomain="acme",
            until=WALL + 120,
            reason=HOSTILE_REASON,
            evidence={"rule": "rps", "rps": 42.0, "limit": 20.0, "over_for_s": 1.0, "edges": 3},
        )
    )
    await api.commit(
        RecordHeld(
            id="held", at=WALL - 5, subject=HOSTILE_SUBJECT, action="assign_slot", reason="cascade"
        )
    )


# ---------------------------------------------------------------- GET /


async def test_a_healthy_cluster_at_a_glance(api: Api) -> None:
    html, headers = await page(api, "/")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<h1>moonwatch · <span id="cluster">test</span></h1>' in html
    assert "<dd>a1 (pid " in html
    assert '<dd class="tone-ok">a1</dd>' in html  # the leader
    assert '<dd class="tone-ok">yes</dd>' in html  # quorum
    assert '<dd class="tone-ok">normal</dd>' in html
    assert 'class="banner' not in html  # nothing is wrong
    servers = Rows(html, "server").rows
    assert list(servers) == ["a1", "a2", "a3"]
    assert servers["a1"][1] == "a1 leader this agent active new voter rack-0 0"
    slots = Rows(html, "slot").rows
    assert slots["s1"][1] == "s1 a1 1 assigned - acme, globex"
    assert "no tenant is stopped" in html and "no backups on this server" in html
    decisions = Rows(html, "decision")
    assert decisions.rows["d000001"][1] == (
        "2023-11-14 22:12:20Z bootstrap test cluster test was created from its configuration."
    )
    assert decisions.links == ["/decisions/d000001"]
    assert '<script src="/static/status.js" defer></script>' in html
    assert f'data-wall="{WALL}"' in html
    assert "<noscript>" in html


async def test_problems_stand_out(api: Api) -> None:
    await commit_trouble(api)
    html, _ = await page(api, "/")
    servers = Rows(html, "server").rows
    assert servers["a3"] == ("row-bad", "a3 active failed voter rack-2 1")
    assert servers["a2"] == ("row-warn", "a2 active suspected (unreachable by a1) voter rack-1 1")
    assert servers["a1"][0] == "row-ok"
    assert 'data-server="a3" data-state="failed"' in html
    assert '<td class="state tone-bad">failed</td>' in html
    assert '<p class="banner tone-bad">Failed: a3</p>' in html
    assert '<p class="banner tone-warn">Suspected: a2</p>' in html
    assert '<p class="banner tone-bad">Cascade mode since 2023-11-14 22:13:05Z: ' in html
    assert "Automatic replacement is held back; `moonwatch resume` ends it." in html
    slots = Rows(html, "slot").rows
    assert slots["s3"] == ("row-bad", "s3 a3 1 lost - t3x1, t3x2")
    stops = Rows(html, "stop").rows
    assert stops["acme"][1].startswith("acme 2 min 0 s 2023-11-14 22:15:20Z automatic </td>")
    decisions = Rows(html, "decision").rows
    assert list(decisions)[:2] == ["d000009", "d000008"]  # newest first
    assert decisions["d000006"][0] == "row-bad"
    assert "a3 was declared failed: a1, a2 could not reach it" in decisions["d000006"][1]


async def test_every_string_from_agents_is_escaped(api: Api) -> None:
    await commit_trouble(api)
    html, _ = await page(api, "/")
    for hostile in (HOSTILE_REASON, HOSTILE_SUBJECT, HOSTILE_MODE):
        assert hostile not in html
    assert "<script>alert" not in html and "<iframe" not in html and "<img" not in html
    assert "&lt;/td&gt;&lt;script&gt;alert(&#34;reason&#34;)&lt;/script&gt;" in html
    assert "&lt;b&gt;globex&lt;/b&gt;&amp;amp;&#39;&#34;" in html
    assert "&lt;iframe src=//evil.test&gt;&lt;/iframe&gt; 3 of 3 servers" in html
    decision, _ = await page(api, "/decisions/d000009")
    assert HOSTILE_SUBJECT not in decision
    assert '<h1 class="tone-warn">action_held · &lt;b&gt;globex&lt;/b&gt;' in decision


async def test_stops_that_ran_out_are_not_shown(api: Api) -> None:
    await api.commit(auto_stop("globex", WALL - 50.0, WALL - 20.0, "old"))
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 7200.0, "new"))
    stops = Rows((await page(api, "/"))[0], "stop").rows
    assert stops == {
        "acme": (
            "row-warn",
            "acme 2 h 0 min 2023-11-15 00:13:20Z automatic over its rps limit for 1.0 s",
        )
    }


async def test_a_lost_quorum_is_a_banner(api: Api) -> None:
    doc = await api.get("/v1/status")
    view = dashboard({**doc, "leader": None}, (), WALL)
    assert not view["quorum"]
    assert view["banners"] == [
        {"tone": "bad", "text": "No quorum: a1 knows no Raft leader; nothing heals until one is."}
    ]


def test_a_voter_change_and_recovering_mode_are_banners() -> None:
    doc = {
        "server": "a1",
        "leader": "a1",
        "mode": "recovering",
        "voter_change": {"add": "p1", "remove": "a3", "since": WALL, "step": "prepare"},
    }
    assert banners(doc, "", None) == [
        {"tone": "warn", "text": "Recovering mode since -: no reason recorded."},
        {
            "tone": "warn",
            "text": "Voter change in progress: p1 replaces a3 (step prepare, "
            "since 2023-11-14 22:13:20Z).",
        },
    ]


# ---------------------------------------------------------------- GET /decisions/{id}


async def test_the_decision_page_explains_and_shows_the_incident(api: Api) -> None:
    await commit_trouble(api)
    html, headers = await page(api, "/decisions/d000006")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<h1 class="tone-bad">server_failed · a3</h1>' in html
    assert "decision <code>d000006</code> at <time>2023-11-14 22:13:00Z</time>" in html
    assert "a3 was declared failed: a1, a2 could not reach it (2 of 2 eligible, 2 required)" in html
    assert '<tr class="current">' in html and "<strong>server_failed</strong>" in html
    assert '<th scope="row">observers</th><td><code>[&#34;a1&#34;, &#34;a2&#34;]</code>' in html
    assert '<a href="/">← status of test</a>' in html


async def test_the_timeline_links_the_other_decisions_of_the_incident(api: Api) -> None:
    await api.commit(ServerUp(id="up-a2", at=WALL - 50, server="a2", incarnation=1))
    await api.commit(ServerUp(id="up-a1", at=WALL - 50, server="a1", incarnation=1))
    await api.commit(
        ReportProbe(
            id="probe", at=WALL - 30, observer="a1", target="a2", incarnation=1, reachable=False
        )
    )
    await api.commit(MarkServerFailed(id="verdict", at=WALL - 20, server="a2", incarnation=1))
    html, _ = await page(api, "/decisions/d000005")
    assert "<td>+0.000 s</td><td>2023-11-14 22:12:50Z</td>" in html
    assert '<a href="/decisions/d000004">server_suspected</a>' in html
    assert "<td>+10.000 s</td><td>2023-11-14 22:13:00Z</td>" in html


@pytest.mark.parametrize(
    "decision_id", ["d999999", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "x" * 300]
)
async def test_an_unknown_decision_is_a_404_page(api: Api, decision_id: str) -> None:
    html, headers = await page(api, f"/decisions/{decision_id}", status=404)
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CSP
    assert "<h1>No decision " in html
    assert "<script>alert" not in html
    assert "x" * 65 not in html


# ---------------------------------------------------------------- headers, script and CSS


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/decisions/d000001", "text/html; charset=utf-8"),
        ("/static/status.js", "text/javascript; charset=utf-8"),
        ("/static/status.css", "text/css; charset=utf-8"),
    ],
)
async def test_security_headers(api: Api, path: str, content_type: str) -> None:
    _, headers = await page(api, path)
    assert headers["Content-Type"] == content_type
    assert headers["Content-Security-Policy"] == CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


async def test_the_script_polls_the_json_api_and_never_writes_markup(api: Api) -> None:
    script, _ = await page(api, "/static/status.js")
    assert '"/v1/status"' in script and '"/v1/decisions"' in script
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


async def test_the_json_api_is_unchanged(api: Api) -> None:
    status = await api.get("/v1/status")
    assert status["cluster"] == "test" and status["backups"] == []
    async with api.http.get(api.url + "/nothing-here") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Not Found", "status": 404}
