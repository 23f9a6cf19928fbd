"""The pure throttle rule: limits, backoff, confirmation of floods, stops and their lifting."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pytest

from agent.leadership import LeaderClock, plan_leader
from consensus.commands import Command, LiftStop, StopTenant
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState, Offence, ServerRecord, SlotRecord, Stop
from healer.replace import LeasePolicy
from healer.throttle import (
    FloodWatch,
    Limits,
    TenantRate,
    ThrottlePolicy,
    over_limit,
    plan_stops,
)
from healer.verdict import VerdictPolicy

WALL = 1_700_000_000.0
BASE_LIMITS = Limits(rps=20.0, share=0.5, concurrent=10)
POLICY = ThrottlePolicy(
    limits=BASE_LIMITS,
    share_min_rps=50.0,
    confirm_s=1.0,
    stop_s=30.0,
    max_stop_s=240.0,
    repeat_window_s=3600.0,
)
# No requests-per-second limit, so that the share rule is the one that trips.
SHARE_POLICY = dataclasses.replace(POLICY, limits=Limits(rps=None, share=0.5, concurrent=10))

SERVERS = (
    ServerRecord("a1", "active", "rack-a", "up", 1),
    ServerRecord("a2", "active", "rack-b", "up", 1),
)
SLOTS = (
    SlotRecord("s1", ("acme", "globex"), "a1", 1, "serving", "10.0.0.1:8001", 2.0, 1),
    SlotRecord("s2", ("initech",), "a2", 1, "serving", "10.0.0.2:8002", 2.0, 1),
)
STATE = ClusterState(cluster="moon", servers=SERVERS, slots=SLOTS)

FLOOD = TenantRate(rps=30.0, errors_ps=1.25, bytes_ps=1000.0, concurrent=3, edges=2)
CALM = TenantRate(rps=5.0, concurrent=1, edges=2)


def with_stops(*stops: Stop, offences: Sequence[Offence] = ()) -> ClusterState:
    return dataclasses.replace(STATE, stops=stops, offences=tuple(offences))


def stop_cmd(
    *,
    since: float,
    wall: float,
    offence: int = 1,
    stop_s: float = 30.0,
    rate: TenantRate = FLOOD,
) -> StopTenant:
    """The StopTenant the rule is expected to emit for acme flooding at FLOOD's rps."""
    over = wall - since
    return StopTenant(
        id=f"stop:acme:{offence}:{since}",
        at=wall,
        subdomain="acme",
        until=wall + stop_s,
        reason=f"over its rps limit for {over:.1f} s",
        offence=offence,
        evidence={
            "rule": "rps",
            "rps": round(rate.rps, 1),
            "limit": 20.0,
            "over_for_s": round(over, 3),
            "errors_ps": round(rate.errors_ps, 1),
            "edges": rate.edges,
            "stop_s": stop_s,
        },
    )


Tick = tuple[float, Mapping[str, TenantRate]]


def ticks(
    steps: Sequence[Tick],
    state: ClusterState = STATE,
    policy: ThrottlePolicy = POLICY,
    watch: FloodWatch | None = None,
) -> tuple[list[Command], list[str], FloodWatch]:
    """Run plan_stops once per (wall, rates) step with one FloodWatch; the last tick's plan."""
    watch = watch if watch is not None else FloodWatch()
    commands: list[Command] = []
    notes: list[str] = []
    for wall, rates in steps:
        commands, notes = plan_stops(state, rates, watch, wall, policy)
    return commands, notes, watch


# ---------------------------------------------------------------- limits_for and stop_for


