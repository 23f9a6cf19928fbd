"""The leader's verdicts: who may vote, how many must agree, and how long a suspicion must last."""

from __future__ import annotations

import math

import pytest

from consensus.commands import Command, DropSuspicion, MarkServerFailed
from consensus.state import ClusterState, ProbeReport, ServerRecord, ServerState, Suspicion
from healer.verdict import Tally, VerdictPolicy, plan_verdicts, tally

POLICY = VerdictPolicy(min_observers=2, suspicion_min_s=1.0, suspicion_max_s=4.0, expire_s=10.0)
WALL = 1_700_000_000.0
SINCE = 500.0  # the wall time the suspicion was opened
SEEN = 100.0  # when the leader first saw it, on its monotonic clock

# 3 of 4 eligible observers: expected 3, confirmations 2.
THREE_OF_FOUR_S = 4.0 - 3.0 * math.log(3) / math.log(4)  # 1.62 s


def cluster(
    names: str = "m1 m2 m3 m4 m5", down: dict[str, ServerState] | None = None
) -> tuple[ServerRecord, ...]:
    """Servers named in `names`, all up at incarnation 1 unless `down` says otherwise."""
    down = down or {}
    return tuple(
        ServerRecord(n, "active", f"rack-{i % 3}", state=down.get(n, "up"), incarnation=1)
        for i, n in enumerate(names.split())
    )


def suspect(
    target: str, unreachable: str = "", reachable: str = "", incarnation: int = 1
) -> Suspicion:
    """A suspicion of `target` with one report per observer named (space separated)."""
    reports = tuple(ProbeReport(o, False, SINCE) for o in unreachable.split()) + tuple(
        ProbeReport(o, True, SINCE + 0.5) for o in reachable.split()
    )
    return Suspicion(target, incarnation, SINCE, reports)


def state_of(servers: tuple[ServerRecord, ...], *suspicions: Suspicion) -> ClusterState:
    return ClusterState(cluster="moon", servers=servers, suspicions=suspicions)


# ---------------------------------------------------------------- tally


@pytest.mark.parametrize(
    ("servers", "suspicion", "min_observers", "expected"),
    [
        pytest.param(
            cluster(),
            suspect("m5", "m1 m2"),
            2,
            Tally(("m1", "m2", "m3", "m4"), ("m1", "m2"), (), 3),
            id="five-servers-eligible-4-required-3",
        ),
        pytest.param(
            cluster("m1 m2 m3"),
            suspect("m3", "m1", "m2"),
            2,
            Tally(("m1", "m2"), ("m1",), ("m2",), 2),
            id="three-servers-eligible-2-required-2",
        ),
        pytest.param(
            cluster("m1 m2 m3 m4 m5 m6 m7"),
            suspect("m7", "m1 m2 m3 m4"),
            2,
            Tally(("m1", "m2", "m3", "m4", "m5", "m6"), ("m1", "m2", "m3", "m4"), (), 4),
            id="seven-servers-eligible-6-required-4",
        ),
        pytest.param(
            cluster("m1 m2"),
            suspect("m2", "m1"),
            2,
            Tally(("m1",), ("m1",), (), 2),
            id="two-servers-min-observers-floor",
        ),
        pytest.param(
            cluster("m1 m2"),
            suspect("m2", "m1"),
            1,
            Tally(("m1",), ("m1",), (), 1),
            id="two-servers-min-observers-1",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1 m2 m3 m4"),
            5,
            Tally(("m1", "m2", "m3", "m4"), ("m1", "m2", "m3", "m4"), (), 5),
            id="min-observers-above-majority",
        ),
        pytest.param(
            cluster(down={"m1": "failed", "m2": "quarantined", "m3": "new"}),
            suspect("m5", "m1 m2 m3 m4"),
            2,
            Tally(("m4",), ("m4",), (), 2),
            id="observers-not-up-are-not-eligible",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1 ghost", "m2 phantom"),
            2,
            Tally(("m1", "m2", "m3", "m4"), ("m1",), ("m2",), 3),
            id="unknown-observers-do-not-count",
        ),
        pytest.param(
            cluster(down={"m5": "failed"}),
            suspect("m5", "m1"),
            2,
            Tally(("m1", "m2", "m3", "m4"), ("m1",), (), 3),
            id="target-never-eligible-even-if-not-up",
        ),
    ],
)
def test_tally(
    servers: tuple[ServerRecord, ...], suspicion: Suspicion, min_observers: int, expected: Tally
) -> None:
    policy = VerdictPolicy(min_observers=min_observers)
    assert tally(state_of(servers, suspicion), suspicion, policy) == expected


