"""Voter replacement: the recorded steps (consensus/voters.py) and the leader's plan (healer)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from consensus.commands import (
    Bootstrap,
    Command,
    CommandDecodeError,
    MarkServerFailed,
    ServerSpec,
    ServerUp,
    SlotSpec,
    VoterStep,
    decode_command,
    encode_command,
)
from consensus.machine import CommandRejected, apply, apply_payload
from consensus.state import (
    ClusterState,
    ServerRecord,
    ServerState,
    SlotRecord,
    SlotState,
    VoterChange,
    decode_state,
    encode_state,
)
from healer.voters import PREPARE_TIMEOUT_S, VoterPlan, pick_voter, plan_voters

# ------------------------------------------------------------------ recorded steps: fixed states

BOOT = Bootstrap(
    id="c-boot",
    at=100.0,
    cluster="moon",
    config_digest="sha256:cafe",
    servers=(
        ServerSpec(name="m1", role="active", domain="rack-a"),
        ServerSpec(name="m2", role="active", domain="rack-b"),
        ServerSpec(name="m3", role="active", domain="rack-c"),
        ServerSpec(name="m4", role="spare", domain="rack-d"),
        ServerSpec(name="m5", role="spare", domain="rack-e"),
    ),
    slots=(SlotSpec(name="s1", owner="m1", tenants=("acme",)),),
    lease_s=5.0,
    voters=("m3", "m1", "m2"),
)
NAMES = ("m1", "m2", "m3", "m4", "m5")


def run(state: ClusterState, *commands: Command) -> ClusterState:
    for command in commands:
        state = apply(state, command)
    return state


def up(server: str) -> ServerUp:
    return ServerUp(id=f"up-{server}", at=101.0, server=server, incarnation=1)


def fail(server: str) -> MarkServerFailed:
    return MarkServerFailed(id=f"fail-{server}", at=102.0, server=server, incarnation=1)


def voter_step(
    step: str,
    add: str = "m4",
    remove: str = "m3",
    *,
    cid: str | None = None,
    at: float = 110.0,
    evidence: dict[str, Any] | None = None,
) -> VoterStep:
    return VoterStep(
        id=cid or f"voters-{step}-{add}-{remove}",
        at=at,
        step=step,  # type: ignore[arg-type]
        add=add,
        remove=remove,
        reason="m3 failed",
        evidence=evidence or {},
    )


EMPTY = ClusterState()
BOOTED = run(EMPTY, BOOT)  # d000001
ALL_UP = run(BOOTED, *(up(n) for n in NAMES))  # d000002..d000006
M3_FAILED = run(ALL_UP, fail("m3"))  # d000007
PREPARED = run(M3_FAILED, voter_step("prepare", at=110.0))  # d000008
ADDED = run(PREPARED, voter_step("added", at=111.0))  # d000009
REMOVED = run(ADDED, voter_step("removed", at=112.0))  # d000010
ABANDONED = run(PREPARED, voter_step("abandoned", at=113.0))  # d000009
M4_NEW = run(BOOTED, *(up(n) for n in ("m1", "m2", "m3")), fail("m3"))
M4_FAILED = run(M3_FAILED, fail("m4"))


def plain(value: Any) -> Any:
    """`value` as it reads after a trip through JSON (the status API, a Raft snapshot)."""
    return json.loads(json.dumps(value))


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_records_the_voters_sorted() -> None:
    assert BOOTED.voters == ("m1", "m2", "m3")
    assert BOOTED.voter_change is None


def test_bootstrap_without_voters_tracks_none() -> None:
    state = apply(EMPTY, dataclasses.replace(BOOT, voters=()))
    assert state.voters == ()


@pytest.mark.parametrize(
    ("voters", "reason"),
    [
        pytest.param(("m1", "m2", "m9"), "not ['m9']", id="unknown-voter"),
        pytest.param(("m1", "m2", "m1"), "not []", id="duplicate-voter"),
    ],
)
def test_bootstrap_rejects_bad_voters(voters: tuple[str, ...], reason: str) -> None:
    with pytest.raises(CommandRejected, match="voters must be distinct known servers") as raised:
        apply(EMPTY, dataclasses.replace(BOOT, voters=voters))
    assert reason in raised.value.reason
    assert not raised.value.stale


# ------------------------------------------------------------------ accepted steps

ACCEPTED = [
    pytest.param(
        M3_FAILED,
        voter_step("prepare", at=110.0),
        ("m1", "m2", "m3"),
        VoterChange(add="m4", remove="m3", since=110.0),
        ("d000008", "voter_replacement_started", "m3"),
        {"add": "m4", "remove": "m3", "reason": "m3 failed", "voters": ["m1", "m2", "m3"]},
        id="prepare-records-the-intent",
    ),
    pytest.param(
        PREPARED,
        voter_step("added", at=111.0),
        ("m1", "m2", "m3", "m4"),
        VoterChange(add="m4", remove="m3", since=110.0, step="added"),
        ("d000009", "voter_added", "m4"),
        {"add": "m4", "remove": "m3", "reason": "m3 failed", "voters": ["m1", "m2", "m3", "m4"]},
        id="added-counts-the-newcomer",
    ),
    pytest.param(
        ADDED,
        voter_step("removed", at=112.0),
        ("m1", "m2", "m4"),
        None,
        ("d000010", "voter_removed", "m3"),
        {"add": "m4", "remove": "m3", "reason": "m3 failed", "voters": ["m1", "m2", "m4"]},
        id="removed-ends-the-change",
    ),
    pytest.param(
        PREPARED,
        voter_step("abandoned", at=113.0),
        ("m1", "m2", "m3"),
        None,
        ("d000009", "voter_replacement_abandoned", "m3"),
        {"add": "m4", "remove": "m3", "reason": "m3 failed"},
        id="abandoned-ends-the-change",
    ),
    pytest.param(
        ABANDONED,
        voter_step("prepare", "m5", cid="voters-prepare-again", at=120.0),
        ("m1", "m2", "m3"),
        VoterChange(add="m5", remove="m3", since=120.0),
        ("d000010", "voter_replacement_started", "m3"),
        {"add": "m5", "remove": "m3", "reason": "m3 failed", "voters": ["m1", "m2", "m3"]},
        id="prepare-again-after-abandoning",
    ),
    pytest.param(
        M3_FAILED,
        voter_step(
            "prepare",
            at=110.0,
            evidence={"add": "m9", "remove": "m9", "voters": ["x"], "failed_since": 102.0},
        ),
        ("m1", "m2", "m3"),
        VoterChange(add="m4", remove="m3", since=110.0),
        ("d000008", "voter_replacement_started", "m3"),
        {
            "add": "m4",
            "remove": "m3",
            "reason": "m3 failed",
            "voters": ["m1", "m2", "m3"],
            "failed_since": 102.0,
        },
        id="recorded-facts-win-over-submitter-evidence",
    ),
]


@pytest.mark.parametrize(("start", "command", "voters", "change", "decision", "evidence"), ACCEPTED)
def test_accepted_voter_step(
    start: ClusterState,
    command: VoterStep,
    voters: tuple[str, ...],
    change: VoterChange | None,
    decision: tuple[str, str, str],
    evidence: dict[str, Any],
) -> None:
    before = encode_state(start)

    after = apply(start, command)

    assert (after.voters, after.voter_change) == (voters, change)
    last = after.decisions[-1]
    assert (last.id, last.kind, last.subject, last.at) == (*decision, command.at)
    # Compared as JSON: the tuple-vs-list difference is test_states_round_trip_exactly's concern.
    assert plain(last.evidence) == evidence
    assert after.applied == start.applied + 1
    assert encode_state(start) == before, "apply mutated its input"
    via_payload, result = apply_payload(start, encode_command(command))
    assert result.ok
    assert encode_state(via_payload) == encode_state(after)


def test_a_voter_step_applied_twice_is_a_duplicate() -> None:
    again, result = apply_payload(ADDED, encode_command(voter_step("added", at=111.0)))
    assert again is ADDED
    assert (result.status, result.reason) == ("committed", "already committed")


# ------------------------------------------------------------------ rejected steps

REJECTED = [
    pytest.param(
        EMPTY, voter_step("prepare"), "not bootstrapped yet", False, id="not-bootstrapped"
    ),
    pytest.param(
        M3_FAILED, voter_step("prepare", "m9"), "unknown server 'm9'", False, id="unknown-add"
    ),
    pytest.param(
        M3_FAILED,
        voter_step("prepare", "m4", "m9"),
        "unknown server 'm9'",
        False,
        id="unknown-remove",
    ),
    pytest.param(
        PREPARED, voter_step("added", "m9"), "unknown server 'm9'", False, id="unknown-in-added"
    ),
    pytest.param(
        PREPARED,
        voter_step("prepare", "m5"),
        "replacing m3 by m4 is still under way",
        True,
        id="prepare-while-a-change-is-under-way",
    ),
    pytest.param(
        ADDED,
        voter_step("prepare", "m5", "m1"),
        "replacing m3 by m4 is still under way",
        True,
        id="prepare-while-a-change-is-half-done",
    ),
    pytest.param(
        M3_FAILED,
        voter_step("prepare", "m4", "m5"),
        "m5 is not a voter",
        True,
        id="prepare-remove-not-a-voter",
    ),
    pytest.param(
        M3_FAILED,
        voter_step("prepare", "m2", "m3"),
        "m2 is already a voter",
        True,
        id="prepare-add-already-a-voter",
    ),
    pytest.param(
        M3_FAILED,
        voter_step("prepare", "m3", "m3"),
        "m3 is already a voter",
        True,
        id="prepare-a-voter-for-itself",
    ),
    pytest.param(M4_NEW, voter_step("prepare"), "m4 is new, not up", True, id="prepare-add-is-new"),
    pytest.param(
        M4_FAILED, voter_step("prepare"), "m4 is failed, not up", True, id="prepare-add-is-failed"
    ),
    pytest.param(
        M3_FAILED,
        voter_step("added"),
        "no change of m3 for m4 under way",
        True,
        id="added-without-a-change",
    ),
    pytest.param(
        M3_FAILED,
        voter_step("abandoned"),
        "no change of m3 for m4 under way",
        True,
        id="abandoned-without-a-change",
    ),
    pytest.param(
        REMOVED,
        voter_step("removed", cid="voters-removed-again"),
        "no change of m3 for m4 under way",
        True,
        id="removed-after-the-change-is-over",
    ),
    pytest.param(
        PREPARED,
        voter_step("added", "m5"),
        "no change of m3 for m5 under way",
        True,
        id="added-names-another-newcomer",
    ),
    pytest.param(
        ADDED,
        voter_step("removed", "m4", "m1"),
        "no change of m1 for m4 under way",
        True,
        id="removed-names-another-voter",
    ),
    pytest.param(
        PREPARED,
        voter_step("abandoned", "m3", "m4"),
        "no change of m4 for m3 under way",
        True,
        id="abandoned-names-swapped",
    ),
    pytest.param(
        PREPARED,
        voter_step("removed"),
        "removed needs step added, the change is at prepare",
        True,
        id="removed-before-added",
    ),
    pytest.param(
        ADDED,
        voter_step("added", cid="voters-added-again"),
        "added needs step prepare, the change is at added",
        True,
        id="added-twice",
    ),
    pytest.param(
        ADDED,
        voter_step("abandoned"),
        "abandoned needs step prepare, the change is at added",
        True,
        id="abandoned-after-added",
    ),
]


@pytest.mark.parametrize(("start", "command", "reason", "stale"), REJECTED)
def test_rejected_voter_step(
    start: ClusterState, command: VoterStep, reason: str, stale: bool
) -> None:
    before = encode_state(start)

    with pytest.raises(CommandRejected) as raised:
        apply(start, command)

    assert reason in raised.value.reason
    assert raised.value.reason.startswith("voter_step: ")
    assert raised.value.stale is stale
    assert encode_state(start) == before, "apply mutated its input"
    after, result = apply_payload(start, encode_command(command))
    assert after is start
    assert (result.status, result.stale) == ("rejected", stale)


# ------------------------------------------------------------------ codecs

VOTER_STATES = [
    pytest.param(BOOTED, id="booted"),
    pytest.param(PREPARED, id="prepared"),
    pytest.param(ADDED, id="added"),
    pytest.param(REMOVED, id="removed"),
    pytest.param(ABANDONED, id="abandoned"),
]


@pytest.mark.parametrize("state", VOTER_STATES)
def test_voters_and_the_change_survive_the_state_encoding(state: ClusterState) -> None:
    text = encode_state(state)
    decoded = decode_state(text)
    assert (decoded.voters, decoded.voter_change) == (state.voters, state.voter_change)
    assert encode_state(decoded) == text


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(BOOTED, id="booted"),
        pytest.param(PREPARED, id="prepared"),
        pytest.param(ADDED, id="added"),
        pytest.param(REMOVED, id="removed"),
        pytest.param(ABANDONED, id="abandoned"),
    ],
)
def test_states_round_trip_exactly(state: ClusterState) -> None:
    """The property test_machine checks for every other history: decode(encode(s)) == s."""
    assert decode_state(encode_state(state)) == state


@pytest.mark.parametrize("step", ["prepare", "added", "removed", "abandoned"])
def test_voter_steps_round_trip_through_the_command_codec(step: str) -> None:
    command = voter_step(step, evidence={"failed_since": 102.0, "witnesses": ["m1", "m2"]})
    payload = encode_command(command)
    assert decode_command(payload) == command
    assert decode_command(payload.encode()) == command


def test_an_unknown_voter_step_is_malformed() -> None:
    payload = json.loads(encode_command(voter_step("prepare")))
    payload["step"] = "swap"
    text = json.dumps(payload)

    with pytest.raises(CommandDecodeError, match=r"voter_step\.step"):
        decode_command(text)
    after, result = apply_payload(M3_FAILED, text)
    assert after is M3_FAILED
    assert result.status == "rejected"


# ------------------------------------------------------------------ the plan: fixed states

WALL = 1_700_000_000.0
SINCE = WALL - 10.0


def server(
    name: str, role: str = "active", domain: str = "", state: ServerState = "up"
) -> ServerRecord:
    return ServerRecord(name, role, domain or f"rack-{name}", state, 1)  # type: ignore[arg-type]


def slot(name: str, owner: str, state: SlotState = "serving") -> SlotRecord:
    return SlotRecord(name, (f"t-{name}",), owner, 1, state)


SERVERS = (
    server("m1", domain="rack-a"),
    server("m2", domain="rack-b"),
    server("m3", domain="rack-c"),
    server("m4", "spare", "rack-d"),
    server("m5", "spare", "rack-e"),
)
SLOTS = (slot("s1", "m1"), slot("s2", "m2"), slot("s3", "m3", "lost"))
VOTERS = ("m1", "m2", "m3")
MEMBERS = VOTERS


def planned(
    *changed: ServerRecord,
    voters: tuple[str, ...] = VOTERS,
    slots: tuple[SlotRecord, ...] = SLOTS,
    change: VoterChange | None = None,
    cluster: str | None = "moon",
) -> ClusterState:
    """The five servers, with `changed` replacing (or adding) records by name."""
    by_name = {s.name: s for s in SERVERS} | {s.name: s for s in changed}
    return ClusterState(
        cluster=cluster,
        servers=tuple(by_name.values()),
        slots=slots,
        voters=voters,
        voter_change=change,
    )


M3_DOWN = server("m3", domain="rack-c", state="failed")


def prepared(add: str = "m4", since: float = SINCE, *changed: ServerRecord) -> ClusterState:
    return planned(M3_DOWN, *changed, change=VoterChange(add, "m3", since))


HALF_DONE = planned(
    M3_DOWN, voters=(*VOTERS, "m4"), change=VoterChange("m4", "m3", SINCE, step="added")
)


def plan(action: str, reason: str, add: str = "m4", remove: str = "m3") -> VoterPlan:
    return VoterPlan(action, add, remove, reason)  # type: ignore[arg-type]


# ------------------------------------------------------------------ plan_voters

PLANS = [
    pytest.param(ClusterState(), MEMBERS, WALL, None, None, id="not-bootstrapped"),
    pytest.param(
        planned(M3_DOWN, cluster=None), MEMBERS, WALL, None, None, id="not-bootstrapped-failed"
    ),
    pytest.param(planned(M3_DOWN, voters=()), MEMBERS, WALL, None, None, id="no-voters"),
    pytest.param(planned(), MEMBERS, WALL, None, None, id="no-failed-voter"),
    pytest.param(
        planned(server("m4", "spare", "rack-d", "failed")),
        MEMBERS,
        WALL,
        None,
        None,
        id="failed-non-voter-is-not-a-voter-matter",
    ),
    pytest.param(
        planned(server("m3", domain="rack-c", state="quarantined")),
        MEMBERS,
        WALL,
        None,
        None,
        id="quarantined-voter-is-not-replaced",
    ),
    pytest.param(
        planned(M3_DOWN),
        MEMBERS,
        WALL,
        plan("prepare", "voter m3 failed; m4 takes its place"),
        None,
        id="failed-voter-and-candidate-prepare",
    ),
    pytest.param(
        planned(M3_DOWN, server("m2", domain="rack-b", state="failed")),
        MEMBERS,
        WALL,
        plan("prepare", "voter m2 failed; m4 takes its place", remove="m2"),
        None,
        id="first-failed-voter-by-name",
    ),
    pytest.param(
        planned(
            M3_DOWN,
            server("m4", "spare", "rack-d", "draining"),
            server("m5", "spare", "rack-e", "new"),
        ),
        MEMBERS,
        WALL,
        None,
        "voter m3 failed; no healthy non-voter without slots to replace it",
        id="failed-voter-no-candidate-notes-why",
    ),
    # -- step prepare
    pytest.param(
        prepared(),
        (*MEMBERS, "m4"),
        WALL,
        plan("record_added", "Raft counts it as a voter"),
        None,
        id="prepare-newcomer-a-member-record-added",
    ),
    pytest.param(
        prepared("m4", SINCE, server("m4", "spare", "rack-d", "failed")),
        (*MEMBERS, "m4"),
        WALL,
        plan("record_added", "Raft counts it as a voter"),
        None,
        id="prepare-membership-wins-over-newcomer-state",
    ),
    pytest.param(
        prepared("m4", SINCE, server("m4", "spare", "rack-d", "failed")),
        MEMBERS,
        WALL,
        plan("abandon", "m4 is failed"),
        None,
        id="prepare-newcomer-failed-abandon",
    ),
    pytest.param(
        prepared("m4", SINCE, server("m4", "spare", "rack-d", "draining")),
        MEMBERS,
        WALL,
        plan("abandon", "m4 is draining"),
        None,
        id="prepare-newcomer-draining-abandon",
    ),
    pytest.param(
        prepared("m9"),
        MEMBERS,
        WALL,
        plan("abandon", "m9 is gone", add="m9"),
        None,
        id="prepare-newcomer-unknown-abandon",
    ),
    pytest.param(
        prepared(since=WALL - PREPARE_TIMEOUT_S - 0.5),
        MEMBERS,
        WALL,
        plan("abandon", "m4 did not start as a voter within 30 s"),
        None,
        id="prepare-timeout-exceeded-abandon",
    ),
    pytest.param(
        prepared(since=WALL - PREPARE_TIMEOUT_S),
        MEMBERS,
        WALL,
        plan("add", "m3 failed"),
        None,
        id="prepare-exactly-at-timeout-still-add",
    ),
    pytest.param(
        prepared(),
        MEMBERS,
        WALL,
        plan("add", "m3 failed"),
        None,
        id="prepare-add",
    ),
    # -- step added
    pytest.param(
        HALF_DONE,
        (*MEMBERS, "m4"),
        WALL,
        plan("remove", "m4 is a voter and caught up"),
        None,
        id="added-remove-still-a-member-remove",
    ),
    pytest.param(
        HALF_DONE,
        ("m1", "m2", "m4"),
        WALL,
        plan("record_removed", "Raft no longer counts it"),
        None,
        id="added-remove-gone-record-removed",
    ),
    pytest.param(
        HALF_DONE,
        ("m1", "m2", "m4"),
        WALL + 10 * PREPARE_TIMEOUT_S,
        plan("record_removed", "Raft no longer counts it"),
        None,
        id="added-has-no-timeout",
    ),
]


@pytest.mark.parametrize(("state", "members", "wall", "want", "note"), PLANS)
def test_plan_voters(
    state: ClusterState,
    members: tuple[str, ...],
    wall: float,
    want: VoterPlan | None,
    note: str | None,
) -> None:
    assert plan_voters(state, members, wall) == (want, note)


@pytest.mark.parametrize(
    ("waited", "action"),
    [
        pytest.param(4.5, "add", id="within"),
        pytest.param(5.0, "add", id="exactly-at"),
        pytest.param(5.5, "abandon", id="past"),
    ],
)
def test_plan_voters_honours_the_prepare_timeout(waited: float, action: str) -> None:
    got, _ = plan_voters(prepared(since=WALL - waited), MEMBERS, WALL, prepare_timeout_s=5.0)
    assert got is not None
    assert got.action == action
    if action == "abandon":
        assert got.reason == "m4 did not start as a voter within 5 s"


# ------------------------------------------------------------------ pick_voter

PICKS = [
    pytest.param((), SLOTS, "m4", id="spares-by-name"),
    pytest.param(
        (server("m4", "active", "rack-d"), server("m5", "spare", "rack-a")),
        SLOTS,
        "m5",
        id="spare-before-active-even-in-a-voters-domain",
    ),
    pytest.param(
        (server("m4", "spare", "rack-a"), server("m5", "spare", "rack-e")),
        SLOTS,
        "m5",
        id="a-domain-no-voter-is-in",
    ),
    pytest.param(
        (M3_DOWN, server("m4", "spare", "rack-a"), server("m5", "spare", "rack-c")),
        SLOTS,
        "m5",
        id="a-failed-voters-domain-is-free",
    ),
    pytest.param(
        (server("m4", "spare", "rack-a"), server("m5", "spare", "rack-b")),
        SLOTS,
        "m4",
        id="then-by-name",
    ),
    pytest.param(
        (server("m4", "active", "rack-d"), server("m5", "active", "rack-e")),
        (*SLOTS, slot("s4", "m4")),
        "m5",
        id="slot-owner-excluded",
    ),
    pytest.param(
        (server("m4", "active", "rack-d"), server("m5", "active", "rack-e")),
        (*SLOTS, slot("s4", "m4", "assigned"), slot("s5", "m5", "lost")),
        None,
        id="assigned-and-lost-slots-count-as-owned",
    ),
    pytest.param(
        (server("m4", "active", "rack-d"), server("m5", "spare", "rack-e", "failed")),
        (*SLOTS, slot("s4", "m4", "released")),
        "m4",
        id="released-slot-does-not-count",
    ),
    pytest.param(
        (server("m4", "spare", "rack-d", "failed"), server("m5", "spare", "rack-e", "new")),
        SLOTS,
        None,
        id="no-candidate",
    ),
]


@pytest.mark.parametrize(("changed", "slots", "want"), PICKS)
def test_pick_voter(
    changed: tuple[ServerRecord, ...], slots: tuple[SlotRecord, ...], want: str | None
) -> None:
    picked = pick_voter(planned(*changed, slots=slots))
    assert (picked.name if picked else None) == want


@pytest.mark.parametrize("state", ["new", "failed", "quarantined", "draining"])
def test_pick_voter_takes_only_servers_that_are_up(state: ServerState) -> None:
    only = planned(server("m4", "spare", "rack-d", state), server("m5", "spare", "rack-e", state))
    assert pick_voter(only) is None


def test_pick_voter_never_picks_a_voter() -> None:
    # No voter owns a slot and every voter is up, yet none is a candidate.
    state = planned(
        server("m4", "spare", "rack-d", "failed"),
        server("m5", "spare", "rack-e", "failed"),
        slots=(),
    )
    assert pick_voter(state) is None
