"""Network namespaces: the MQTT broker down throughout (detection and healing go on without
it), and a full disk on a slot owner (the agent drains itself: the slot moves, no verdict)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.netlab_fixtures import agreed_leader, lab_cluster
from tests.chaos.netlab_scenario import Scenario
from tests.chaos.test_netlab_partitions import owned_slot, rejoined
from tests.support import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.chaos_extended, pytest.mark.processes]

DISK_MB = 16
# Sample the disk every second and drain after 2 s critical (defaults: 5 s and 10 s).
RESOURCES = {"resources": {"interval_s": 1.0, "timeout_s": 0.5, "drain_after_s": 2.0}}


@pytest.mark.timeout(200)
async def test_broker_down_throughout_detection_and_healing_unaffected(tmp_path: Path) -> None:
    async with lab_cluster(tmp_path) as lab:
        leader = await wait_until(lambda: agreed_leader(lab), 20)
        victim = next(n for n in ("a1", "a2", "a3") if n != leader)
        slot = await owned_slot(lab, victim)
        assert slot is not None
        async with Scenario(lab, "broker down, then an owner isolated") as sc:
            broker = await sc.faults.broker_down()
            try:
                await asyncio.sleep(2.0)
                cut = await sc.inject(sc.faults.isolate(victim))
                assert sc.fault_at is not None
                moved = await wait_until(lambda: _elsewhere(sc, slot, victim), 40, interval_s=0.1)
                assert moved is not None
                await cut.heal()
                await wait_until(lambda: rejoined(lab), 30, interval_s=0.2)
            finally:
                await broker.heal()
        assert sc.outcome.verdicts == [victim], sc.outcome.line()
        assert not sc.outcome.violations, sc.outcome.line()


async def _elsewhere(sc: Scenario, slot: str, old: str) -> object:
    return sc.watch.first_serving(slot, sc.fault_at or 0.0, not_on=old)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("percent", [98.0, 100.0], ids=["98-percent", "no-space-left"])
async def test_a_full_disk_on_an_owner_drains_it_gracefully(tmp_path: Path, percent: float) -> None:
    owner = "a2"
    async with lab_cluster(tmp_path, tmpfs_mb={owner: DISK_MB}, extra=RESOURCES) as lab:
        await wait_until(lambda: agreed_leader(lab), 20)
        slot = await owned_slot(lab, owner)
        assert slot is not None
        async with Scenario(lab, "owner's disk full") as sc:
            # Past the critical level (95 %); at 100 % only the blocks the agent holds for
            # its Raft journal are left (agent.disk_reserve), and it must still drain.
            fault = await sc.inject(sc.faults.fill_disk(owner, percent=percent))
            await wait_until(lambda: _elsewhere(sc, slot, owner), 40, interval_s=0.1)

            async def draining() -> bool:
                status = await lab.status()
                states = {s["name"]: s["state"] for s in (status or {}).get("servers", [])}
                return states.get(owner) == "draining"

            await wait_until(draining, 10)
            assert lab.processes[owner].returncode is None, "the agent died on a full disk"
            await fault.heal()
            await wait_until(lambda: rejoined(lab), 30, interval_s=0.2)
        sc.expect_no_verdict()
        assert not sc.outcome.violations, sc.outcome.line()
        gap = sc.outcome.longest_gap_s[slot]
        print(f"\n{slot} moved off the full disk with a gap of {gap:.2f}s")
