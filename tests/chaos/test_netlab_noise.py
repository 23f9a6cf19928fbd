"""Network namespaces: trouble that is not a failure (packet loss, short stalls, a starved
CPU) must bring no verdict; a long stall is a failure, and the thawed owner stays fenced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.netlab_fixtures import agreed_leader, lab_cluster
from tests.chaos.netlab_scenario import Scenario
from tests.chaos.test_netlab_partitions import owned_slot, rejoined
from tests.support import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.processes]

LOSS = 0.20
LOSS_S = 60.0
SHORT_STALLS_S = (1.0, 2.0, 3.0, 5.0)
LONG_STALL_S = 15.0
# Detection as configured decides what a "short" stall is: with the defaults (a verdict 0.8 to
# 2.4 s after a server stops answering) a 2 s stall of the leader is already a failure. The
# short-stall scenario runs with suspicion windows longer than its longest stall.
WIDE_SUSPICION = {"suspicion_s": 6.0, "suspicion_max_s": 8.0, "suspicion_expire_s": 20.0}


@pytest.mark.timeout(200)
async def test_twenty_percent_loss_for_a_minute_is_no_failure(tmp_path: Path) -> None:
    async with lab_cluster(tmp_path) as lab:
        await wait_until(lambda: agreed_leader(lab), 20)
        async with Scenario(lab, f"{LOSS:.0%} loss for {LOSS_S:.0f}s") as sc:
            fault = await sc.inject(sc.faults.loss(LOSS))
            await asyncio.sleep(LOSS_S)
            await fault.heal()
        sc.expect_no_verdict()
        assert not sc.outcome.violations, sc.outcome.line()


@pytest.mark.chaos_extended
@pytest.mark.timeout(240)
async def test_short_stalls_of_the_leader_are_no_failure(tmp_path: Path) -> None:
    async with lab_cluster(tmp_path, timing=WIDE_SUSPICION) as lab:
        await wait_until(lambda: agreed_leader(lab), 20)
        async with Scenario(lab, f"leader SIGSTOP {SHORT_STALLS_S}s") as sc:
            for stall_s in SHORT_STALLS_S:
                leader = await wait_until(lambda: agreed_leader(lab), 30)
                fault = await sc.inject(sc.faults.stall(leader))
                await asyncio.sleep(stall_s)
                await fault.heal()
                await wait_until(lambda: rejoined(lab), 30, interval_s=0.2)
                await asyncio.sleep(2.0)
        sc.expect_no_verdict()
        assert not sc.outcome.violations, sc.outcome.line()


@pytest.mark.chaos_extended
@pytest.mark.timeout(200)
async def test_a_long_stall_is_replaced_and_the_thawed_owner_stays_fenced(tmp_path: Path) -> None:
    async with lab_cluster(tmp_path) as lab:
        leader = await wait_until(lambda: agreed_leader(lab), 20)
        slot = await owned_slot(lab, leader)
        assert slot is not None
        async with Scenario(lab, f"leader SIGSTOP {LONG_STALL_S:.0f}s") as sc:
            fault = await sc.inject(sc.faults.stall(leader))
            await asyncio.sleep(LONG_STALL_S)
            moved = sc.watch.first_serving(slot, sc.fault_at or 0.0, not_on=leader)
            assert moved is not None, "nobody served the slot during the stall"
            await fault.heal()
            await wait_until(lambda: rejoined(lab), 30, interval_s=0.2)
            thawed = await lab.get_json(leader, "/v1/status")
            assert thawed is not None
            await asyncio.sleep(2.0)
            last = sc.watch.last_serving(slot, leader)
            assert last is not None and last < moved.at, (last, moved)
        assert sc.outcome.verdicts == [leader], sc.outcome.line()
        assert not sc.outcome.violations, sc.outcome.line()


@pytest.mark.chaos_extended
@pytest.mark.timeout(200)
async def test_a_starved_cpu_is_no_failure_while_it_answers(tmp_path: Path) -> None:
    async with lab_cluster(tmp_path) as lab:
        leader = await wait_until(lambda: agreed_leader(lab), 20)
        victim = next(n for n in ("a1", "a2", "a3") if n != leader)
        async with Scenario(lab, "stress-ng on one server's CPU") as sc:
            fault = await sc.inject(sc.faults.starve_cpu(victim, timeout_s=60.0))
            await asyncio.sleep(30.0)
            answered = await lab.get_json(victim, "/healthz", timeout_s=2.0)
            await fault.heal()
        assert answered is not None, "the starved agent stopped answering: not this scenario"
        sc.expect_no_verdict()
        assert not sc.outcome.violations, sc.outcome.line()