@pytest.mark.parametrize(
    ("overrides", "tenant", "want"),
    [
        pytest.param({}, "acme", BASE_LIMITS, id="no-override-is-the-base"),
        pytest.param(
            {"acme": Limits(rps=100.0, share=0.9, concurrent=50)},
            "acme",
            Limits(rps=100.0, share=0.9, concurrent=50),
            id="full-override",
        ),
        pytest.param(
            {"acme": Limits(rps=100.0)},
            "acme",
            Limits(rps=100.0, share=0.5, concurrent=10),
            id="rps-only-keeps-share-and-concurrent",
        ),
        pytest.param(
            {"acme": Limits(share=0.8)},
            "acme",
            Limits(rps=20.0, share=0.8, concurrent=10),
            id="share-only",
        ),
        pytest.param(
            {"acme": Limits(concurrent=2)},
            "acme",
            Limits(rps=20.0, share=0.5, concurrent=2),
            id="concurrent-only",
        ),
        pytest.param({"acme": Limits()}, "acme", BASE_LIMITS, id="empty-override-is-the-base"),
        pytest.param(
            {"acme": Limits(rps=100.0)}, "globex", BASE_LIMITS, id="other-tenants-unaffected"
        ),
    ],
)
def test_limits_for_falls_back_per_key(
    overrides: dict[str, Limits], tenant: str, want: Limits
) -> None:
    policy = dataclasses.replace(POLICY, overrides=overrides)
    assert policy.limits_for(tenant) == want


@pytest.mark.parametrize(
    ("offence", "seconds"),
    [
        pytest.param(1, 30.0, id="first"),
        pytest.param(2, 60.0, id="second-doubles"),
        pytest.param(3, 120.0, id="third-doubles-again"),
        pytest.param(4, 240.0, id="reaches-the-cap"),
        pytest.param(5, 240.0, id="capped"),
        pytest.param(40, 240.0, id="far-past-the-cap"),
        pytest.param(0, 30.0, id="zero-counts-as-first"),
    ],
)
def test_stop_for_doubles_up_to_the_cap(offence: int, seconds: float) -> None:
    assert POLICY.stop_for(offence) == seconds


def test_stop_for_stays_capped_for_any_offence() -> None:
    assert POLICY.stop_for(1025) == POLICY.max_stop_s


# ---------------------------------------------------------------- over_limit


@pytest.mark.parametrize(
    ("policy", "rate", "total", "want"),
    [
        pytest.param(POLICY, CALM, 5.0, None, id="under-every-limit"),
        pytest.param(POLICY, TenantRate(rps=20.0), 20.0, None, id="rps-at-the-limit-is-not-over"),
        pytest.param(
            POLICY,
            TenantRate(rps=20.5),
            20.5,
            ("rps", {"rps": 20.5, "limit": 20.0}),
            id="rps-over",
        ),
        pytest.param(
            POLICY,
            TenantRate(rps=20.04),
            20.04,
            ("rps", {"rps": 20.0, "limit": 20.0}),
            id="rps-figure-rounded-to-a-tenth",
        ),
        pytest.param(
            POLICY, TenantRate(concurrent=10), 0.0, None, id="concurrent-at-the-limit-is-not-over"
        ),
        pytest.param(
            POLICY,
            TenantRate(concurrent=11),
            0.0,
            ("concurrent", {"concurrent": 11, "limit": 10}),
            id="concurrent-over",
        ),
        pytest.param(
            POLICY,
            TenantRate(rps=25.0, concurrent=11),
            25.0,
            ("rps", {"rps": 25.0, "limit": 20.0}),
            id="rps-checked-before-concurrent",
        ),
        pytest.param(
            SHARE_POLICY,
            TenantRate(rps=40.0),
            60.0,
            ("share", {"share": 0.667, "limit": 0.5, "total_rps": 60.0}),
            id="share-over",
        ),
        pytest.param(
            SHARE_POLICY, TenantRate(rps=30.0), 60.0, None, id="share-at-the-limit-is-not-over"
        ),
        pytest.param(
            SHARE_POLICY,
            TenantRate(rps=40.0),
            49.9,
            None,
            id="share-ignored-below-share-min-rps",
        ),
        pytest.param(
            SHARE_POLICY,
            TenantRate(rps=30.0),
            50.0,
            ("share", {"share": 0.6, "limit": 0.5, "total_rps": 50.0}),
            id="share-counts-from-share-min-rps",
        ),
        pytest.param(
            POLICY,
            TenantRate(rps=15.0),
            25.0,
            None,
            id="share-ignored-on-a-quiet-cluster-even-at-60pct",
        ),
        pytest.param(
            SHARE_POLICY,
            TenantRate(rps=40.0, concurrent=11),
            60.0,
            ("concurrent", {"concurrent": 11, "limit": 10}),
            id="concurrent-checked-before-share",
        ),
    ],
)
def test_over_limit(
    policy: ThrottlePolicy,
    rate: TenantRate,
    total: float,
    want: tuple[str, dict[str, float]] | None,
) -> None:
    assert over_limit("acme", rate, total, policy) == want


