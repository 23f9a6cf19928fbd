"""The leader's replacements: when a slot needs a new owner, when it may have one, and which."""

from __future__ import annotations

import pytest

from consensus.commands import AssignSlot
from consensus.state import (
    ClusterState,
    Role,
    ServerRecord,
    ServerState,
    SlotRecord,
    SlotState,
    Suspicion,
)
from healer.replace import (
    NO_SPARE,
    LeasePolicy,
    pick_spare,
    plan_replacements,
    plan_replacements_within,
)

POLICY = LeasePolicy(lease_s=2.0, drift=0.0, margin_s=0.5)  # wait_s = 2.5
WALL = 1_700_000_000.0
NOW = 100.0


def srv(name: str, domain: str, role: Role = "active", state: ServerState = "up") -> ServerRecord:
    return ServerRecord(name, role, domain, state=state, incarnation=1)


def slot(
    name: str = "s1",
    owner: str | None = "a1",
    state: SlotState = "serving",
    epoch: int = 4,
) -> SlotRecord:
    return SlotRecord(name, (f"{name}-t1",), owner=owner, epoch=epoch, state=state, lease_s=2.0)


def cluster(
    *slots: SlotRecord, a1: ServerState = "up", spares: tuple[ServerRecord, ...] | None = None
) -> ClusterState:
    """a1 (rack-a) and a2 (rack-b) are actives; p1 (rack-b) is the one ready spare by default."""
    spares = (srv("p1", "rack-b", "spare"),) if spares is None else spares
    servers = (srv("a1", "rack-a", state=a1), srv("a2", "rack-b"), *spares)
    return ClusterState(cluster="moon", servers=servers, slots=slots)


# ---------------------------------------------------------------- lease policy


@pytest.mark.parametrize(
    ("policy", "wait_s"),
    [
        pytest.param(LeasePolicy(), 2.0 * 1.01 / 0.99 + 0.25, id="defaults"),
        pytest.param(LeasePolicy(10.0, 0.0, 0.0), 10.0, id="perfect-clocks-no-margin"),
        pytest.param(LeasePolicy(2.0, 0.0, 0.5), 2.5, id="margin-only"),
        pytest.param(LeasePolicy(1.0, 0.1, 0.5), 1.0 * 1.1 / 0.9 + 0.5, id="large-drift"),
        pytest.param(LeasePolicy(3.0, 0.01, 0.0), 3.0 * 1.01 / 0.99, id="drift-only"),
    ],
)
def test_wait_s(policy: LeasePolicy, wait_s: float) -> None:
    assert policy.wait_s == pytest.approx(wait_s)
    assert policy.wait_s >= policy.lease_s + policy.margin_s


# ---------------------------------------------------------------- plan_replacements


