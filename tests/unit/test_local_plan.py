"""One agent's tick decision from committed state: membership, instances, announcements."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from consensus.commands import (
    Bootstrap,
    ReleaseSlot,
    ServerSpec,
    ServerUp,
    SlotServing,
    SlotSpec,
)
from consensus.protocol import RaftStatus
from consensus.state import (
    ClusterState,
    ProbeReport,
    ServerRecord,
    ServerState,
    SlotRecord,
    Suspicion,
)
from healer.local import Instance, LocalPlan, LocalView, StartInstance, StopInstance, plan_local

NOW = 1_700_000_000.0
ADDRESSES = {"s1": "10.0.0.1:8001", "s2": "10.0.0.1:8002"}
LEADER = RaftStatus("a1", voter=True, leader="a1", term=3, is_leader=True, ready=True)
FOLLOWER = RaftStatus("a1", voter=True, leader="a2", term=3, ready=True)
BOOT = Bootstrap(
    id="boot:moon",
    at=NOW,
    cluster="moon",
    config_digest="sha256:cafe",
    servers=(ServerSpec("a1", "active", "rack-a"), ServerSpec("a2", "active", "rack-b")),
    slots=(SlotSpec("s1", "a1", ("t1", "t2")), SlotSpec("s2", "a2", ("t3",))),
    lease_s=2.0,
)

# s1 is ours at epoch 2 and serving; s2 is a2's.
S1 = SlotRecord("s1", ("t1", "t2"), "a1", 2, "serving", ADDRESSES["s1"], 2.0, 7)
S2 = SlotRecord("s2", ("t3",), "a2", 1, "serving", "10.0.0.2:8002", 2.0, 3)


def s1(**changes: Any) -> SlotRecord:
    return dataclasses.replace(S1, **changes)


def cluster(
    *slots: SlotRecord,
    me: ServerState = "up",
    me_inc: int = 3,
    suspicions: tuple[Suspicion, ...] = (),
) -> ClusterState:
    """a1 (this server), a2 (active) and p1 (spare); slots S1 and S2 unless given."""
    servers = (
        ServerRecord("a1", "active", "rack-a", me, me_inc),
        ServerRecord("a2", "active", "rack-b", "up", 2),
        ServerRecord("p1", "spare", "rack-c", "up", 1),
    )
    return ClusterState(
        cluster="moon", servers=servers, slots=slots or (S1, S2), suspicions=suspicions
    )


def suspicion(target: str, incarnation: int = 2, since: float = 50.0) -> Suspicion:
    return Suspicion(target, incarnation, since, (ProbeReport("p1", False, since),))


def inst(
    slot: str = "s1",
    epoch: int = 2,
    *,
    running: bool = True,
    healthy: bool = True,
    serving: bool = True,
    gave_up: bool = False,
) -> Instance:
    return Instance(
        slot, epoch, ADDRESSES.get(slot, "10.0.0.1:9999"), running, healthy, serving, gave_up
    )


def view(
    *instances: Instance,
    server: str = "a1",
    incarnation: int = 3,
    confirmed: frozenset[tuple[str, int, float]] = frozenset(),
) -> LocalView:
    return LocalView(server, incarnation, {i.slot: i for i in instances}, confirmed)


def up(incarnation: int) -> ServerUp:
    return ServerUp(id=f"up:a1:{incarnation}", at=NOW, server="a1", incarnation=incarnation)


def plan(
    state: ClusterState,
    local: LocalView,
    raft: RaftStatus = FOLLOWER,
    addresses: Mapping[str, str] = ADDRESSES,
) -> LocalPlan:
    return plan_local(state, raft, local, BOOT, addresses, NOW)


# ---------------------------------------------------------------- membership


@pytest.mark.parametrize(
    ("state", "local", "raft", "expected"),
    [
        pytest.param(
            ClusterState(),
            view(),
            LEADER,
            LocalPlan("leader: bootstrapping the cluster", (BOOT,)),
            id="empty-leader-bootstraps",
        ),
        pytest.param(
            ClusterState(),
            view(),
            FOLLOWER,
            LocalPlan("waiting for the leader to bootstrap the cluster"),
            id="empty-follower-waits",
        ),
        pytest.param(
            cluster(),
            view(inst("s2", 1), inst(), server="zz"),
            LEADER,
            LocalPlan(
                "zz is not a member of the committed cluster",
                stops=(StopInstance("s1", "not a member"), StopInstance("s2", "not a member")),
            ),
            id="not-a-member-stops-everything",
        ),
        pytest.param(
            cluster(me="new", me_inc=0),
            view(incarnation=1),
            FOLLOWER,
            LocalPlan("joining as incarnation 1 (was new)", (up(1),), incarnation=1),
            id="join-at-view-incarnation",
        ),
        pytest.param(
            cluster(me="new", me_inc=0),
            view(incarnation=0),
            FOLLOWER,
            LocalPlan("joining as incarnation 1 (was new)", (up(1),), incarnation=1),
            id="join-above-record-when-view-is-not-newer",
        ),
        pytest.param(
            cluster(me="new", me_inc=0),
            view(inst(), incarnation=1),
            FOLLOWER,
            LocalPlan(
                "joining as incarnation 1 (was new)",
                (up(1),),
                stops=(StopInstance("s1", "this server is new"),),
                incarnation=1,
            ),
            id="join-stops-instances-until-up",
        ),
        pytest.param(
            cluster(me_inc=3),
            view(inst(), incarnation=4),
            FOLLOWER,
            LocalPlan("joining as incarnation 4 (was up)", (up(4),), incarnation=4),
            id="restarted-with-newer-incarnation",
        ),
        pytest.param(
            cluster(me_inc=5),
            view(inst(), incarnation=3),
            FOLLOWER,
            LocalPlan("joining as incarnation 6 (was up)", (up(6),), incarnation=6),
            id="record-ahead-of-view-rises-above-it",
        ),
        pytest.param(
            cluster(suspicions=(suspicion("a1", 3), suspicion("a2"))),
            view(inst()),
            FOLLOWER,
            LocalPlan("refuting a suspicion with incarnation 4", (up(4),), incarnation=4),
            id="refute-when-suspected",
        ),
        pytest.param(
            cluster(s1(state="lost", address=None), S2, me="failed", me_inc=3),
            view(inst()),
            FOLLOWER,
            LocalPlan(
                "joining as incarnation 4 (was failed)",
                (up(4),),
                stops=(StopInstance("s1", "this server is failed"),),
                incarnation=4,
            ),
            id="failed-comes-back-above-record",
        ),
        pytest.param(
            cluster(s1(state="lost", address=None), S2, me="failed", me_inc=3),
            view(incarnation=5),
            FOLLOWER,
            LocalPlan("joining as incarnation 5 (was failed)", (up(5),), incarnation=5),
            id="failed-restarted-agent-joins-at-its-incarnation",
        ),
        pytest.param(
            cluster(
                s1(state="lost", address=None),
                S2,
                me="quarantined",
                me_inc=4,
                suspicions=(suspicion("a2"),),
            ),
            view(inst(), inst("s2", 1), incarnation=4),
            LEADER,
            LocalPlan(
                "quarantined: serving nothing until it is returned to the spare pool",
                stops=(
                    StopInstance("s1", "this server is quarantined"),
                    StopInstance("s2", "this server is quarantined"),
                ),
                incarnation=4,
            ),
            id="quarantined-does-nothing-and-stops-all",
        ),
        pytest.param(
            cluster(me="quarantined", me_inc=4),
            view(incarnation=5),
            FOLLOWER,
            LocalPlan("joining as incarnation 5 (was quarantined)", (up(5),), incarnation=5),
            id="quarantined-restarted-agent-joins-again",
        ),
    ],
)
def test_membership(
    state: ClusterState, local: LocalView, raft: RaftStatus, expected: LocalPlan
) -> None:
    assert plan(state, local, raft) == expected


# ---------------------------------------------------------------- instances


@pytest.mark.parametrize(
    ("state", "local", "starts", "stops", "summary"),
    [
        pytest.param(
            cluster(),
            view(inst()),
            (),
            (),
            "no action: a1 holds s1@2 serving",
            id="steady",
        ),
        pytest.param(
            cluster(s1(state="assigned", address=None), S2),
            view(),
            (StartInstance("s1", 2, ("t1", "t2")),),
            (),
            "starting s1@2",
            id="assigned-without-instance-starts",
        ),
        pytest.param(
            cluster(),
            view(),
            (StartInstance("s1", 2, ("t1", "t2")),),
            (),
            "starting s1@2",
            id="serving-without-instance-starts",
        ),
        pytest.param(
            cluster(),
            view(inst(running=False)),
            (StartInstance("s1", 2, ("t1", "t2")),),
            (),
            "starting s1@2",
            id="not-running-starts-without-stop",
        ),
        pytest.param(
            cluster(s1(epoch=3, state="assigned", address=None), S2),
            view(inst(epoch=2)),
            (StartInstance("s1", 3, ("t1", "t2")),),
            (StopInstance("s1", "instance runs epoch 2, not 3"),),
            "starting s1@3; stopping s1 (instance runs epoch 2, not 3)",
            id="old-epoch-stopped-new-started",
        ),
        pytest.param(
            cluster(),
            view(inst(), inst("s2", 1)),
            (),
            (StopInstance("s2", "slot is owned by a2 at epoch 1"),),
            "stopping s2 (slot is owned by a2 at epoch 1)",
            id="slot-of-another-owner-stopped",
        ),
        pytest.param(
            cluster(s1(owner="p1", epoch=3, state="assigned", address=None), S2),
            view(inst()),
            (),
            (StopInstance("s1", "slot is owned by p1 at epoch 3"),),
            "stopping s1 (slot is owned by p1 at epoch 3)",
            id="slot-handed-over-stopped",
        ),
        pytest.param(
            cluster(),
            view(inst(), inst("s9", 1)),
            (),
            (StopInstance("s9", "slot is not in the committed state"),),
            "stopping s9 (slot is not in the committed state)",
            id="unknown-slot-stopped",
        ),
        pytest.param(
            cluster(s1(state="released", address=None), S2),
            view(inst(running=False)),
            (),
            (StopInstance("s1", "slot is released"),),
            "stopping s1 (slot is released)",
            id="released-stopped-not-restarted",
        ),
        pytest.param(
            cluster(s1(state="lost", address=None), S2),
            view(inst()),
            (),
            (StopInstance("s1", "slot is lost"),),
            "stopping s1 (slot is lost)",
            id="lost-stopped-not-restarted",
        ),
        pytest.param(
            cluster(s1(owner="a2"), S2),
            view(server="a1"),
            (),
            (),
            "no action: a1 owns no slot",
            id="owns-nothing",
        ),
    ],
)
def test_instances(
    state: ClusterState,
    local: LocalView,
    starts: tuple[StartInstance, ...],
    stops: tuple[StopInstance, ...],
    summary: str,
) -> None:
    assert plan(state, local) == LocalPlan(summary, (), starts, stops)


# ---------------------------------------------------------------- announcing


def serving(epoch: int = 2, address: str = ADDRESSES["s1"]) -> SlotServing:
    return SlotServing(
        id=f"serving:s1:{epoch}:a1:{address}",
        at=NOW,
        slot="s1",
        owner="a1",
        epoch=epoch,
        address=address,
    )


ASSIGNED = cluster(s1(state="assigned", address=None), S2)


@pytest.mark.parametrize(
    ("state", "instance", "addresses", "announce"),
    [
        pytest.param(ASSIGNED, inst(), ADDRESSES, True, id="ready-assigned-announces"),
        pytest.param(
            cluster(s1(address="10.9.9.9:1"), S2),
            inst(),
            ADDRESSES,
            True,
            id="serving-at-another-address-announces",
        ),
        pytest.param(cluster(), inst(), ADDRESSES, False, id="already-serving-here"),
        pytest.param(ASSIGNED, inst(healthy=False), ADDRESSES, False, id="unhealthy"),
        pytest.param(ASSIGNED, inst(serving=False), ADDRESSES, False, id="no-lease-yet"),
        pytest.param(ASSIGNED, inst(running=False), ADDRESSES, False, id="not-running"),
        pytest.param(ASSIGNED, inst(), {}, False, id="no-address-configured"),
        pytest.param(
            cluster(s1(epoch=3, state="assigned", address=None), S2),
            inst(epoch=2),
            ADDRESSES,
            False,
            id="old-epoch-instance",
        ),
    ],
)
def test_slot_serving(
    state: ClusterState, instance: Instance, addresses: Mapping[str, str], announce: bool
) -> None:
    result = plan(state, view(instance), addresses=addresses)
    assert result.commands == ((serving(),) if announce else ())
    assert ("announcing s1" in result.summary) is announce


def test_gave_up_releases_and_stops() -> None:
    result = plan(cluster(), view(inst(running=False, healthy=False, gave_up=True)))
    assert result == LocalPlan(
        "giving up s1; stopping s1 (gave up after repeated crashes)",
        (
            ReleaseSlot(
                id="release:s1:2:a1",
                at=NOW,
                slot="s1",
                owner="a1",
                epoch=2,
                reason="the app instance kept failing; local restarts are exhausted",
            ),
        ),
        stops=(StopInstance("s1", "gave up after repeated crashes"),),
    )


def test_gave_up_at_an_old_epoch_is_not_a_release() -> None:
    state = cluster(s1(epoch=3, state="assigned", address=None), S2)
    result = plan(state, view(inst(epoch=2, running=False, gave_up=True)))
    assert result == LocalPlan(
        "starting s1@3; stopping s1 (instance runs epoch 2, not 3)",
        starts=(StartInstance("s1", 3, ("t1", "t2")),),
        stops=(StopInstance("s1", "instance runs epoch 2, not 3"),),
    )


# ---------------------------------------------------------------- confirming suspicions


@pytest.mark.parametrize(
    ("suspicions", "confirmed", "confirm"),
    [
        pytest.param((suspicion("a2"),), frozenset(), (("a2", 2, 50.0),), id="new-suspicion"),
        pytest.param((suspicion("a2"),), frozenset({("a2", 2, 50.0)}), (), id="already-confirmed"),
        pytest.param(
            (suspicion("a2", since=60.0),),
            frozenset({("a2", 2, 50.0)}),
            (("a2", 2, 60.0),),
            id="reopened-suspicion-is-new",
        ),
        pytest.param(
            (suspicion("p1", 1), suspicion("a2")),
            frozenset(),
            (("p1", 1, 50.0), ("a2", 2, 50.0)),
            id="several-in-state-order",
        ),
        pytest.param((), frozenset({("a2", 2, 50.0)}), (), id="nothing-open"),
    ],
)
def test_confirm(
    suspicions: tuple[Suspicion, ...],
    confirmed: frozenset[tuple[str, int, float]],
    confirm: tuple[tuple[str, int, float], ...],
) -> None:
    result = plan(cluster(suspicions=suspicions), view(inst(), confirmed=confirmed))
    assert result.confirm == confirm
    assert result.commands == () and result.incarnation is None
    targets = ", ".join(c[0] for c in confirm)
    expected = f"checking suspicion of {targets}" if confirm else "no action: a1 holds s1@2 serving"
    assert result.summary == expected


def test_never_confirms_a_suspicion_of_ourselves() -> None:
    result = plan(cluster(suspicions=(suspicion("a1", 3), suspicion("a2"))), view(inst()))
    assert result.confirm == ()
    assert [c.kind for c in result.commands] == ["server_up"]


# ---------------------------------------------------------------- summary


def test_summary_joins_every_part_in_order() -> None:
    state = cluster(
        s1(epoch=3, state="assigned", address=None),
        dataclasses.replace(S2, owner="a1", epoch=4, state="assigned", address=None),
        suspicions=(suspicion("p1", 1),),
    )
    local = view(inst("s1", 2), inst("s2", 4))
    assert plan(state, local) == LocalPlan(
        "starting s1@3; announcing s2; stopping s1 (instance runs epoch 2, not 3); "
        "checking suspicion of p1",
        (
            SlotServing(
                id=f"serving:s2:4:a1:{ADDRESSES['s2']}",
                at=NOW,
                slot="s2",
                owner="a1",
                epoch=4,
                address=ADDRESSES["s2"],
            ),
        ),
        (StartInstance("s1", 3, ("t1", "t2")),),
        (StopInstance("s1", "instance runs epoch 2, not 3"),),
        (("p1", 1, 50.0),),
    )


@pytest.mark.parametrize(
    ("slots", "summary"),
    [
        pytest.param((S1, S2), "no action: a1 holds s1@2 serving", id="one-slot"),
        pytest.param(
            (S1, dataclasses.replace(S2, owner="a1", epoch=4, address=ADDRESSES["s2"])),
            "no action: a1 holds s1@2 serving, s2@4 serving",
            id="two-slots",
        ),
    ],
)
def test_summary_when_nothing_to_do(slots: tuple[SlotRecord, ...], summary: str) -> None:
    local = view(*(inst(s.name, s.epoch) for s in slots if s.owner == "a1"))
    assert plan(cluster(*slots), local) == LocalPlan(summary)