def test_over_limit_uses_the_tenant_override() -> None:
    policy = dataclasses.replace(POLICY, overrides={"acme": Limits(rps=100.0)})
    assert over_limit("acme", FLOOD, FLOOD.rps, policy) is None
    assert over_limit("globex", FLOOD, FLOOD.rps, policy) == ("rps", {"rps": 30.0, "limit": 20.0})


def test_a_tenant_without_limits_is_never_over() -> None:
    policy = dataclasses.replace(POLICY, limits=Limits())
    assert over_limit("acme", TenantRate(rps=1e6, concurrent=10**6), 1e6, policy) is None


# ---------------------------------------------------------------- plan_stops: confirmation


@pytest.mark.parametrize(
    ("steps", "commands", "notes"),
    [
        pytest.param(
            [(WALL, {"acme": FLOOD})],
            [],
            ["acme over its rps limit for 0.0 s"],
            id="first-sight-is-a-note",
        ),
        pytest.param(
            [(WALL, {"acme": FLOOD}), (WALL + 0.5, {"acme": FLOOD})],
            [],
            ["acme over its rps limit for 0.5 s"],
            id="before-confirm-is-a-note",
        ),
        pytest.param(
            [(WALL, {"acme": FLOOD}), (WALL + 1.0, {"acme": FLOOD})],
            [stop_cmd(since=WALL, wall=WALL + 1.0)],
            [],
            id="at-confirm-stops",
        ),
        pytest.param(
            [(WALL, {"acme": FLOOD}), (WALL + 2.5, {"acme": FLOOD})],
            [stop_cmd(since=WALL, wall=WALL + 2.5)],
            [],
            id="after-confirm-stops",
        ),
        pytest.param(
            [(WALL, {"acme": FLOOD}), (WALL + 0.5, {"acme": CALM}), (WALL + 1.0, {"acme": FLOOD})],
            [],
            ["acme over its rps limit for 0.0 s"],
            id="dip-under-restarts-the-window",
        ),
        pytest.param(
            [
                (WALL, {"acme": FLOOD}),
                (WALL + 0.5, {"acme": CALM}),
                (WALL + 1.0, {"acme": FLOOD}),
                (WALL + 2.0, {"acme": FLOOD}),
            ],
            [stop_cmd(since=WALL + 1.0, wall=WALL + 2.0)],
            [],
            id="stop-counts-from-the-restart",
        ),
        pytest.param(
            [
                (WALL, {"acme": TenantRate(rps=20.1)}),
                (WALL + 0.5, {"acme": TenantRate(rps=20.0)}),
                (WALL + 1.0, {"acme": TenantRate(rps=20.1)}),
            ],
            [],
            ["acme over its rps limit for 0.0 s"],
            id="flapping-at-the-threshold-restarts",
        ),
        pytest.param(
            [(WALL, {"acme": FLOOD}), (WALL + 0.5, {}), (WALL + 1.0, {"acme": FLOOD})],
            [],
            ["acme over its rps limit for 0.0 s"],
            id="missing-report-restarts",
        ),
        pytest.param(
            [
                (WALL, {"mallory": TenantRate(rps=1e4)}),
                (WALL + 5.0, {"mallory": TenantRate(rps=1e4)}),
            ],
            [],
            [],
            id="unknown-subdomain-never-stopped",
        ),
    ],
)
def test_plan_stops_confirms_a_flood(
    steps: list[Tick], commands: list[Command], notes: list[str]
) -> None:
    got, got_notes, _ = ticks(steps)
    assert got == commands
    assert got_notes == notes