@pytest.mark.parametrize(
    ("state", "silent_s", "owner", "text"),
    [
        pytest.param(
            cluster(slot(state="lost"), a1="failed"),
            2.5,
            "p1",
            "owner a1 failed",
            id="lost-lease-over",
        ),
        pytest.param(
            cluster(slot(state="lost"), a1="failed"),
            1.0,
            None,
            "s1: owner a1 failed; lease ends in 1.5 s",
            id="lost-lease-running",
        ),
        pytest.param(
            cluster(slot(state="lost"), a1="failed"),
            None,
            None,
            "s1: owner a1 failed; lease ends in 2.5 s",
            id="lost-new-leader-waits-full-lease",
        ),
        pytest.param(
            cluster(slot(state="released")),
            0.0,
            "p1",
            "released by a1",
            id="released-immediate",
        ),
        pytest.param(
            cluster(slot(state="released")),
            None,
            "p1",
            "released by a1",
            id="released-immediate-new-leader",
        ),
        pytest.param(
            cluster(slot(owner=None, state="unassigned", epoch=0)),
            None,
            "p1",
            "no owner",
            id="unassigned-immediate",
        ),
        pytest.param(
            cluster(slot(state="assigned"), a1="new"),
            30.5,
            "p1",
            "owner a1 is new",
            id="owner-never-joined-grace-over",
        ),
        pytest.param(
            cluster(slot(state="assigned"), a1="new"),
            2.5,
            None,
            "s1: owner a1 is new; lease ends in 27.5 s",
            id="owner-not-joined-yet-within-the-join-grace",
        ),
        pytest.param(
            cluster(slot(), a1="quarantined"),
            3.0,
            "p1",
            "owner a1 is quarantined",
            id="owner-quarantined",
        ),
        pytest.param(
            cluster(slot(owner="ghost")),
            3.0,
            "p1",
            "owner ghost is unknown",
            id="owner-unknown",
        ),
        pytest.param(
            cluster(slot()),
            2.5,
            "p1",
            "a1 stopped renewing its lease",
            id="lease-silent-at-wait",
        ),
        pytest.param(cluster(slot()), 2.49, None, None, id="lease-silent-just-under-wait"),
        pytest.param(cluster(slot()), 0.0, None, None, id="healthy-serving"),
        pytest.param(cluster(slot(state="assigned")), 1.0, None, None, id="healthy-assigned"),
        pytest.param(
            cluster(slot(state="released"), spares=()),
            0.0,
            None,
            "s1: released by a1; no spare is ready",
            id="no-spare-at-all",
        ),
        pytest.param(
            cluster(slot(state="lost"), a1="failed", spares=(srv("p1", "rack-b", "spare", "new"),)),
            3.0,
            None,
            "s1: owner a1 failed; no spare is ready",
            id="spare-not-up",
        ),
        pytest.param(
            cluster(slot(state="lost"), slot("s9", "p1", "serving"), a1="failed"),
            3.0,
            None,
            "s1: owner a1 failed; no spare is ready",
            id="spare-serves-a-slot",
        ),
        pytest.param(
            cluster(slot(state="lost"), slot("s9", "p1", "lost"), a1="failed"),
            3.0,
            "p1",
            "owner a1 failed",
            id="spare-whose-own-slot-is-lost-is-free",
        ),
    ],
)
def test_plan_replacements(
    state: ClusterState, silent_s: float | None, owner: str | None, text: str | None
) -> None:
    """`owner` is who gets s1 (with `text` as the reason); otherwise `text` is the note."""
    seen = {} if silent_s is None else {"s1": NOW - silent_s}
    commands, notes = plan_replacements(state, seen, NOW, WALL, POLICY)
    assigned = [(c.slot, c.owner, c.reason) for c in commands if isinstance(c, AssignSlot)]
    assert len(assigned) == len(commands)
    assert [a for a in assigned if a[0] == "s1"] == ([("s1", owner, text)] if owner else [])
    assert [n for n in notes if n.startswith("s1:")] == ([] if owner or not text else [text])


@pytest.mark.parametrize(
    ("state", "silent_s", "lease", "epoch", "evidence"),
    [
        pytest.param(
            cluster(slot(state="lost"), a1="failed"),
            3.0,
            POLICY,
            5,
            {
                "previous_state": "lost",
                "lease_silent_s": 3.0,
                "lease_wait_s": 2.5,
                "spare_domain": "rack-b",
            },
            id="lost",
        ),
        pytest.param(
            cluster(slot(owner=None, state="unassigned", epoch=0)),
            None,
            LeasePolicy(),
            1,
            {
                "previous_state": "unassigned",
                "lease_silent_s": 0.0,
                "lease_wait_s": 2.29,
                "spare_domain": "rack-b",
            },
            id="unassigned-default-policy-rounded",
        ),
        pytest.param(
            cluster(slot()),
            2.71828,
            POLICY,
            5,
            {
                "previous_state": "serving",
                "lease_silent_s": 2.718,
                "lease_wait_s": 2.5,
                "spare_domain": "rack-b",
            },
            id="silent-lease-rounded",
        ),
    ],
)
def test_assign_command(
    state: ClusterState,
    silent_s: float | None,
    lease: LeasePolicy,
    epoch: int,
    evidence: dict[str, object],
) -> None:
    seen = {} if silent_s is None else {"s1": NOW - silent_s}
    commands, notes = plan_replacements(state, seen, NOW, WALL, lease)
    assert notes == []
    [command] = commands
    assert isinstance(command, AssignSlot)
    assert (command.id, command.at, command.slot, command.owner, command.epoch) == (
        f"assign:s1:{epoch}:p1",
        WALL,
        "s1",
        "p1",
        epoch,
    )
    assert command.evidence == evidence


