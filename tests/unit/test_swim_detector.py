"""The pure detector, awareness and suspicion math, driven with explicit `now` values."""

from __future__ import annotations

import json
import math
import random

import pytest

from agent.swim.detector import Detector, DetectorConfig, Outgoing, ProbeReport
from agent.swim.messages import Ack, Ping, PingReq
from agent.swim.rotation import ProbeRotation

CONFIG = DetectorConfig(probe_interval_s=0.2, probe_timeout_s=0.1, indirect_probes=3)
PEERS = ["b", "c", "d", "e", "f"]


def detector(peers: list[str] = PEERS, seed: int = 1, **config: object) -> Detector:
    cfg = DetectorConfig(**config) if config else CONFIG  # type: ignore[arg-type]
    d = Detector("a", cfg, random.Random(seed), incarnation=1)
    d.set_members(["a", *peers])
    return d


def only_ping(out: list[Outgoing]) -> Ping:
    assert len(out) == 1
    ping = out[0].message
    assert isinstance(ping, Ping) and out[0].to == ping.target
    return ping


def ack_for(ping: Ping, incarnation: int = 0) -> Ack:
    return Ack(ping.seq, ping.target, ping.sender, incarnation, ping.on_behalf_of)


def ping_reqs(out: list[Outgoing]) -> dict[str, PingReq]:
    reqs = {o.to: o.message for o in out}
    assert all(isinstance(m, PingReq) for m in reqs.values())
    return reqs  # type: ignore[return-value]


# ---------------------------------------------------------------- one probe period


def test_period_with_a_direct_ack_reports_nothing() -> None:
    d = detector()
    ping = only_ping(d.tick(0.0))
    assert ping == Ping(ping.seq, "a", ping.target, 1, None)
    assert d.receive(ack_for(ping), 0.03) == []
    assert d.tick(0.1) == []  # no indirect probes: it answered
    assert d.tick(0.19) == []
    assert only_ping(d.tick(0.2)).target != ping.target  # the next period, the next member
    assert d.take_reports() == []
    assert d.stats["acks"] == 1 and d.stats["timeouts"] == 0


def test_missed_direct_ack_sends_ping_reqs_to_k_helpers_at_the_timeout() -> None:
    d = detector()
    ping = only_ping(d.tick(0.0))
    assert d.tick(0.099) == []
    reqs = ping_reqs(d.tick(0.1))
    assert len(reqs) == 3
    assert ping.target not in reqs and "a" not in reqs and set(reqs) <= set(PEERS)
    assert all(r == PingReq(ping.seq, "a", ping.target) for r in reqs.values())
    assert d.tick(0.15) == []  # asked once
    assert d.stats["indirect_requests"] == 3 and d.stats["timeouts"] == 1


def test_indirect_probes_are_capped_by_the_members_available() -> None:
    d = detector(peers=["b", "c"])
    ping = only_ping(d.tick(0.0))
    assert list(ping_reqs(d.tick(0.1))) == [x for x in ["b", "c"] if x != ping.target]


def test_indirect_ack_means_reachable_and_no_report() -> None:
    d = detector()
    ping = only_ping(d.tick(0.0))
    helper = sorted(ping_reqs(d.tick(0.1)))[0]
    relayed = Ack(ping.seq, helper, "a", 5, on_behalf_of=ping.target)
    assert d.receive(relayed, 0.15) == []
    d.tick(0.2)
    assert d.take_reports() == []
    assert d.incarnation_of(ping.target) == 5
    assert d.awareness.score == 0  # an indirect success is no evidence about our own health


