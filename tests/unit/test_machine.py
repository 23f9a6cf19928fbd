"""Unit tests of the replicated state machine: every command kind, every rejection, properties."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
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
    DrainServer,
    DropSuspicion,
    MarkServerFailed,
    ReleaseSlot,
    RenewLease,
    ReportProbe,
    ReturnServer,
    ServerSpec,
    ServerUp,
    SlotServing,
    SlotSpec,
    decode_command,
    encode_command,
)
from consensus.machine import CommandRejected, apply, apply_payload
from consensus.membership import MAX_EVIDENCE_KEYS
from consensus.state import (
    MAX_DECISIONS,
    MAX_FAILURES_KEPT,
    MAX_REMEMBERED_COMMANDS,
    ClusterState,
    Decision,
    ProbeReport,
    ServerRecord,
    SlotRecord,
    StateDecodeError,
    Suspicion,
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


def probe(
    observer: str,
    target: str,
    incarnation: int,
    *,
    reachable: bool = False,
    cid: str | None = None,
    **evidence: Any,
) -> ReportProbe:
    return ReportProbe(
        id=cid or f"probe-{observer}-{target}-{incarnation}-{reachable}",
        at=107.0,
        observer=observer,
        target=target,
        incarnation=incarnation,
        reachable=reachable,
        evidence=evidence,
    )


def drop(target: str, incarnation: int, cid: str | None = None) -> DropSuspicion:
    return DropSuspicion(
        id=cid or f"drop-{target}-{incarnation}",
        at=108.0,
        target=target,
        incarnation=incarnation,
        reason="suspicion window passed",
    )


def return_server(server: str, cid: str | None = None) -> ReturnServer:
    return ReturnServer(
        id=cid or f"return-{server}", at=109.0, server=server, reason="disk replaced"
    )


def report_down(observer: str, **evidence: Any) -> ProbeReport:
    """The report `probe(observer, ..., reachable=False, **evidence)` leaves in a suspicion."""
    return ProbeReport(observer, False, 107.0, evidence)


def report_up(observer: str, **evidence: Any) -> ProbeReport:
    return ProbeReport(observer, True, 107.0, evidence)


EMPTY = ClusterState()
BOOTED = run(EMPTY, BOOT)  # decision d000001
ALL_UP = run(BOOTED, up("m1", 1), up("m2", 1), up("m3", 1))  # d000002..d000004
M2_FAILED = run(ALL_UP, fail("m2", 1))  # d000005; s2 lost
S1_SERVING = run(ALL_UP, serving("s1", "m1", 1))
S1_RELEASED = run(ALL_UP, release("s1", "m1", 1))  # d000005
S1_EPOCH_2 = run(ALL_UP, assign("s1", "m3", 2))  # d000005; m3 active from here on
M3_QUARANTINED = run(ALL_UP, fail("m3", 1), up("m3", 2))  # d000005, d000006
# m1 up, but s1 moved away from it: a spare again.
M1_BACK_IN_POOL = ServerRecord("m1", "spare", "rack-a", state="up", incarnation=1, since=101.0)
M2_SUSPECTED = run(ALL_UP, probe("m1", "m2", 1))  # d000005: m1 cannot reach m2
M2_DISPUTED = run(M2_SUSPECTED, probe("m3", "m2", 1, reachable=True))  # m3 can


def expected(
    start: ClusterState,
    command: Command,
    *,
    servers: Sequence[ServerRecord] = (),
    slots: Sequence[SlotRecord] = (),
    suspicions: tuple[Suspicion, ...] | None = None,
    decision: Decision | None = None,
) -> ClusterState:
    """`start` with records replaced, suspicions set, one decision added and the command counted."""
    state = dataclasses.replace(
        start,
        applied=start.applied + 1,
        recent_commands=(*start.recent_commands, command.id),
    )
    for server in servers:
        assert start.server(server.name) is not None, server.name
        replaced = tuple(server if s.name == server.name else s for s in state.servers)
        state = dataclasses.replace(state, servers=replaced)
    for slot in slots:
        assert start.slot(slot.name) is not None, slot.name
        replaced_slots = tuple(slot if s.name == slot.name else s for s in state.slots)
        state = dataclasses.replace(state, slots=replaced_slots)
    if suspicions is not None:
        state = dataclasses.replace(state, suspicions=suspicions)
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


M2_RETURNED = run(M2_FAILED, return_server("m2"))  # d000006: spare, new, still owns lost s2
M1_OWNS_BOTH = run(ALL_UP, release("s2", "m2", 1), assign("s2", "m1", 2))  # d000005, d000006
SIXTEEN: dict[str, Any] = {f"k{n:02d}": n for n in range(MAX_EVIDENCE_KEYS)}

S1 = SlotRecord("s1", ("acme",), "m1", 1, "assigned", None, 5.0, 0)
S2 = SlotRecord("s2", ("globex", "initech"), "m2", 1, "assigned", None, 5.0, 0)


def lost(slot: SlotRecord) -> SlotRecord:
    return dataclasses.replace(slot, state="lost", address=None)


ACCEPTED = [
    # -- server_up
    pytest.param(
        BOOTED,
        up("m1", 1),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord("m1", "active", "rack-a", state="up", incarnation=1, since=101.0)
            ],
            decision=Decision(
                "d000002", "server_up", 101.0, "m1", {"incarnation": 1, "previous_state": "new"}
            ),
        ),
        id="server_up-new-to-up",
    ),
    pytest.param(
        ALL_UP,
        up("m1", 2),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord("m1", "active", "rack-a", state="up", incarnation=2, since=101.0)
            ],
            decision=Decision(
                "d000005", "server_up", 101.0, "m1", {"incarnation": 2, "previous_state": "up"}
            ),
        ),
        id="server_up-restart-without-suspicion",
    ),
    pytest.param(
        M2_DISPUTED,
        up("m2", 2),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord("m2", "active", "rack-b", state="up", incarnation=2, since=101.0)
            ],
            suspicions=(),
            decision=Decision(
                "d000006",
                "server_refuted",
                101.0,
                "m2",
                {"incarnation": 2, "previous_state": "up"},
            ),
        ),
        id="server_up-refutes-the-open-suspicion",
    ),
    pytest.param(
        M2_SUSPECTED,
        up("m1", 2),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord("m1", "active", "rack-a", state="up", incarnation=2, since=101.0)
            ],
            decision=Decision(
                "d000006", "server_up", 101.0, "m1", {"incarnation": 2, "previous_state": "up"}
            ),
        ),
        id="server_up-leaves-other-suspicions-open",
    ),
    pytest.param(
        M2_FAILED,
        up("m2", 2),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m2",
                    "active",
                    "rack-b",
                    state="quarantined",
                    incarnation=2,
                    since=101.0,
                    failures=(102.0,),
                )
            ],
            decision=Decision(
                "d000006",
                "server_back_quarantined",
                101.0,
                "m2",
                {"incarnation": 2, "previous_state": "failed"},
            ),
        ),
        id="server_up-failed-server-comes-back-quarantined",
    ),
    pytest.param(
        M3_QUARANTINED,
        up("m3", 3),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m3",
                    "spare",
                    "rack-c",
                    state="quarantined",
                    incarnation=3,
                    since=101.0,
                    failures=(102.0,),
                )
            ],
            decision=Decision(
                "d000007",
                "server_back_quarantined",
                101.0,
                "m3",
                {"incarnation": 3, "previous_state": "quarantined"},
            ),
        ),
        id="server_up-quarantined-stays-quarantined",
    ),
    pytest.param(
        M2_RETURNED,
        up("m2", 2),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m2",
                    "spare",
                    "rack-b",
                    state="up",
                    incarnation=2,
                    since=101.0,
                    failures=(102.0,),
                )
            ],
            decision=Decision(
                "d000007", "server_up", 101.0, "m2", {"incarnation": 2, "previous_state": "new"}
            ),
        ),
        id="server_up-returned-server-joins-the-pool",
    ),
    # -- mark_server_failed
    pytest.param(
        ALL_UP,
        fail("m2", 1, probe="timeout", witnesses=["m1", "m3"]),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m2",
                    "active",
                    "rack-b",
                    state="failed",
                    incarnation=1,
                    since=102.0,
                    failures=(102.0,),
                )
            ],
            slots=[lost(S2)],
            decision=Decision(
                "d000005",
                "server_failed",
                102.0,
                "m2",
                {
                    "incarnation": 1,
                    "slots_lost": ["s2"],
                    "probe": "timeout",
                    "witnesses": ["m1", "m3"],
                },
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
            servers=[
                ServerRecord(
                    "m2",
                    "active",
                    "rack-b",
                    state="failed",
                    incarnation=0,
                    since=102.0,
                    failures=(102.0,),
                )
            ],
            slots=[lost(S2)],
            decision=Decision(
                "d000002",
                "server_failed",
                102.0,
                "m2",
                {"incarnation": 0, "slots_lost": ["s2"]},
            ),
        ),
        id="mark_server_failed-a-server-that-never-came-up",
    ),
    pytest.param(
        ALL_UP,
        fail("m2", 3),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m2",
                    "active",
                    "rack-b",
                    state="failed",
                    incarnation=3,
                    since=102.0,
                    failures=(102.0,),
                )
            ],
            slots=[lost(S2)],
            decision=Decision(
                "d000005",
                "server_failed",
                102.0,
                "m2",
                {"incarnation": 3, "slots_lost": ["s2"]},
            ),
        ),
        id="mark_server_failed-newer-incarnation-is-kept",
    ),
    pytest.param(
        run(S1_SERVING, renew("s1", "m1", 1)),
        fail("m1", 1),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m1",
                    "active",
                    "rack-a",
                    state="failed",
                    incarnation=1,
                    since=102.0,
                    failures=(102.0,),
                )
            ],
            # The lease count stays: the leader measures the lease from the last renewal.
            slots=[SlotRecord("s1", ("acme",), "m1", 1, "lost", None, 5.0, 1)],
            decision=Decision(
                "d000005",
                "server_failed",
                102.0,
                "m1",
                {"incarnation": 1, "slots_lost": ["s1"]},
            ),
        ),
        id="mark_server_failed-serving-slot-is-lost",
    ),
    pytest.param(
        M1_OWNS_BOTH,
        fail("m1", 1),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m1",
                    "active",
                    "rack-a",
                    state="failed",
                    incarnation=1,
                    since=102.0,
                    failures=(102.0,),
                )
            ],
            slots=[
                lost(S1),
                SlotRecord("s2", ("globex", "initech"), "m1", 2, "lost", None, 5.0, 0),
            ],
            decision=Decision(
                "d000007",
                "server_failed",
                102.0,
                "m1",
                {"incarnation": 1, "slots_lost": ["s1", "s2"]},
            ),
        ),
        id="mark_server_failed-every-held-slot-is-lost",
    ),
    pytest.param(
        S1_RELEASED,
        fail("m1", 1),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m1",
                    "active",
                    "rack-a",
                    state="failed",
                    incarnation=1,
                    since=102.0,
                    failures=(102.0,),
                )
            ],
            decision=Decision(
                "d000006",
                "server_failed",
                102.0,
                "m1",
                {"incarnation": 1, "slots_lost": []},
            ),
        ),
        id="mark_server_failed-released-slot-stays-released",
    ),
    pytest.param(
        M2_DISPUTED,
        fail("m2", 1),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m2",
                    "active",
                    "rack-b",
                    state="failed",
                    incarnation=1,
                    since=102.0,
                    failures=(102.0,),
                )
            ],
            slots=[lost(S2)],
            suspicions=(),
            decision=Decision(
                "d000006",
                "server_failed",
                102.0,
                "m2",
                {"incarnation": 1, "slots_lost": ["s2"]},
            ),
        ),
        id="mark_server_failed-closes-the-suspicion",
    ),
    pytest.param(
        M2_RETURNED,
        fail("m2", 1, cid="fail-m2-again"),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m2",
                    "spare",
                    "rack-b",
                    state="failed",
                    incarnation=1,
                    since=102.0,
                    failures=(102.0, 102.0),
                )
            ],
            decision=Decision(
                "d000007",
                "server_failed",
                102.0,
                "m2",
                {"incarnation": 1, "slots_lost": []},
            ),
        ),
        id="mark_server_failed-returned-server-that-never-joined",
    ),
    # -- assign_slot
    pytest.param(
        ALL_UP,
        assign("s1", "m3", 2, load=0.5),
        lambda s, c: expected(
            s,
            c,
            servers=[
                M1_BACK_IN_POOL,  # s1 moved away
                ServerRecord("m3", "active", "rack-c", state="up", incarnation=1, since=101.0),
            ],
            slots=[SlotRecord("s1", ("acme",), "m3", 2, "assigned", None, 5.0, 0)],
            decision=Decision(
                "d000005",
                "slot_assigned",
                103.0,
                "s1",
                {
                    "owner": "m3",
                    "previous_owner": "m1",
                    "epoch": 2,
                    "reason": "owner failed",
                    "load": 0.5,
                },
            ),
        ),
        id="assign_slot-next-epoch-to-a-spare-makes-it-active",
    ),
    pytest.param(
        run(S1_SERVING, renew("s1", "m1", 1)),
        assign("s1", "m3", 2),
        lambda s, c: expected(
            s,
            c,
            servers=[
                M1_BACK_IN_POOL,  # s1 moved away
                ServerRecord("m3", "active", "rack-c", state="up", incarnation=1, since=101.0),
            ],
            slots=[SlotRecord("s1", ("acme",), "m3", 2, "assigned", None, 5.0, 0)],
            decision=Decision(
                "d000005",
                "slot_assigned",
                103.0,
                "s1",
                {"owner": "m3", "previous_owner": "m1", "epoch": 2, "reason": "owner failed"},
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
            servers=[M1_BACK_IN_POOL],  # released s1, serves nothing now
            slots=[SlotRecord("s1", ("acme",), "m2", 2, "assigned", None, 5.0, 0)],
            decision=Decision(
                "d000006",
                "slot_assigned",
                103.0,
                "s1",
                {"owner": "m2", "previous_owner": "m1", "epoch": 2, "reason": "owner failed"},
            ),
        ),
        id="assign_slot-released-slot-to-an-active-server",
    ),
    pytest.param(
        M2_FAILED,
        assign("s2", "m3", 2),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord("m3", "active", "rack-c", state="up", incarnation=1, since=101.0)
            ],
            slots=[SlotRecord("s2", ("globex", "initech"), "m3", 2, "assigned", None, 5.0, 0)],
            decision=Decision(
                "d000006",
                "slot_assigned",
                103.0,
                "s2",
                {"owner": "m3", "previous_owner": "m2", "epoch": 2, "reason": "owner failed"},
            ),
        ),
        id="assign_slot-lost-slot",
    ),
    pytest.param(
        run(M3_QUARANTINED, return_server("m3")),
        assign("s1", "m3", 2),
        lambda s, c: expected(
            s,
            c,
            servers=[
                M1_BACK_IN_POOL,  # s1 moved away
                ServerRecord(
                    "m3",
                    "active",
                    "rack-c",
                    state="up",
                    incarnation=2,
                    since=109.0,
                    failures=(102.0,),
                ),
            ],
            slots=[SlotRecord("s1", ("acme",), "m3", 2, "assigned", None, 5.0, 0)],
            decision=Decision(
                "d000008",
                "slot_assigned",
                103.0,
                "s1",
                {"owner": "m3", "previous_owner": "m1", "epoch": 2, "reason": "owner failed"},
            ),
        ),
        id="assign_slot-to-a-returned-server",
    ),
    # -- slot_serving, renew_lease, release_slot
    pytest.param(
        ALL_UP,
        serving("s1", "m1", 1),
        lambda s, c: expected(
            s, c, slots=[SlotRecord("s1", ("acme",), "m1", 1, "serving", "10.0.0.1:8080", 5.0, 0)]
        ),
        id="slot_serving-no-decision",
    ),
    pytest.param(
        S1_SERVING,
        serving("s1", "m1", 1, address="10.0.0.9:8080"),
        lambda s, c: expected(
            s, c, slots=[SlotRecord("s1", ("acme",), "m1", 1, "serving", "10.0.0.9:8080", 5.0, 0)]
        ),
        id="slot_serving-new-address",
    ),
    pytest.param(
        S1_SERVING,
        renew("s1", "m1", 1),
        lambda s, c: expected(
            s, c, slots=[SlotRecord("s1", ("acme",), "m1", 1, "serving", "10.0.0.1:8080", 5.0, 1)]
        ),
        id="renew_lease-counts-renewals",
    ),
    pytest.param(
        ALL_UP,
        renew("s1", "m1", 1),
        lambda s, c: expected(
            s, c, slots=[SlotRecord("s1", ("acme",), "m1", 1, "assigned", None, 5.0, 1)]
        ),
        id="renew_lease-before-serving",
    ),
    pytest.param(
        M2_SUSPECTED,
        renew("s2", "m2", 1),
        lambda s, c: expected(
            s, c, slots=[SlotRecord("s2", ("globex", "initech"), "m2", 1, "assigned", None, 5.0, 1)]
        ),
        id="renew_lease-while-suspected",
    ),
    pytest.param(
        S1_SERVING,
        release("s1", "m1", 1),
        lambda s, c: expected(
            s,
            c,
            slots=[SlotRecord("s1", ("acme",), "m1", 1, "released", None, 5.0, 0)],
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
    # -- report_probe
    pytest.param(
        ALL_UP,
        probe("m1", "m2", 1, probe="timeout"),
        lambda s, c: expected(
            s,
            c,
            suspicions=(Suspicion("m2", 1, 107.0, (report_down("m1", probe="timeout"),)),),
            decision=Decision(
                "d000005",
                "server_suspected",
                107.0,
                "m2",
                {"observer": "m1", "incarnation": 1, "probe": "timeout"},
            ),
        ),
        id="report_probe-unreachable-opens-a-suspicion",
    ),
    pytest.param(
        ALL_UP,
        probe("m1", "m2", 3),
        lambda s, c: expected(
            s,
            c,
            suspicions=(Suspicion("m2", 1, 107.0, (report_down("m1"),)),),
            decision=Decision(
                "d000005",
                "server_suspected",
                107.0,
                "m2",
                {"observer": "m1", "incarnation": 1},
            ),
        ),
        id="report_probe-newer-incarnation-suspects-the-agreed-one",
    ),
    pytest.param(
        ALL_UP,
        probe("m1", "m2", 1, **SIXTEEN),
        lambda s, c: expected(
            s,
            c,
            suspicions=(Suspicion("m2", 1, 107.0, (report_down("m1", **SIXTEEN),)),),
            decision=Decision(
                "d000005",
                "server_suspected",
                107.0,
                "m2",
                {"observer": "m1", "incarnation": 1, **SIXTEEN},
            ),
        ),
        id="report_probe-evidence-at-the-key-limit",
    ),
    pytest.param(
        M2_SUSPECTED,
        probe("m1", "m3", 1),
        lambda s, c: expected(
            s,
            c,
            suspicions=(
                Suspicion("m2", 1, 107.0, (report_down("m1"),)),
                Suspicion("m3", 1, 107.0, (report_down("m1"),)),
            ),
            decision=Decision(
                "d000006",
                "server_suspected",
                107.0,
                "m3",
                {"observer": "m1", "incarnation": 1},
            ),
        ),
        id="report_probe-a-second-target",
    ),
    pytest.param(
        M2_SUSPECTED,
        probe("m3", "m2", 1, reachable=True),
        lambda s, c: expected(
            s,
            c,
            suspicions=(Suspicion("m2", 1, 107.0, (report_down("m1"), report_up("m3"))),),
        ),
        id="report_probe-reachable-joins-without-a-decision",
    ),
    pytest.param(
        M2_SUSPECTED,
        probe("m3", "m2", 2),
        lambda s, c: expected(
            s,
            c,
            suspicions=(Suspicion("m2", 1, 107.0, (report_down("m1"), report_down("m3"))),),
        ),
        id="report_probe-unreachable-joins-at-a-newer-incarnation",
    ),
    pytest.param(
        M2_DISPUTED,
        probe("m1", "m2", 1, reachable=True),
        lambda s, c: expected(
            s,
            c,
            suspicions=(Suspicion("m2", 1, 107.0, (report_up("m3"), report_up("m1"))),),
        ),
        id="report_probe-replaces-the-observers-previous-report",
    ),
    # -- drop_suspicion
    pytest.param(
        M2_DISPUTED,
        drop("m2", 1),
        lambda s, c: expected(
            s,
            c,
            suspicions=(),
            decision=Decision(
                "d000006",
                "suspicion_dropped",
                108.0,
                "m2",
                {
                    "reason": "suspicion window passed",
                    "unreachable_by": ["m1"],
                    "reachable_by": ["m3"],
                },
            ),
        ),
        id="drop_suspicion",
    ),
    pytest.param(
        run(M2_SUSPECTED, probe("m2", "m3", 1)),
        drop("m2", 1),
        lambda s, c: expected(
            s,
            c,
            suspicions=(Suspicion("m3", 1, 107.0, (report_down("m2"),)),),
            decision=Decision(
                "d000007",
                "suspicion_dropped",
                108.0,
                "m2",
                {
                    "reason": "suspicion window passed",
                    "unreachable_by": ["m1"],
                    "reachable_by": [],
                },
            ),
        ),
        id="drop_suspicion-leaves-the-others",
    ),
    # -- return_server
    pytest.param(
        M2_FAILED,
        return_server("m2"),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m2",
                    "spare",
                    "rack-b",
                    state="new",
                    incarnation=1,
                    since=109.0,
                    failures=(102.0,),
                )
            ],
            decision=Decision(
                "d000006",
                "server_returned",
                109.0,
                "m2",
                {"reason": "disk replaced", "previous_state": "failed", "state": "new"},
            ),
        ),
        id="return_server-failed-waits-for-its-agent",
    ),
    pytest.param(
        M3_QUARANTINED,
        return_server("m3"),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m3",
                    "spare",
                    "rack-c",
                    state="up",
                    incarnation=2,
                    since=109.0,
                    failures=(102.0,),
                )
            ],
            decision=Decision(
                "d000007",
                "server_returned",
                109.0,
                "m3",
                {"reason": "disk replaced", "previous_state": "quarantined", "state": "up"},
            ),
        ),
        id="return_server-quarantined-is-up-at-once",
    ),
    pytest.param(
        run(M2_FAILED, up("m2", 2)),
        return_server("m2"),
        lambda s, c: expected(
            s,
            c,
            servers=[
                ServerRecord(
                    "m2",
                    "spare",
                    "rack-b",
                    state="up",
                    incarnation=2,
                    since=109.0,
                    failures=(102.0,),
                )
            ],
            decision=Decision(
                "d000007",
                "server_returned",
                109.0,
                "m2",
                {"reason": "disk replaced", "previous_state": "quarantined", "state": "up"},
            ),
        ),
        id="return_server-an-active-server-becomes-a-spare",
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
            probe("m1", "m2", 0),
            drop("m2", 0),
            return_server("m2"),
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
    pytest.param(
        ALL_UP, probe("m1", "m9", 1), "unknown server 'm9'", False, id="report_probe-unknown-target"
    ),
    pytest.param(
        ALL_UP,
        probe("m9", "m1", 1),
        "unknown server 'm9'",
        False,
        id="report_probe-unknown-observer",
    ),
    pytest.param(
        ALL_UP, return_server("m9"), "unknown server 'm9'", False, id="return_server-unknown"
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
        M3_QUARANTINED,
        up("m3", 2, cid="up-again"),
        "not newer than 2",
        True,
        id="server_up-quarantined-at-the-same-incarnation",
    ),
    pytest.param(
        M2_RETURNED,
        up("m2", 1, cid="up-again"),
        "not newer than 1",
        True,
        id="server_up-returned-at-the-failed-incarnation",
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
        fail("m3", 2, cid="fail-again"),
        "m3 is already quarantined",
        True,
        id="mark_server_failed-quarantined",
    ),
    pytest.param(
        M3_QUARANTINED,
        fail("m3", 1, cid="fail-again"),
        "refuted with incarnation 2",
        True,
        id="mark_server_failed-quarantined-at-its-failed-incarnation",
    ),
    pytest.param(
        M2_FAILED,
        fail("m2", 5),
        "m2 is already failed",
        True,
        id="mark_server_failed-already-failed-newer-incarnation",
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
    pytest.param(
        BOOTED,
        assign("s1", "m3", 2),
        "m3 is new and cannot own a slot",
        False,
        id="assign_slot-to-new-server",
    ),
    pytest.param(
        M2_RETURNED,
        assign("s1", "m2", 2),
        "m2 is new and cannot own a slot",
        False,
        id="assign_slot-to-returned-server-before-it-joins",
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
    # -- slot_serving / renew_lease / release_slot: a lost slot, an owner that is not up
    *(
        case
        for kind, make in (("slot_serving", serving), ("renew_lease", renew))
        for case in (
            pytest.param(
                M2_FAILED, make("s2", "m2", 1), "s2 was lost at epoch 1", False, id=f"{kind}-lost"
            ),
            pytest.param(
                run(M2_RETURNED, up("m2", 2)),
                make("s2", "m2", 1),
                "s2 was lost at epoch 1",
                False,
                id=f"{kind}-lost-stays-lost-after-return",
            ),
            pytest.param(
                BOOTED, make("s1", "m1", 1), "owner m1 of s1 is new", False, id=f"{kind}-owner-new"
            ),
        )
    ),
    pytest.param(
        M2_FAILED, release("s2", "m2", 1), "s2 is already lost", True, id="release_slot-lost"
    ),
    # -- report_probe
    pytest.param(
        ALL_UP,
        probe("m1", "m1", 1),
        "a server does not report on itself",
        False,
        id="report_probe-on-itself",
    ),
    pytest.param(BOOTED, probe("m1", "m2", 0), "m2 is new", True, id="report_probe-target-new"),
    pytest.param(
        M2_FAILED, probe("m1", "m2", 1), "m2 is failed", True, id="report_probe-target-failed"
    ),
    pytest.param(
        M3_QUARANTINED,
        probe("m1", "m3", 2),
        "m3 is quarantined",
        True,
        id="report_probe-target-quarantined",
    ),
    pytest.param(
        run(ALL_UP, up("m2", 2)),
        probe("m1", "m2", 1),
        "m2 is at incarnation 2",
        True,
        id="report_probe-target-refuted",
    ),
    pytest.param(
        ALL_UP,
        probe("m1", "m2", 1, reachable=True),
        "no suspicion of m2",
        True,
        id="report_probe-reachable-without-suspicion",
    ),
    pytest.param(
        ALL_UP,
        probe("m1", "m2", 1, **SIXTEEN, one_more=1),
        f"evidence has more than {MAX_EVIDENCE_KEYS} keys",
        False,
        id="report_probe-too-much-evidence",
    ),
    pytest.param(
        M2_SUSPECTED,
        probe("m3", "m2", 1, **SIXTEEN, one_more=1),
        f"evidence has more than {MAX_EVIDENCE_KEYS} keys",
        False,
        id="report_probe-too-much-evidence-joining",
    ),
    # -- drop_suspicion
    pytest.param(
        ALL_UP, drop("m2", 1), "no such suspicion of m2", True, id="drop_suspicion-none-open"
    ),
    pytest.param(
        ALL_UP, drop("m9", 1), "no such suspicion of m9", True, id="drop_suspicion-unknown-target"
    ),
    pytest.param(
        M2_SUSPECTED,
        drop("m2", 0),
        "no such suspicion of m2",
        True,
        id="drop_suspicion-older-incarnation",
    ),
    pytest.param(
        M2_SUSPECTED,
        drop("m2", 2),
        "no such suspicion of m2",
        True,
        id="drop_suspicion-newer-incarnation",
    ),
    pytest.param(
        run(M2_SUSPECTED, up("m2", 2)),
        drop("m2", 1),
        "no such suspicion of m2",
        True,
        id="drop_suspicion-after-refutation",
    ),
    pytest.param(
        run(M2_SUSPECTED, drop("m2", 1)),
        drop("m2", 1, cid="drop-again"),
        "no such suspicion of m2",
        True,
        id="drop_suspicion-twice",
    ),
    # -- return_server
    pytest.param(
        ALL_UP,
        return_server("m1"),
        "m1 is up, not out of the pool",
        False,
        id="return_server-up",
    ),
    pytest.param(
        BOOTED,
        return_server("m1"),
        "m1 is new, not out of the pool",
        False,
        id="return_server-new",
    ),
    pytest.param(
        M2_RETURNED,
        return_server("m2", cid="return-again"),
        "m2 is new, not out of the pool",
        False,
        id="return_server-twice",
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
            (ALL_UP, probe("m1", "m2", 1)),
            (M2_SUSPECTED, drop("m2", 1)),
            (M2_FAILED, return_server("m2")),
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
            {
                "owner": "m3",
                "epoch": 2,
                "previous_owner": "m1",
                "reason": "owner failed",
                "load": 1,
            },
            id="assign_slot",
        ),
        pytest.param(
            ALL_UP,
            MarkServerFailed(
                id="fail-lying",
                at=102.0,
                server="m2",
                incarnation=1,
                evidence={"incarnation": 7, "slots_lost": ["s1"], "probe": "timeout"},
            ),
            {"incarnation": 1, "slots_lost": ["s2"], "probe": "timeout"},
            id="mark_server_failed",
        ),
        pytest.param(
            ALL_UP,
            ReportProbe(
                id="probe-lying",
                at=107.0,
                observer="m1",
                target="m2",
                incarnation=1,
                reachable=False,
                evidence={"observer": "m3", "incarnation": 7, "rtt": "timeout"},
            ),
            {"observer": "m1", "incarnation": 1, "rtt": "timeout"},
            id="report_probe",
        ),
    ],
)
def test_recorded_facts_win_over_submitter_evidence(
    start: ClusterState, command: Command, facts: dict[str, Any]
) -> None:
    assert apply(start, command).decisions[-1].evidence == facts


def test_a_failed_verdict_keeps_the_highest_incarnation_seen() -> None:
    """Observers saw incarnation 2 before its ServerUp was committed: that life is failed, and
    only a restart with a higher incarnation is heard from again, and then only quarantined."""
    failed = run(ALL_UP, fail("m2", 2))
    assert server_of(failed, "m2") == ServerRecord(
        "m2", "active", "rack-b", "failed", 2, since=102.0, failures=(102.0,)
    )

    with pytest.raises(CommandRejected, match="incarnation 2 is not newer than 2") as raised:
        apply(failed, up("m2", 2))

    assert raised.value.stale
    back = run(failed, up("m2", 3))
    assert server_of(back, "m2") == ServerRecord(
        "m2", "active", "rack-b", "quarantined", 3, since=101.0, failures=(102.0,)
    )


def test_a_failed_server_is_replaced_and_returns_only_as_a_spare() -> None:
    """The whole story of one failure, as the leader and the agents would commit it."""
    suspected = run(ALL_UP, serving("s2", "m2", 1), probe("m1", "m2", 1))
    confirmed = run(suspected, probe("m3", "m2", 1))
    assert confirmed.suspicion("m2") == Suspicion(
        "m2", 1, 107.0, (report_down("m1"), report_down("m3"))
    )

    failed = run(confirmed, fail("m2", 1, unreachable_by=["m1", "m3"]))
    assert failed.suspicions == ()
    assert slot_of(failed, "s2") == SlotRecord(
        "s2", ("globex", "initech"), "m2", 1, "lost", None, 5.0, 0
    )
    # The failed owner can renew nothing: its lease runs out and fences it.
    for refused in (renew("s2", "m2", 1), serving("s2", "m2", 1, "10.0.0.2:8080")):
        with pytest.raises(CommandRejected, match="s2 was lost at epoch 1"):
            apply(failed, refused)

    replaced = run(failed, assign("s2", "m3", 2), serving("s2", "m3", 2, "10.0.0.3:8080"))
    assert server_of(replaced, "m3").role == "active"
    assert slot_of(replaced, "s2").address == "10.0.0.3:8080"

    # The old agent restarts: it is quarantined and its old epoch is fenced.
    back = run(replaced, up("m2", 2))
    assert server_of(back, "m2").state == "quarantined"
    with pytest.raises(CommandRejected, match="epoch 1 is older than 2") as raised:
        apply(back, renew("s2", "m2", 1, cid="renew-after-restart"))
    assert raised.value.stale
    with pytest.raises(CommandRejected, match="m2 is quarantined and cannot own a slot"):
        apply(back, assign("s1", "m2", 2))

    returned = run(back, return_server("m2"))
    # Back in the pool, it keeps its verdicts: failing again soon would make it a flapper.
    assert server_of(returned, "m2") == ServerRecord(
        "m2", "spare", "rack-b", "up", 2, since=109.0, failures=(102.0,)
    )
    assert [d.kind for d in returned.decisions[len(ALL_UP.decisions) :]] == [
        "server_suspected",
        "server_failed",
        "slot_assigned",
        "slot_serving",
        "server_back_quarantined",
        "server_returned",
    ]


# ------------------------------------------------------------------ since and failures


def drain(server: str) -> DrainServer:
    return DrainServer(id=f"drain-{server}", at=110.0, server=server, reason="kernel upgrade")


@pytest.mark.parametrize(
    ("start", "command", "name", "since", "failures"),
    [
        pytest.param(BOOTED, up("m1", 1), "m1", 101.0, (), id="joining-new-to-up"),
        pytest.param(
            dataclasses.replace(
                ALL_UP, servers=tuple(dataclasses.replace(s, since=50.0) for s in ALL_UP.servers)
            ),
            up("m1", 2),
            "m1",
            50.0,
            (),
            id="restart-up-to-up-keeps-since",
        ),
        pytest.param(M2_DISPUTED, up("m2", 2), "m2", 101.0, (), id="refutation-keeps-since"),
        pytest.param(ALL_UP, fail("m2", 1), "m2", 102.0, (102.0,), id="verdict"),
        pytest.param(M2_FAILED, up("m2", 2), "m2", 101.0, (102.0,), id="back-quarantined"),
        pytest.param(
            run(M2_FAILED, up("m2", 2, cid="first-back")),
            dataclasses.replace(up("m2", 3), at=140.0),
            "m2",
            101.0,
            (102.0,),
            id="restart-while-quarantined-keeps-since",
        ),
        pytest.param(
            M3_QUARANTINED, return_server("m3"), "m3", 109.0, (102.0,), id="return-keeps-failures"
        ),
        pytest.param(M2_FAILED, return_server("m2"), "m2", 109.0, (102.0,), id="return-of-failed"),
        pytest.param(ALL_UP, drain("m1"), "m1", 110.0, (), id="drain"),
        pytest.param(
            run(ALL_UP, drain("m1"), release("s1", "m1", 1)),
            return_server("m1"),
            "m1",
            109.0,
            (),
            id="drain-ends-by-return",
        ),
        pytest.param(ALL_UP, assign("s1", "m3", 2), "m3", 101.0, (), id="role-change-only"),
    ],
)
def test_since_moves_with_the_state_and_failures_with_each_verdict(
    start: ClusterState,
    command: Command,
    name: str,
    since: float,
    failures: tuple[float, ...],
) -> None:
    record = server_of(apply(start, command), name)
    assert (record.since, record.failures) == (since, failures)


def test_failures_keep_only_the_latest_verdicts() -> None:
    """Ten fail, restart, return cycles of m2: the last MAX_FAILURES_KEPT verdicts remain."""
    state = ALL_UP
    verdicts = [200.0 + 10 * i for i in range(10)]
    for i, at in enumerate(verdicts):
        state = run(
            state,
            dataclasses.replace(fail("m2", i + 1, cid=f"fail-{i}"), at=at),
            dataclasses.replace(up("m2", i + 2), at=at + 1),
            dataclasses.replace(return_server("m2", cid=f"return-{i}"), at=at + 5),
        )
        assert server_of(state, "m2").failures == tuple(verdicts[: i + 1][-MAX_FAILURES_KEPT:])
    m2 = server_of(state, "m2")
    assert MAX_FAILURES_KEPT == 8
    assert m2.failures == tuple(verdicts[2:])
    assert (m2.state, m2.incarnation, m2.since) == ("up", 11, 295.0)


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
    st.builds(
        ReportProbe,
        id=ids,
        at=ats,
        observer=servers,
        target=servers,
        incarnation=small,
        reachable=st.booleans(),
        evidence=evidence,
        version=versions,
    ),
    st.builds(
        DropSuspicion,
        id=ids,
        at=ats,
        target=servers,
        incarnation=small,
        reason=reasons,
        version=versions,
    ),
    st.builds(ReturnServer, id=ids, at=ats, server=servers, reason=reasons, version=versions),
)


# Weighted so that servers stay up long enough to be suspected, and slots to be served.
AIMED_KINDS = ("up", "up", "fail", "assign", "drop", "drop", "return") + ("claim", "probe") * 3


def aimed(state: ClusterState, draw: st.DrawFn) -> Command | None:
    """A command aimed at the current state (right epoch, owner and incarnation, off by one at
    times)."""
    if not state.servers:
        return None
    suspected = [s for s in state.servers if state.suspicion(s.name) is not None]
    # A third of the time about a suspected server: to refute, fail, join or drop it.
    if suspected and not draw(st.integers(0, 2)):
        server = draw(st.sampled_from(suspected))
    else:
        server = draw(st.sampled_from(state.servers))
    common: dict[str, Any] = {"id": draw(ids), "at": draw(ats), "version": draw(versions)}
    kind = draw(st.sampled_from(AIMED_KINDS))
    if kind == "up":
        return ServerUp(**common, server=server.name, incarnation=server.incarnation + draw(small))
    if kind == "fail":
        incarnation = server.incarnation + draw(st.sampled_from([0, 0, 1, -1]))
        return MarkServerFailed(**common, server=server.name, incarnation=incarnation)
    if kind in ("probe", "drop", "return"):
        return aimed_at_membership(state, draw, kind, server, common)
    if not state.slots:
        return None
    slot = draw(st.sampled_from(state.slots))
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
    claims: list[Command] = [
        SlotServing(**claim, address="10.0.0.1:80"),
        SlotServing(**claim, address="10.0.0.2:80"),
        RenewLease(**claim),
        ReleaseSlot(**claim, reason="no disk"),
    ]
    return draw(st.sampled_from(claims))


def aimed_at_membership(
    state: ClusterState, draw: st.DrawFn, kind: str, server: ServerRecord, common: dict[str, Any]
) -> Command:
    """Probe reports, dropped suspicions and returns, mostly about servers they can apply to."""
    if kind == "probe":
        up = [s for s in state.servers if s.name != server.name and s.state == "up"]
        others = up or [s for s in state.servers if s.name != server.name] or [server]
        return ReportProbe(
            **common,
            observer=draw(st.sampled_from(others)).name,
            target=server.name,
            incarnation=server.incarnation + draw(st.sampled_from([0, 0, 0, 1, -1])),
            reachable=draw(st.booleans()),
            evidence=draw(evidence),
        )
    if kind == "drop":
        suspicion = state.suspicion(server.name)
        incarnation = server.incarnation if suspicion is None else suspicion.incarnation
        return DropSuspicion(
            **common,
            target=server.name,
            incarnation=incarnation + draw(st.sampled_from([0, 0, 0, 1, -1])),
            reason="suspicion window passed",
        )
    out = [s for s in state.servers if s.state in ("failed", "quarantined")]
    target = server
    if out and draw(small) > 0:  # mostly a server that can be returned
        target = draw(st.sampled_from(out))
    return ReturnServer(**common, server=target.name, reason="repaired")


@st.composite
def histories(draw: st.DrawFn) -> list[str]:
    """Log entries as a client population might submit them: mostly commands aimed at the state
    they see, some blind ones, some exact replays, some garbage. A replica follows along."""
    state = ClusterState()
    entries: list[str] = []
    if draw(st.integers(0, 3)):
        entries.append(encode_command(BOOT))
        state, _ = apply_payload(state, entries[-1])
        if draw(st.integers(0, 2)):  # most start with every agent joined, as ALL_UP does
            entries.extend(encode_command(up(s.name, 1)) for s in BOOT.servers)
            state = replay(entries)[-1]
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


HELD: tuple[str, ...] = ("assigned", "serving")
SILENT_KINDS = frozenset({"renew_lease"})  # accepted without a decision


def assert_consistent(state: ClusterState) -> None:
    """What apply guarantees of every state it produces, whatever the history."""
    servers = {s.name: s for s in state.servers}
    for slot in state.slots:
        assert slot.owner is None or slot.owner in servers
        assert (slot.address is not None) == (slot.state == "serving")
        if slot.state in HELD:
            assert slot.owner is not None
            owner = servers[slot.owner]
            # A verdict turns the slots it held into lost ones; nothing hands it new ones.
            assert owner.state not in ("failed", "quarantined"), (owner, slot)
            assert owner.role == "active", (owner, slot)
    targets = [s.target for s in state.suspicions]
    assert len(set(targets)) == len(targets), "more than one suspicion of a server"
    for suspicion in state.suspicions:
        # Failing or refuting closes a suspicion, and nothing else changes an up server.
        target = servers[suspicion.target]
        assert (target.state, target.incarnation) == ("up", suspicion.incarnation)
        observers = [r.observer for r in suspicion.reports]
        assert observers, "a suspicion without reports"
        assert len(set(observers)) == len(observers), "two reports from one observer"
        assert set(observers) <= servers.keys() - {suspicion.target}


def assert_step(previous: ClusterState, state: ClusterState, command: Command) -> None:
    """What one accepted command changes, and what it leaves alone."""
    assert state.applied == previous.applied + 1
    assert state.recent_commands[-1] == command.id
    assert len(set(state.recent_commands)) == len(state.recent_commands)
    decided = state.decision_seq - previous.decision_seq
    if command.kind in SILENT_KINDS:
        assert decided == 0
    elif isinstance(command, SlotServing):
        # Only the first serving of a moved slot closes an incident with a decision.
        slot = previous.slot(command.slot)
        assert slot is not None
        assert decided == int(slot.state == "assigned" and slot.epoch > 1)
    elif isinstance(command, ReportProbe):
        assert decided == int(previous.suspicion(command.target) is None)
    else:
        assert decided == 1
    assert [d.id for d in state.decisions] == [
        f"d{seq:06d}"
        for seq in range(state.decision_seq - len(state.decisions) + 1, state.decision_seq + 1)
    ]
    if not previous.bootstrapped:
        return
    assert {s.name for s in state.servers} == {s.name for s in previous.servers}
    assert [s.name for s in state.slots] == [s.name for s in previous.slots]
    for before in previous.slots:
        moved = isinstance(command, AssignSlot) and command.slot == before.name
        assert slot_of(state, before.name).epoch == before.epoch + int(moved)
    for before in previous.servers:
        after = server_of(state, before.name)
        # `since` is the time of the last change of state; a verdict adds to the failures.
        assert after.since == (command.at if after.state != before.state else before.since)
        judged = isinstance(command, MarkServerFailed) and command.server == before.name
        added = (command.at,) if judged else ()
        assert after.failures == (*before.failures, *added)[-MAX_FAILURES_KEPT:]
    if isinstance(command, MarkServerFailed):
        held = [s.name for s in previous.slots_owned_by(command.server) if s.state in HELD]
        assert server_of(state, command.server).state == "failed"
        assert state.decisions[-1].evidence["slots_lost"] == held
        assert state.suspicion(command.server) is None
        assert all(slot_of(state, name).state == "lost" for name in held)


@PROPERTY_SETTINGS
@given(history=histories())
def test_invariants_hold_after_any_history(history: list[str]) -> None:
    states = replay(history)
    for payload, previous, state in zip(history, states[:-1], states[1:], strict=True):
        assert_consistent(state)
        for slot in previous.slots:
            assert slot_of(state, slot.name).epoch >= slot.epoch
        for server in previous.servers:
            assert server_of(state, server.name).incarnation >= server.incarnation
        if state is previous:
            continue  # rejected: nothing else to check
        assert_step(previous, state, decode_command(payload))


def test_histories_reach_the_new_commands() -> None:
    """The properties above are only as good as the states the histories reach. Derandomized,
    so that a change to the strategies, not luck, is what can make this fail."""
    reached: set[str] = set()

    @settings(
        max_examples=800,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(history=histories())
    def collect(history: list[str]) -> None:
        for state in replay(history):
            reached.update(d.kind for d in state.decisions)
            reached.update(f"slot-{s.state}" for s in state.slots)
            if any(len(s.reports) > 1 for s in state.suspicions):
                reached.add("suspicion-with-several-reports")

    collect()
    assert reached >= {
        "server_suspected",
        "server_refuted",
        "server_failed",
        "server_back_quarantined",
        "server_returned",
        "suspicion_dropped",
        "slot_assigned",
        "slot-lost",
        "slot-serving",
        "suspicion-with-several-reports",
    }


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
        "report_probe",
        "drop_suspicion",
        "return_server",
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
    st.none()
    | st.sampled_from(
        ["id", "at", "kind", "version", "epoch", "server", "evidence", "target", "reachable"]
    ),
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
            | ReleaseSlot
            | ReportProbe
            | DropSuspicion
            | ReturnServer,
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


def test_a_routine_probe_does_not_replace_a_confirm_probes_vote() -> None:
    """A witness keeps probing a suspected server on its routine round; those later reports
    must not wipe the confirm probe's vote (or a dead server could wait out the suspicion)."""
    confirmed = run(M2_SUSPECTED, probe("m3", "m2", 1, cid="c-m3", kind="confirm", attempt=3))
    with pytest.raises(CommandRejected, match="m3 already confirmed on m2") as raised:
        apply(confirmed, probe("m3", "m2", 1, cid="r-m3", kind="periodic"))
    assert raised.value.stale
    suspicion = confirmed.suspicion("m2")
    assert suspicion is not None and suspicion.unreachable_by() == ("m1", "m3")
    # A newer confirm (either way) is the observer's new word.
    refuted = run(confirmed, probe("m3", "m2", 1, reachable=True, cid="c2", kind="confirm"))
    again = refuted.suspicion("m2")
    assert again is not None and again.reachable_by() == ("m3",)


def test_an_owner_still_up_whose_slot_moved_away_is_a_spare_again() -> None:
    """s1 moved from m1 (up, but it stopped renewing its lease) to the spare m3: m1 serves
    nothing now, so it is back in the pool, and m3 is active."""
    roles = {s.name: s.role for s in S1_EPOCH_2.servers}
    assert (roles["m1"], roles["m3"]) == ("spare", "active")


def test_an_owner_that_keeps_another_slot_stays_active() -> None:
    moved = run(M1_OWNS_BOTH, assign("s2", "m3", 3, cid="assign-s2-3"))
    roles = {s.name: s.role for s in moved.servers}
    assert (roles["m1"], roles["m3"]) == ("active", "active")
    back = run(M1_OWNS_BOTH, assign("s1", "m1", 2, cid="assign-s1-2-again"))
    assert {s.name: s.role for s in back.servers}["m1"] == "active"


def test_a_failed_owner_keeps_its_role_until_it_is_returned() -> None:
    moved = run(M2_FAILED, assign("s2", "m3", 2))
    roles = {s.name: s.role for s in moved.servers}
    assert roles["m2"] == "active"  # return_server makes it a spare
