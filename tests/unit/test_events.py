"""Events built from committed decisions, their topics, the bounded buffer, where a new
leader resumes, and the broker's password lines."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from agent.broker_auth import acl_text, password_line
from agent.event_publisher import describe_error
from agent.events import (
    EventBuffer,
    PendingEvent,
    cursor_seq,
    cursor_topic,
    decision_event,
    decision_seq,
    decode,
    encode,
    event_line,
    events_topic,
    missed,
    offline_document,
    pending_events,
    resume_after,
    server_document,
    server_line,
    server_topic,
    state_key,
)
from agent.explain import explain
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState, Decision, ServerRecord

FAILED = Decision(
    id="d000042",
    kind="server_failed",
    at=1_700_000_000.25,
    subject="a2",
    evidence={
        "observers": ["a1", "a3"],
        "eligible": ["a1", "a3"],
        "required": 2,
        "suspected_for_s": 0.9,
        "slots_lost": ["s2"],
    },
)


def decision(seq: int, kind: str = "mode_changed") -> Decision:
    return Decision(id=f"d{seq:06d}", kind=kind, at=1000.0 + seq, subject="demo", evidence={})


def test_a_decision_becomes_an_event_with_its_id_and_the_explanation() -> None:
    event = decision_event(FAILED, "demo")
    assert event == {
        "id": "d000042",
        "kind": "server_failed",
        "at": 1_700_000_000.25,
        "subject": "a2",
        "evidence": FAILED.evidence,
        "summary": explain(FAILED),
        "cluster": "demo",
    }
    assert json.loads(encode(event)) == event
    assert "a2 was declared failed" in event["summary"]


def test_odd_evidence_still_gives_a_summary() -> None:
    odd = Decision(
        id="d000001", kind="server_failed", at=1.0, subject="a1", evidence={"observers": 5}
    )
    assert decision_event(odd, "demo")["summary"] == "server_failed about a1."


@pytest.mark.parametrize(
    ("got", "want"),
    [
        (events_topic("moonwatch", "demo", "server_failed"), "moonwatch/demo/events/server_failed"),
        (events_topic("moonwatch", "demo"), "moonwatch/demo/events/+"),
        (server_topic("mw", "demo", "m1"), "mw/demo/servers/m1"),
        (server_topic("mw", "demo"), "mw/demo/servers/+"),
        (cursor_topic("mw", "demo"), "mw/demo/cursor"),
    ],
)
def test_topics(got: str, want: str) -> None:
    assert got == want


@pytest.mark.parametrize(
    ("decision_id", "seq"),
    [("d000012", 12), ("d1234567", 1234567), ("x000012", None), ("d", None), ("d12a", None)],
)
def test_decision_seq(decision_id: str, seq: int | None) -> None:
    assert decision_seq(decision_id) == seq


def test_pending_events_are_those_after_the_position_in_order() -> None:
    decisions = [decision(3), decision(4, "server_failed"), decision(5)]
    pending = pending_events(decisions, 3, "mw", "demo")
    assert [(p.seq, p.id, p.topic) for p in pending] == [
        (4, "d000004", "mw/demo/events/server_failed"),
        (5, "d000005", "mw/demo/events/mode_changed"),
    ]
    assert decode(pending[0].payload) == decision_event(decisions[1], "demo")
    assert pending_events(decisions, 5, "mw", "demo") == []


@pytest.mark.parametrize(
    ("seen", "acknowledged", "committed", "after"),
    [
        (None, None, 10, 0),  # nothing known: the retained history is published
        (7, None, 10, 7),  # the previous leader's cursor
        (7, 9, 10, 9),  # our own acknowledged events are further
        (9, 7, 10, 9),
        (50, None, 10, 0),  # a cursor of another life of the cluster
        (50, 4, 10, 4),
        (10, None, 10, 10),
    ],
)
def test_where_a_new_leader_resumes(
    seen: int | None, acknowledged: int | None, committed: int, after: int
) -> None:
    assert resume_after(seen, acknowledged, committed) == after


def test_missed_counts_what_the_history_no_longer_holds() -> None:
    held = [decision(10), decision(11)]
    assert missed(held, 4) == 5  # 5..9 fell off
    assert missed(held, 9) == 0
    assert missed(held, 0) == 0  # nothing was ever published: nothing is owed
    assert missed([], 4) == 0


def pending(seq: int) -> PendingEvent:
    return PendingEvent(seq, f"d{seq:06d}", "t", b"{}")


def test_buffer_is_bounded_and_counts_what_it_drops() -> None:
    buffer = EventBuffer(capacity=3)
    for seq in range(1, 6):
        buffer.push(pending(seq))
    assert len(buffer) == 3
    assert buffer.dropped == 2
    assert buffer.ids() == ["d000003", "d000004", "d000005"]
    buffer.lost(4)
    assert buffer.dropped == 6


def test_buffer_removes_only_the_acknowledged_first_event() -> None:
    buffer = EventBuffer(capacity=2)
    first = pending(1)
    buffer.push(first)
    buffer.push(pending(2))
    assert buffer.first() is first
    buffer.push(pending(3))  # full: `first` is dropped while it is being sent
    buffer.done(first)  # ... so its acknowledgement removes nothing else
    assert buffer.ids() == ["d000002", "d000003"]
    second = buffer.first()
    assert second is not None
    buffer.done(second)
    assert buffer.ids() == ["d000003"]
    assert buffer.clear() == 1 and buffer.first() is None


def test_buffer_needs_room() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventBuffer(capacity=0)


def snapshot(*, leader: bool) -> Snapshot:
    cluster = ClusterState(
        cluster="demo",
        servers=(ServerRecord(name="a1", role="active", domain="r", state="up"),),
        voters=("a1",),
    )
    return Snapshot(state=cluster, raft=RaftStatus(server="a1", voter=True, is_leader=leader))


def test_server_document_and_what_counts_as_a_change() -> None:
    doc = server_document(snapshot(leader=True), "a1", 5.0)
    assert doc == {
        "server": "a1",
        "state": "up",
        "role": "active",
        "voter": True,
        "leader": True,
        "at": 5.0,
    }
    later = server_document(snapshot(leader=True), "a1", 9.0)
    assert state_key(later) == state_key(doc)
    assert state_key(server_document(snapshot(leader=False), "a1", 9.0)) != state_key(doc)
    unknown = server_document(snapshot(leader=False), "zz", 1.0)
    assert (unknown["state"], unknown["role"], unknown["voter"]) == ("unknown", None, False)
    assert offline_document("a1") == {"server": "a1", "state": "offline"}


def test_cursor_payloads() -> None:
    assert cursor_seq(b'{"id": "d000017", "server": "a1"}') == 17
    assert cursor_seq(b"garbage") is None
    assert cursor_seq(b'{"id": 17}') is None
    assert cursor_seq(b"[1]") is None


def test_lines_for_people() -> None:
    line = event_line(decision_event(FAILED, "demo"))
    assert line.startswith("2023-11-14 22:13:20  server_failed")
    assert " a2 " in line and line.endswith(explain(FAILED))
    doc = server_document(snapshot(leader=True), "a1", 0.0)
    assert server_line(doc).split() == [
        "a1",
        "up",
        "active",
        "voter",
        "leader",
        "1970-01-01",
        "00:00:00",
    ]
    assert server_line(offline_document("a1")).split() == ["a1", "offline", "-", "-", "-"]


def test_a_refused_login_is_said_plainly() -> None:
    refused = describe_error(Exception("[code:135] Not authorized"), "moonwatch")
    assert refused.startswith("the broker refused user 'moonwatch'")
    assert "check mqtt.username and the password" in refused
    assert describe_error(Exception("[Errno 111] Connection refused"), "x") == (
        "[Errno 111] Connection refused"
    )


def test_password_lines_are_mosquittos_pbkdf2_format() -> None:
    salt = bytes(range(12))
    line = password_line("moonwatch", "secret", salt)
    user, _, rest = line.partition(":")
    _, algorithm, iterations, salt64, hash64 = rest.split("$")
    assert (user, algorithm, iterations) == ("moonwatch", "7", "101")
    assert base64.b64decode(salt64) == salt
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
    assert base64.b64decode(hash64) == expected
    assert password_line("moonwatch", "secret") != password_line("moonwatch", "secret")
    with pytest.raises(ValueError, match="':'"):
        password_line("a:b", "secret")
    assert acl_text("moonwatch", "mw") == "user moonwatch\ntopic readwrite mw/#\n"