def test_ack_that_matches_nothing_does_not_count() -> None:
    d = detector()
    ping = only_ping(d.tick(0.0))
    reqs = ping_reqs(d.tick(0.1))
    outsider = next(p for p in PEERS if p not in reqs and p != ping.target)
    d.receive(Ack(ping.seq, outsider, "a", 0, on_behalf_of=ping.target), 0.12)  # not a helper
    d.receive(Ack(ping.seq, ping.target, "b", 0, None), 0.12)  # addressed to someone else
    d.receive(Ack(ping.seq + 100, ping.target, "a", 0, None), 0.12)  # wrong seq
    d.tick(0.2)
    assert [r.reachable for r in d.take_reports()] == [False]


def test_late_direct_ack_within_the_period_counts() -> None:
    d = detector()
    ping = only_ping(d.tick(0.0))
    ping_reqs(d.tick(0.1))
    d.receive(ack_for(ping), 0.18)
    d.tick(0.2)
    assert d.take_reports() == []


def test_nothing_heard_means_an_unreachable_report_with_evidence_at_the_period_end() -> None:
    d = detector()
    d.receive(Ping(9, "e", "a", 4, None), 0.0)  # seen incarnations are tracked per member
    ping = only_ping(d.tick(0.0))
    reqs = ping_reqs(d.tick(0.1))
    heard = sorted(reqs)[0]
    d.receive(Ping(10, heard, "a", 0, None), 0.12)  # this helper is up, yet relayed nothing
    assert d.tick(0.199) == [] and d.take_reports() == []
    d.tick(0.2)
    [report] = d.take_reports()
    assert report == ProbeReport(
        target=ping.target,
        incarnation=d.incarnation_of(ping.target),
        reachable=False,
        at=0.2,
        evidence={
            "direct": "timeout",
            "indirect": {h: "timeout" if h == heard else "no_answer" for h in reqs},
            "rtt_ms": None,
            "awareness": 0,
            "kind": "periodic",
        },
    )
    json.dumps(report.evidence)  # JSON-safe
    assert d.take_reports() == []
    assert d.stats["unreachable"] == 1


def test_an_unreachable_target_acking_later_needs_no_extra_report() -> None:
    d = detector()
    ping = only_ping(d.tick(0.0))
    d.tick(0.1)
    d.tick(0.2)
    assert len(d.take_reports()) == 1
    d.receive(ack_for(ping), 0.25)
    d.tick(0.3)
    assert d.take_reports() == []
    assert d.stats["late_acks"] == 1


def test_a_member_removed_mid_probe_is_not_reported() -> None:
    d = detector()
    ping = only_ping(d.tick(0.0))
    d.tick(0.1)
    d.set_members(["a", *[p for p in PEERS if p != ping.target]])
    d.tick(0.2)
    assert d.take_reports() == []


def test_late_tick_still_gives_helpers_their_window() -> None:
    d = detector()
    only_ping(d.tick(0.0))
    assert ping_reqs(d.tick(0.5))  # the loop stalled past the whole period
    d.tick(0.55)
    assert d.take_reports() == []
    d.tick(0.6)
    assert [r.at for r in d.take_reports()] == [0.6]


# ---------------------------------------------------------------- answering others


def test_ping_is_answered_with_an_ack_echoing_seq_and_on_behalf_of() -> None:
    d = detector()
    assert d.receive(Ping(5, "b", "a", 7, None), 1.0) == [Outgoing("b", Ack(5, "a", "b", 1, None))]
    assert d.receive(Ping(6, "b", "a", 8, "c"), 1.0) == [Outgoing("b", Ack(6, "a", "b", 1, "c"))]
    assert d.receive(Ping(7, "b", "z", 9, None), 1.0) == []  # not for us
    assert d.incarnation_of("b") == 8


