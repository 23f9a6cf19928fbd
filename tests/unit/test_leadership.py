"""The leader's own clock of leases and suspicions, and the leader's plan built on it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent.leadership import LeaderClock, plan_leader
from consensus.commands import AssignSlot, MarkServerFailed, RecordHeld, ReturnServer
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState, ProbeReport, ServerRecord, SlotRecord, Suspicion
from healer.cascade import Mode
from healer.replace import LeasePolicy
from healer.returns import ReturnPolicy
from healer.verdict import VerdictPolicy

WALL = 1_700_000_000.0
VERDICTS = VerdictPolicy(min_observers=2, suspicion_min_s=0.5, suspicion_max_s=2.0, expire_s=10.0)
LEASES = LeasePolicy(lease_s=2.0, drift=0.0, margin_s=0.5)  # wait_s = 2.5

SERVERS = (
    ServerRecord("a1", "active", "rack-a", "up", 1),
    ServerRecord("a2", "active", "rack-b", "up", 1),
    ServerRecord("a3", "active", "rack-c", "up", 1),
    ServerRecord("p1", "spare", "rack-b", "up", 1),
)
S1 = SlotRecord("s1", ("t1",), "a1", 2, "serving", "10.0.0.1:8001", 2.0, 7)
S2 = SlotRecord("s2", ("t2",), "a2", 1, "serving", "10.0.0.2:8002", 2.0, 3)
BASE = ClusterState(cluster="moon", servers=SERVERS, slots=(S1, S2))


def with_s1(**changes: Any) -> ClusterState:
    return dataclasses.replace(BASE, slots=(dataclasses.replace(S1, **changes), S2))


def suspected(incarnation: int = 1, since: float = 50.0, observers: str = "a1") -> ClusterState:
    reports = tuple(ProbeReport(o, False, since) for o in observers.split())
    return dataclasses.replace(BASE, suspicions=(Suspicion("a3", incarnation, since, reports),))


def snap(state: ClusterState, term: int | None) -> Snapshot:
    """`term` None: this node is a follower."""
    raft = RaftStatus(
        "a1",
        voter=True,
        leader="a1" if term is not None else "a2",
        term=term if term is not None else 9,
        is_leader=term is not None,
    )
    return Snapshot(state, raft)


Step = tuple[ClusterState, int | None, float]


# ---------------------------------------------------------------- LeaderClock.observe


@pytest.mark.parametrize(
    ("steps", "lease_seen"),
    [
        pytest.param([(BASE, 5, 10.0)], {"s1": 10.0, "s2": 10.0}, id="took-office-counts-now"),
        pytest.param([(BASE, 5, 10.0), (BASE, 5, 12.0)], {"s1": 10.0, "s2": 10.0}, id="unchanged"),
        pytest.param(
            [(BASE, 5, 10.0), (with_s1(lease_seq=8), 5, 12.0)],
            {"s1": 12.0, "s2": 10.0},
            id="renewal-restarts-that-slot",
        ),
        pytest.param(
            [
                (BASE, 5, 10.0),
                (with_s1(owner="p1", epoch=3, lease_seq=0, state="assigned"), 5, 12.0),
            ],
            {"s1": 12.0, "s2": 10.0},
            id="new-epoch-restarts-that-slot",
        ),
        pytest.param(
            [(BASE, 5, 10.0), (with_s1(epoch=3, lease_seq=7), 5, 12.0)],
            {"s1": 12.0, "s2": 10.0},
            id="new-epoch-same-seq-restarts",
        ),
        pytest.param(
            [(BASE, 5, 10.0), (with_s1(state="lost", address=None), 5, 12.0)],
            {"s1": 10.0, "s2": 10.0},
            id="verdict-changing-state-only-does-not",
        ),
        pytest.param(
            [(BASE, 5, 10.0), (with_s1(state="released", address=None), 5, 12.0)],
            {"s1": 10.0, "s2": 10.0},
            id="release-does-not",
        ),
        pytest.param(
            [(with_s1(state="assigned", address=None), 5, 10.0), (BASE, 5, 12.0)],
            {"s1": 10.0, "s2": 10.0},
            id="serving-does-not",
        ),
        pytest.param(
            [(BASE, 5, 10.0), (with_s1(lease_seq=8), 5, 11.0), (BASE, 6, 12.0)],
            {"s1": 12.0, "s2": 12.0},
            id="new-term-resets-every-clock",
        ),
        pytest.param(
            [(BASE, 5, 10.0), (with_s1(lease_seq=8), None, 12.0)],
            {"s1": 10.0, "s2": 10.0},
            id="not-leader-changes-nothing",
        ),
        pytest.param([(BASE, None, 10.0)], {}, id="follower-records-nothing"),
        pytest.param(
            [(BASE, 5, 10.0), (BASE, None, 11.0), (BASE, 7, 12.0)],
            {"s1": 12.0, "s2": 12.0},
            id="back-in-office-counts-from-election",
        ),
    ],
)
def test_observe_lease_clocks(steps: list[Step], lease_seen: dict[str, float]) -> None:
    clock = LeaderClock()
    for state, term, now in steps:
        clock.observe(snap(state, term), now)
    assert clock.lease_seen == lease_seen
    last_term = steps[-1][1]
    assert clock.term == (-1 if last_term is None else last_term)


@pytest.mark.parametrize(
    ("steps", "first_seen"),
    [
        pytest.param([(suspected(), 5, 10.0)], 10.0, id="first-sight"),
        pytest.param(
            [(suspected(), 5, 10.0), (suspected(observers="a1 a2"), 5, 12.0)],
            10.0,
            id="recorded-once-while-reports-arrive",
        ),
        pytest.param(
            [(suspected(), 5, 10.0), (suspected(since=60.0), 5, 12.0)],
            12.0,
            id="new-since-is-a-new-suspicion",
        ),
        pytest.param(
            [(suspected(), 5, 10.0), (suspected(incarnation=2), 5, 12.0)],
            12.0,
            id="new-incarnation-is-a-new-suspicion",
        ),
        pytest.param(
            [(suspected(), 5, 10.0), (BASE, 5, 11.0), (suspected(), 5, 12.0)],
            12.0,
            id="forgotten-when-closed",
        ),
        pytest.param(
            [(suspected(), 5, 10.0), (suspected(), 6, 12.0)], 12.0, id="new-term-counts-now"
        ),
        pytest.param(
            [(suspected(), 5, 10.0), (suspected(since=60.0), None, 12.0)],
            10.0,
            id="not-leader-changes-nothing",
        ),
        pytest.param([(suspected(), None, 10.0)], None, id="follower-records-nothing"),
    ],
)
def test_observe_suspicion_clocks(steps: list[Step], first_seen: float | None) -> None:
    clock = LeaderClock()
    for state, term, now in steps:
        clock.observe(snap(state, term), now)
    assert clock.suspicion_seen.get("a3") == first_seen


def test_closed_suspicion_leaves_the_open_marks() -> None:
    clock = LeaderClock()
    clock.observe(snap(suspected(), 5), 10.0)
    assert clock.suspicion_marks == {"a3": (1, 50.0)}
    clock.observe(snap(BASE, 5), 11.0)
    assert clock.suspicion_marks == {}


# ---------------------------------------------------------------- plan_leader

SPARE2 = ServerRecord("p2", "spare", "rack-c", "up", 1)
FAILED4 = ServerRecord("a4", "active", "rack-a", "failed", 1)
BUSY = ClusterState(
    cluster="moon",
    servers=(*SERVERS, SPARE2, FAILED4),
    slots=(
        dataclasses.replace(S1, state="released", address=None),
        S2,
        SlotRecord("s4", ("t4",), "a4", 5, "lost", None, 2.0, 2),
    ),
    suspicions=(
        Suspicion(
            "a3", 1, 50.0, tuple(ProbeReport(o, False, 50.0) for o in ("a1", "a2", "p1", "p2"))
        ),
        Suspicion("a2", 1, 51.0, (ProbeReport("a1", False, 51.0),)),
    ),
)


@pytest.mark.parametrize(
    ("state", "term", "acts"),
    [
        pytest.param(BUSY, 5, True, id="bootstrapped-leader-acts"),
        pytest.param(BUSY, None, False, id="follower-does-nothing"),
        pytest.param(dataclasses.replace(BUSY, cluster=None), 5, False, id="not-bootstrapped"),
    ],
)
def test_plan_leader_only_on_a_bootstrapped_leader(
    state: ClusterState, term: int | None, acts: bool
) -> None:
    clock = LeaderClock()
    clock.observe(snap(state, 5), 10.0)
    commands, notes = plan_leader(snap(state, term), clock, 10.5, WALL, VERDICTS, LEASES)
    assert bool(commands) is acts and bool(notes) is acts


def test_plan_leader_composes_verdicts_then_replacements() -> None:
    clock = LeaderClock()
    clock.observe(snap(BUSY, 5), 10.0)
    commands, notes = plan_leader(snap(BUSY, 5), clock, 10.5, WALL, VERDICTS, LEASES)
    assert [c.id for c in commands] == ["verdict:a3:1", "assign:s1:3:p1"]
    assert isinstance(commands[0], MarkServerFailed) and isinstance(commands[1], AssignSlot)
    assert notes == [
        "a2 suspected by 1/3 for 0.5/2.0 s",
        "s4: owner a4 failed; lease ends in 2.0 s",
    ]


@pytest.mark.parametrize(
    ("now", "assigned", "notes"),
    [
        pytest.param(3.4, False, ["s2: owner a2 failed; lease ends in 0.1 s"], id="lease-running"),
        pytest.param(3.5, True, [], id="lease-over-from-last-renewal"),
    ],
)
def test_lease_runs_from_last_renewal_not_from_verdict(
    now: float, assigned: bool, notes: list[str]
) -> None:
    """Renewed at 1.0, declared failed at 2.0: the slot may move at 1.0 + wait_s, not 2.0 + it."""
    renewed = dataclasses.replace(BASE, slots=(S1, dataclasses.replace(S2, lease_seq=4)))
    failed = dataclasses.replace(
        renewed,
        servers=tuple(
            dataclasses.replace(s, state="failed") if s.name == "a2" else s for s in SERVERS
        ),
        # s1's owner keeps renewing; only s2 is in question.
        slots=(
            dataclasses.replace(S1, lease_seq=8),
            dataclasses.replace(S2, lease_seq=4, state="lost", address=None),
        ),
    )
    clock = LeaderClock()
    for state, at in ((BASE, 0.0), (renewed, 1.0), (failed, 2.0)):
        clock.observe(snap(state, 5), at)
    commands, waiting = plan_leader(snap(failed, 5), clock, now, WALL, VERDICTS, LEASES)
    assert [c.id for c in commands] == (["assign:s2:2:p1"] if assigned else [])
    assert waiting == notes


# ---------------------------------------------------------------- automatic returns

RETURNS = ReturnPolicy(auto_return_s=120.0, flap_failures=2, flap_window_s=3600.0)
BACK = ServerRecord("q1", "spare", "rack-a", "quarantined", 4, WALL - 200.0, (WALL - 300.0,))
FLAPPER = ServerRecord(
    "q2", "spare", "rack-c", "quarantined", 2, WALL - 200.0, (WALL - 900.0, WALL - 300.0)
)
WAITING = ServerRecord("q3", "spare", "rack-b", "quarantined", 2, WALL - 60.0, (WALL - 90.0,))
QUARANTINED = dataclasses.replace(BUSY, servers=(*BUSY.servers, BACK, FLAPPER, WAITING))


def test_plan_leader_returns_nothing_by_default() -> None:
    clock = LeaderClock()
    clock.observe(snap(QUARANTINED, 5), 10.0)
    commands, notes = plan_leader(snap(QUARANTINED, 5), clock, 10.5, WALL, VERDICTS, LEASES)
    assert [c.id for c in commands] == ["verdict:a3:1", "assign:s1:3:p1"]
    assert not any("quarantined" in n for n in notes)


@pytest.mark.parametrize("mode", ["normal", "cascade", "recovering"])
def test_plan_leader_adds_the_returns_after_everything_else(mode: Mode) -> None:
    state = dataclasses.replace(QUARANTINED, mode=mode, mode_since=WALL - 1.0)
    clock = LeaderClock()
    clock.observe(snap(state, 5), 10.0)
    commands, notes = plan_leader(
        snap(state, 5), clock, 10.5, WALL, VERDICTS, LEASES, returns=RETURNS
    )
    *_, returned, held = commands
    assert isinstance(returned, ReturnServer) and returned.id == "auto-return:q1:4"
    assert isinstance(held, RecordHeld) and held.id == "flap-quarantine:q2:2"
    assert notes[-2:] == [
        "q2 stays quarantined: 2 verdicts within 3600 s (flap quarantine)",
        "q3 quarantined: auto return after 120 s back",
    ]
