"""Cascade suppression: each mode transition, the budget, the mode commands, the leader's use."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pytest

from agent.leadership import LeaderClock, plan_leader
from consensus.commands import (
    AssignSlot,
    Command,
    MarkServerFailed,
    RecordHeld,
    ServerUp,
    SetMode,
    encode_command,
)
from consensus.machine import CommandRejected, apply, apply_payload
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState, Decision, ServerRecord, ServerState, SlotRecord
from healer.cascade import (
    CascadePolicy,
    Mode,
    ModeChange,
    cascade_trigger,
    next_mode,
    replacements_left,
    verdicts_since,
)
from healer.replace import LeasePolicy, plan_replacements, plan_replacements_within
from healer.verdict import VerdictPolicy

W = 1_700_000_000.0  # wall clock "now" of most rows
POLICY = CascadePolicy()  # window 60 s, min 2 verdicts, fraction 0.3, quiet 30 s, 1 per 300 s
QUICK = CascadePolicy(quiet_s=5.0)
LEASES = LeasePolicy(lease_s=2.0, drift=0.0, margin_s=0.5)  # wait_s = 2.5
VERDICTS = VerdictPolicy()
NO_VERDICTS: Mapping[str, float] = MappingProxyType({})
OWN_DOMAINS: Mapping[str, str] = MappingProxyType({})
HELD = "cascade mode: replacement budget used"


def cluster(
    verdicts: Mapping[str, float] = NO_VERDICTS,
    *,
    actives: int = 10,
    spares: int = 2,
    spare_state: ServerState = "up",
    back: Collection[str] = (),
    replaced: Collection[str] = (),
    domains: Mapping[str, str] = OWN_DOMAINS,
    mode: Mode = "normal",
    since: float = 0.0,
    extra: Sequence[Decision] = (),
) -> ClusterState:
    """Actives a00.. owning slots s00.., spares p00..; each server alone in its failure domain
    unless `domains` names one. A server with a verdict (name -> wall time) is failed and its
    slot lost, unless it is `back` (its agent rejoined: quarantined) or its slot was `replaced`
    (it now belongs to `<name>-new`)."""
    names = [f"a{i:02d}" for i in range(actives)]
    servers = [
        ServerRecord(n, "active", domains.get(n, f"z-{n}"), _server_state(n, verdicts, back), 1)
        for n in names
    ]
    servers += [
        ServerRecord(f"p{i:02d}", "spare", f"z-p{i:02d}", spare_state, 1) for i in range(spares)
    ]
    slots = []
    for i, name in enumerate(names):
        slot = SlotRecord(f"s{i:02d}", (f"t{i:02d}",), name, 1, "serving", f"{name}:80", 2.0, 5)
        if name in replaced:
            servers.append(ServerRecord(f"{name}-new", "active", f"z-{name}-new", "up", 1))
            slot = dataclasses.replace(slot, owner=f"{name}-new", epoch=2, state="assigned")
        elif name in verdicts:
            slot = dataclasses.replace(slot, state="lost", address=None)
        slots.append(slot)
    judged = [
        Decision(f"v-{name}", "server_failed", at, name, {"slots_lost": []})
        for name, at in sorted(verdicts.items(), key=lambda item: item[1])
    ]
    return ClusterState(
        cluster="moon",
        servers=tuple(servers),
        slots=tuple(slots),
        mode=mode,
        mode_since=since,
        decisions=(*judged, *extra),
        decision_seq=len(judged) + len(extra),
    )


def _server_state(name: str, verdicts: Mapping[str, float], back: Collection[str]) -> ServerState:
    if name in back:
        return "quarantined"
    return "failed" if name in verdicts else "up"


def at(**offsets: float) -> dict[str, float]:
    """Verdict times as offsets from W: at(a00=-5) is {"a00": W - 5}."""
    return {name: W + offset for name, offset in offsets.items()}


def rule(change: ModeChange | None) -> tuple[str, str] | None:
    return None if change is None else (change.mode, change.evidence["rule"])


# ---------------------------------------------------------------- normal -> cascade

RACK_X3 = {n: "rack-x" for n in ("a00", "a01", "a02")}
RACK_X4 = {**RACK_X3, "a03": "rack-x"}
CASCADE_RATE = ("cascade", "verdict_rate")
CASCADE_DOMAIN = ("cascade", "domain_lost")
CASCADE_SPARES = ("cascade", "spares_exhausted")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        # 10 actives: threshold max(2, ceil(0.3 * 10)) = 3.
        pytest.param(cluster(at(a00=-50, a01=-20, a02=0)), CASCADE_RATE, id="rate-at-threshold"),
        pytest.param(cluster(at(a00=-20, a01=0)), None, id="rate-one-below"),
        pytest.param(
            cluster(at(a00=-60.01, a01=-20, a02=0)), None, id="rate-oldest-just-outside-window"
        ),
        pytest.param(
            cluster(at(a00=-60, a01=-20, a02=0)), CASCADE_RATE, id="rate-oldest-on-window-edge"
        ),
        pytest.param(
            cluster(at(a00=-30, a01=-20, a02=0), since=W - 15),
            None,
            id="rate-verdicts-before-mode-since-not-counted",
        ),
        pytest.param(
            cluster(at(a00=-10, a01=-5, a02=0), since=W - 15),
            CASCADE_RATE,
            id="rate-verdicts-after-mode-since-count",
        ),
        pytest.param(
            cluster(at(a00=-5, a01=0), actives=3), CASCADE_RATE, id="rate-min-verdicts-small"
        ),
        pytest.param(cluster(at(a00=0), actives=3), None, id="rate-one-verdict-small"),
        pytest.param(
            cluster(
                at(a00=0, a01=0),
                extra=[Decision(f"x{i}", "server_suspected", W, f"a0{i}") for i in range(2, 6)],
            ),
            None,
            id="rate-only-server-failed-counts",
        ),
        # A failure domain losing more than half, with a fresh verdict.
        pytest.param(
            cluster(at(a00=-100, a01=-1), domains=RACK_X3), CASCADE_DOMAIN, id="domain-2-of-3"
        ),
        pytest.param(cluster(at(a00=-100, a01=-1), domains=RACK_X4), None, id="domain-2-of-4"),
        pytest.param(
            cluster(at(a00=-100, a01=-70), domains=RACK_X3), None, id="domain-no-fresh-verdict"
        ),
        pytest.param(
            cluster(at(a00=-100, a01=-10), domains=RACK_X3, since=W - 5),
            None,
            id="domain-verdict-before-mode-since",
        ),
        pytest.param(cluster(at(a00=-1)), None, id="domain-single-server-is-no-domain"),
        pytest.param(
            cluster(at(a00=-2, a01=-1, a02=0), domains=RACK_X3), CASCADE_RATE, id="rate-wins"
        ),
        # A slot waiting and no spare up, with a fresh verdict.
        pytest.param(cluster(at(a00=-1), spares=0), CASCADE_SPARES, id="spares-none"),
        pytest.param(
            cluster(at(a00=-1), spare_state="new"), CASCADE_SPARES, id="spares-not-joined"
        ),
        pytest.param(cluster(at(a00=-1), spare_state="failed"), CASCADE_SPARES, id="spares-failed"),
        pytest.param(cluster(at(a00=-1), spares=1), None, id="spares-one-up"),
        pytest.param(
            cluster(at(a00=-1), spares=0, replaced=["a00"]), None, id="spares-no-slot-waiting"
        ),
        pytest.param(cluster(at(a00=-61), spares=0), None, id="spares-no-fresh-verdict"),
        pytest.param(
            cluster(at(a00=-1), spares=0, since=W - 0.5), None, id="spares-verdict-before-resume"
        ),
        pytest.param(cluster(), None, id="quiet-cluster"),
    ],
)
def test_normal_to_cascade(state: ClusterState, expected: tuple[str, str] | None) -> None:
    assert rule(next_mode(state, state.mode_since, W, POLICY)) == expected
    assert rule(cascade_trigger(state, W, POLICY, since=state.mode_since)) == expected


def test_cascade_evidence_names_the_cause() -> None:
    rate = cascade_trigger(cluster(at(a00=-50, a01=-20, a02=0)), W, POLICY)
    assert rate is not None
    assert rate.evidence == {
        "rule": "verdict_rate",
        "verdicts": ["a00", "a01", "a02"],
        "threshold": 3,
    }
    assert rate.reason == "3 verdicts within 60 s (threshold 3)"
    domain = cascade_trigger(cluster(at(a00=-100, a01=-1), domains=RACK_X3), W, POLICY)
    assert domain is not None
    assert domain.evidence == {"rule": "domain_lost", "domain": "rack-x", "lost": 2, "servers": 3}
    spares = cascade_trigger(cluster(at(a00=-1, a01=-100), spares=0), W, POLICY)
    assert spares is not None
    assert spares.evidence == {"rule": "spares_exhausted", "slots_waiting": ["s00", "s01"]}


@pytest.mark.parametrize(
    ("actives", "threshold"),
    [(0, 2), (3, 2), (6, 2), (7, 3), (10, 3), (11, 4), (40, 12), (50, 15)],
    ids=lambda v: str(v),
)
def test_threshold_is_the_larger_of_min_and_fraction(actives: int, threshold: int) -> None:
    assert POLICY.threshold(actives) == threshold


def test_operator_resume_is_not_overturned_by_the_failures_it_resumed_from() -> None:
    """Everything that would trigger cascade mode, all before the resume at W - 5."""
    failed = at(a00=-40, a01=-30, a02=-20, a03=-10)
    resumed = cluster(failed, spares=0, domains=RACK_X4, since=W - 5)
    for now in (W, W + 30, W + 100):
        assert next_mode(resumed, resumed.mode_since, now, POLICY) is None
    again = cluster({**failed, **at(a05=0)}, spares=0, domains=RACK_X4, since=W - 5)
    assert rule(next_mode(again, again.mode_since, W, POLICY)) == CASCADE_DOMAIN


def test_verdicts_since_is_inclusive_and_kind_specific() -> None:
    state = cluster(at(a00=-10, a01=0), extra=[Decision("x", "slot_assigned", W, "s00")])
    assert [d.subject for d in verdicts_since(state, W - 10)] == ["a00", "a01"]
    assert [d.subject for d in verdicts_since(state, W - 9.99)] == ["a01"]


@pytest.mark.parametrize(
    ("state", "reserve", "expected"),
    [
        pytest.param(cluster(at(a00=-1), spares=1), 0, None, id="one-up-no-reserve"),
        pytest.param(cluster(at(a00=-1), spares=1), 1, CASCADE_SPARES, id="one-up-reserve-1"),
        pytest.param(cluster(at(a00=-1), spares=2), 1, None, id="two-up-reserve-1"),
        pytest.param(cluster(at(a00=-1), spares=2), 2, CASCADE_SPARES, id="two-up-reserve-2"),
        pytest.param(cluster(at(a00=-1), spares=0), 1, CASCADE_SPARES, id="none-up-reserve-1"),
        pytest.param(
            cluster(at(a00=-1), spares=1, replaced=["a00"]), 1, None, id="reserve-no-slot-waiting"
        ),
        pytest.param(cluster(at(a00=-61), spares=1), 1, None, id="reserve-no-fresh-verdict"),
    ],
)
def test_spares_at_or_below_the_reserve_have_run_out(
    state: ClusterState, reserve: int, expected: tuple[str, str] | None
) -> None:
    assert rule(next_mode(state, state.mode_since, W, POLICY, reserve)) == expected
    assert rule(cascade_trigger(state, W, POLICY, spare_reserve=reserve)) == expected


def test_spares_run_out_evidence_names_the_reserve() -> None:
    change = cascade_trigger(cluster(at(a00=-1), spares=1), W, POLICY, spare_reserve=1)
    assert change is not None
    assert change.reason == "no spare beyond the reserve of 1 left for s00"
    assert change.evidence == {
        "rule": "spares_exhausted",
        "slots_waiting": ["s00"],
        "spares_up": 1,
        "spare_reserve": 1,
    }


# ---------------------------------------------------------------- cascade -> recovering

EPISODE = at(a00=-2, a01=-1, a02=0)  # the verdicts that brought cascade mode at W
RECOVERING = ("recovering", "quiet_and_recovered")


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        pytest.param(cluster(EPISODE, back=["a00", "a01"]), W + 30, RECOVERING, id="2-of-3-back"),
        pytest.param(cluster(EPISODE, back=["a00", "a01", "a02"]), W + 30, RECOVERING, id="all"),
        pytest.param(
            cluster(EPISODE, replaced=["a00", "a01"]), W + 30, RECOVERING, id="2-of-3-replaced"
        ),
        pytest.param(
            cluster(EPISODE, back=["a00"], replaced=["a01"]), W + 30, RECOVERING, id="mixed"
        ),
        pytest.param(cluster(EPISODE, back=["a00"]), W + 30, None, id="quiet-1-of-3-back"),
        pytest.param(cluster(EPISODE), W + 500, None, id="quiet-long-after-window-none-back"),
        pytest.param(cluster(EPISODE, back=["a00", "a01"]), W + 29.9, None, id="back-not-quiet"),
        pytest.param(
            cluster({**EPISODE, **at(a03=10)}, back=["a00", "a01", "a02", "a03"]),
            W + 35,
            None,
            id="verdict-in-cascade-restarts-quiet",
        ),
        pytest.param(
            cluster({**EPISODE, **at(a03=10)}, back=["a00", "a01", "a02"]),
            W + 40,
            RECOVERING,
            id="verdict-in-cascade-joins-episode-3-of-4",
        ),
        pytest.param(
            cluster({**EPISODE, **at(a03=10)}, back=["a00", "a01"]),
            W + 40,
            None,
            id="half-back-is-no-majority",
        ),
        pytest.param(
            cluster({**EPISODE, **at(a05=-61)}, back=["a00", "a01"]),
            W + 30,
            RECOVERING,
            id="verdict-before-episode-not-counted",
        ),
    ],
)
def test_cascade_to_recovering(
    state: ClusterState, now: float, expected: tuple[str, str] | None
) -> None:
    state = dataclasses.replace(state, mode="cascade", mode_since=W)
    assert rule(next_mode(state, W, now, POLICY)) == expected


def test_recovering_evidence_counts_the_episode() -> None:
    state = cluster(EPISODE, back=["a00"], replaced=["a01"], mode="cascade", since=W)
    change = next_mode(state, W, W + 31, POLICY)
    assert change is not None
    assert change.evidence == {"rule": "quiet_and_recovered", "back_or_replaced": 2, "failed": 3}
    assert change.reason == "no verdict for 31 s and 2 of 3 failed servers back or replaced"


# ---------------------------------------------------------------- recovering -> cascade | normal

BEFORE = at(a00=-42, a01=-41, a02=-40)  # the episode, over before recovering began at W


@pytest.mark.parametrize(
    ("verdicts", "now", "expected"),
    [
        pytest.param(BEFORE, W + 30, ("normal", "quiet"), id="quiet-for-quiet-s"),
        pytest.param(BEFORE, W + 29.9, None, id="not-quiet-long-enough"),
        pytest.param({**BEFORE, **at(a05=1)}, W + 2, ("cascade", "relapse"), id="new-verdict"),
        pytest.param(
            {**BEFORE, **at(a05=1)}, W + 100, ("cascade", "relapse"), id="new-verdict-long-ago"
        ),
        pytest.param({**BEFORE, **at(a05=0)}, W + 30, ("normal", "quiet"), id="verdict-at-start"),
    ],
)
def test_recovering(
    verdicts: Mapping[str, float], now: float, expected: tuple[str, str] | None
) -> None:
    state = cluster(verdicts, back=list(verdicts), mode="recovering", since=W)
    assert rule(next_mode(state, W, now, POLICY)) == expected


# ---------------------------------------------------------------- flapping, replayed

Event = tuple[float, str, str]  # (seconds after W, "fail" | "back", server)


def replay(events: Sequence[Event], until_s: float, policy: CascadePolicy) -> list[tuple[Any, ...]]:
    """Every 0.5 s from W: commit the events due through the state machine, then the mode
    change `next_mode` asks for. Returns (seconds after W, new mode, rule) per change."""
    state = cluster()
    pending = sorted(events)
    changes: list[tuple[Any, ...]] = []
    for tick in range(int(until_s * 2) + 1):
        t = tick / 2
        while pending and pending[0][0] <= t:
            when, what, name = pending.pop(0)
            state = apply(state, _event(what, name, W + when))
        change = next_mode(state, state.mode_since, W + t, policy)
        if change is not None:
            cmd = SetMode(id=f"mode:{t}", at=W + t, mode=change.mode, reason=change.reason)
            state = apply(state, cmd)
            changes.append((t, change.mode, change.evidence["rule"]))
    return changes


def _event(what: str, name: str, when: float) -> Command:
    if what == "fail":
        return MarkServerFailed(id=f"fail:{name}", at=when, server=name, incarnation=1)
    return ServerUp(id=f"up:{name}", at=when, server=name, incarnation=2)


def _fails(*times: float) -> list[Event]:
    return [(t, "fail", f"a{i:02d}") for i, t in enumerate(times)]


def _back(t: float, *names: str) -> list[Event]:
    return [(t, "back", name) for name in names]


@pytest.mark.parametrize(
    ("events", "policy", "expected"),
    [
        pytest.param(
            _fails(0, 30, 61, 92, 123, 154), POLICY, [], id="hovering-one-below-never-enters"
        ),
        pytest.param(
            _fails(0, 1, 2),
            POLICY,
            [(2, "cascade", "verdict_rate")],
            id="window-exit-does-not-end-cascade",
        ),
        pytest.param(
            _fails(0, 1, 2, 70, 71),
            POLICY,
            [(2, "cascade", "verdict_rate")],
            id="verdicts-in-cascade-change-nothing",
        ),
        pytest.param(
            [*_fails(0, 1, 2), *_back(3, "a00", "a01")],
            QUICK,
            [(2, "cascade", "verdict_rate"), (7, *RECOVERING), (12, "normal", "quiet")],
            id="back-quiet-normal-old-verdicts-still-in-window",
        ),
        pytest.param(
            [*_fails(0, 1, 2), *_back(3, "a00", "a01"), (9, "fail", "a03"), (10, "back", "a03")],
            QUICK,
            [
                (2, "cascade", "verdict_rate"),
                (7, *RECOVERING),
                (9, "cascade", "relapse"),
                (14, *RECOVERING),
                (19, "normal", "quiet"),
            ],
            id="relapse-then-recover",
        ),
        pytest.param(
            [*_fails(0, 1, 2), *_back(5, "a00", "a01", "a02"), (20, "fail", "a03")],
            POLICY,
            [(2, "cascade", "verdict_rate"), (50, *RECOVERING), (80, "normal", "quiet")],
            id="verdict-in-cascade-restarts-quiet",
        ),
        pytest.param(
            [*_fails(0, 1, 2), *_back(40, "a00", "a01")],
            POLICY,
            [(2, "cascade", "verdict_rate"), (40, *RECOVERING), (70, "normal", "quiet")],
            id="quiet-long-before-majority-back",
        ),
    ],
)
def test_flapping_inputs_change_mode_only_as_the_rules_say(
    events: list[Event], policy: CascadePolicy, expected: list[tuple[Any, ...]]
) -> None:
    assert replay(events, 200.0, policy) == expected


# ---------------------------------------------------------------- replacements_left


def assigned(offset: float, mode: str) -> Decision:
    return Decision(f"x{offset}{mode}", "slot_assigned", W + offset, "s00", {"mode": mode})


@pytest.mark.parametrize(
    ("mode", "policy", "assignments", "left"),
    [
        pytest.param("normal", POLICY, [assigned(-1, "cascade")], None, id="normal-no-limit"),
        pytest.param(
            "normal",
            CascadePolicy(normal_budget=2),
            [assigned(-2, "normal"), assigned(-1, "cascade")],
            1,
            id="normal-budget-counts-normal-assignments",
        ),
        pytest.param(
            "normal",
            CascadePolicy(normal_budget=2),
            [assigned(-3, "normal"), assigned(-2, "normal"), assigned(-1, "normal")],
            0,
            id="normal-budget-never-negative",
        ),
        pytest.param(
            "normal",
            CascadePolicy(normal_budget=1),
            [assigned(-300.01, "normal")],
            1,
            id="normal-budget-window",
        ),
        pytest.param("cascade", POLICY, [], 1, id="cascade-unused"),
        pytest.param("cascade", POLICY, [assigned(-1, "cascade")], 0, id="cascade-used"),
        pytest.param("cascade", POLICY, [assigned(-300, "cascade")], 0, id="used-on-window-edge"),
        pytest.param("cascade", POLICY, [assigned(-300.01, "cascade")], 1, id="used-before-window"),
        pytest.param("cascade", POLICY, [assigned(-1, "normal")], 1, id="normal-assignments-free"),
        pytest.param(
            "cascade",
            POLICY,
            [assigned(-3, "cascade"), assigned(-2, "cascade"), assigned(-1, "cascade")],
            0,
            id="never-negative",
        ),
        pytest.param(
            "cascade", CascadePolicy(budget=3), [assigned(-1, "cascade")], 2, id="budget-3-used-1"
        ),
        pytest.param("recovering", POLICY, [], 1, id="recovering-unused"),
        pytest.param(
            "recovering", POLICY, [assigned(-1, "cascade")], 0, id="recovering-shares-cascade"
        ),
    ],
)
def test_replacements_left(
    mode: Mode, policy: CascadePolicy, assignments: list[Decision], left: int | None
) -> None:
    state = cluster(mode=mode, since=W - 500, extra=assignments)
    assert replacements_left(state, W, policy) == left


# ---------------------------------------------------------------- SetMode and RecordHeld


def set_mode(mode: Mode, when: float = W, **kw: Any) -> SetMode:
    return SetMode(id=f"mode:{mode}:{when}", at=when, mode=mode, reason=f"to {mode}", **kw)


@pytest.mark.parametrize(
    ("before", "command", "evidence"),
    [
        pytest.param(
            "normal",
            set_mode("cascade", evidence={"rule": "verdict_rate"}),
            {"rule": "verdict_rate", "from": "normal", "to": "cascade", "operator": False},
            id="leader-enters-cascade",
        ),
        pytest.param(
            "cascade",
            set_mode("normal", operator=True),
            {"from": "cascade", "to": "normal", "operator": True},
            id="operator-resume",
        ),
        pytest.param(
            "cascade",
            set_mode("recovering", evidence={"from": "forged", "to": "x", "operator": True}),
            {"from": "cascade", "to": "recovering", "operator": False},
            id="facts-win-over-evidence",
        ),
    ],
)
def test_set_mode_records_a_mode_changed_decision(
    before: Mode, command: SetMode, evidence: dict[str, Any]
) -> None:
    state = cluster(mode=before, since=W - 100)
    after = apply(state, command)
    assert (after.mode, after.mode_since) == (command.mode, command.at)
    decision = after.decisions[-1]
    assert (decision.kind, decision.subject, decision.at) == ("mode_changed", command.mode, W)
    assert decision.evidence == {**evidence, "reason": command.reason}
    assert (after.servers, after.slots) == (state.servers, state.slots)


def test_set_mode_to_the_current_mode_is_rejected_as_stale() -> None:
    state = cluster(mode="cascade", since=W - 100)
    with pytest.raises(CommandRejected) as raised:
        apply(state, set_mode("cascade"))
    assert raised.value.stale
    after, result = apply_payload(state, encode_command(set_mode("cascade")))
    assert after is state
    assert (result.status, result.stale) == ("rejected", True)


def test_mode_commands_travel_through_the_log_and_are_idempotent() -> None:
    state = cluster(mode="cascade", since=W - 100)
    held = RecordHeld(
        id="held:s01:1", at=W, subject="s01", action="assign_slot", reason=HELD, evidence={"n": 1}
    )
    after, result = apply_payload(state, encode_command(held))
    assert result.status == "committed"
    decision = after.decisions[-1]
    assert (decision.kind, decision.subject, decision.at) == ("action_held", "s01", W)
    assert decision.evidence == {"n": 1, "action": "assign_slot", "reason": HELD, "mode": "cascade"}
    assert (after.mode, after.mode_since, after.slots) == ("cascade", W - 100, state.slots)
    again, result = apply_payload(after, encode_command(held))
    assert again is after and result.reason == "already committed"


# ---------------------------------------------------------------- plan_replacements_within

LOST_TWO = cluster(at(a00=-5, a01=-5), actives=3, spares=2)  # s00, s01 lost; s02 served by a02
LEASE_SEEN = {"s00": 0.0, "s01": 0.0, "s02": 10.0}


@pytest.mark.parametrize(
    ("mode", "budget", "slots", "held"),
    [
        pytest.param("normal", None, ["s00", "s01"], [], id="no-budget"),
        pytest.param("cascade", 2, ["s00", "s01"], [], id="budget-enough"),
        pytest.param("cascade", 1, ["s00"], ["s01"], id="budget-1"),
        pytest.param("cascade", 0, [], ["s00", "s01"], id="budget-0"),
        pytest.param("recovering", 1, ["s00"], ["s01"], id="budget-1-recovering"),
    ],
)
def test_plan_replacements_within(
    mode: Mode, budget: int | None, slots: list[str], held: list[str]
) -> None:
    state = dataclasses.replace(LOST_TWO, mode=mode)
    plain, plain_notes = plan_replacements(state, LEASE_SEEN, 10.0, W, LEASES)
    commands, notes, holds = plan_replacements_within(state, LEASE_SEEN, 10.0, W, LEASES, budget)
    assert [c.slot for c in commands if isinstance(c, AssignSlot)] == slots
    tagged = [
        dataclasses.replace(c, evidence={**c.evidence, "mode": mode})
        for c in plain
        if isinstance(c, AssignSlot)
    ]
    assert len(tagged) == len(plain) == 2
    assert commands == tagged[: len(slots)]
    reason = f"{mode} mode: replacement budget used"
    assert holds == [(slot, reason) for slot in held]
    assert notes == plain_notes + [f"{slot}: held ({reason})" for slot in held]


# ---------------------------------------------------------------- plan_leader


def snap(state: ClusterState) -> Snapshot:
    return Snapshot(state, RaftStatus("a02", voter=True, leader="a02", term=3, is_leader=True))


def leader_plan(
    state: ClusterState,
    clock: LeaderClock,
    now: float,
    wall: float,
    policy: CascadePolicy,
    spare_reserve: int = 0,
) -> tuple[list[Command], ClusterState]:
    """The leader's commands at monotonic `now`: lease clocks start at 0.0 when the clock is
    new, and every live owner has renewed its lease since. Returns them with the renewed state."""
    if clock.term == -1:
        clock.observe(snap(state), 0.0)
    renewed = dataclasses.replace(
        state,
        slots=tuple(
            dataclasses.replace(s, lease_seq=s.lease_seq + 1) if _live(state, s) else s
            for s in state.slots
        ),
    )
    clock.observe(snap(renewed), now)
    commands, _ = plan_leader(
        snap(renewed), clock, now, wall, VERDICTS, LEASES, policy, spare_reserve=spare_reserve
    )
    return commands, renewed


def _live(state: ClusterState, slot: SlotRecord) -> bool:
    owner = state.server(slot.owner or "")
    return slot.state in ("assigned", "serving") and owner is not None and owner.state == "up"


def leader_tick(
    state: ClusterState,
    clock: LeaderClock,
    now: float,
    wall: float,
    policy: CascadePolicy,
    spare_reserve: int = 0,
) -> tuple[list[Command], ClusterState]:
    """One leader tick, its commands committed in order."""
    commands, state = leader_plan(state, clock, now, wall, policy, spare_reserve)
    for command in commands:
        state = apply(state, command)
    return commands, state


def summary(commands: Sequence[Command]) -> list[tuple[str, str]]:
    def target(c: Command) -> str:
        if isinstance(c, SetMode):
            return c.mode
        if isinstance(c, AssignSlot):
            return c.slot
        return c.subject if isinstance(c, RecordHeld) else c.id

    return [(c.kind, target(c)) for c in commands]


def test_entering_cascade_limits_the_same_ticks_replacements() -> None:
    clock = LeaderClock()
    commands, state = leader_tick(LOST_TWO, clock, 10.0, W, POLICY)
    assert summary(commands) == [
        ("set_mode", "cascade"),
        ("assign_slot", "s00"),
        ("record_held", "s01"),
    ]
    assert state.mode == "cascade" and state.mode_since == W
    assert isinstance(commands[0], SetMode) and commands[0].evidence["rule"] == "verdict_rate"
    assert commands[0].id == "mode:cascade:0.0"  # the same on every leader for this change


def test_record_held_is_committed_once_per_slot_and_mode_since() -> None:
    spent = [assigned(-5, "cascade")]
    state = cluster(at(a00=-12, a01=-12), actives=3, mode="cascade", since=W - 10, extra=spent)
    clock = LeaderClock()
    first, state = leader_tick(state, clock, 10.0, W, POLICY)
    assert summary(first) == [("record_held", "s00"), ("record_held", "s01")]
    assert [c.id for c in first] == [f"held:s0{i}:{W - 10}" for i in (0, 1)]
    again, state = leader_tick(state, clock, 10.1, W + 0.1, POLICY)
    assert again == []
    later, state = leader_tick(state, clock, 11.0, W + 1, POLICY)
    assert later == []
    # A new leader's clock records them again under the same ids: the log drops the copies.
    fresh, _ = leader_plan(state, LeaderClock(), 11.0, W + 1, POLICY)
    assert [c.id for c in fresh] == [c.id for c in first]
    for command in fresh:
        assert apply_payload(state, encode_command(command))[1].reason == "already committed"
    # A new mode (a relapse after recovering) is a new episode: each slot is recorded again.
    relapsed = dataclasses.replace(state, mode_since=W + 2)
    anew, _ = leader_tick(relapsed, clock, 12.0, W + 3, POLICY)
    assert summary(anew) == [("record_held", "s00"), ("record_held", "s01")]


def test_the_entering_ticks_assignment_counts_against_the_budget() -> None:
    clock = LeaderClock()
    first, state = leader_tick(LOST_TWO, clock, 10.0, W, POLICY)
    assert summary(first)[1] == ("assign_slot", "s00")
    second, _ = leader_tick(state, clock, 10.1, W + 0.1, POLICY)
    assert [c for c in second if isinstance(c, AssignSlot)] == []
    tags = [d.evidence.get("mode") for d in state.decisions if d.kind == "slot_assigned"]
    assert tags == ["cascade"]


def test_held_slots_of_the_entering_tick_are_recorded_once() -> None:
    spent = [assigned(-100, "cascade")]  # the budget went on an earlier episode
    state = cluster(at(a00=-5, a01=-5), actives=3, since=W - 50, extra=spent)
    clock = LeaderClock()
    first, state = leader_tick(state, clock, 10.0, W, POLICY)
    assert summary(first) == [
        ("set_mode", "cascade"),
        ("record_held", "s00"),
        ("record_held", "s01"),
    ]
    second, state = leader_tick(state, clock, 10.1, W + 0.1, POLICY)
    assert second == []


def test_recovering_mode_keeps_the_budget_across_ticks() -> None:
    state = cluster(at(a00=-40, a01=-40), actives=3, mode="recovering", since=W - 5)
    clock = LeaderClock()
    first, state = leader_tick(state, clock, 10.0, W, POLICY)
    assert summary(first) == [("assign_slot", "s00"), ("record_held", "s01")]
    second, _ = leader_tick(state, clock, 10.1, W + 0.1, POLICY)
    assert [c for c in second if isinstance(c, AssignSlot)] == []


def test_normal_mode_has_its_own_budget_across_ticks() -> None:
    """Two lost slots without a cascade (a high threshold): the normal budget moves one."""
    policy = CascadePolicy(min_verdicts=10, normal_budget=1)
    clock = LeaderClock()
    first, state = leader_tick(LOST_TWO, clock, 10.0, W, policy)
    assert summary(first) == [("assign_slot", "s00"), ("record_held", "s01")]
    assert state.mode == "normal"
    second, _ = leader_tick(state, clock, 10.1, W + 0.1, policy)
    assert [c for c in second if isinstance(c, AssignSlot)] == []


def test_the_leader_keeps_the_reserve_and_records_why() -> None:
    """One verdict among ten actives, one spare kept in reserve: the spares have run out (a
    cascade), and the lost slot is held for the reserve, recorded once with its evidence."""
    state = cluster(at(a00=-5), spares=1)
    clock = LeaderClock()
    first, committed = leader_tick(state, clock, 10.0, W, POLICY, spare_reserve=1)
    assert summary(first) == [("set_mode", "cascade"), ("record_held", "s00")]
    mode, held = first
    assert isinstance(mode, SetMode) and mode.evidence["rule"] == "spares_exhausted"
    assert isinstance(held, RecordHeld)
    assert (held.action, held.reason, held.evidence) == (
        "assign_slot",
        "spare reserve (1 kept)",
        {"spare_reserve": 1},
    )
    assert committed.mode == "cascade"
    assert committed.decisions[-1].evidence == {
        "spare_reserve": 1,
        "action": "assign_slot",
        "reason": "spare reserve (1 kept)",
        "mode": "cascade",
    }
    again, notes = plan_leader(
        snap(committed), clock, 10.1, W + 0.1, VERDICTS, LEASES, POLICY, spare_reserve=1
    )
    assert again == []
    assert "s00: owner a00 failed; held: spare reserve (1 kept)" in notes
    # Without a reserve the one spare takes the slot, and nothing cascades.
    plain, _ = leader_plan(state, LeaderClock(), 10.0, W, POLICY)
    assert summary(plain) == [("assign_slot", "s00")]


def test_a_slot_without_any_spare_is_held_with_that_reason() -> None:
    state = cluster(at(a00=-5), spares=0)
    commands, _ = leader_plan(state, LeaderClock(), 10.0, W, POLICY)
    assert summary(commands) == [("set_mode", "cascade"), ("record_held", "s00")]
    held = commands[1]
    assert isinstance(held, RecordHeld)
    assert (held.reason, held.evidence) == ("no spare is ready", {})