def test_only_confirm_probes_vote_unreachable() -> None:
    """Routine probes that failed once (what a lossy link produces every few periods) open a
    suspicion but do not agree on it; witnesses' confirm probes do."""
    servers = cluster("m1 m2 m3 m4 m5 m6 m7 m8 m9 m10")
    routine = {"kind": "periodic", "direct": "timeout"}
    confirm = {"kind": "confirm", "attempt": 3}
    reports = tuple(ProbeReport(o, False, SINCE, routine) for o in ("m1", "m2", "m3", "m4", "m5"))
    only_routine = Suspicion("m10", 1, SINCE, reports)
    votes = tally(state_of(servers, only_routine), only_routine, POLICY)
    assert votes.unreachable == () and not votes.agreed
    assert len(votes.eligible) == 7  # the witnesses; routine reporters do not widen the set

    chosen = votes.eligible
    confirmed = Suspicion(
        "m10", 1, SINCE, reports + tuple(ProbeReport(o, False, SINCE, confirm) for o in chosen)
    )
    votes = tally(state_of(servers, confirmed), confirmed, POLICY)
    assert votes.unreachable == chosen and votes.agreed


@pytest.mark.parametrize(
    ("votes", "agreed", "refuted"),
    [
        pytest.param(Tally(("a", "b", "c"), ("a", "b"), (), 2), True, False, id="agreed"),
        pytest.param(Tally(("a", "b", "c"), ("a",), ("b",), 2), False, False, id="undecided"),
        pytest.param(Tally(("a", "b", "c"), ("a",), ("b", "c"), 2), False, True, id="refuted"),
        pytest.param(Tally((), (), (), 2), False, False, id="nobody-eligible"),
    ],
)
def test_tally_outcome(votes: Tally, agreed: bool, refuted: bool) -> None:
    assert (votes.agreed, votes.refuted) == (agreed, refuted)


# ---------------------------------------------------------------- plan_verdicts


def failed(target: str = "m5") -> str:
    return f"failed {target}"


def dropped(reason: str, target: str = "m5") -> str:
    return f"drop {target}: {reason}"


def outline(commands: list[Command]) -> list[str]:
    """The commands as short sentences, so a table can state what it expects."""
    out = []
    for c in commands:
        if isinstance(c, MarkServerFailed):
            out.append(failed(c.server))
        elif isinstance(c, DropSuspicion):
            out.append(dropped(c.reason, c.target))
        else:  # pragma: no cover - plan_verdicts issues nothing else
            out.append(repr(c))
    return out


