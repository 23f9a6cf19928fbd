"""A real agent whose data disk fills up drains itself through the cluster, once, and its slot
moves to a spare; two agents in one process over in-memory consensus, fake samples."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.clock import SystemClock
from agent.config import ClusterConfig, parse_config
from agent.config_resources import Resource
from agent.daemon import Agent
from agent.resource_levels import Sample
from agent.resources import OffLoop, PsutilSampler
from agent.wiring import build_agent
from consensus.memory import MemoryConsensus, MemoryLog
from tests.component.test_agent_api import FakeDriver
from tests.support import cluster_config, wait_until

HEALTHY: dict[Resource, Sample] = {
    "disk": Sample(40.0, "30.0 GiB free of 50.0 GiB at /data"),
    "memory": Sample(30.0),
    "fds": Sample(1.0),
    "steal": Sample(0.0),
    "load": Sample(0.2),
}


@dataclass
class FakeSampler:
    """Hands out whatever the test sets; counts the rounds."""

    samples: dict[Resource, Sample] = field(default_factory=lambda: dict(HEALTHY))
    rounds: int = 0

    async def sample(self) -> Mapping[Resource, Sample]:
        self.rounds += 1
        return dict(self.samples)


@dataclass
class Cluster:
    config: ClusterConfig
    log: MemoryLog
    samplers: dict[str, FakeSampler]
    http: aiohttp.ClientSession

    async def get(self, server: str, path: str) -> Any:
        async with self.http.get(self.config.server(server).agent_url + path) as resp:
            return (
                await resp.json() if resp.content_type == "application/json" else await resp.text()
            )

    async def status(self) -> dict[str, Any]:
        body: dict[str, Any] = await self.get("a1", "/v1/status")
        return body

    async def slot(self, name: str) -> dict[str, Any]:
        return next(s for s in (await self.status())["slots"] if s["name"] == name)

    async def server(self, name: str) -> dict[str, Any]:
        return next(s for s in (await self.status())["servers"] if s["name"] == name)

    async def drains(self) -> list[dict[str, Any]]:
        decisions = (await self.get("a1", "/v1/decisions"))["decisions"]
        return [d for d in decisions if d["kind"] == "server_draining"]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    data = cluster_config(tmp_path / "data", actives=2, spares=1)
    data["resources"] = {
        "interval_s": 0.1,
        "timeout_s": 0.05,
        "drain_after_s": 0.3,
        "disk": {"warning": 85, "critical": 95, "hysteresis": 2},
    }
    config = parse_config(data, tmp_path, {})
    log = MemoryLog(voters=config.voters)
    samplers = {name: FakeSampler() for name in ("a1", "p1")}
    stopping = asyncio.Event()
    tasks = []
    for name, sampler in samplers.items():
        consensus = MemoryConsensus(log, name, SystemClock())
        parts = build_agent(
            config, name, SystemClock(), consensus=consensus, driver=FakeDriver(), sampler=sampler
        )
        tasks.append(asyncio.create_task(Agent(parts).serve(stopping)))
    log.elect("a1")
    async with aiohttp.ClientSession() as http:
        running = Cluster(config, log, samplers, http)
        try:

            async def ready() -> bool:
                try:
                    s1, p1 = await running.slot("s1"), await running.server("p1")
                except aiohttp.ClientError:
                    return False
                return bool(s1["state"] == "serving" and p1["state"] == "up")

            await wait_until(ready, 20.0)
            yield running
        finally:
            stopping.set()
            assert await asyncio.wait_for(asyncio.gather(*tasks), 20) == [0, 0]


async def test_a_full_disk_drains_the_server_once_and_its_slot_moves(cluster: Cluster) -> None:
    assert (await cluster.status())["resources"]["conditions"]["disk"]["level"] == "ok"
    cluster.samplers["a1"].samples["disk"] = Sample(99.0, "0.5 GiB free of 50.0 GiB at /data")

    async def moved() -> bool:
        s1 = await cluster.slot("s1")
        return bool(s1["owner"] == "p1" and s1["state"] == "serving")

    await wait_until(moved, 20.0)
    assert (await cluster.server("a1"))["state"] == "draining"
    [drain] = await cluster.drains()
    assert drain["subject"] == "a1" and drain["evidence"]["operator"] is False
    assert "disk 99.0 % used" in drain["evidence"]["reason"]
    assert "0.5 GiB free" in drain["evidence"]["reason"]
    assert drain["evidence"]["resources"]["disk"]["critical"] == 95.0
    explained = await cluster.get("a1", f"/v1/decisions/{drain['id']}")
    assert explained["explanation"].startswith("a1 drained itself: this server cannot keep")

    resources = (await cluster.status())["resources"]
    assert resources["conditions"]["disk"]["level"] == "critical"
    assert resources["conditions"]["disk"]["value"] == 99.0
    assert resources["drain"]["state"] == "requested"
    metrics = await cluster.get("a1", "/metrics")
    assert 'moonwatch_resource_level{resource="disk"} 2.0' in metrics
    assert 'moonwatch_resource_level{resource="memory"} 0.0' in metrics

    # The operator returns it; the disk is still full, but this episode's drain was made.
    headers = {"Authorization": "Bearer test-api-token"}
    url = cluster.config.server("a1").agent_url + "/v1/servers/a1/return"
    async with cluster.http.post(url, headers=headers, json={"reason": "disk cleaned"}) as r:
        assert r.status == 200, await r.text()
    await _rounds(cluster.samplers["a1"], 5)
    assert (await cluster.server("a1"))["state"] == "up"
    assert len(await cluster.drains()) == 1


async def test_a_recovered_disk_rearms_the_drain(cluster: Cluster) -> None:
    sampler = cluster.samplers["p1"]  # the spare: draining it keeps slots off a full disk
    sampler.samples["disk"] = Sample(96.0)

    async def drained() -> bool:
        return bool((await cluster.server("p1"))["state"] == "draining")

    await wait_until(drained, 20.0)
    headers = {"Authorization": "Bearer test-api-token"}
    url = cluster.config.server("a1").agent_url + "/v1/servers/p1/return"
    async with cluster.http.post(url, headers=headers) as r:
        assert r.status == 200, await r.text()
    sampler.samples["disk"] = Sample(93.5)  # within the hysteresis: still critical
    await _rounds(sampler, 5)
    assert (await cluster.server("p1"))["state"] == "up"
    sampler.samples["disk"] = Sample(50.0)
    await _rounds(sampler, 3)
    sampler.samples["disk"] = Sample(99.0)
    await wait_until(drained, 20.0)
    assert [d["subject"] for d in await cluster.drains()] == ["p1", "p1"]


async def _rounds(sampler: FakeSampler, count: int) -> None:
    """Wait until the sampler has been asked `count` more times."""
    target = sampler.rounds + count

    async def past() -> bool:
        return sampler.rounds >= target

    await wait_until(past, 10.0)


async def test_the_real_sampler_measures_this_machine(tmp_path: Path) -> None:
    sampler = PsutilSampler(tmp_path / "not" / "made" / "yet", timeout_s=2.0)
    first = await sampler.sample()
    disk = first["disk"]
    assert disk.value is not None and 0.0 <= disk.value <= 100.0
    assert str(tmp_path) in disk.detail  # the nearest existing directory's file system
    for name in ("memory", "fds", "load"):
        value = first[name].value
        assert value is not None and value >= 0.0, name
    second = await sampler.sample()
    steal = second["steal"].value
    assert steal is None or 0.0 <= steal <= 100.0  # None where the platform has no steal


async def test_a_stuck_measurement_times_out_and_is_not_piled_up() -> None:
    gate = threading.Event()
    off = OffLoop("test-stuck")
    with pytest.raises(TimeoutError):
        await off.call(gate.wait, 0.05)
    with pytest.raises(TimeoutError, match="still stuck"):
        await off.call(lambda: 1, 0.05)
    gate.set()

    async def answers() -> bool:
        try:
            return await off.call(lambda: 7, 1.0) == 7
        except TimeoutError:
            return False

    await wait_until(answers, 5.0)
