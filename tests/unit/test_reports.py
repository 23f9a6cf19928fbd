"""Traffic reports: the signed wire format, the leader's aggregation, the publisher's paths."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.mqtt import ReportPublisher
from agent.reports import (
    MAX_REPORT_BYTES,
    MAX_TENANTS,
    Aggregator,
    ReportError,
    ReportIntake,
    TrafficReport,
    decode_report,
    encode_report,
    report_key,
    top_tenants,
)
from agent.swim.messages import derive_probe_key
from agent.traffic_counts import TenantCounts
from healer.throttle import TenantRate

KEY = report_key("raft-secret")
CLUSTER = "demo"
SERVERS = frozenset({"m1", "m2", "m3"})
AT = 1_700_000_000.0


def report(
    server: str = "m1",
    seq: int = 1,
    boot: int = 7,
    at: float = AT,
    interval_s: float = 1.0,
    tenants: dict[str, TenantCounts] | None = None,
    cluster: str = CLUSTER,
) -> TrafficReport:
    if tenants is None:
        tenants = {"acme": TenantCounts(10, 1, 1000, 3, 0)}
    return TrafficReport(cluster, server, seq, boot, at, interval_s, tenants)


def signed(payload: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


def body(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "cluster": CLUSTER,
        "server": "m1",
        "boot": 7,
        "seq": 1,
        "at": AT,
        "interval_s": 1.0,
        "tenants": {"acme": [10, 1, 1000, 3, 0]},
    }
    doc.update(changes)
    return doc


def signed_body(doc: object) -> bytes:
    return signed(json.dumps(doc, separators=(",", ":")).encode())


# ---------------------------------------------------------------- key and codec


def test_report_key_is_derived_and_distinct() -> None:
    assert report_key("raft-secret") == KEY
    assert len(KEY) == 32
    assert KEY not in (b"raft-secret", derive_probe_key("raft-secret"))
    assert report_key("other-secret") != KEY
    with pytest.raises(ValueError):
        report_key("")


def test_round_trip_and_wire_format() -> None:
    original = report(tenants={"acme": TenantCounts(1, 2, 3, 4, 5), "b": TenantCounts()})
    data = encode_report(original, KEY)
    assert data[32:].startswith(b'{"at":')  # tag || compact JSON with sorted keys
    assert json.loads(data[32:])["tenants"]["acme"] == [1, 2, 3, 4, 5]
    assert decode_report(data, KEY, CLUSTER) == original


_tenant_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
_counts = st.builds(
    TenantCounts, *(st.integers(min_value=0, max_value=2**63 - 1) for _ in range(5))
)
_reports = st.builds(
    TrafficReport,
    cluster=st.just(CLUSTER),
    server=st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True),
    boot=st.integers(min_value=0, max_value=2**63 - 1),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    at=st.floats(min_value=0, max_value=1e12, allow_nan=False),
    interval_s=st.floats(min_value=1e-3, max_value=3600.0),
    tenants=st.dictionaries(_tenant_names, _counts, max_size=20),
)


@given(_reports)
@settings(max_examples=200, deadline=None)
def test_round_trip_property(original: TrafficReport) -> None:
    assert decode_report(encode_report(original, KEY), KEY, CLUSTER) == original


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _decodes_or_rejects(data: bytes) -> None:
    with contextlib.suppress(ReportError):
        decode_report(data, KEY, CLUSTER)


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_garbage_raises_only_report_error(data: bytes) -> None:
    _decodes_or_rejects(data)
    _decodes_or_rejects(signed(data))  # authentic garbage reaches the parser


@given(_json_values)
@settings(max_examples=300, deadline=None)
def test_signed_json_of_any_shape_raises_only_report_error(doc: object) -> None:
    _decodes_or_rejects(signed_body(doc))


@given(st.dictionaries(st.sampled_from(sorted(body())), _json_values, min_size=1))
@settings(max_examples=200, deadline=None)
def test_signed_reports_with_bad_fields_raise_only_report_error(changes: dict[str, Any]) -> None:
    _decodes_or_rejects(signed_body(body(**changes)))


def _bad_cases() -> list[tuple[str, bytes, str]]:
    good = encode_report(report(), KEY)
    flipped = good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]
    many = {f"t{i}": [1, 0, 0, 0, 0] for i in range(MAX_TENANTS + 1)}
    return [
        ("too big", b"x" * (MAX_REPORT_BYTES + 1), "too_big"),
        ("shorter than the tag", good[:32], "malformed"),
        ("wrong key", encode_report(report(), report_key("another-secret")), "bad_mac"),
        ("flipped byte", flipped, "bad_mac"),
        ("unsigned JSON", json.dumps(body()).encode().rjust(40), "bad_mac"),
        ("not JSON", signed(b"{not json"), "malformed"),
        ("not UTF-8", signed(b"\xff\xfe{}"), "malformed"),
        ("not an object", signed_body([1, 2]), "malformed"),
        ("duplicate key", signed(b'{"v":1,"v":1}'), "malformed"),
        (
            "missing field",
            signed_body({k: v for k, v in body().items() if k != "seq"}),
            "malformed",
        ),
        ("extra field", signed_body(body(extra=1)), "malformed"),
        ("version", signed_body(body(v=2)), "malformed"),
        ("wrong cluster", signed_body(body(cluster="other")), "wrong_cluster"),
        ("seq as text", signed_body(body(seq="1")), "malformed"),
        ("seq as bool", signed_body(body(seq=True)), "malformed"),
        ("negative seq", signed_body(body(seq=-1)), "malformed"),
        ("huge seq", signed_body(body(seq=2**63)), "malformed"),
        ("float boot", signed_body(body(boot=1.5)), "malformed"),
        ("NaN at", signed(json.dumps(body(at=float("nan"))).encode()), "malformed"),
        ("infinite at", signed(json.dumps(body()).replace(str(AT), "1e999").encode()), "malformed"),
        ("negative at", signed_body(body(at=-1.0)), "malformed"),
        ("zero interval", signed_body(body(interval_s=0)), "malformed"),
        ("long interval", signed_body(body(interval_s=3601)), "malformed"),
        ("bad server", signed_body(body(server="M1")), "malformed"),
        ("server with newline", signed_body(body(server="m1\n")), "malformed"),
        ("tenants a list", signed_body(body(tenants=[])), "malformed"),
        ("too many tenants", signed_body(body(tenants=many)), "too_many_tenants"),
        ("upper-case tenant", signed_body(body(tenants={"Acme": [1, 0, 0, 0, 0]})), "bad_tenant"),
        ("tenant with newline", signed_body(body(tenants={"acme\n": [0] * 5})), "bad_tenant"),
        ("tenant with dash", signed_body(body(tenants={"-acme": [0] * 5})), "bad_tenant"),
        ("long tenant", signed_body(body(tenants={"a" * 64: [0] * 5})), "bad_tenant"),
        ("four counts", signed_body(body(tenants={"acme": [1, 0, 0, 0]})), "malformed"),
        ("negative count", signed_body(body(tenants={"acme": [1, -1, 0, 0, 0]})), "malformed"),
        ("float count", signed_body(body(tenants={"acme": [1.0, 0, 0, 0, 0]})), "malformed"),
    ]


@pytest.mark.parametrize(
    ("data", "reason"), [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()]
)
def test_every_rejection_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ReportError) as caught:
        decode_report(data, KEY, CLUSTER)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "bad",
    [
        report(seq=-1),
        report(server="Not A Name"),
        report(cluster="Bad"),
        report(interval_s=0.0),
        report(at=float("nan")),
        report(tenants={"Acme": TenantCounts()}),
        report(tenants={"acme": TenantCounts(requests=-1)}),
        report(tenants={f"t{i}": TenantCounts() for i in range(MAX_TENANTS + 1)}),
    ],
)
def test_encode_refuses_what_decode_would_refuse(bad: TrafficReport) -> None:
    with pytest.raises(ReportError):
        encode_report(bad, KEY)


def test_encode_refuses_a_report_over_the_size_cap() -> None:
    big = TenantCounts(*(2**63 - 1 for _ in range(5)))
    tenants = {f"{i:04d}" + "x" * 59: big for i in range(MAX_TENANTS)}
    with pytest.raises(ReportError) as caught:
        encode_report(report(tenants=tenants), KEY)
    assert caught.value.reason == "too_big"


def test_top_tenants_keeps_the_busiest() -> None:
    counts = {name: TenantCounts(requests=r) for name, r in [("a", 1), ("b", 5), ("c", 5)]}
    assert list(top_tenants(counts, 2)) == ["b", "c"]
    assert top_tenants(counts, 3) == counts


# ---------------------------------------------------------------- aggregation


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def aggregator(ticker: Ticker, **kwargs: Any) -> Aggregator:
    return Aggregator(ticker, 3.0, SERVERS, **kwargs)


def test_rates_sum_over_servers() -> None:
    agg = aggregator(Ticker())
    assert agg.add(report("m1", tenants={"acme": TenantCounts(20, 2, 2000, 4, 0)}, interval_s=2))
    assert agg.add(
        report("m2", tenants={"acme": TenantCounts(5, 0, 500, 1, 0), "b": TenantCounts(1)})
    )
    assert agg.rates() == {
        "acme": TenantRate(rps=15.0, errors_ps=1.0, bytes_ps=1500.0, concurrent=5, edges=2),
        "b": TenantRate(rps=1.0, errors_ps=0.0, bytes_ps=0.0, concurrent=0, edges=1),
    }


def test_stale_reports_drop_out() -> None:
    ticker = Ticker()
    agg = aggregator(ticker)
    agg.add(report("m1"))
    ticker.now = 2.0
    agg.add(report("m2"))
    ticker.now = 3.5
    assert set(agg.fresh()) == {"m2"}
    assert agg.rates()["acme"].edges == 1
    ticker.now = 10.0
    assert agg.rates() == {}


def test_seq_orders_reports_of_one_boot() -> None:
    agg = aggregator(Ticker())
    assert agg.add(report(seq=5))
    assert not agg.add(report(seq=5))  # duplicate / replay
    assert not agg.add(report(seq=4, tenants={}))  # reordered
    assert agg.fresh()["m1"].seq == 5
    assert agg.add(report(seq=6, tenants={}))
    assert agg.rates() == {}


def test_a_new_boot_replaces_when_newer_or_when_the_old_is_stale() -> None:
    ticker = Ticker()
    agg = aggregator(ticker)
    agg.add(report(boot=1, seq=50, at=AT))
    assert agg.add(report(boot=2, seq=1, at=AT + 1))  # restarted agent: seq starts over
    assert not agg.add(report(boot=1, seq=51, at=AT - 1))  # an old run's report, replayed
    assert agg.fresh()["m1"].boot == 2
    ticker.now = 5.0  # the held report is stale: a clock stepped back must not lock it out
    assert agg.add(report(boot=3, seq=1, at=AT - 100))


def test_unknown_servers_and_skewed_reports_are_refused() -> None:
    agg = aggregator(Ticker(), wall=lambda: AT, max_skew_s=30.0)
    assert not agg.knows("zz")
    assert not agg.add(report("zz"))
    assert not agg.add(report("m1", at=AT - 31))
    assert agg.add(report("m1", at=AT + 29))
    assert set(agg.fresh()) == {"m1"}


def test_intake_counts_kept_ignored_and_rejected() -> None:
    intake = ReportIntake(aggregator(Ticker()), KEY, CLUSTER)
    data = encode_report(report(), KEY)
    assert intake.offer(data)
    assert not intake.offer(data)
    assert not intake.offer(b"garbage")
    assert not intake.offer(encode_report(report("zz"), KEY))
    with pytest.raises(ReportError):
        intake.admit(encode_report(report(), report_key("another-secret")))
    assert (intake.stats.accepted, intake.stats.ignored) == (1, 1)
    assert intake.stats.rejected == {"malformed": 1, "unknown_server": 1, "bad_mac": 1}


# ---------------------------------------------------------------- publisher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return AT + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class FakeLink:
    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.payloads: list[bytes] = []

    async def publish(self, payload: bytes) -> bool:
        self.payloads.append(payload)
        return self.ok


class FakePoster:
    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.posts: list[tuple[str, bytes]] = []

    async def post(self, base_url: str, payload: bytes) -> bool:
        self.posts.append((base_url, payload))
        return self.ok


def publisher(
    link: FakeLink | None,
    poster: FakePoster | None,
    leader: str | None = "http://leader:1",
    counts: dict[str, TenantCounts] | None = None,
    clock: FakeClock | None = None,
    take: Callable[[], dict[str, TenantCounts]] | None = None,
    **kwargs: Any,
) -> tuple[ReportPublisher, Aggregator, FakeClock]:
    clock = clock or FakeClock()
    agg = Aggregator(clock.monotonic, 3.0, SERVERS)
    taken = counts if counts is not None else {"acme": TenantCounts(requests=3)}
    pub = ReportPublisher(
        cluster=CLUSTER,
        server="m2",
        key=KEY,
        interval_s=1.0,
        take=take or (lambda: dict(taken)),
        aggregator=agg,
        clock=clock,
        link=link,
        poster=poster,
        leader_url=lambda: leader,
        boot=42,
        **kwargs,
    )
    return pub, agg, clock


async def test_mqtt_first_and_no_post_when_it_works() -> None:
    link, poster = FakeLink(True), FakePoster(True)
    pub, agg, _ = publisher(link, poster)
    assert await pub.publish_once() == "mqtt"
    assert poster.posts == []
    sent = decode_report(link.payloads[0], KEY, CLUSTER)
    assert (sent.server, sent.boot, sent.seq) == ("m2", 42, 1)
    assert agg.fresh()["m2"] == sent  # the local aggregator has it at once
    assert pub.stats.sent_mqtt == 1


async def test_http_to_the_leader_when_mqtt_fails() -> None:
    link, poster = FakeLink(False), FakePoster(True)
    pub, _, _ = publisher(link, poster)
    assert await pub.publish_once() == "http"
    assert await pub.publish_once() == "http"
    assert [url for url, _ in poster.posts] == ["http://leader:1"] * 2
    assert [decode_report(p, KEY, CLUSTER).seq for _, p in poster.posts] == [1, 2]
    assert (pub.stats.mqtt_failures, pub.stats.sent_http) == (2, 2)


async def test_http_when_mqtt_is_not_configured() -> None:
    poster = FakePoster(True)
    pub, _, _ = publisher(None, poster)
    assert await pub.publish_once() == "http"
    assert pub.stats.mqtt_failures == 0


async def test_no_post_without_a_leader_or_when_leading() -> None:
    poster = FakePoster(True)
    pub, agg, _ = publisher(FakeLink(False), poster, leader=None)
    assert await pub.publish_once() == "local"
    assert poster.posts == []
    assert "m2" in agg.fresh()
    assert pub.stats.local_only == 1


async def test_failed_post_is_counted() -> None:
    pub, _, _ = publisher(FakeLink(False), FakePoster(False))
    assert await pub.publish_once() == "unsent"
    assert pub.stats.http_failures == 1


async def test_report_carries_the_busiest_tenants_and_the_real_interval() -> None:
    counts = {f"t{i}": TenantCounts(requests=i) for i in range(10)}
    link = FakeLink(True)
    pub, _, clock = publisher(link, None, counts=counts, max_tenants=3)
    await pub.publish_once()
    clock.now += 2.5
    await pub.publish_once()
    first, second = (decode_report(p, KEY, CLUSTER) for p in link.payloads)
    assert set(first.tenants) == {"t9", "t8", "t7"}
    assert (first.interval_s, second.interval_s) == (1.0, 2.5)
    assert pub.stats.tenants_left_out == 14


async def test_an_oversized_report_is_halved_until_it_fits() -> None:
    big = TenantCounts(*(2**63 - 1 for _ in range(5)))
    counts = {f"{i:04d}" + "x" * 59: replace(big, requests=i) for i in range(MAX_TENANTS)}
    link = FakeLink(True)
    pub, _, _ = publisher(link, None, counts=counts)
    assert await pub.publish_once() == "mqtt"
    sent = decode_report(link.payloads[0], KEY, CLUSTER)
    assert len(sent.tenants) == MAX_TENANTS // 2
    assert min(c.requests for c in sent.tenants.values()) == MAX_TENANTS // 2


async def test_run_publishes_every_interval_until_stopped() -> None:
    link, clock = FakeLink(True), FakeClock()
    stopping = asyncio.Event()
    rounds: list[float] = []

    def take() -> dict[str, TenantCounts]:
        rounds.append(clock.now)
        if len(rounds) == 3:
            stopping.set()
        return {}

    pub, _, _ = publisher(link, None, clock=clock, take=take)
    await asyncio.wait_for(pub.run(stopping), 5.0)
    assert rounds == [101.0, 102.0, 103.0]
    assert len(link.payloads) == 3
