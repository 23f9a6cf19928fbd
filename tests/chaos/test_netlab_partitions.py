"""Network namespaces: the leader cut off, a minority/majority split, a one-way partition.

Every scenario runs the three checkers (tests/chaos/netlab_checks.py): no two servers serve
one slot at once (seen from outside and in the apps' own records), every acknowledged write
is readable after recovery, and verdicts are only where a server really was cut off.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.netlab_cluster import LabCluster
from tests.chaos.netlab_fixtures import agreed_leader, lab_cluster
from tests.chaos.netlab_scenario import Scenario
from tests.support import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.processes, pytest.mark.timeout(240)]


async def owned_slot(lab: LabCluster, server: str) -> str | None:
    status = await lab.status()
    assert status is not None
    return next((s["name"] for s in status["slots"] if s["owner"] == server), None)


async def rejoined(lab: LabCluster) -> bool:
    """Every agent names the same leader and the same owner for every slot."""
    docs = [await lab.get_json(n, "/v1/status") for n in lab.names]
    if any(d is None for d in docs):
        return False
    views = {(d["leader"], tuple((s["name"], s["owner"]) for s in d["slots"])) for d in docs}
    return len(views) == 1 and None not in {d["leader"] for d in docs}


async def test_isolated_leader_fences_itself_before_its_slot_moves(tmp_path: Path) -> None:
    async with lab_cluster(tmp_path) as lab:
        leader = await wait_until(lambda: agreed_leader(lab), 20)
        slot = await owned_slot(lab, leader)
        assert slot is not None, "the leader owns no slot: nothing to fence"
        others = [n for n in lab.names if n != leader]
        async with Scenario(lab, "leader isolated") as sc:
            fault = await sc.inject(sc.faults.isolate(leader))
            new_leader = await wait_until(lambda: agreed_leader(lab, others), 20)
            assert new_leader != leader
            moved = await wait_until(
                lambda: _served_elsewhere(sc, slot, leader), 40, interval_s=0.1
            )
            old_last = sc.watch.last_serving(slot, leader)
            assert old_last is not None and old_last < moved.at, (old_last, moved)
            assert sc.fault_at is not None
            print(
                f"\nold leader stopped serving {old_last - sc.fault_at:.2f}s after the cut;"
                f" {moved.server} served {moved.at - old_last:.2f}s after that"
            )
            await fault.heal()
            await wait_until(lambda: rejoined(lab), 30, interval_s=0.2)
        assert sc.outcome.verdicts == [leader], sc.outcome.line()
        assert not sc.outcome.violations, sc.outcome.line()


async def _served_elsewhere(sc: Scenario, slot: str, old: str) -> object:
    assert sc.fault_at is not None
    return sc.watch.first_serving(slot, sc.fault_at, not_on=old)


async def test_minority_side_of_a_split_loses_its_slot_majority_keeps_going(
    tmp_path: Path,
) -> None:
    async with lab_cluster(tmp_path) as lab:
        leader = await wait_until(lambda: agreed_leader(lab), 20)
        lonely = next(n for n in ("a1", "a2", "a3") if n != leader)
        minority = [lonely, "p1"]
        majority = [n for n in lab.names if n not in minority]
        slot = await owned_slot(lab, lonely)
        assert slot is not None
        async with Scenario(lab, "minority/majority split") as sc:
            fault = await sc.inject(sc.faults.split(minority, majority))
            moved = await wait_until(
                lambda: _served_elsewhere(sc, slot, lonely), 40, interval_s=0.1
            )
            assert moved.server in majority, moved
            assert await agreed_leader(lab, majority) == leader  # the majority never wavered
            await fault.heal()
            await wait_until(lambda: rejoined(lab), 30, interval_s=0.2)
        assert set(sc.outcome.verdicts) <= set(minority), sc.outcome.line()
        assert lonely in sc.outcome.verdicts, sc.outcome.line()
        assert not sc.outcome.violations, sc.outcome.line()


@pytest.mark.chaos_extended
async def test_one_way_partition_leader_to_follower(tmp_path: Path) -> None:
    """The leader's packets to one active are dropped; that active still reaches the leader.
    Whatever the cluster decides, the invariants hold and it converges once healed."""
    async with lab_cluster(tmp_path) as lab:
        leader = await wait_until(lambda: agreed_leader(lab), 20)
        follower = next(n for n in ("a1", "a2", "a3") if n != leader)
        async with Scenario(lab, "asymmetric leader->follower") as sc:
            fault = await sc.inject(sc.faults.one_way(leader, follower))
            await asyncio.sleep(20.0)
            await fault.heal()
            await wait_until(lambda: rejoined(lab), 40, interval_s=0.2)
        assert set(sc.outcome.verdicts) <= {leader, follower}, sc.outcome.line()
        assert not sc.outcome.violations, sc.outcome.line()