def test_stop_evidence_carries_rule_figures_and_duration() -> None:
    share = TenantRate(rps=40.0, errors_ps=0.04, concurrent=1, edges=3)
    rates = {"acme": share, "globex": TenantRate(rps=20.0)}
    (command,), _, _ = ticks([(WALL, rates), (WALL + 1.25, rates)], policy=SHARE_POLICY)
    assert isinstance(command, StopTenant)
    assert command.until == WALL + 1.25 + 30.0
    assert command.reason == "over its share limit for 1.2 s"
    assert command.evidence == {
        "rule": "share",
        "share": 0.667,
        "limit": 0.5,
        "total_rps": 60.0,
        "over_for_s": 1.25,
        "errors_ps": 0.0,
        "edges": 3,
        "stop_s": 30.0,
    }


def test_unknown_subdomains_count_towards_the_total() -> None:
    """Traffic of subdomains the cluster does not serve still makes the cluster busy."""
    rates = {"acme": TenantRate(rps=18.0), "mallory": TenantRate(rps=32.0)}
    _, notes, watch = ticks([(WALL, rates)], policy=SHARE_POLICY)
    assert notes == []  # 18 of 50 is 36 %
    rates = {"acme": TenantRate(rps=30.0), "mallory": TenantRate(rps=20.0)}
    _, notes, watch = ticks([(WALL, rates)], policy=SHARE_POLICY)
    assert notes == ["acme over its share limit for 0.0 s"]
    assert watch.over_since == {"acme": WALL}


# ---------------------------------------------------------------- plan_stops: stops in state

ACTIVE = Stop("acme", WALL - 10.0, WALL + 20.0, "flood", offence=1)
PINNED = Stop("acme", WALL - 10.0, WALL + 20.0, "operator pin", pinned=True)
EXPIRED = Stop("acme", WALL - 40.0, WALL - 10.0, "flood")
ENDS_NOW = Stop("acme", WALL - 30.0, WALL, "flood")


@pytest.mark.parametrize(
    ("state", "rates", "commands", "notes"),
    [
        pytest.param(with_stops(ACTIVE), {"acme": FLOOD}, [], [], id="active-stop-nothing-new"),
        pytest.param(with_stops(PINNED), {"acme": FLOOD}, [], [], id="pinned-stop-nothing-new"),
        pytest.param(
            with_stops(EXPIRED),
            {},
            [LiftStop(id=f"lift:acme:{WALL - 40.0}", at=WALL, subdomain="acme", reason="expired")],
            [],
            id="expired-stop-lifted",
        ),
        pytest.param(
            with_stops(ENDS_NOW),
            {},
            [LiftStop(id=f"lift:acme:{WALL - 30.0}", at=WALL, subdomain="acme", reason="expired")],
            [],
            id="stop-ending-now-lifted",
        ),
        pytest.param(
            with_stops(EXPIRED),
            {"acme": FLOOD},
            [LiftStop(id=f"lift:acme:{WALL - 40.0}", at=WALL, subdomain="acme", reason="expired")],
            ["acme over its rps limit for 0.0 s"],
            id="expired-and-still-flooding-confirms-afresh",
        ),
        pytest.param(
            with_stops(dataclasses.replace(EXPIRED, pinned=True)),
            {},
            [LiftStop(id=f"lift:acme:{WALL - 40.0}", at=WALL, subdomain="acme", reason="expired")],
            [],
            id="expired-pin-lifted",
        ),
    ],
)
def test_plan_stops_with_stops_in_force(
    state: ClusterState,
    rates: Mapping[str, TenantRate],
    commands: list[Command],
    notes: list[str],
) -> None:
    got, got_notes, watch = ticks([(WALL, rates)], state=state)
    assert got == commands
    assert got_notes == notes
    if not notes:
        assert watch.over_since == {}


# ---------------------------------------------------------------- plan_stops: repeat offences


