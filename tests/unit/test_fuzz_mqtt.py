"""Hostile MQTT payloads: anyone who may publish on the broker writes these bytes. Traffic
reports, event documents, retained cursors and server states never crash their decoder,
never change what the agent holds, and every refused traffic report is counted by reason."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import get_args

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config_policy import MqttConfig
from agent.event_publisher import EventPublisher
from agent.events import (
    MAX_PAYLOAD_BYTES,
    cursor_seq,
    decision_seq,
    decode,
    event_line,
    server_line,
)
from agent.eventscmd import _print_event
from agent.reports import (
    MAX_REPORT_BYTES,
    TAG_BYTES,
    Aggregator,
    ReportIntake,
    ReportReason,
    TrafficReport,
    encode_report,
    report_key,
)
from agent.traffic_counts import TenantCounts
from consensus.memory import MemoryConsensus, MemoryLog

KEY = report_key("fuzz-raft-password")
CLUSTER = "fuzz"
SERVERS = ("m1", "m2", "m3")
WALL = 1_700_000_000.0
FUZZ = settings(max_examples=300, deadline=None)
FUZZ_BATCHES = settings(max_examples=200, deadline=None)  # each example is a list of inputs

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
_documents = st.dictionaries(
    st.sampled_from(["id", "kind", "at", "subject", "summary", "server", "state", "role"])
    | st.text(max_size=6),
    _json,
    max_size=8,
)
_ids = st.text(max_size=12) | st.sampled_from(["d000012", "d\u00b2", "d" + "9" * 5000, "d-1"])
_payloads = (
    st.binary(max_size=600)
    | _json.map(lambda v: json.dumps(v).encode())
    | _documents.map(lambda d: json.dumps(d).encode())
    | st.builds(lambda i: json.dumps({"id": i}).encode(), _ids)
    | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)  # deep: RecursionError
    | st.sampled_from([b"", b"NaN", b"1" * 5000, b"\xff\xfe\x00", b'{"id": "d1", "id": 2}'])
)


# ---------------------------------------------------------------- events, cursors, states


@FUZZ
@given(_payloads)
def test_event_payloads_decode_to_an_object_or_none(payload: bytes) -> None:
    document = decode(payload)
    assert document is None or isinstance(document, dict)
    seq = cursor_seq(payload)
    assert seq is None or (isinstance(seq, int) and seq >= 0)
    if document is not None:  # the CLI's lines take any object
        assert isinstance(event_line(document), str) and isinstance(server_line(document), str)


def test_an_oversized_payload_is_not_parsed() -> None:
    assert decode(b'{"id": "d1"' + b" " * MAX_PAYLOAD_BYTES + b"}") is None


@FUZZ
@given(_ids | st.text())
def test_decision_seq_is_a_number_or_none(text: str) -> None:
    seq = decision_seq(text)
    assert seq is None or (0 <= seq < 10**18 and text == f"d{text[1:]}")


@FUZZ_BATCHES
@given(st.lists(_payloads, max_size=5))
def test_the_events_command_prints_each_event_once_and_never_raises(
    payloads: list[bytes],
) -> None:
    seen: deque[str] = deque(maxlen=1000)
    out = io.StringIO()
    for payload in [*payloads, *payloads]:  # the broker may deliver each twice (QoS 1)
        _print_event(payload, seen, as_json=True, out=out)
    lines = out.getvalue().splitlines()
    ids = [json.loads(line).get("id") for line in lines]
    assert len([i for i in ids if isinstance(i, str)]) == len(
        {i for i in ids if isinstance(i, str)}
    )


@dataclass
class _Message:
    payload: object


class _Client:
    """What EventPublisher reads of an aiomqtt client: its messages."""

    def __init__(self, payloads: list[object]) -> None:
        self._payloads = payloads

    @property
    def messages(self) -> AsyncIterator[_Message]:
        async def each() -> AsyncIterator[_Message]:
            for payload in self._payloads:
                yield _Message(payload)

        return each()


class _Clock:
    def monotonic(self) -> float:
        return 0.0

    def wall(self) -> float:
        return WALL

    async def sleep(self, seconds: float) -> None:
        return None


@FUZZ_BATCHES
@given(st.lists(_payloads | st.none(), max_size=5), st.integers(1, 10**6))
async def test_hostile_retained_cursors_are_counted_and_ignored(
    payloads: list[bytes | None], genuine: int
) -> None:
    log = MemoryLog(voters=SERVERS)
    publisher = EventPublisher(
        MqttConfig(), CLUSTER, "m1", MemoryConsensus(log, "m1", _Clock()), _Clock()
    )
    cursor = json.dumps({"id": f"d{genuine:06d}", "server": "m2", "at": WALL}).encode()
    await publisher._read(_Client([*payloads, cursor]))  # type: ignore[arg-type]
    valid = [s for s in (cursor_seq(p) for p in payloads if p) if s is not None]
    assert publisher.seen_cursor == max([genuine, *valid])
    assert publisher.counts.bad_cursors == sum(1 for p in payloads if p and cursor_seq(p) is None)


# ---------------------------------------------------------------- traffic reports


def _report(server: str, seq: int, requests: int = 5) -> TrafficReport:
    return TrafficReport(
        cluster=CLUSTER,
        server=server,
        seq=seq,
        boot=7,
        at=WALL,
        interval_s=1.0,
        tenants={"acme": TenantCounts(requests=requests)},
    )


def _signed(payload: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


GENUINE = encode_report(_report("m2", 1), KEY)
_report_kinds = st.sampled_from(
    ["random", "truncate", "flip", "oversize", "wrong_key", "stranger", "signed_junk"]
)
_report_bytes = st.binary(max_size=400)
_positions = st.integers(0, len(GENUINE) - 1)


@st.composite
def _hostile_report(draw: st.DrawFn) -> bytes:
    genuine = GENUINE
    how = draw(_report_kinds)
    if how == "random":
        return draw(_report_bytes)
    if how == "truncate":
        return genuine[: draw(_positions)]
    if how == "flip":
        at = draw(_positions)
        return genuine[:at] + bytes([genuine[at] ^ 0x20]) + genuine[at + 1 :]
    if how == "oversize":
        return genuine + b" " * (MAX_REPORT_BYTES + 1 - len(genuine))
    if how == "wrong_key":
        return encode_report(_report("m2", 2), report_key("another-cluster-password"))
    if how == "stranger":  # signed right, from a server the cluster does not have
        return encode_report(_report("mallory", 2), KEY)
    body = draw(_documents | _json)  # signed junk: a compromised member's worst
    return _signed(json.dumps(body).encode())


@FUZZ_BATCHES
@given(st.lists(_hostile_report(), min_size=1, max_size=8))
def test_hostile_traffic_reports_change_nothing_and_are_counted(batch: list[bytes]) -> None:
    aggregator = Aggregator(lambda: 0.0, 3.0, SERVERS, wall=lambda: WALL)
    intake = ReportIntake(aggregator, KEY, CLUSTER)
    assert intake.offer(GENUINE)
    before = (aggregator.fresh(), aggregator.rates())
    for data in batch:
        assert intake.offer(data) is False  # never raises: it runs in the MQTT pump
    assert (aggregator.fresh(), aggregator.rates()) == before
    assert intake.stats.accepted == 1
    rejected = intake.stats.rejected
    assert sum(rejected.values()) + intake.stats.ignored == len(batch)
    assert set(rejected) <= set(get_args(ReportReason))


@FUZZ
@given(st.lists(st.integers(1, 50), min_size=1, max_size=10, unique=True))
def test_replayed_traffic_reports_are_ignored(seqs: list[int]) -> None:
    aggregator = Aggregator(lambda: 0.0, 3.0, SERVERS, wall=lambda: WALL)
    intake = ReportIntake(aggregator, KEY, CLUSTER)
    genuine = [encode_report(_report("m2", s, requests=s), KEY) for s in seqs]
    kept = [intake.offer(data) for data in genuine]
    newest = max(seqs)
    assert aggregator.fresh()["m2"].seq == newest
    before = aggregator.rates()
    for data in genuine[::-1]:
        assert intake.offer(data) is False
    assert aggregator.rates() == before == {"acme": before["acme"]}
    assert before["acme"].rps == newest
    assert intake.stats.ignored == kept.count(False) + len(genuine)
    assert not intake.stats.rejected


def test_a_report_shorter_than_its_tag_is_malformed() -> None:
    intake = ReportIntake(Aggregator(lambda: 0.0, 3.0, SERVERS), KEY, CLUSTER)
    assert not intake.offer(b"x" * TAG_BYTES)
    assert intake.stats.rejected == {"malformed": 1}