@pytest.mark.parametrize(
    ("spares", "slots", "expected", "notes"),
    [
        pytest.param(
            (srv("p1", "rack-a", "spare"), srv("p2", "rack-b", "spare")),
            (slot("s1", state="lost"), slot("s2", "a2", state="lost")),
            [("s1", "p2"), ("s2", "p1")],
            [],
            id="two-lost-two-spares-each-other-domain",
        ),
        pytest.param(
            (srv("p1", "rack-c", "spare"), srv("p2", "rack-c", "spare")),
            (slot("s1", state="lost"), slot("s2", "a2", state="lost")),
            [("s1", "p1"), ("s2", "p2")],
            [],
            id="two-lost-two-spares-by-name",
        ),
        pytest.param(
            (srv("p1", "rack-b", "spare"),),
            (slot("s1", state="lost"), slot("s2", "a2", state="lost")),
            [("s1", "p1")],
            ["s2: owner a2 failed; no spare is ready"],
            id="two-lost-one-spare",
        ),
        pytest.param(
            (srv("p1", "rack-b", "spare"), srv("a3", "rack-c")),
            (slot("s1", "a3", state="serving"), slot("s2", "a2", state="lost")),
            [("s2", "p1")],
            [],
            id="one-lost-one-healthy",
        ),
        pytest.param(
            (srv("p1", "rack-b", "spare"), srv("p2", "rack-a", "spare")),
            (slot("s1", state="released"), slot("s2", "a2", state="lost")),
            [("s1", "p1"), ("s2", "p2")],
            [],
            id="released-and-lost",
        ),
    ],
)
def test_one_spare_per_slot_per_round(
    spares: tuple[ServerRecord, ...],
    slots: tuple[SlotRecord, ...],
    expected: list[tuple[str, str]],
    notes: list[str],
) -> None:
    """a1 and a2 have failed; the lease of every slot not serving is past its wait."""
    servers = (srv("a1", "rack-a", state="failed"), srv("a2", "rack-b", state="failed"), *spares)
    state = ClusterState(cluster="moon", servers=servers, slots=slots)
    seen = {s.name: NOW - (0.0 if s.state == "serving" else 3.0) for s in slots}
    commands, waiting = plan_replacements(state, seen, NOW, WALL, POLICY)
    assert [(c.slot, c.owner) for c in commands if isinstance(c, AssignSlot)] == expected
    assert waiting == notes


# ---------------------------------------------------------------- pick_spare


@pytest.mark.parametrize(
    ("servers", "previous", "taken", "expected"),
    [
        pytest.param(
            (srv("p1", "rack-a", "spare"), srv("p2", "rack-b", "spare")),
            "a1",
            set(),
            "p2",
            id="prefers-another-domain",
        ),
        pytest.param(
            (
                srv("p3", "rack-b", "spare"),
                srv("p1", "rack-a", "spare"),
                srv("p2", "rack-b", "spare"),
            ),
            "a1",
            set(),
            "p2",
            id="ties-by-name",
        ),
        pytest.param(
            (srv("p2", "rack-a", "spare"), srv("p1", "rack-a", "spare")),
            "a1",
            set(),
            "p1",
            id="same-domain-when-nothing-else",
        ),
        pytest.param(
            (srv("p2", "rack-a", "spare"), srv("p1", "rack-b", "spare")),
            None,
            set(),
            "p1",
            id="no-previous-owner-by-name",
        ),
        pytest.param(
            (srv("p2", "rack-a", "spare"), srv("p1", "rack-b", "spare")),
            "ghost",
            set(),
            "p1",
            id="unknown-previous-owner-by-name",
        ),
        pytest.param(
            (srv("p1", "rack-b", "spare"), srv("p2", "rack-b", "spare")),
            "a1",
            {"p1"},
            "p2",
            id="skips-taken",
        ),
        pytest.param(
            (srv("p1", "rack-b", "spare"), srv("p2", "rack-a", "spare")),
            "a1",
            {"p1"},
            "p2",
            id="taken-beats-domain",
        ),
        pytest.param(
            (srv("p1", "rack-b", "spare"),),
            "a1",
            {"p1"},
            None,
            id="only-spare-taken",
        ),
        pytest.param(
            (srv("p8", "rack-b", "spare"), srv("p2", "rack-a", "spare")),
            "a1",
            set(),
            "p8",
            id="a-returned-spare-whose-old-slot-is-lost-is-free",
        ),
        pytest.param(
            (srv("p9", "rack-b", "spare"), srv("p2", "rack-a", "spare")),
            "a1",
            set(),
            "p2",
            id="never-a-spare-that-serves-a-slot",
        ),
        pytest.param(
            (
                srv("p1", "rack-b", "spare", "failed"),
                srv("p2", "rack-b", "spare", "new"),
                srv("p3", "rack-b", "spare", "quarantined"),
            ),
            "a1",
            set(),
            None,
            id="spares-not-up",
        ),
        pytest.param(
            (srv("b1", "rack-b", "active"),), "a1", set(), None, id="idle-active-is-not-a-spare"
        ),
        pytest.param((), "a1", set(), None, id="no-servers"),
    ],
)
def test_pick_spare(
    servers: tuple[ServerRecord, ...], previous: str | None, taken: set[str], expected: str | None
) -> None:
    lost = slot(owner=previous, state="lost")
    # p8 still owns a lost slot (a failed server returned to the pool as a spare); p9 serves one.
    owned = slot("s8", owner="p8", state="lost")
    serving = slot("s9", owner="p9", state="serving")
    state = ClusterState(
        cluster="moon",
        servers=(srv("a1", "rack-a", state="failed"), *servers),
        slots=(lost, owned, serving),
    )
    picked = pick_spare(state, lost, set(taken))
    assert (picked.name if picked else None) == expected