@pytest.mark.parametrize(
    ("offences", "offence", "stop_s"),
    [
        pytest.param((), 1, 30.0, id="first-offence"),
        pytest.param((Offence("acme", 1, WALL - 100.0),), 2, 60.0, id="repeat-doubles"),
        pytest.param((Offence("acme", 2, WALL - 100.0),), 3, 120.0, id="third-doubles-again"),
        pytest.param((Offence("acme", 6, WALL - 100.0),), 7, 240.0, id="repeat-capped"),
        pytest.param(
            (Offence("acme", 3, WALL + 1.0 - 3600.0 - 1e-3),), 1, 30.0, id="outside-the-window"
        ),
        pytest.param(
            (Offence("acme", 3, WALL + 1.0 - 3600.0),), 1, 30.0, id="window-end-is-outside"
        ),
        pytest.param(
            (Offence("acme", 3, WALL + 1.0 - 3599.0),), 4, 240.0, id="just-inside-the-window"
        ),
        pytest.param((Offence("globex", 5, WALL - 100.0),), 1, 30.0, id="others-do-not-count"),
    ],
)
def test_repeat_offences_back_off(
    offences: tuple[Offence, ...], offence: int, stop_s: float
) -> None:
    state = with_stops(offences=offences)
    flood = [(WALL, {"acme": FLOOD}), (WALL + 1.0, {"acme": FLOOD})]
    commands, _, _ = ticks(flood, state=state)
    assert commands == [stop_cmd(since=WALL, wall=WALL + 1.0, offence=offence, stop_s=stop_s)]


def test_a_long_flooding_tenant_keeps_getting_capped_stops() -> None:
    state = with_stops(offences=(Offence("acme", 1024, WALL - 300.0),))
    flood = [(WALL, {"acme": FLOOD}), (WALL + 1.0, {"acme": FLOOD})]
    commands, _, _ = ticks(flood, state=state)
    assert commands == [stop_cmd(since=WALL, wall=WALL + 1.0, offence=1025, stop_s=240.0)]


# ---------------------------------------------------------------- plan_stops: ids and memory


def test_command_ids_are_deterministic() -> None:
    flood = [
        (WALL, {"acme": FLOOD, "globex": FLOOD}),
        (WALL + 1.0, {"acme": FLOOD, "globex": FLOOD}),
    ]
    state = with_stops(EXPIRED, offences=(Offence("acme", 1, WALL - 50.0),))
    first, _, _ = ticks(flood, state=state)
    again, _, _ = ticks(flood, state=state)
    assert first == again
    assert [c.id for c in first] == [
        f"lift:acme:{WALL - 40.0}",
        f"stop:acme:2:{WALL}",
        f"stop:globex:1:{WALL}",
    ]


def test_a_stop_planned_again_before_it_commits_keeps_its_id() -> None:
    watch = FloodWatch()
    once, _, _ = ticks([(WALL, {"acme": FLOOD}), (WALL + 1.0, {"acme": FLOOD})], watch=watch)
    twice, _, _ = ticks([(WALL + 1.5, {"acme": FLOOD})], watch=watch)
    assert [c.id for c in once] == [c.id for c in twice] == [f"stop:acme:1:{WALL}"]


@pytest.mark.parametrize(
    ("state", "rates", "remembered"),
    [
        pytest.param(
            STATE, {"acme": FLOOD, "globex": FLOOD}, {"acme", "globex"}, id="both-still-over"
        ),
        pytest.param(STATE, {"acme": FLOOD, "globex": CALM}, {"acme"}, id="one-calmed"),
        pytest.param(STATE, {"acme": FLOOD}, {"acme"}, id="one-unreported"),
        pytest.param(STATE, {}, set(), id="none-reported"),
        pytest.param(
            with_stops(dataclasses.replace(ACTIVE, subdomain="globex")),
            {"acme": FLOOD, "globex": FLOOD},
            {"acme"},
            id="stopped-tenant-forgotten",
        ),
    ],
)
def test_flood_watch_forgets_tenants_no_longer_over(
    state: ClusterState, rates: Mapping[str, TenantRate], remembered: set[str]
) -> None:
    watch = FloodWatch()
    ticks([(WALL - 0.5, {"acme": FLOOD, "globex": FLOOD})], watch=watch)
    ticks([(WALL, rates)], state=state, watch=watch)
    assert watch.over_since == {t: WALL - 0.5 for t in remembered}


