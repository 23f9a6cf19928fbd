"""Operator drain: a server hands its slots over for maintenance without any verdict."""

from __future__ import annotations

import pytest

from consensus.commands import DrainServer, ReturnServer, ServerUp
from consensus.machine import CommandRejected, apply
from consensus.protocol import RaftStatus
from consensus.state import ClusterState, ServerRecord, SlotRecord
from healer.local import Instance, LocalView, plan_local
from tests.unit.test_local_plan import ADDRESSES, BOOT

SERVERS = (
    ServerRecord("m1", "active", "a", "up", 1),
    ServerRecord("m2", "active", "b", "up", 1),
    ServerRecord("m3", "spare", "c", "up", 1),
)
SLOTS = (SlotRecord("s1", ("acme",), "m1", 1, "serving", "127.0.0.1:1", 2.0, 3),)
STATE = ClusterState(cluster="c", servers=SERVERS, slots=SLOTS)
DRAIN = DrainServer(id="drain-m1", at=10.0, server="m1", reason="kernel upgrade")


def test_drain_takes_a_server_out_of_service_with_a_decision() -> None:
    drained = apply(STATE, DRAIN)
    assert drained.server("m1") == ServerRecord("m1", "active", "a", "draining", 1, since=10.0)
    last = drained.decisions[-1]
    assert (last.kind, last.subject) == ("server_draining", "m1")
    assert last.evidence == {"reason": "kernel upgrade", "slots": ["s1"], "operator": True}


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (apply(STATE, DRAIN), "already draining"),
        (
            ClusterState(cluster="c", servers=(ServerRecord("m1", "active", "a", "failed", 1),)),
            "is failed, not in service",
        ),
    ],
    ids=["twice", "failed"],
)
def test_drain_is_refused_out_of_service(state: ClusterState, reason: str) -> None:
    with pytest.raises(CommandRejected, match=reason):
        apply(state, DrainServer(id="again", at=11.0, server="m1", reason="x"))


def test_a_restart_does_not_end_maintenance_and_return_waits_for_the_handover() -> None:
    drained = apply(STATE, DRAIN)
    restarted = apply(drained, ServerUp(id="up2", at=11.0, server="m1", incarnation=2))
    assert restarted.server("m1").state == "draining"  # type: ignore[union-attr]
    back = ReturnServer(id="ret", at=12.0, server="m1", reason="done")
    with pytest.raises(CommandRejected, match="still handing over s1"):
        apply(restarted, back)


def test_the_local_plan_stops_then_releases_every_slot() -> None:
    drained = apply(STATE, DRAIN)
    view = LocalView("m1", 1, {"s1": Instance("s1", 1, "127.0.0.1:1", True, True, True)})
    raft = RaftStatus("m1", True, "m1", 1, True)
    plan = plan_local(drained, raft, view, BOOT, ADDRESSES, 12.0)
    assert [s.slot for s in plan.stops] == ["s1"]
    assert [(c.kind, c.reason) for c in plan.commands] == [  # type: ignore[union-attr]
        ("release_slot", "its server is draining")
    ]
    assert plan.summary.startswith("draining: stopping and releasing s1")