# ---------------------------------------------------------------- spare reserve

P1, P2, P3 = (srv(f"p{i}", "rack-c", "spare") for i in (1, 2, 3))


@pytest.mark.parametrize(
    ("spares", "taken", "reserve", "expected"),
    [
        pytest.param((P1, P2), set(), 0, "p1", id="no-reserve"),
        pytest.param((P1, P2), set(), 1, "p1", id="one-of-two-kept-the-preferred-is-used"),
        pytest.param((P1,), set(), 1, None, id="the-only-spare-is-the-reserve"),
        pytest.param((P1, P2), set(), 2, None, id="reserve-equals-spares"),
        pytest.param((P1, P2), set(), 5, None, id="reserve-above-spares"),
        pytest.param((P1, P2, P3), {"p1"}, 1, "p2", id="taken-this-round-is-not-free"),
        pytest.param((P1, P2), {"p1"}, 1, None, id="taken-leaves-only-the-reserve"),
        pytest.param(
            (P1, srv("p2", "rack-c", "spare", "quarantined")),
            set(),
            1,
            None,
            id="a-quarantined-spare-is-no-reserve",
        ),
    ],
)
def test_pick_spare_leaves_the_reserve(
    spares: tuple[ServerRecord, ...], taken: set[str], reserve: int, expected: str | None
) -> None:
    lost = slot(state="lost")
    state = ClusterState(
        cluster="moon", servers=(srv("a1", "rack-a", state="failed"), *spares), slots=(lost,)
    )
    picked = pick_spare(state, lost, set(taken), reserve)
    assert (picked.name if picked else None) == expected


def two_lost(*spares: ServerRecord, a2: ServerState = "failed") -> ClusterState:
    """a1 and a2 (rack-a, rack-b) lost s1 and s2; their leases are past the wait."""
    s2_state: SlotState = "lost" if a2 == "failed" else "released"
    servers = (srv("a1", "rack-a", state="failed"), srv("a2", "rack-b", state=a2), *spares)
    return ClusterState(
        cluster="moon",
        servers=servers,
        slots=(slot("s1", state="lost"), slot("s2", "a2", state=s2_state)),
    )


SEEN = {"s1": NOW - 3.0, "s2": NOW - 3.0}
RESERVED = "spare reserve (1 kept)"