# ---------------------------------------------------------------- plan_leader

VERDICTS = VerdictPolicy(min_observers=2, suspicion_min_s=0.5, suspicion_max_s=2.0, expire_s=10.0)
LEASES = LeasePolicy(lease_s=2.0, drift=0.0, margin_s=0.5)


def leader_snap(state: ClusterState, term: int | None) -> Snapshot:
    """`term` None: this node is a follower."""
    raft = RaftStatus(
        "a1",
        voter=True,
        leader="a1" if term is not None else "a2",
        term=term if term is not None else 9,
        is_leader=term is not None,
    )
    return Snapshot(state, raft)


def lead(
    clock: LeaderClock,
    state: ClusterState,
    term: int | None,
    wall: float,
    *,
    throttle: ThrottlePolicy | None = POLICY,
    rates: Mapping[str, TenantRate] | None = None,
) -> tuple[list[Command], list[str]]:
    """One leader tick: observe, then plan (monotonic time stays put, leases stay fresh)."""
    snapshot = leader_snap(state, term)
    clock.observe(snapshot, 10.0)
    return plan_leader(
        snapshot, clock, 10.0, wall, VERDICTS, LEASES, throttle=throttle, rates=rates
    )


def test_leader_with_throttle_and_rates_stops_a_confirmed_flood() -> None:
    clock = LeaderClock()
    commands, notes = lead(clock, STATE, 5, WALL, rates={"acme": FLOOD})
    assert commands == [] and notes == ["acme over its rps limit for 0.0 s"]
    commands, notes = lead(clock, STATE, 5, WALL + 1.0, rates={"acme": FLOOD})
    assert commands == [stop_cmd(since=WALL, wall=WALL + 1.0)] and notes == []


def test_leader_without_throttle_stops_nobody_but_lifts_expired_stops() -> None:
    clock = LeaderClock()
    state = with_stops(dataclasses.replace(EXPIRED, subdomain="initech"))
    for wall in (WALL, WALL + 5.0):
        commands, notes = lead(clock, state, 5, wall, throttle=None, rates={"acme": FLOOD})
        assert commands == [
            LiftStop(
                id=f"lift:initech:{WALL - 40.0}", at=wall, subdomain="initech", reason="expired"
            )
        ]
        assert notes == []
    assert clock.floods.over_since == {}


def test_leader_with_throttle_but_no_rates_only_lifts() -> None:
    clock = LeaderClock()
    state = with_stops(EXPIRED)
    commands, notes = lead(clock, state, 5, WALL, rates=None)
    assert [c.id for c in commands] == [f"lift:acme:{WALL - 40.0}"] and notes == []


def test_a_follower_plans_no_stops_or_lifts() -> None:
    clock = LeaderClock()
    state = with_stops(dataclasses.replace(EXPIRED, subdomain="initech"))
    for wall in (WALL, WALL + 5.0):
        assert lead(clock, state, None, wall, rates={"acme": FLOOD}) == ([], [])
    assert clock.floods.over_since == {}


@pytest.mark.parametrize(
    ("second_term", "commands", "notes"),
    [
        pytest.param(5, [stop_cmd(since=WALL, wall=WALL + 1.0)], [], id="same-term-confirms"),
        pytest.param(6, [], ["acme over its rps limit for 0.0 s"], id="new-term-starts-afresh"),
    ],
)
def test_a_new_term_resets_the_floods(
    second_term: int, commands: list[Command], notes: list[str]
) -> None:
    clock = LeaderClock()
    lead(clock, STATE, 5, WALL, rates={"acme": FLOOD})
    assert lead(clock, STATE, second_term, WALL + 1.0, rates={"acme": FLOOD}) == (commands, notes)
