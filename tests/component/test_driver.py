"""ProcessDriver with real app processes: leases on stdin, restarts with backoff, giving up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

import aiohttp

from agent.clock import SystemClock
from agent.driver import InstanceSpec, ProcessDriver, RestartPolicy
from tests.support import free_port_block


def spec(tmp_path: Path, tenants: tuple[str, ...] = ("acme",)) -> InstanceSpec:
    return InstanceSpec(
        slot="s1",
        epoch=1,
        server="m1",
        host="127.0.0.1",
        port=free_port_block(1),
        base_domain="localhost",
        tenants=tenants,
        data_dir=tmp_path / "slot",
        overlap_log=tmp_path / "overlap" / "s1.log",
    )


async def until(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_an_instance_serves_only_under_a_lease(tmp_path: Path) -> None:
    clock = SystemClock()
    driver = ProcessDriver(clock, RestartPolicy(health_interval_s=0.1))
    wanted = spec(tmp_path)
    url = f"http://{wanted.address}/"
    try:
        await driver.ensure_running(wanted)

        async def healthy() -> bool:
            await driver.probe()
            return driver.instances()["s1"].healthy

        await until(healthy, 15)
        assert not driver.instances()["s1"].serving
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Host": "acme.localhost"}) as resp:
                assert resp.status == 503
            driver.grant_lease("s1", 1, clock.monotonic() + 5.0)
            driver.grant_lease("s1", 2, clock.monotonic() + 50.0)  # another epoch: ignored
            assert driver.instances()["s1"].serving

            async def served() -> bool:
                async with http.get(url, headers={"Host": "acme.localhost"}) as resp:
                    return resp.status == 200

            await until(served, 5)
    finally:
        await driver.close(timeout_s=5.0)
    events = [json.loads(line)["event"] for line in wanted.overlap_log.read_text().splitlines()]  # type: ignore[union-attr]
    assert events[0] == "start" and events[-1] == "stop"


async def test_a_crashing_instance_is_restarted_with_backoff_then_given_up(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=3, window_s=60.0, first_backoff_s=0.05)
    driver = ProcessDriver(SystemClock(), policy)
    broken = spec(tmp_path, tenants=("Not_A_Label",))  # the app refuses it and exits 2
    spawned: list[int | None] = []
    try:

        async def gave_up() -> bool:
            await driver.ensure_running(broken)
            pid = driver.instances()["s1"].pid
            if pid is not None and pid not in spawned:
                spawned.append(pid)
            await driver.probe()
            return driver.instances()["s1"].gave_up

        await until(gave_up, 30)
    finally:
        await driver.close(timeout_s=2.0)
    status = driver.instances().get("s1")
    assert status is None or status.restarts == policy.max_restarts + 1
    assert len(spawned) == policy.max_restarts + 1  # the first start and three restarts
    records = [json.loads(line) for line in broken.overlap_log.read_text().splitlines()]  # type: ignore[union-attr]
    assert len(records) == policy.max_restarts + 1
    assert all(r["event"] == "stop" and "recorded by the agent" in r["reason"] for r in records)


async def frozen_instance(tmp_path: Path, busy: str | None) -> tuple[ProcessDriver, int, int]:
    """Start an instance, freeze it so that it misses every health check, probe for a while;
    return the driver, the frozen pid and the pid running afterwards (or 0)."""
    # A grace long enough for a start on a loaded machine (the app imports in 1-3 s there).
    policy = RestartPolicy(health_interval_s=0.05, hung_after_failures=3, start_grace_s=5.0)
    driver = ProcessDriver(SystemClock(), policy, busy=lambda _slot: busy)
    wanted = spec(tmp_path)
    await driver.ensure_running(wanted)

    async def healthy() -> bool:
        await driver.probe()
        return driver.instances()["s1"].healthy

    try:
        await until(healthy, 15)
    except AssertionError:
        await driver.close(timeout_s=5.0)
        raise
    frozen = driver.instances()["s1"].pid
    assert frozen is not None
    os.kill(frozen, signal.SIGSTOP)
    try:
        # Until the driver has judged it (restarted it, or held it as overloaded).
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            await driver.probe()
            await driver.ensure_running(wanted)
            if driver.overload_holds or driver.instances()["s1"].pid not in (frozen, None):
                break
            await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)
    return driver, frozen, driver.instances()["s1"].pid or 0


async def test_a_hung_instance_is_restarted(tmp_path: Path) -> None:
    driver, frozen, now_running = await frozen_instance(tmp_path, busy=None)
    try:
        assert now_running != frozen
        assert driver.instances()["s1"].restarts >= 1
        assert driver.overload_holds == 0
    finally:
        await driver.close(timeout_s=5.0)


async def test_an_instance_saturated_by_its_own_tenant_is_not_restarted(tmp_path: Path) -> None:
    reason = "tenant acme has 10 requests in flight (cap 10)"
    driver, frozen, now_running = await frozen_instance(tmp_path, busy=reason)
    try:
        assert now_running == frozen  # overload is not failure
        assert driver.instances()["s1"].restarts == 0
        assert driver.overload_holds >= 1
    finally:
        await driver.close(timeout_s=5.0)