@pytest.mark.parametrize(
    ("state", "reserve", "assigned", "held", "notes"),
    [
        pytest.param(
            two_lost(P1, P2), 0, [("s1", "p1"), ("s2", "p2")], [], [], id="no-reserve-both"
        ),
        pytest.param(
            two_lost(P1, P2),
            1,
            [("s1", "p1")],
            [("s2", RESERVED)],
            [f"s2: owner a2 failed; held: {RESERVED}"],
            id="reserve-1-of-2",
        ),
        pytest.param(
            two_lost(P1),
            1,
            [],
            [("s1", RESERVED), ("s2", RESERVED)],
            [f"s1: owner a1 failed; held: {RESERVED}", f"s2: owner a2 failed; held: {RESERVED}"],
            id="the-single-spare-is-kept",
        ),
        pytest.param(
            two_lost(),
            1,
            [],
            [("s1", NO_SPARE), ("s2", NO_SPARE)],
            ["s1: owner a1 failed; no spare is ready", "s2: owner a2 failed; no spare is ready"],
            id="no-spare-at-all-is-not-the-reserve",
        ),
        pytest.param(
            two_lost(P1),
            0,
            [("s1", "p1")],
            [("s2", NO_SPARE)],
            ["s2: owner a2 failed; no spare is ready"],
            id="run-out-without-reserve",
        ),
        pytest.param(
            two_lost(P1, a2="draining"),
            1,
            [("s2", "p1")],
            [("s1", RESERVED)],
            [f"s1: owner a1 failed; held: {RESERVED}"],
            id="an-operator-drain-may-use-the-reserve",
        ),
        pytest.param(
            two_lost(P1, a2="up"),
            1,
            [],
            [("s1", RESERVED), ("s2", RESERVED)],
            [f"s1: owner a1 failed; held: {RESERVED}", f"s2: released by a2; held: {RESERVED}"],
            id="a-slot-given-up-by-its-owner-may-not",
        ),
    ],
)
def test_spare_reserve(
    state: ClusterState,
    reserve: int,
    assigned: list[tuple[str, str]],
    held: list[tuple[str, str]],
    notes: list[str],
) -> None:
    commands, noted, holds = plan_replacements_within(
        state, SEEN, NOW, WALL, POLICY, None, spare_reserve=reserve
    )
    assert [(c.slot, c.owner) for c in commands if isinstance(c, AssignSlot)] == assigned
    assert holds == held
    assert noted == notes
    plain, plain_notes = plan_replacements(state, SEEN, NOW, WALL, POLICY, reserve)
    assert [(c.slot, c.owner) for c in plain if isinstance(c, AssignSlot)] == assigned
    assert plain_notes == notes


def test_a_draining_owner_past_its_lease_may_hand_over_to_the_reserve() -> None:
    """The drain has not released the slot yet (the owner is slow): after the lease wait the
    leader moves it anyway, and a drain may take the last spare."""
    state = cluster(slot(), a1="draining")
    commands, notes = plan_replacements(state, {"s1": NOW - 3.0}, NOW, WALL, POLICY, 1)
    assert [(c.slot, c.owner, c.reason) for c in commands if isinstance(c, AssignSlot)] == [
        ("s1", "p1", "owner a1 is draining")
    ]
    assert notes == []


def test_budget_holds_follow_the_slots_that_got_no_spare() -> None:
    state = two_lost(P1, P2, P3)
    state = ClusterState(
        cluster="moon",
        servers=state.servers,
        slots=(*state.slots, slot("s3", "a1", state="lost")),
        mode="cascade",
    )
    seen = {**SEEN, "s3": NOW - 3.0}
    commands, _, holds = plan_replacements_within(state, seen, NOW, WALL, POLICY, 1, 1)
    assert [(c.slot, c.owner) for c in commands if isinstance(c, AssignSlot)] == [("s1", "p1")]
    assert holds == [("s3", RESERVED), ("s2", "cascade mode: replacement budget used")]


@pytest.mark.parametrize(
    ("suspected", "expected"),
    [
        pytest.param((), "p2", id="nobody-suspected-the-other-domain"),
        pytest.param(("p2",), "p1", id="an-unsuspected-spare-beats-the-domain"),
        pytest.param(("p1", "p2"), "p2", id="all-suspected-as-before"),
    ],
)
def test_pick_spare_prefers_a_spare_nobody_suspects(
    suspected: tuple[str, ...], expected: str
) -> None:
    """Across a partition the leader's side may only reach some spares: a spare it suspects
    would be handed the slot, fail to renew its lease and cost another round."""
    lost = slot(owner="a1", state="lost")
    state = ClusterState(
        cluster="moon",
        servers=(
            srv("a1", "rack-a", state="failed"),
            srv("p1", "rack-a", "spare"),
            srv("p2", "rack-b", "spare"),
        ),
        slots=(lost,),
        suspicions=tuple(Suspicion(name, 1, 10.0) for name in suspected),
    )
    picked = pick_spare(state, lost, set())
    assert picked is not None and picked.name == expected
