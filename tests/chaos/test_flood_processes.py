"""Real processes, the real Mosquitto broker: a flooding tenant is stopped at every edge while
the others keep answering; the stop expires; a repeat is stopped longer; and with the broker
killed the reports still reach the leader directly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.clock import SystemClock
from agent.config import load_config
from agent.launcher import LocalCluster
from tests.support import (
    cluster_config,
    free_port_block,
    mosquitto_binary,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.processes, pytest.mark.timeout(150)]

FLOODER = "t1x1"
NEIGHBOURS = ("t1x2", "t2x1", "t3x1")
STOP_S = 4.0


class Flood:
    """The test's clients: a flood on one tenant through some edges, and polite neighbours."""

    def __init__(self, cluster: LocalCluster, http: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.http = http
        self.neighbour_answers: list[int] = []

    def edge(self, server: str) -> str:
        return self.cluster.config.server(server).edge_url

    async def get(self, tenant: str, server: str) -> tuple[int, dict[str, str]]:
        try:
            async with self.http.get(
                self.edge(server) + "/", headers={"Host": f"{tenant}.localhost"}
            ) as resp:
                await resp.read()
                return resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError):
            return 0, {}

    async def status(self) -> dict[str, Any]:
        for name in self.cluster.alive():
            answer = await self.cluster.get_json(name, "/v1/status")
            if answer is not None and answer[0] == 200 and answer[1].get("leader"):
                return answer[1]
        raise AssertionError("no agent knows a leader")

    async def decisions(self, kind: str) -> list[dict[str, Any]]:
        for name in self.cluster.alive():
            answer = await self.cluster.get_json(name, "/v1/decisions")
            if answer is not None:
                return [d for d in answer[1]["decisions"] if d["kind"] == kind]
        return []

    async def flood(self, via: list[str], rps: float, stopping: asyncio.Event) -> None:
        n = 0
        start = time.monotonic()
        pending: set[asyncio.Task[Any]] = set()
        while not stopping.is_set():
            task = asyncio.create_task(self.get(FLOODER, via[n % len(via)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n / rps - time.monotonic()))
        await asyncio.gather(*pending)

    async def neighbours(self, stopping: asyncio.Event) -> None:
        servers = [s.name for s in self.cluster.config.servers]
        n = 0
        while not stopping.is_set():
            tenant = NEIGHBOURS[n % len(NEIGHBOURS)]
            status, _ = await self.get(tenant, servers[n % len(servers)])
            self.neighbour_answers.append(status)
            n += 1
            await asyncio.sleep(0.2)

    async def stopped_everywhere(self) -> bool:
        for server in self.cluster.config.servers:
            status, headers = await self.get(FLOODER, server.name)
            if status != 503 or "X-Moonwatch-Stopped" not in headers:
                return False
            if int(headers.get("Retry-After", "0")) < 1:
                return False
        return True

    async def let_in_everywhere(self) -> bool:
        answers = [await self.get(FLOODER, s.name) for s in self.cluster.config.servers]
        return all(status == 200 for status, _ in answers)


@pytest.fixture
async def flood(tmp_path: Path) -> AsyncIterator[Flood]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt package mosquitto)")
    doc = cluster_config(
        tmp_path / "data",
        actives=3,
        throttle={
            "limits": {"rps": 20.0, "share": None, "concurrent": 50},
            "confirm_s": 1.0,
            "stop_s": STOP_S,
            "max_stop_s": 60.0,
            "repeat_window_s": 120.0,
        },
    )
    doc["mqtt"] = {"host": "127.0.0.1", "port": free_port_block(1), "managed": True}
    path = write_config(tmp_path / "cluster.yml", doc)
    cluster = LocalCluster(path, load_config(path), SystemClock())
    try:
        await cluster.start()
        assert cluster.broker is not None, cluster.broker_problem
        assert not await cluster.wait_ready(30), f"not ready; logs in {cluster.log_dir}"
        assert await cluster.wait_serving(30), f"not serving; logs in {cluster.log_dir}"
        timeout = aiohttp.ClientTimeout(total=3.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            yield Flood(cluster, http)
    finally:
        await cluster.stop(timeout_s=10.0)


async def flood_until_stopped(f: Flood, via: list[str]) -> None:
    stopping = asyncio.Event()
    tasks = [
        asyncio.create_task(f.flood(via, 100.0, stopping)),
        asyncio.create_task(f.neighbours(stopping)),
    ]
    try:
        await wait_until(f.stopped_everywhere, 20, interval_s=0.2)
    finally:
        stopping.set()
        await asyncio.gather(*tasks)


async def test_a_flood_is_stopped_everywhere_expires_and_a_repeat_is_stopped_longer(
    flood: Flood,
) -> None:
    f = flood
    leader = (await f.status())["leader"]
    # Only the followers' edges see the flood: the leader learns of it from their reports.
    via = [s.name for s in f.cluster.config.servers if s.name != leader]
    await flood_until_stopped(f, via)

    assert f.neighbour_answers and set(f.neighbour_answers) == {200}
    (stop,) = [s for s in (await f.status())["stops"] if s["subdomain"] == FLOODER]
    assert not stop["pinned"]
    (first,) = await f.decisions("tenant_stopped")
    assert first["subject"] == FLOODER
    assert first["evidence"]["rule"] == "rps" and first["evidence"]["rps"] > 20
    assert first["evidence"]["offence"] == 1 and first["evidence"]["for_s"] == STOP_S
    assert first["evidence"]["edges"] >= 1

    await wait_until(f.let_in_everywhere, 20, interval_s=0.2)  # it expires by itself
    lifted = await wait_until(lambda: f.decisions("stop_lifted"), 10)
    assert [d["evidence"]["reason"] for d in lifted] == ["expired"]

    await flood_until_stopped(f, via)
    second = (await f.decisions("tenant_stopped"))[-1]
    assert second["evidence"]["offence"] == 2 and second["evidence"]["for_s"] == 2 * STOP_S

    async def gauge_set() -> bool:
        url = f.cluster.config.server(leader).agent_url + "/metrics"
        async with f.http.get(url) as resp:
            return "moonwatch_tenants_stopped 1.0" in await resp.text()

    await wait_until(gauge_set, 10)


async def test_with_the_broker_killed_the_reports_go_to_the_leader_directly(
    flood: Flood,
) -> None:
    f = flood
    broker = f.cluster.broker
    assert broker is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(broker.pgid, signal.SIGKILL)
    await broker.process.wait()

    leader = (await f.status())["leader"]
    via = [s.name for s in f.cluster.config.servers if s.name != leader]
    await flood_until_stopped(f, via)
    assert set(f.neighbour_answers) == {200}
    (first,) = await f.decisions("tenant_stopped")
    assert first["subject"] == FLOODER and first["evidence"]["rule"] == "rps"
