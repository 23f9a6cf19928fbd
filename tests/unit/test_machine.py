"""Unit tests of the replicated state machine: every command kind, every rejection, properties."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.commands import (
    COMMAND_VERSION,
    MAX_COMMAND_BYTES,
    AssignSlot,
    Bootstrap,
    Command,
    CommandDecodeError,
    MarkServerFailed,
    ReleaseSlot,
    RenewLease,
    ServerSpec,
    ServerUp,
    SlotServing,
    SlotSpec,
    decode_command,
    encode_command,
)
from consensus.machine import CommandRejected, apply, apply_payload
from consensus.state import (
    MAX_DECISIONS,
    MAX_REMEMBERED_COMMANDS,
    ClusterState,
    Decision,
    ServerRecord,
    SlotRecord,
    StateDecodeError,
    decode_state,
    encode_state,
)

# ------------------------------------------------------------------ fixed states

BOOT = Bootstrap(
    id="c-boot",
    at=100.0,
    cluster="moon",
    config_digest="sha256:cafe",
    servers=(
        ServerSpec(name="m1", role="active", domain="rack-a"),
        ServerSpec(name="m2", role="active", domain="rack-b"),
        ServerSpec(name="m3", role="spare", domain="rack-c"),
    ),
    slots=(
        SlotSpec(name="s1", owner="m1", tenants=("acme",)),
        SlotSpec(name="s2", owner="m2", tenants=("globex", "initech")),
    ),
    lease_s=5.0,
)


def run(state: ClusterState, *commands: Command) -> ClusterState:
    """Apply commands that must all be accepted."""
    for command in commands:
        state = apply(state, command)
    return state


def up(server: str, incarnation: int, cid: str | None = None) -> ServerUp:
    return ServerUp(
        id=cid or f"up-{server}-{incarnation}", at=101.0, server=server, incarnation=incarnation
    )


def fail(
    server: str, incarnation: int, cid: str | None = None, **evidence: Any
) -> MarkServerFailed:
    return MarkServerFailed(
        id=cid or f"fail-{server}-{incarnation}",
        at=102.0,
        server=server,
        incarnation=incarnation,
        evidence=evidence,
    )


def assign(
    slot: str, owner: str, epoch: int, cid: str | None = None, **evidence: Any
) -> AssignSlot:
    return AssignSlot(
        id=cid or f"assign-{slot}-{epoch}",
        at=103.0,
        slot=slot,
        owner=owner,
        epoch=epoch,
        reason="owner failed",
        evidence=evidence,
    )


def serving(slot: str, owner: str, epoch: int, address: str = "10.0.0.1:8080") -> SlotServing:
    return SlotServing(
        id=f"serving-{slot}-{epoch}-{address}",
        at=104.0,
        slot=slot,
        owner=owner,
        epoch=epoch,
        address=address,
    )


def renew(slot: str, owner: str, epoch: int, cid: str | None = None) -> RenewLease:
    return RenewLease(
        id=cid or f"renew-{slot}-{epoch}", at=105.0, slot=slot, owner=owner, epoch=epoch
    )


def release(slot: str, owner: str, epoch: int) -> ReleaseSlot:
    return ReleaseSlot(
        id=f"release-{slot}-{epoch}",
        at=106.0,
        slot=slot,
        owner=owner,
        epoch=epoch,
        reason="no disk",
    )


EMPTY = ClusterState()
BOOTED = run(EMPTY, BOOT)  # decision d000001
ALL_UP = run(BOOTED, up("m1", 1), up("m2", 1), up("m3", 1))  # d000002..d000004
M2_FAILED = run(ALL_UP, fail("m2", 1))  # d000005
S1_SERVING = run(ALL_UP, serving("s1", "m1", 1))
S1_RELEASED = run(ALL_UP, release("s1", "m1", 1))  # d000005
S1_EPOCH_2 = run(ALL_UP, assign("s1", "m3", 2))  # d000005
M3_QUARANTINED = dataclasses.replace(
    ALL_UP,
    servers=tuple(
        dataclasses.replace(s, state="quarantined") if s.name == "m3" else s for s in ALL_UP.servers
    ),
)


def expected(
    start: ClusterState,
    command: Command,
    *,
    server: ServerRecord | None = None,
    slot: SlotRecord | None = None,
    decision: Decision | None = None,
) -> ClusterState:
    """`start` with one record replaced, one decision added and the command counted."""
    state = dataclasses.replace(
        start,
        applied=start.applied + 1,
        recent_commands=(*start.recent_commands, command.id),
    )
    if server is not None:
        servers = tuple(server if s.name == server.name else s for s in start.servers)
        state = dataclasses.replace(state, servers=servers)
    if slot is not None:
        slots = tuple(slot if s.name == slot.name else s for s in start.slots)
        state = dataclasses.replace(state, slots=slots)
    if decision is not None:
        state = dataclasses.replace(
            state,
            decisions=(*start.decisions, decision),
            decision_seq=start.decision_seq + 1,
        )
    return state


def server_of(state: ClusterState, name: str) -> ServerRecord:
    record = state.server(name)
    assert record is not None
    return record


def slot_of(state: ClusterState, name: str) -> SlotRecord:
    record = state.slot(name)
    assert record is not None
    return record


# ------------------------------------------------------------------ accepted commands


def test_bootstrap_creates_the_initial_state() -> None:
    state = apply(ClusterState(), BOOT)

    assert state == ClusterState(
        cluster="moon",
        config_digest="sha256:cafe",
        servers=(
            ServerRecord(name="m1", role="active", domain="rack-a"),
            ServerRecord(name="m2", role="active", domain="rack-b"),
            ServerRecord(name="m3", role="spare", domain="rack-c"),
        ),
        slots=(
            SlotRecord(
                name="s1", tenants=("acme",), owner="m1", epoch=1, state="assigned", lease_s=5.0
            ),
            SlotRecord(
                name="s2",
                tenants=("globex", "initech"),
                owner="m2",
                epoch=1,
                state="assigned",
                lease_s=5.0,
            ),
        ),
        decisions=(
            Decision(
                id="d000001",
                kind="bootstrap",
                at=100.0,
                subject="moon",
                evidence={"servers": ["m1", "m2", "m3"], "slots": {"s1": "m1", "s2": "m2"}},
            ),
        ),
        decision_seq=1,
        applied=1,
        recent_commands=("c-boot",),
    )
    assert state.bootstrapped
    assert state.tenant_slot("initech") == slot_of(state, "s2")
    assert state.slots_owned_by("m1") == (slot_of(state, "s1"),)


ACCEPTED = [
    pytest.param(
        BOOTED,
        up("m1", 1),
        lambda s, c: expected(
            s,
            c,
            server=ServerRecord("m1", "active", "rack-a", state="up", incarnation=1),
            decision=Decision(
                "d000002", "server_up", 101.0, "m1", {"incarnation": 1, "previous_state": "new"}
            ),
        ),
        id="server_up-new-to-up",
    ),
    pytest.param(
        M2_FAILED,
        up("m2", 2),
        lambda s, c: expected(
            s,
            c,
            server=ServerRecord("m2", "active", "rack-b", state="up", incarnation=2),
            decision=Decision(
                "d000006", "server_up", 101.0, "m2", {"incarnation": 2, "previous_state": "failed"}
            ),
        ),
        id="server_up-failed-server-returns-with-higher-incarnation",
    ),
    pytest.param(
        ALL_UP,
        fail("m2", 1, probe="timeout", witnesses=["m1", "m3"]),
        lambda s, c: expected(
            s,
            c,
            server=ServerRecord("m2", "active", "rack-b", state="failed", incarnation=1),
            decision=Decision(
                "d000005",
                "server_failed",
                102.0,
                "m2",
                {"incarnation": 1, "probe": "timeout", "witnesses": ["m1", "m3"]},
            ),
        ),
        id="mark_server_failed-at-current-incarnation",
    ),
    pytest.param(
        BOOTED,
        fail("m2", 0),
        lambda s, c: expected(
            s,
            c,
            server=ServerRecord("m2", "active", "rack-b", state="failed", incarnation=0),
            decision=Decision("d000002", "server_failed", 102.0, "m2", {"incarnation": 0}),
        ),
        id="mark_server_failed-a-server-that-never-came-up",
    ),
    pytest.param(
        ALL_UP,
        assign("s1", "m3", 2, load=0.5),
        lambda s, c: expected(
            s,
            c,
            slot=SlotRecord("s1", ("acme",), "m3", 2, "assigned", None, 5.0, 0),
            decision=Decision(
                "d000005",
                "slot_assigned",
                103.0,
                "s1",
                {"previous_owner": "m1", "epoch": 2, "reason": "owner failed", "load": 0.5},
            ),
        ),
        id="assign_slot-next-epoch",
    ),
    pytest.param(
        run(S1_SERVING, renew("s1", "m1", 1)),
        assign("s1", "m3", 2),
        lambda s, c: expected(
            s,
            c,
            slot=SlotRecord("s1", ("acme",), "m3", 2, "assigned", None, 5.0, 0),
            decision=Decision(
                "d000005",
                "slot_assigned",
                103.0,
                "s1",
                {"previous_owner": "m1", "epoch": 2, "reason": "owner failed"},
            ),
        ),
        id="assign_slot-resets-address-and-lease",
    ),
    pytest.param(
        S1_RELEASED,
        assign("s1", "m2", 2),
        lambda s, c: expected(
            s,
            c,
            slot=SlotRecord("s1", ("acme",), "m2", 2, "assigned", None, 5.0, 0),
            decision=Decision(
                "d000006",
                "slot_assigned",
                103.0,
                "s1",
                {"previous_owner": "m1", "epoch": 2, "reason": "owner failed"},
            ),
        ),
        id="assign_slot-released-slot",
    ),
    pytest.param(
        ALL_UP,
        serving("s1", "m1", 1),
        lambda s, c: expected(
            s, c, slot=SlotRecord("s1", ("acme",), "m1", 1, "serving", "10.0.0.1:8080", 5.0, 0)
        ),
        id="slot_serving-no-decision",
    ),
    pytest.param(
        S1_SERVING,
        serving("s1", "m1", 1, address="10.0.0.9:8080"),
        lambda s, c: expected(
            s, c, slot=SlotRecord("s1", ("acme",), "m1", 1, "serving", "10.0.0.9:8080", 5.0, 0)
        ),
        id="slot_serving-new-address",
    ),
    pytest.param(
        S1_SERVING,
        renew("s1", "m1", 1),
        lambda s, c: expected(
            s, c, slot=SlotRecord("s1", ("acme",), "m1", 1, "serving", "10.0.0.1:8080", 5.0, 1)
        ),
        id="renew_lease-counts-renewals",
    ),
    pytest.param(
        ALL_UP,
        renew("s1", "m1", 1),
        lambda s, c: expected(
            s, c, slot=SlotRecord("s1", ("acme",), "m1", 1, "assigned", None, 5.0, 1)
        ),
        id="renew_lease-before-serving",
    ),
    pytest.param(
        S1_SERVING,
        release("s1", "m1", 1),
        lambda s, c: expected(
            s,
            c,
            slot=SlotRecord("s1", ("acme",), "m1", 1, "released", None, 5.0, 0),
            decision=Decision(
                "d000005",
                "slot_released",
                106.0,
                "s1",
                {"owner": "m1", "epoch": 1, "reason": "no disk"},
            ),
        ),
        id="release_slot",
    ),
]


@pytest.mark.parametrize(("start", "command", "want"), ACCEPTED)
def test_accepted_command(
    start: ClusterState,
    command: Command,
    want: Callable[[ClusterState, Command], ClusterState],
) -> None:
    before = encode_state(start)

    after = apply(start, command)

    assert after == want(start, command)
    assert encode_state(start) == before, "apply mutated its input"
    via_payload, result = apply_payload(start, encode_command(command))
    assert result.status == "committed" and result.ok
    assert encode_state(via_payload) == encode_state(after)


# ------------------------------------------------------------------ rejected commands

NOT_BOOTSTRAPPED = "the cluster is not bootstrapped yet"

REJECTED = [
    # -- not bootstrapped: every kind but bootstrap
    *(
        pytest.param(EMPTY, command, NOT_BOOTSTRAPPED, False, id=f"not-bootstrapped-{command.kind}")
        for command in (
            up("m1", 1),
            fail("m1", 0),
            assign("s1", "m1", 2),
            serving("s1", "m1", 1),
            renew("s1", "m1", 1),
            release("s1", "m1", 1),
        )
    ),
    # -- bootstrap
    pytest.param(
        BOOTED,
        dataclasses.replace(BOOT, id="c-boot-again"),
        "already bootstrapped",
        True,
        id="bootstrap-twice",
    ),
    pytest.param(
        EMPTY,
        dataclasses.replace(BOOT, servers=(*BOOT.servers, ServerSpec("m1", "spare", "rack-z"))),
        "server names must be unique",
        False,
        id="bootstrap-duplicate-server",
    ),
    pytest.param(
        EMPTY,
        dataclasses.replace(BOOT, servers=(), slots=()),
        "server names must be unique and non-empty",
        False,
        id="bootstrap-no-servers",
    ),
    pytest.param(
        EMPTY,
        dataclasses.replace(BOOT, slots=(SlotSpec("s9", "m3", ("acme",)),)),
        "owner 'm3' is not active",
        False,
        id="bootstrap-slot-owned-by-spare",
    ),
    pytest.param(
        EMPTY,
        dataclasses.replace(BOOT, slots=(SlotSpec("s9", "m9", ("acme",)),)),
        "owner 'm9' is not active",
        False,
        id="bootstrap-slot-owned-by-unknown",
    ),
    # -- unknown server / slot
    pytest.param(ALL_UP, up("m9", 1), "unknown server 'm9'", False, id="server_up-unknown-server"),
    pytest.param(
        ALL_UP, fail("m9", 1), "unknown server 'm9'", False, id="mark_server_failed-unknown-server"
    ),
    pytest.param(
        ALL_UP, assign("s1", "m9", 2), "unknown server 'm9'", False, id="assign_slot-unknown-owner"
    ),
    pytest.param(
        ALL_UP, assign("s9", "m1", 1), "unknown slot 's9'", False, id="assign_slot-unknown"
    ),
    pytest.param(
        ALL_UP, serving("s9", "m1", 1), "unknown slot 's9'", False, id="slot_serving-unknown"
    ),
    pytest.param(
        ALL_UP, renew("s9", "m1", 1), "unknown slot 's9'", False, id="renew_lease-unknown"
    ),
    pytest.param(
        ALL_UP, release("s9", "m1", 1), "unknown slot 's9'", False, id="release_slot-unknown"
    ),
    # -- server_up
    pytest.param(
        ALL_UP,
        up("m1", 1, cid="up-again"),
        "not newer than 1",
        True,
        id="server_up-equal-incarnation",
    ),
    pytest.param(
        run(ALL_UP, up("m1", 3)),
        up("m1", 2),
        "not newer than 3",
        True,
        id="server_up-lower-incarnation",
    ),
    pytest.param(
        M3_QUARANTINED, up("m3", 2), "m3 is quarantined", False, id="server_up-quarantined"
    ),
    # -- mark_server_failed
    pytest.param(
        run(ALL_UP, up("m2", 2)),
        fail("m2", 1),
        "refuted with incarnation 2",
        True,
        id="mark_server_failed-refuted-by-newer-incarnation",
    ),
    pytest.param(
        M2_FAILED,
        fail("m2", 1, cid="fail-again"),
        "m2 is already failed",
        True,
        id="mark_server_failed-already-failed",
    ),
    pytest.param(
        M3_QUARANTINED,
        fail("m3", 1),
        "m3 is already quarantined",
        True,
        id="mark_server_failed-quarantined",
    ),
    # -- assign_slot
    pytest.param(
        S1_EPOCH_2,
        assign("s1", "m2", 2, cid="assign-equal"),
        "epoch 2 does not follow current epoch 2",
        True,
        id="assign_slot-equal-epoch-is-stale",
    ),
    pytest.param(
        S1_EPOCH_2,
        assign("s1", "m2", 1),
        "epoch 1 does not follow current epoch 2",
        True,
        id="assign_slot-old-epoch-is-stale",
    ),
    pytest.param(
        ALL_UP,
        assign("s1", "m2", 3),
        "epoch 3 does not follow current epoch 1",
        False,
        id="assign_slot-skipped-epoch",
    ),
    pytest.param(
        M2_FAILED,
        assign("s1", "m2", 2),
        "m2 is failed and cannot own a slot",
        False,
        id="assign_slot-to-failed-server",
    ),
    pytest.param(
        M3_QUARANTINED,
        assign("s1", "m3", 2),
        "m3 is quarantined and cannot own a slot",
        False,
        id="assign_slot-to-quarantined-server",
    ),
    # -- slot_serving / renew_lease / release_slot: owner and epoch fencing
    *(
        case
        for kind, make in (
            ("slot_serving", serving),
            ("renew_lease", renew),
            ("release_slot", release),
        )
        for case in (
            pytest.param(
                ALL_UP,
                make("s1", "m2", 1),
                "m2 does not own s1 (owner m1)",
                False,
                id=f"{kind}-non-owner",
            ),
            pytest.param(
                S1_EPOCH_2,
                make("s1", "m1", 1),
                "s1 epoch 1 is older than 2",
                True,
                id=f"{kind}-old-epoch-is-stale",
            ),
            pytest.param(
                S1_EPOCH_2,
                make("s1", "m3", 1),
                "s1 epoch 1 is older than 2",
                True,
                id=f"{kind}-new-owner-old-epoch-is-stale",
            ),
            pytest.param(
                ALL_UP,
                make("s1", "m1", 2),
                "s1 epoch 2 is from the future (1)",
                False,
                id=f"{kind}-future-epoch",
            ),
        )
    ),
    pytest.param(
        S1_SERVING,
        dataclasses.replace(serving("s1", "m1", 1), id="serving-again"),
        "s1 is already serving",
        True,
        id="slot_serving-same-address-twice",
    ),
    pytest.param(
        S1_RELEASED,
        serving("s1", "m1", 1),
        "s1 was released at epoch 1",
        False,
        id="slot_serving-released",
    ),
    pytest.param(
        S1_RELEASED,
        renew("s1", "m1", 1),
        "s1 was released at epoch 1",
        False,
        id="renew_lease-released",
    ),
    pytest.param(
        S1_RELEASED,
        dataclasses.replace(release("s1", "m1", 1), id="release-again"),
        "s1 is already released",
        True,
        id="release_slot-twice",
    ),
    # -- unsupported version, for every kind (checked before anything else)
    *(
        pytest.param(
            start,
            dataclasses.replace(command, version=COMMAND_VERSION + 1),
            f"unsupported command version {COMMAND_VERSION + 1}",
            False,
            id=f"unsupported-version-{command.kind}",
        )
        for start, command in (
            (EMPTY, BOOT),
            (BOOTED, up("m1", 1)),
            (ALL_UP, fail("m2", 1)),
            (ALL_UP, assign("s1", "m3", 2)),
            (ALL_UP, serving("s1", "m1", 1)),
            (ALL_UP, renew("s1", "m1", 1)),
            (S1_SERVING, release("s1", "m1", 1)),
        )
    ),
]


@pytest.mark.parametrize(("start", "command", "reason", "stale"), REJECTED)
def test_rejected_command(start: ClusterState, command: Command, reason: str, stale: bool) -> None:
    before = encode_state(start)

    with pytest.raises(CommandRejected) as raised:
        apply(start, command)

    assert reason in raised.value.reason
    assert str(raised.value) == raised.value.reason
    assert raised.value.reason.startswith(f"{command.kind}: ")
    assert raised.value.stale is stale
    assert encode_state(start) == before, "apply mutated its input"
    after, result = apply_payload(start, encode_command(command))
    assert after is start
    assert (result.status, result.stale) == ("rejected", stale)
    assert reason in result.reason
    assert not result.ok


DUPLICATES = [
    pytest.param(EMPTY, BOOT, id="bootstrap"),
    *(pytest.param(*case.values[:2], id=case.id) for case in ACCEPTED),
]


@pytest.mark.parametrize(("start", "command"), DUPLICATES)
def test_the_same_command_twice_is_a_stale_duplicate(start: ClusterState, command: Command) -> None:
    once = apply(start, command)
    before = encode_state(once)

    with pytest.raises(CommandRejected, match=f"duplicate command {command.id}") as raised:
        apply(once, command)

    assert raised.value.stale and raised.value.duplicate
    assert encode_state(once) == before
    # A retry of a command that did commit reports the commit, and changes nothing.
    again, result = apply_payload(once, encode_command(command))
    assert again is once
    assert (result.status, result.reason) == ("committed", "already committed")


def test_bootstrap_twice_with_the_same_id_is_a_duplicate() -> None:
    with pytest.raises(CommandRejected, match="duplicate command c-boot") as raised:
        apply(BOOTED, BOOT)
    assert raised.value.stale


def test_rejected_commands_are_not_remembered() -> None:
    """A rejected id may be used again: the refusal was about the state, not the id."""
    premature = up("m1", 1)
    with pytest.raises(CommandRejected):
        apply(EMPTY, premature)
    assert run(BOOTED, premature).recent_commands == ("c-boot", premature.id)


# ------------------------------------------------------------------ bounded history


def test_decisions_and_remembered_commands_are_capped() -> None:
    count = MAX_DECISIONS + 5
    state = BOOTED
    for incarnation in range(1, count + 1):
        state = apply(state, up("m1", incarnation))

    total = count + 1  # the bootstrap decided too
    assert state.decision_seq == total
    assert state.applied == total
    assert len(state.decisions) == MAX_DECISIONS
    assert state.decisions[0].id == f"d{total - MAX_DECISIONS + 1:06d}"
    assert state.decisions[-1].id == f"d{total:06d}"
    assert state.decision("d000001") is None
    assert len(state.recent_commands) == MAX_REMEMBERED_COMMANDS
    assert state.recent_commands[-1] == f"up-m1-{count}"
    assert state.recent_commands[0] == f"up-m1-{count - MAX_REMEMBERED_COMMANDS + 1}"
    # An id older than the window is no longer recognised as a duplicate; the incarnation
    # check still refuses it.
    with pytest.raises(CommandRejected, match="is not newer than") as raised:
        apply(state, up("m1", 1))
    assert raised.value.stale


# ------------------------------------------------------------------ regressions


@pytest.mark.parametrize(
    ("start", "command", "facts"),
    [
        pytest.param(
            ALL_UP,
            AssignSlot(
                id="assign-lying",
                at=103.0,
                slot="s1",
                owner="m3",
                epoch=2,
                reason="owner failed",
                evidence={"epoch": 99, "previous_owner": "nobody", "reason": "x", "load": 1},
            ),
            {"epoch": 2, "previous_owner": "m1", "reason": "owner failed", "load": 1},
            id="assign_slot",
        ),
        pytest.param(
            ALL_UP,
            MarkServerFailed(
                id="fail-lying",
                at=102.0,
                server="m2",
                incarnation=1,
                evidence={"incarnation": 7, "probe": "timeout"},
            ),
            {"incarnation": 1, "probe": "timeout"},
            id="mark_server_failed",
        ),
    ],
)
def test_recorded_facts_win_over_submitter_evidence(
    start: ClusterState, command: Command, facts: dict[str, Any]
) -> None:
    assert apply(start, command).decisions[-1].evidence == facts


def test_a_failed_verdict_keeps_the_highest_incarnation_seen() -> None:
    """Observers saw incarnation 2 before its ServerUp was committed: that life is failed, and
    only a restart with a higher incarnation brings the server back."""
    failed = run(ALL_UP, fail("m2", 2))
    assert server_of(failed, "m2") == ServerRecord("m2", "active", "rack-b", "failed", 2)

    with pytest.raises(CommandRejected, match="incarnation 2 is not newer than 2") as raised:
        apply(failed, up("m2", 2))

    assert raised.value.stale
    assert server_of(run(failed, up("m2", 3)), "m2").state == "up"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_malformed(number: str) -> None:
    payload = encode_command(BOOT).replace('"lease_s":5.0', f'"lease_s":{number}')
    assert payload != encode_command(BOOT)

    with pytest.raises(CommandDecodeError, match="lease_s"):
        decode_command(payload)
    after, result = apply_payload(BOOTED, payload)
    assert after is BOOTED and result.status == "rejected"


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_cannot_be_encoded(number: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_command(dataclasses.replace(up("m1", 1), at=number))


# ------------------------------------------------------------------ properties

SERVER_NAMES = ("m1", "m2", "m3", "m4")
SLOT_NAMES = ("s1", "s2", "s3")

ids = st.integers(min_value=0, max_value=10**6).map(lambda n: f"c{n}")
ats = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
small = st.integers(min_value=0, max_value=4)
versions = st.sampled_from([COMMAND_VERSION] * 9 + [COMMAND_VERSION + 1])
servers = st.sampled_from(SERVER_NAMES)
slots = st.sampled_from(SLOT_NAMES)
reasons = st.sampled_from(["owner failed", "rebalance", ""])
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
evidence = st.dictionaries(
    st.sampled_from(["probe", "witnesses", "epoch", "why"]),
    json_scalars | st.lists(json_scalars, max_size=3),
    max_size=3,
)

bootstraps = st.builds(
    Bootstrap,
    id=ids,
    at=ats,
    cluster=st.sampled_from(["moon", "sun"]),
    config_digest=st.just("sha256:cafe"),
    servers=st.lists(
        st.builds(
            ServerSpec,
            name=servers,
            role=st.sampled_from(["active", "active", "spare"]),
            domain=st.sampled_from(["rack-a", "rack-b"]),
        ),
        max_size=4,
    ).map(tuple),
    slots=st.lists(
        st.builds(
            SlotSpec,
            name=slots,
            owner=servers,
            tenants=st.lists(st.sampled_from(["acme", "globex"]), max_size=2).map(tuple),
        ),
        max_size=3,
    ).map(tuple),
    lease_s=st.floats(min_value=0.1, max_value=60),
    version=versions,
)
commands: st.SearchStrategy[Command] = st.one_of(
    bootstraps,
    st.builds(ServerUp, id=ids, at=ats, server=servers, incarnation=small, version=versions),
    st.builds(
        MarkServerFailed,
        id=ids,
        at=ats,
        server=servers,
        incarnation=small,
        evidence=evidence,
        version=versions,
    ),
    st.builds(
        AssignSlot,
        id=ids,
        at=ats,
        slot=slots,
        owner=servers,
        epoch=small,
        reason=reasons,
        evidence=evidence,
        version=versions,
    ),
    st.builds(
        SlotServing,
        id=ids,
        at=ats,
        slot=slots,
        owner=servers,
        epoch=small,
        address=st.sampled_from(["10.0.0.1:80", "10.0.0.2:80"]),
        version=versions,
    ),
    st.builds(RenewLease, id=ids, at=ats, slot=slots, owner=servers, epoch=small, version=versions),
    st.builds(
        ReleaseSlot,
        id=ids,
        at=ats,
        slot=slots,
        owner=servers,
        epoch=small,
        reason=reasons,
        version=versions,
    ),
)


def aimed(state: ClusterState, draw: st.DrawFn) -> Command | None:
    """A command aimed at the current state (right epoch and owner, off by one at times)."""
    if not state.servers or not state.slots:
        return None
    server = draw(st.sampled_from(state.servers))
    slot = draw(st.sampled_from(state.slots))
    common: dict[str, Any] = {"id": draw(ids), "at": draw(ats), "version": draw(versions)}
    kind = draw(st.sampled_from(["up", "fail", "assign", "claim"]))
    if kind == "up":
        return ServerUp(**common, server=server.name, incarnation=server.incarnation + draw(small))
    if kind == "fail":
        incarnation = server.incarnation + draw(st.sampled_from([0, 0, 1, -1]))
        return MarkServerFailed(**common, server=server.name, incarnation=incarnation)
    if kind == "assign":
        epoch = slot.epoch + draw(st.sampled_from([1, 1, 1, 0, 2]))
        return AssignSlot(
            **common, slot=slot.name, owner=server.name, epoch=epoch, reason="rebalance"
        )
    claim: dict[str, Any] = {
        **common,
        "slot": slot.name,
        "owner": draw(st.sampled_from([slot.owner or server.name] * 3 + [server.name])),
        "epoch": slot.epoch + draw(st.sampled_from([0, 0, 0, 0, 1, -1])),
    }
    return draw(
        st.sampled_from(
            [
                SlotServing(**claim, address="10.0.0.1:80"),
                SlotServing(**claim, address="10.0.0.2:80"),
                RenewLease(**claim),
                ReleaseSlot(**claim, reason="no disk"),
            ]
        )
    )


@st.composite
def histories(draw: st.DrawFn) -> list[str]:
    """Log entries as a client population might submit them: mostly commands aimed at the state
    they see, some blind ones, some exact replays, some garbage. A replica follows along."""
    state = ClusterState()
    entries: list[str] = []
    if draw(st.integers(0, 3)):
        entries.append(encode_command(BOOT))
        state, _ = apply_payload(state, entries[-1])
    for _ in range(draw(st.integers(0, 40))):
        choice = draw(st.integers(0, 9))
        command = aimed(state, draw) if choice < 6 else None
        if command is not None:
            payload = encode_command(command)
        elif choice == 6 and entries:
            payload = draw(st.sampled_from(entries))
        elif choice == 7:
            payload = draw(st.text(max_size=30))
        else:
            payload = encode_command(draw(commands))
        state, _ = apply_payload(state, payload)
        entries.append(payload)
    return entries


def replay(payloads: list[str]) -> list[ClusterState]:
    """The states a replica goes through, one per payload, starting from empty."""
    state = ClusterState()
    seen = [state]
    for payload in payloads:
        state, _ = apply_payload(state, payload)
        seen.append(state)
    return seen


PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(history=histories())
def test_replicas_applying_the_same_log_agree(history: list[str]) -> None:
    left = ClusterState()
    right = ClusterState()
    for payload in history:
        previous, encoded = left, encode_state(left)
        left, left_result = apply_payload(left, payload)
        # The second replica is restored from a snapshot before every entry, as a replica
        # that joins late or restarts from a Raft snapshot would be.
        right, right_result = apply_payload(decode_state(encode_state(right)), payload)
        assert left_result == right_result
        assert encode_state(left) == encode_state(right)
        assert encode_state(previous) == encoded, "apply mutated its input"


@PROPERTY_SETTINGS
@given(history=histories())
def test_invariants_hold_after_any_history(history: list[str]) -> None:
    states = replay(history)
    for payload, previous, state in zip(history, states[:-1], states[1:], strict=True):
        known = {s.name for s in state.servers}
        for slot in state.slots:
            assert slot.owner is None or slot.owner in known
        for slot in previous.slots:
            assert slot_of(state, slot.name).epoch >= slot.epoch
        for server in previous.servers:
            assert server_of(state, server.name).incarnation >= server.incarnation
        if state is previous:
            continue  # rejected: nothing else to check
        assert state.applied == previous.applied + 1
        assert state.recent_commands[-1] == decode_command(payload).id
        assert len(set(state.recent_commands)) == len(state.recent_commands)
        assert state.decision_seq - previous.decision_seq in (0, 1)
        assert [d.id for d in state.decisions] == [
            f"d{seq:06d}"
            for seq in range(state.decision_seq - len(state.decisions) + 1, state.decision_seq + 1)
        ]
        if previous.bootstrapped:
            assert {s.name for s in state.servers} == {s.name for s in previous.servers}
            assert [s.name for s in state.slots] == [s.name for s in previous.slots]


@PROPERTY_SETTINGS
@given(history=histories())
def test_states_round_trip_through_their_encoding(history: list[str]) -> None:
    for state in replay(history):
        text = encode_state(state)
        assert decode_state(text) == state
        assert decode_state(text.encode()) == state
        assert encode_state(decode_state(text)) == text


@settings(max_examples=300, deadline=None)
@given(command=commands)
def test_commands_round_trip_through_their_encoding(command: Command) -> None:
    payload = encode_command(command)
    assert decode_command(payload) == command
    assert decode_command(payload.encode()) == command
    assert encode_command(decode_command(payload)) == payload


def encode_json(value: Any) -> str:
    return json.dumps(value)


json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
command_kinds = st.sampled_from(
    [
        "bootstrap",
        "server_up",
        "mark_server_failed",
        "assign_slot",
        "slot_serving",
        "renew_lease",
        "release_slot",
        "other",
    ]
)


def mangle(command: Command, drop: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    fields = dataclasses.asdict(command)
    if drop is not None:
        fields.pop(drop, None)
    return {**fields, **extra}


mangled_commands = st.builds(
    mangle,
    commands,
    st.none() | st.sampled_from(["id", "at", "kind", "version", "epoch", "server", "evidence"]),
    st.dictionaries(
        st.sampled_from(["id", "at", "kind", "version", "epoch", "incarnation", "surprise"]),
        json_values | command_kinds,
        max_size=2,
    ),
)
garbage = st.one_of(
    st.text(),
    st.binary(),
    json_values.map(encode_json),
    st.dictionaries(st.just("kind"), command_kinds).map(encode_json),
    mangled_commands.map(encode_json),
    mangled_commands.map(lambda value: encode_json(value).encode()),
)


@settings(max_examples=500, deadline=None)
@given(payload=garbage)
def test_decoding_anything_returns_a_command_or_a_decode_error(payload: str | bytes) -> None:
    try:
        command = decode_command(payload)
    except CommandDecodeError as exc:
        assert str(exc)
        if isinstance(payload, str):
            state = ALL_UP
            after, result = apply_payload(state, payload)
            assert after is state
            assert (result.status, result.stale) == ("rejected", False)
            assert result.reason.startswith(("malformed command", "command of"))
    else:
        assert isinstance(
            command,
            Bootstrap
            | ServerUp
            | MarkServerFailed
            | AssignSlot
            | SlotServing
            | RenewLease
            | ReleaseSlot,
        )


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("", id="empty"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param(b"\xff\xfe\x00", id="invalid-utf8"),
        pytest.param("[" * 5000, id="deep-nesting"),
        pytest.param('{"kind": "server_up"}', id="missing-fields"),
        pytest.param(
            encode_command(BOOT).replace('"kind"', '"surprise":1,"kind"'), id="extra-field"
        ),
        pytest.param(
            encode_command(up("m1", 1)).replace('"incarnation":1', '"incarnation":"1"'),
            id="lax-type",
        ),
        pytest.param(
            encode_command(up("m1", 1)).replace('"version":1', '"version":true'), id="bool-version"
        ),
        pytest.param('{"kind": "server_up", "id": "' + "x" * 70_000 + '"}', id="too-large"),
        pytest.param("\x80\x04\x95", id="pickle-opcodes"),
    ],
)
def test_malformed_payloads_are_rejected_without_changing_state(payload: str | bytes) -> None:
    with pytest.raises(CommandDecodeError):
        decode_command(payload)
    if isinstance(payload, str):
        after, result = apply_payload(ALL_UP, payload)
        assert after is ALL_UP
        assert result.status == "rejected" and not result.stale


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"slots": (SlotSpec("s1", "m1", ("a",)), SlotSpec("s1", "m2", ("b",)))}, "unique"),
        ({"slots": (SlotSpec("s1", "m1", ("a",)), SlotSpec("s2", "m2", ("a",)))}, "one slot"),
        ({"lease_s": -1.0}, "lease_s must be positive"),
        ({"lease_s": 0.0}, "lease_s must be positive"),
    ],
    ids=["duplicate-slot", "tenant-in-two-slots", "negative-lease", "zero-lease"],
)
def test_bootstrap_rejects_inconsistent_specs(change: dict[str, object], reason: str) -> None:
    with pytest.raises(CommandRejected, match=reason):
        apply(EMPTY, dataclasses.replace(BOOT, **change))  # type: ignore[arg-type]


def test_a_snapshot_from_another_schema_or_with_unknown_fields_is_refused() -> None:
    good = encode_state(BOOTED)
    assert decode_state(good) == BOOTED
    for bad in (
        good.replace('"schema":1', '"schema":2'),
        good.replace('"schema":1', '"schema":1,"future_field":1'),
    ):
        with pytest.raises(StateDecodeError):
            decode_state(bad)


def test_the_size_limit_counts_bytes_not_characters() -> None:
    wide = "é" * (MAX_COMMAND_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    with pytest.raises(CommandDecodeError, match="bytes exceeds"):
        decode_command(wide)
