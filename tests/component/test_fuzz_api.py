"""Hostile HTTP requests to one agent's API, in process over in-memory consensus.

Whatever the method, path, headers and body: the answer is never a 500; a refused request is
a 4xx with a JSON error; no unauthenticated or malformed call commits anything; and every
refusal is counted in moonwatch_rejected_inputs_total{source="http", reason}. The decision
loop is not run, so only the requests could change the committed state.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.config import parse_config
from agent.loop import bootstrap_command
from agent.metrics import http_reject_reason
from agent.reports import TrafficReport, encode_report, report_key
from agent.traffic_counts import TenantCounts
from agent.wiring import build_agent
from consensus.memory import MemoryConsensus, MemoryLog
from tests.support import StaticDriver, cluster_config

WALL = 1_700_000_000.0
TOKEN = "test-api-token"
# One agent serves every example of a test (starting one per example would dominate the run);
# each example compares the committed state before and after itself, so sharing is sound.
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Padded:
    """An oversized JSON object of `size` bytes, built only when sent (a short repr)."""

    size: int

    def body(self) -> bytes:
        return b"{" + b" " * (self.size - 2) + b"}"


Body = bytes | Padded | None


@dataclass
class Api:
    log: MemoryLog
    consensus: MemoryConsensus
    client: TestClient[Any, Any]

    def committed(self) -> tuple[int, object]:
        return len(self.log.entries), self.consensus.snapshot().state

    async def rejected(self) -> dict[str, float]:
        """moonwatch_rejected_inputs_total{source="http"} by reason, from a scrape."""
        async with self.client.get("/metrics") as resp:
            text = await resp.text()
        return {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "moonwatch_rejected_inputs"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["source"] == "http"
        }

    async def call(
        self, method: str, path: str, body: Body, headers: Mapping[str, str]
    ) -> tuple[int, str, bytes]:
        data = io.BytesIO(body.body()) if isinstance(body, Padded) else body
        async with self.client.request(method, path, data=data, headers=dict(headers)) as resp:
            return resp.status, resp.content_type, await resp.read()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    raw = cluster_config(tmp_path / "data")
    config = parse_config(raw, tmp_path, {})
    clock = FrozenClock()
    log = MemoryLog(voters=config.voters)
    consensus = MemoryConsensus(log, "a1", clock)
    await consensus.start()
    log.elect("a1")
    assert (await consensus.submit(bootstrap_command(config, WALL - 60.0), 1.0)).ok
    parts = build_agent(config, "a1", clock, consensus=consensus, driver=StaticDriver())
    # A body the server cannot decode (a false Content-Encoding) ends its connection after
    # the answer: a fresh connection per request keeps that from failing the next request.
    connector = aiohttp.TCPConnector(force_close=True)
    async with TestClient(TestServer(parts.api), connector=connector) as client:
        yield Api(log, consensus, client)
    await consensus.stop()


# ---------------------------------------------------------------- strategies

_texts = st.text(max_size=40) | st.sampled_from(["a1", "a2", "t1x1", "T1X1", "d000001", ".."])
_params = _texts.map(lambda t: quote(t, safe="")).filter(bool)
_OPERATOR = [
    "/v1/servers/{}/return",
    "/v1/servers/{}/drain",
    "/v1/mode/resume",
    "/v1/stops/{}/lift",
    "/v1/stops/{}/pin",
    "/v1/tenants",
]
_READ = ["/healthz", "/readyz", "/v1/status", "/v1/decisions", "/v1/decisions/{}", "/v1/stops"]
_OTHER = ["/v1/traffic", "/", "/decisions/{}", "/static/status.js", "/{}", "/v1/{}/{}"]
_paths = st.builds(
    lambda template, a, b: template.format(a, b)[:2000],
    st.sampled_from(_OPERATOR + _READ + _OTHER),
    _params,
    _params,
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=8,
)
_fields = st.sampled_from(["reason", "for_s", "name", "admin_email", "display_name", "x"])
_bodies = st.one_of(
    st.none(),
    st.binary(max_size=300),
    _json.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(_fields, _json, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.integers(1, 4000).map(lambda n: b"[" * n),  # nested beyond the parser's recursion
    st.sampled_from([4097, 70_000, 1_100_000]).map(Padded),
    st.sampled_from([b'{"reason": NaN}', b'{"for_s": 1e999}', b"\xff\xfe{}", b'{"a":1,"a":2}']),
)
_auth = st.sampled_from(
    [None, f"Bearer {TOKEN}", "Bearer wrong", f"Basic {TOKEN}", f"bearer  {TOKEN} ", "Bearer "]
)
_content_types = st.sampled_from(
    [None, "application/json", "application/json; charset=bogus", "text/plain", "multipart/x"]
)
_encodings = st.sampled_from([None, "gzip", "deflate", "identity"])


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, Body, dict[str, str]]:
    method = draw(st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "PATCH"]))
    headers: dict[str, str] = {}
    for name, strategy in (
        ("Authorization", _auth),
        ("Content-Type", _content_types),
        ("Content-Encoding", _encodings),
    ):
        value = draw(strategy)
        if value is not None:
            headers[name] = value
    return method, draw(_paths), draw(_bodies), headers


def _authenticated(headers: Mapping[str, str]) -> bool:
    scheme, _, given_token = headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and given_token.strip() == TOKEN


def _refused_by_the_parser(status: int, content_type: str, headers: Mapping[str, str]) -> bool:
    """aiohttp's HTTP parser answers a body that its Content-Encoding cannot decode with a
    plain-text 400 of its own, before any handler or middleware of ours runs."""
    return status == 400 and content_type == "text/plain" and "Content-Encoding" in headers


def _is_operator(method: str, path: str) -> bool:
    return method == "POST" and (path.startswith("/v1/servers/") or path in _OPERATOR)


# ---------------------------------------------------------------- properties


@FUZZ
@given(request=_requests())
async def test_any_request_is_answered_without_a_500_and_refusals_are_counted(
    api: Api, request: tuple[str, str, Body, dict[str, str]]
) -> None:
    method, path, body, headers = request
    before, counted = api.committed(), await api.rejected()
    status, content_type, raw = await api.call(method, path, body, headers)
    if path in ("/healthz", "/readyz") and status == 503:
        return  # the decision loop is not run here: "starting" is the truth
    assert status < 500, (status, raw[:200])
    if _refused_by_the_parser(status, content_type, headers):
        assert api.committed() == before
        return
    if _is_operator(method, path) and not _authenticated(headers):
        assert status in (401, 404, 405), (status, raw[:200])  # 404, 405: no such route
    if status < 400:
        return
    if not path.startswith("/decisions/"):  # the status page answers in HTML
        assert content_type == "application/json", raw[:200]
        document = json.loads(raw)
        assert document["status"] == status and isinstance(document["error"], str)
    if status == 409:  # an authenticated call the state machine refused: logged, no effect
        assert api.committed()[1] == before[1]
    else:
        assert api.committed() == before
    reason = http_reject_reason(status)
    after = await api.rejected()
    assert after[reason] == counted[reason] + 1
    assert sum(after.values()) == sum(counted.values()) + 1


@settings(parent=FUZZ, max_examples=150)
@given(
    path=st.sampled_from(_OPERATOR).flatmap(lambda t: _params.map(t.format)),
    body=_bodies,
    auth=_auth.filter(lambda a: a is None or a.partition(" ")[2].strip() != TOKEN),
)
async def test_operator_calls_without_the_token_are_401_and_commit_nothing(
    api: Api, path: str, body: Body, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    before, counted = api.committed(), await api.rejected()
    status, _, raw = await api.call("POST", path, body, headers)
    assert status in (401, 404, 405), raw[:200]  # 404/405: no such route
    assert api.committed() == before
    reason = http_reject_reason(status)
    assert (await api.rejected())[reason] == counted[reason] + 1


def _traffic(seq: int, server: str = "a2") -> bytes:
    report = TrafficReport(
        cluster="test",
        server=server,
        seq=seq,
        boot=1,
        at=WALL,
        interval_s=1.0,
        tenants={"t1x1": TenantCounts(requests=seq)},
    )
    return encode_report(report, report_key("test-raft-password"))


async def _traffic_counters(api: Api) -> dict[str, float]:
    async with api.client.get("/metrics") as resp:
        text = await resp.text()
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "moonwatch_traffic_reports"
        for sample in family.samples
    }


@settings(parent=FUZZ, max_examples=60)
@given(seqs=st.lists(st.integers(1, 10**6), min_size=1, max_size=5, unique=True))
async def test_replayed_traffic_reports_are_ignored(api: Api, seqs: list[int]) -> None:
    reports = [_traffic(seq) for seq in sorted(seqs)]
    before = await _traffic_counters(api)
    for data in reports:  # kept when newer than what an earlier example sent
        assert (await api.call("POST", "/v1/traffic", data, {}))[0] == 204
    sent = await _traffic_counters(api)
    for data in reports[::-1]:  # valid but not newer: 204, so the poster does not retry
        assert (await api.call("POST", "/v1/traffic", data, {}))[0] == 204
    after = await _traffic_counters(api)
    assert after["ignored"] - sent["ignored"] == len(reports)
    assert after["accepted"] == sent["accepted"]
    delta = {k: sent[k] - before[k] for k in ("accepted", "ignored")}
    assert delta["accepted"] + delta["ignored"] == len(reports)
    assert not any(k.startswith("rejected_") for k in after)


async def test_hostile_traffic_reports_are_refused_and_counted(api: Api) -> None:
    genuine = _traffic(1)
    cases = {
        "bad_mac": genuine[:-1] + b"x",
        "malformed": b"short",
        "too_big": genuine + b" " * (256 * 1024),
        "unknown_server": _traffic(1, server="mallory"),
    }
    for reason, data in cases.items():
        status, content_type, raw = await api.call("POST", "/v1/traffic", data, {})
        assert 400 <= status < 500 and content_type == "application/json"
        assert json.loads(raw)["reason"] == reason
    gzip = {"Content-Encoding": "gzip"}  # bytes that are not what the header says
    status, _, raw = await api.call("POST", "/v1/traffic", b"not gzip", gzip)
    assert status == 400 and json.loads(raw)["reason"] == "malformed"
    counters = await _traffic_counters(api)
    assert {k: counters[f"rejected_{k}"] for k in cases} == {
        "bad_mac": 1,
        "malformed": 2,
        "too_big": 1,
        "unknown_server": 1,
    }