@pytest.mark.parametrize(
    ("servers", "suspicion", "elapsed_s", "commands", "notes"),
    [
        pytest.param(
            cluster(), suspect("m5", "m1 m2 m3 m4"), 1.0, [failed()], [], id="all-agree-at-min"
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1 m2 m3 m4"),
            0.9,
            [],
            ["m5 suspected by 4/3 for 0.9/1.0 s"],
            id="all-agree-too-young",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1 m2 m3"),
            1.5,
            [],
            ["m5 suspected by 3/3 for 1.5/1.6 s"],
            id="majority-agrees-too-young",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1 m2 m3"),
            THREE_OF_FOUR_S,
            [failed()],
            [],
            id="majority-agrees-old-enough",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1 m2", "m3"),
            9.9,
            [],
            ["m5 suspected by 2/3 for 9.9/2.5 s"],
            id="no-majority-waits-past-window",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1"),
            4.0,
            [],
            ["m5 suspected by 1/3 for 4.0/4.0 s"],
            id="lone-accuser-waits-max-then-needs-agreement",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1"),
            10.0,
            [dropped("no verdict in 10.0 s")],
            [],
            id="lone-accuser-expires",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1", "m2 m3 m4"),
            0.0,
            [dropped("reachable by a majority")],
            [],
            id="refuted-at-once",
        ),
        pytest.param(
            cluster(),
            suspect("m5", "m1 m2", "m3 m4"),
            5.0,
            [],
            ["m5 suspected by 2/3 for 5.0/2.5 s"],
            id="split-vote-waits",
        ),
        pytest.param(
            cluster("m1 m2 m3"),
            suspect("m3", "m1 m2"),
            1.0,
            [failed("m3")],
            [],
            id="three-servers-both-agree",
        ),
        pytest.param(
            cluster("m1 m2 m3"),
            suspect("m3", "m1"),
            9.0,
            [],
            ["m3 suspected by 1/2 for 9.0/4.0 s"],
            id="three-servers-one-is-not-enough",
        ),
        pytest.param(
            cluster("m1 m2 m3"),
            suspect("m3", "", "m1 m2"),
            0.0,
            [dropped("reachable by a majority", "m3")],
            [],
            id="three-servers-refuted",
        ),
        pytest.param(
            cluster(down={"m1": "failed", "m2": "failed"}),
            suspect("m5", "m1 m2 m3"),
            5.0,
            [],
            ["m5 suspected by 1/2 for 5.0/4.0 s"],
            id="observers-not-up-do-not-count",
        ),
        pytest.param(
            cluster(down={"m1": "failed", "m2": "failed"}),
            suspect("m5", "m1 m2 m3 m4"),
            1.0,
            [failed()],
            [],
            id="remaining-eligible-observers-agree",
        ),
    ],
)
def test_plan_verdicts(
    servers: tuple[ServerRecord, ...],
    suspicion: Suspicion,
    elapsed_s: float,
    commands: list[str],
    notes: list[str],
) -> None:
    got, waiting = plan_verdicts(
        state_of(servers, suspicion), {suspicion.target: SEEN}, SEEN + elapsed_s, WALL, POLICY
    )
    assert (outline(got), waiting) == (commands, notes)


@pytest.mark.parametrize(
    ("first_seen", "now", "notes"),
    [
        pytest.param({}, 50.0, ["m5 suspected by 4/3 for 0.0/1.0 s"], id="new-leader-counts-now"),
        pytest.param(
            {"m4": 0.0}, 50.0, ["m5 suspected by 4/3 for 0.0/1.0 s"], id="other-target-ignored"
        ),
        pytest.param({"m5": 49.5}, 50.0, ["m5 suspected by 4/3 for 0.5/1.0 s"], id="seen-before"),
    ],
)
def test_plan_verdicts_counts_from_first_seen(
    first_seen: dict[str, float], now: float, notes: list[str]
) -> None:
    state = state_of(cluster(), suspect("m5", "m1 m2 m3 m4"))
    assert plan_verdicts(state, first_seen, now, WALL, POLICY) == ([], notes)


@pytest.mark.parametrize(
    ("servers", "suspicion", "min_observers", "timeout_s"),
    [
        pytest.param(cluster(), suspect("m5", "m1 m2 m3 m4"), 2, 1.0, id="everyone-confirmed-min"),
        pytest.param(cluster(), suspect("m5", "m1"), 2, 4.0, id="lone-accuser-max"),
        pytest.param(
            cluster(), suspect("m5", "m1 m2 m3"), 2, THREE_OF_FOUR_S, id="some-confirmed-between"
        ),
        pytest.param(
            cluster("m1 m2 m3"), suspect("m3", "m1 m2"), 2, 1.0, id="three-servers-both-min"
        ),
        pytest.param(cluster("m1 m2 m3"), suspect("m3", "m1"), 2, 4.0, id="three-servers-one-max"),
        pytest.param(
            cluster("m1 m2"), suspect("m2", "m1"), 1, 4.0, id="two-servers-lone-observer-max"
        ),
    ],
)
def test_plan_verdicts_uses_lifeguard_window(
    servers: tuple[ServerRecord, ...], suspicion: Suspicion, min_observers: int, timeout_s: float
) -> None:
    """Just short of the window: waiting; at the window: a verdict (when agreed)."""
    policy = VerdictPolicy(min_observers, POLICY.suspicion_min_s, POLICY.suspicion_max_s, 10.0)
    state = state_of(servers, suspicion)
    seen = {suspicion.target: SEEN}
    before, notes = plan_verdicts(state, seen, SEEN + timeout_s - 0.01, WALL, policy)
    assert before == [] and notes[0].endswith(f"/{timeout_s:.1f} s")
    at, _ = plan_verdicts(state, seen, SEEN + timeout_s, WALL, policy)
    votes = tally(state, suspicion, policy)
    assert [type(c) for c in at] == ([MarkServerFailed] if votes.agreed else [])