def test_helper_pings_the_target_and_forwards_its_ack_to_the_requester() -> None:
    h = Detector("h", CONFIG, random.Random(3), incarnation=2)
    h.set_members(["a", "h", "t"])
    [out] = h.receive(PingReq(42, "a", "t"), 1.0)
    ping = out.message
    assert out.to == "t" and isinstance(ping, Ping)
    assert (ping.sender, ping.target, ping.incarnation, ping.on_behalf_of) == ("h", "t", 2, "a")
    assert h.receive(PingReq(42, "a", "t"), 1.01) == []  # a duplicate request
    forwarded = h.receive(Ack(ping.seq, "t", "h", 6, "a"), 1.05)
    assert forwarded == [Outgoing("a", Ack(42, "h", "a", 6, "t"))]
    assert h.receive(Ack(ping.seq, "t", "h", 6, "a"), 1.06) == []  # forwarded once
    assert h.incarnation_of("t") == 6
    assert h.stats["relays"] == 1 and h.stats["relayed_acks"] == 1


def test_helper_relay_expires_and_bad_requests_are_ignored() -> None:
    h = Detector("h", CONFIG, random.Random(3))
    h.set_members(["a", "h", "t"])
    [out] = h.receive(PingReq(1, "a", "t"), 1.0)
    h.tick(1.2)  # relay lifetime: one probe interval
    assert h.receive(ack_for(out.message), 1.21) == []  # type: ignore[arg-type]
    assert h.stats["relay_timeouts"] == 1
    assert h.receive(PingReq(2, "a", "h"), 1.3) == []  # probe myself?
    assert h.receive(PingReq(3, "a", "a"), 1.3) == []  # probe yourself?
    assert h.receive(PingReq(4, "a", "stranger"), 1.3) == []  # not a member


def test_requester_and_helper_and_target_complete_an_indirect_probe() -> None:
    a, h, t = (Detector(n, CONFIG, random.Random(i)) for i, n in enumerate("aht"))
    for node in (a, h, t):
        node.set_members("aht")
    nodes = {"a": a, "h": h, "t": t}
    a.confirm("t", 0.0)  # the direct ping is lost
    queue = a.tick(0.1)  # the PingReq to h
    while queue:
        item = queue.pop(0)
        queue.extend(nodes[item.to].receive(item.message, 0.15))
    [report] = a.take_reports()
    assert report.reachable and report.evidence["indirect"] == {"h": "ack"}
    assert report.evidence["direct"] == "timeout" and report.evidence["rtt_ms"] == 150.0


# ---------------------------------------------------------------- confirm


def test_confirm_reports_reachable_as_soon_as_the_target_acks() -> None:
    d = detector()
    ping = only_ping(d.confirm("c", 1.0))
    assert ping.target == "c"
    assert d.confirm("c", 1.01) == []  # already in flight
    d.receive(ack_for(ping, incarnation=3), 1.02)
    [report] = d.take_reports()
    assert (report.target, report.reachable, report.incarnation, report.at) == ("c", True, 3, 1.02)
    assert report.evidence == {
        "direct": "ack",
        "indirect": {},
        "rtt_ms": pytest.approx(20.0),
        "awareness": 0,
        "kind": "confirm",
        "attempt": 1,
    }


def test_confirm_reports_unreachable_after_indirect_probes_fail() -> None:
    d = detector(confirm_attempts=1)
    only_ping(d.confirm("c", 1.0))
    assert "c" not in ping_reqs([o for o in d.tick(1.1) if isinstance(o.message, PingReq)])
    d.tick(1.2)
    [report] = [r for r in d.take_reports() if r.evidence["kind"] == "confirm"]
    assert (report.target, report.reachable, report.at) == ("c", False, 1.2)
    assert report.evidence["direct"] == "timeout"
    assert len(report.evidence["indirect"]) == 3  # type: ignore[arg-type]


def confirm_reports(d: Detector) -> list[ProbeReport]:
    return [r for r in d.take_reports() if r.evidence["kind"] == "confirm"]


def test_a_witness_tries_three_times_before_it_reports_unreachable() -> None:
    d = detector()
    only_ping(d.confirm("c", 1.0))
    now, reports = 1.0, list[ProbeReport]()
    while not reports and now < 5.0:
        now = round(now + 0.05, 2)
        d.tick(now)
        reports = confirm_reports(d)
    [report] = reports
    assert not report.reachable and report.evidence["attempt"] == 3
    assert d.stats["confirm_retries"] == 2
    assert now >= 1.6  # three whole probe periods, stretched by the awareness of failures


def test_an_ack_to_a_later_attempt_reports_reachable() -> None:
    d = detector()
    only_ping(d.confirm("c", 1.0))
    d.tick(1.1)
    [again] = [o.message for o in d.tick(1.2) if isinstance(o.message, Ping)]
    assert isinstance(again, Ping)
    d.receive(ack_for(again, incarnation=0), 1.25)
    [report] = confirm_reports(d)
    assert report.reachable and report.evidence["attempt"] == 2


def test_confirm_of_myself_is_an_error() -> None:
    with pytest.raises(ValueError):
        detector().confirm("a", 0.0)


# ---------------------------------------------------------------- probe order


def answer_all(d: Detector, out: list[Outgoing], now: float) -> None:
    for o in out:
        if isinstance(o.message, Ping):
            d.receive(ack_for(o.message), now)


def probe_targets(d: Detector, periods: int, start: float = 0.0) -> list[str]:
    targets = []
    for i in range(periods):
        now = start + i * 0.2
        out = d.tick(now)
        targets += [o.to for o in out if isinstance(o.message, Ping)]
        answer_all(d, out, now)
    return targets


def test_round_robin_probes_every_member_once_per_cycle_in_shuffled_order() -> None:
    peers = [f"s{i}" for i in range(10)]
    d = detector(peers=peers)
    targets = probe_targets(d, 30)
    cycles = [targets[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(c) == peers for c in cycles)
    assert len({tuple(c) for c in cycles}) == 3  # reshuffled every cycle


def test_member_added_mid_cycle_is_probed_within_that_cycle_and_removed_ones_never() -> None:
    peers = [f"s{i}" for i in range(10)]
    d = detector(peers=peers)
    first = probe_targets(d, 4)
    d.set_members(["a", *[p for p in peers if p != "s9" or p in first], "new"])
    rest = probe_targets(d, 7, start=0.8)
    cycle = first + rest
    assert sorted(cycle) == sorted({*peers, "new"} - ({"s9"} - set(first)))


def test_rotation_is_deterministic_per_seed() -> None:
    def order(seed: int) -> list[str | None]:
        r = ProbeRotation(random.Random(seed))
        r.set_members(f"s{i}" for i in range(8))
        return [r.next() for _ in range(24)]

    assert order(5) == order(5) != order(6)
    assert ProbeRotation(random.Random(1)).next() is None


# ---------------------------------------------------------------- awareness


def test_awareness_widens_deadlines() -> None:
    d = detector()
    d.awareness.apply_delta(2)  # timeouts x3
    only_ping(d.tick(0.0))
    assert d.tick(0.299) == []
    assert ping_reqs(d.tick(0.3))
    d.tick(0.599)
    assert d.take_reports() == []
    d.tick(0.6)
    [report] = d.take_reports()
    assert report.evidence["awareness"] == 2
    assert d.awareness.score == 3  # nobody vouched: maybe it is us


def test_awareness_moves_with_direct_probes() -> None:
    d = detector()
    d.awareness.apply_delta(3)
    ping = only_ping(d.tick(0.0))
    d.receive(ack_for(ping), 0.01)
    d.receive(ack_for(ping), 0.02)  # a duplicate counts once
    assert d.awareness.score == 2


def test_unhealthy_agent_stops_accusing() -> None:
    d = detector()
    d.awareness.apply_delta(4)  # the default threshold: max 8 / 2
    assert d.awareness.suppressed
    only_ping(d.tick(0.0))
    d.tick(0.5)
    d.tick(1.0)
    assert d.take_reports() == []
    assert d.stats["suppressed_reports"] == 1
    assert d.stats["unreachable"] == 0


def test_cut_off_agent_accuses_a_few_times_then_goes_quiet() -> None:
    d = detector()
    now, reports = 0.0, 0
    while now < 20.0:
        d.tick(now)
        reports += len(d.take_reports())
        now = round(now + 0.01, 2)
    assert reports == 4  # at awareness 0, 1, 2, 3
    assert d.awareness.score == 8 and d.stats["suppressed_reports"] > 0


def test_loop_lag_raises_awareness_at_most_once_per_interval() -> None:
    d = detector()
    d.note_loop_lag(0.01, 0.0)
    assert d.awareness.score == 0
    d.note_loop_lag(0.5, 0.0)
    d.note_loop_lag(0.5, 0.1)
    assert d.awareness.score == 1
    d.note_loop_lag(0.5, 0.2)
    assert d.awareness.score == 2 and d.stats["lag_penalties"] == 2


# ---------------------------------------------------------------- incarnations and config


def test_incarnation_tracking() -> None:
    d = detector()
    d.receive(Ping(1, "b", "a", 3, None), 0.0)
    d.receive(Ping(2, "b", "a", 2, None), 0.0)  # lower: ignored
    d.receive(Ack(99, "c", "a", 7, None), 0.0)  # an ack for nothing still shows c's incarnation
    assert d.incarnation_of("b") == 3 and d.incarnation_of("c") == 7 and d.incarnation_of("z") == 0
    assert d.seen_incarnations() == {"b": 3, "c": 7}
    d.set_incarnation(4)
    assert d.incarnation == 4
    assert only_ping(d.tick(0.0)).incarnation == 4
    assert d.receive(Ping(3, "b", "a", 3, None), 0.0)[0].message.incarnation == 4  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        d.set_incarnation(3)


def test_messages_from_myself_are_ignored() -> None:
    d = detector()
    assert d.receive(Ping(1, "a", "a", 0, None), 0.0) == []
    assert d.stats["ignored"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"probe_timeout_s": 0.2},
        {"probe_timeout_s": 0.0},
        {"indirect_probes": -1},
        {"relay_timeout_s": 0.0},
        {"max_relays": 0},
        {"max_confirms": 0},
    ],
)
def test_config_fails_fast(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DetectorConfig(**bad)  # type: ignore[arg-type]


def test_same_seed_same_behaviour() -> None:
    def run(seed: int) -> list[Outgoing]:
        d = detector(peers=[f"s{i}" for i in range(12)], seed=seed)
        return [o for i in range(40) for o in d.tick(i * 0.1)]

    assert run(7) == run(7)


def test_next_deadline_says_when_a_tick_is_needed() -> None:
    d = Detector("a", CONFIG, random.Random(1))
    assert d.next_deadline() == math.inf  # nothing to probe
    d.confirm("b", 0.0)
    assert d.next_deadline() == pytest.approx(0.1)  # a confirm's direct timeout
    d.set_members(["a", "b", "c"])
    assert d.next_deadline() == -math.inf  # a period is due
    d.tick(0.0)
    assert d.next_deadline() == pytest.approx(0.1)
    d.tick(0.1)
    assert d.next_deadline() == pytest.approx(0.2)


# ---------------------------------------------------------------- round trips for metrics


def test_round_trips_of_direct_acks_are_handed_out_once() -> None:
    d = detector()
    first = only_ping(d.tick(0.0))
    d.receive(ack_for(first), 0.004)
    d.receive(ack_for(first), 0.006)  # a duplicate ack: not a second round trip
    assert d.take_round_trips() == [(first.target, pytest.approx(0.004))]
    assert d.take_round_trips() == []
    second = only_ping(d.tick(0.2))
    helper = sorted(ping_reqs(d.tick(0.3)))[0]
    d.receive(Ack(second.seq, helper, "a", 0, on_behalf_of=second.target), 0.35)
    assert d.take_round_trips() == []  # through a helper: no round trip of ours to the target