def test_verdict_command_and_evidence() -> None:
    servers = cluster(down={"m4": "failed"})
    suspicion = Suspicion(
        "m5",
        7,
        SINCE,
        (
            ProbeReport("m1", False, 501.0, {"rtt_ms": 12, "observer": "liar", "at": 0.0}),
            ProbeReport("m2", False, 502.0, {"reachable": True, "via": "m3"}),
            ProbeReport("m3", True, 503.0),
            ProbeReport("m4", False, 504.0),
        ),
    )
    commands, notes = plan_verdicts(
        state_of(servers, suspicion), {"m5": SEEN}, SEEN + 3.14159, WALL, POLICY
    )
    assert notes == []
    assert commands == [
        MarkServerFailed(
            id="verdict:m5:7",
            at=WALL,
            server="m5",
            incarnation=7,
            evidence={
                "observers": ["m1", "m2"],
                "reachable_by": ["m3"],
                "eligible": ["m1", "m2", "m3"],
                "required": 2,
                "suspected_for_s": 3.142,
                "timeout_s": round(4.0 - 3.0 * math.log(2) / math.log(3), 3),
                "suspected_at": SINCE,
                "reports": [
                    {"rtt_ms": 12, "observer": "m1", "reachable": False, "at": 501.0},
                    {"via": "m3", "observer": "m2", "reachable": False, "at": 502.0},
                    {"observer": "m3", "reachable": True, "at": 503.0},
                    {"observer": "m4", "reachable": False, "at": 504.0},
                ],
            },
        )
    ]


@pytest.mark.parametrize(
    ("suspicion", "elapsed_s", "reason"),
    [
        pytest.param(suspect("m5", "m1", "m2 m3 m4", 4), 0.0, "reachable by a majority", id="ref"),
        pytest.param(suspect("m5", "m1", "", 4), 12.34, "no verdict in 12.3 s", id="expired"),
    ],
)
def test_drop_command(suspicion: Suspicion, elapsed_s: float, reason: str) -> None:
    commands, _ = plan_verdicts(
        state_of(cluster(), suspicion), {"m5": SEEN}, SEEN + elapsed_s, WALL, POLICY
    )
    assert commands == [
        DropSuspicion(id=f"drop:m5:4:{SINCE}", at=WALL, target="m5", incarnation=4, reason=reason)
    ]


def test_plan_verdicts_judges_every_suspicion_in_state_order() -> None:
    state = state_of(
        cluster("m1 m2 m3 m4 m5 m6 m7"),
        suspect("m7", "m1 m2 m3 m4 m5"),
        suspect("m6", "m1"),
        suspect("m5", "m1", "m2 m3 m4 m6"),
    )
    seen = {"m7": SEEN - 3.0, "m6": SEEN, "m5": SEEN}
    commands, notes = plan_verdicts(state, seen, SEEN, WALL, VerdictPolicy(suspicion_min_s=0.0))
    assert outline(commands) == [failed("m7"), dropped("reachable by a majority", "m5")]
    assert notes == ["m6 suspected by 1/4 for 0.0/2.4 s"]


def test_no_suspicions_no_work() -> None:
    assert plan_verdicts(state_of(cluster()), {}, SEEN, WALL, POLICY) == ([], [])
