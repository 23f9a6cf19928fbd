"""Real processes, real Raft, loopback: verdicts, replacement by a spare, fencing, local healing.

Every test ends by running the overlap checker over the records of every app instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from agent.clock import SystemClock
from agent.config import load_config
from agent.launcher import LocalCluster
from tests.support import REPO, cluster_config, wait_until, write_config

pytestmark = [pytest.mark.processes, pytest.mark.timeout(150)]


class Harness:
    def __init__(self, cluster: LocalCluster, http: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.http = http

    async def status(self) -> dict[str, Any]:
        for name in self.cluster.alive():
            answer = await self.cluster.get_json(name, "/v1/status")
            if answer is not None and answer[0] == 200:
                return answer[1]
        raise AssertionError("no agent answers")

    async def decisions(self, via: str | None = None) -> list[dict[str, Any]]:
        for name in [via] if via else self.cluster.alive():
            answer = await self.cluster.get_json(name, "/v1/decisions")
            if answer is not None:
                return list(answer[1]["decisions"])
        return []

    async def verdicts(self) -> list[dict[str, Any]]:
        return [d for d in await self.decisions() if d["kind"] == "server_failed"]

    async def slot(self, name: str) -> dict[str, Any]:
        return next(s for s in (await self.status())["slots"] if s["name"] == name)

    async def get_tenant(self, tenant: str, via: str) -> tuple[int, str | None]:
        url = self.cluster.config.server(via).edge_url + "/"
        try:
            async with self.http.get(url, headers={"Host": f"{tenant}.localhost"}) as resp:
                return resp.status, resp.headers.get("X-Moonwatch-Server")
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    async def leader(self) -> str:
        async def known() -> str | None:
            return (await self.status()).get("leader")

        return str(await wait_until(known, 15))

    def check_overlap(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "check_overlap.py"),
                str(self.cluster.config.data_dir / "overlap"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )


def app_children(agent_pid: int) -> list[psutil.Process]:
    """The live app instances an agent runs (zombies and vanished processes left out)."""
    found = []
    for child in psutil.Process(agent_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "-m app" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def five_servers(voters: int) -> Callable[[Path], dict[str, Any]]:
    # Single and double failures here test replacement, not cascade suppression.
    return lambda data: cluster_config(
        data, actives=3, spares=2, voters=voters, cascade={"min_verdicts": 10}
    )


@contextlib.asynccontextmanager
async def running(
    path: Path, start_s: float = 30.0, stop_s: float = 10.0, check_overlap: bool = True
) -> AsyncIterator[Harness]:
    """The cluster of the config at `path`, started, ready and serving; stopped afterwards,
    then (unless told otherwise) the overlap checker runs over every instance's records."""
    cluster = LocalCluster(path, load_config(path), SystemClock())
    try:
        await cluster.start()
        assert not await cluster.wait_ready(start_s), f"not ready; logs in {cluster.log_dir}"
        assert await cluster.wait_serving(start_s), f"not serving; logs in {cluster.log_dir}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            yield Harness(cluster, http)
    finally:
        await cluster.stop(timeout_s=stop_s)
    if check_overlap:
        checked = Harness(cluster, None).check_overlap()  # type: ignore[arg-type]
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(params=[3], ids=["3-voters"])
async def harness(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    config = five_servers(request.param)(tmp_path / "data")
    async with running(write_config(tmp_path / "cluster.yml", config)) as h:
        yield h


async def served_by_other(h: Harness, tenant: str, victim: str, via: str) -> bool:
    status, server = await h.get_tenant(tenant, via)
    return status == 200 and server not in (None, victim)


async def test_sigkill_of_an_active_server_hands_its_slot_to_a_spare(harness: Harness) -> None:
    h = harness
    leader = await h.leader()
    victim = next(n for n in ("a1", "a2", "a3") if n != leader)
    slot = (await h.status())["slots"][int(victim[1]) - 1]
    tenant = slot["tenants"][0]
    h.cluster.kill(victim, signal.SIGKILL)

    await wait_until(lambda: served_by_other(h, tenant, victim, leader), 20)
    verdicts = await h.verdicts()
    assert [v["subject"] for v in verdicts] == [victim]
    evidence = verdicts[0]["evidence"]
    assert len(evidence["observers"]) >= evidence["required"] >= 2
    assert {r["observer"] for r in evidence["reports"]} >= set(evidence["observers"])
    moved = await h.slot(slot["name"])
    assert moved["owner"] in ("p1", "p2") and moved["epoch"] == 2 and moved["state"] == "serving"
    servers = {s["name"]: s for s in (await h.status())["servers"]}
    assert servers[victim]["state"] == "failed"
    assert servers[moved["owner"]]["role"] == "active"

    async def recovery_observed() -> bool:  # the leader times the incident for Prometheus
        url = h.cluster.config.server(leader).agent_url + "/metrics"
        async with h.http.get(url) as resp:
            return "moonwatch_recovery_seconds_count 1.0" in await resp.text()

    await wait_until(recovery_observed, 10)


async def test_a_short_stop_is_not_a_failure(harness: Harness) -> None:
    h = harness
    leader = await h.leader()
    victim = next(n for n in ("a1", "a2", "a3") if n != leader)
    h.cluster.kill(victim, signal.SIGSTOP)
    await asyncio.sleep(0.3)  # well under the suspicion timeout
    h.cluster.kill(victim, signal.SIGCONT)
    await asyncio.sleep(4.0)  # longer than a verdict and a lease would take
    assert await h.verdicts() == []
    slots = (await h.status())["slots"]
    assert [(s["owner"], s["epoch"]) for s in slots] == [("a1", 1), ("a2", 1), ("a3", 1)]


async def test_a_long_stop_is_replaced_and_the_thawed_owner_never_overlaps(
    harness: Harness,
) -> None:
    h = harness
    leader = await h.leader()
    victim = next(n for n in ("a1", "a2", "a3") if n != leader)
    slot = (await h.status())["slots"][int(victim[1]) - 1]
    tenant = slot["tenants"][0]
    h.cluster.kill(victim, signal.SIGSTOP)
    try:
        await wait_until(lambda: served_by_other(h, tenant, victim, leader), 20)
        await asyncio.sleep(2.0)
    finally:
        h.cluster.kill(victim, signal.SIGCONT)

    async def old_instance_gone() -> bool:
        return not app_children(h.cluster.servers[victim].process.pid)

    await wait_until(old_instance_gone, 15)

    async def quarantined() -> bool:
        servers = {s["name"]: s for s in (await h.status())["servers"]}
        return bool(servers[victim]["state"] == "quarantined")

    await wait_until(quarantined, 15)
    assert (await h.slot(slot["name"]))["owner"] != victim
    checked = h.check_overlap()
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("harness", [5], ids=["5-voters"], indirect=True)
async def test_leader_and_an_active_die_together(harness: Harness) -> None:
    h = harness
    leader = await h.leader()
    other = next(n for n in ("a1", "a2", "a3") if n != leader)
    slots = {s["owner"]: s for s in (await h.status())["slots"]}
    h.cluster.kill(leader, signal.SIGKILL)
    h.cluster.kill(other, signal.SIGKILL)
    survivor = next(n for n in h.cluster.servers if n not in (leader, other))
    for victim in (leader, other):
        if victim in slots:
            tenant = slots[victim]["tenants"][0]
            await wait_until(lambda t=tenant, v=victim: served_by_other(h, t, v, survivor), 30)

    async def both_judged() -> bool:  # a dead spare is declared failed too
        return {v["subject"] for v in await h.verdicts()} == {leader, other}

    await wait_until(both_judged, 15)
    new_leader = await h.leader()
    assert new_leader not in (leader, other)


async def test_a_crashed_app_is_restarted_locally_without_a_verdict(harness: Harness) -> None:
    h = harness
    agent_pid = h.cluster.servers["a2"].process.pid
    apps = app_children(agent_pid)
    assert len(apps) == 1
    apps[0].kill()

    async def restarted() -> bool:
        fresh = app_children(agent_pid)
        if not fresh or fresh[0].pid == apps[0].pid:
            return False
        status, server = await h.get_tenant("t2x1", "a1")
        return status == 200 and server == "a2"

    await wait_until(restarted, 20)
    assert await h.verdicts() == []
    assert (await h.slot("s2"))["epoch"] == 1


async def test_three_actives_stopped_at_once_is_a_cascade_that_ends_by_itself(
    tmp_path: Path,
) -> None:
    """Seven servers (five active, two spare); five voters that keep a quorum without a1..a3."""
    config = cluster_config(
        tmp_path / "data",
        actives=5,
        spares=2,
        voters=5,
        cascade={"quiet_s": 3.0, "budget": 1, "budget_window_s": 300.0},
    )
    config["voters"] = ["a1", "a4", "a5", "p1", "p2"]
    path = write_config(tmp_path / "cluster.yml", config)
    cluster = LocalCluster(path, load_config(path), SystemClock())
    victims = ["a1", "a2", "a3"]
    try:
        await cluster.start()
        assert not await cluster.wait_ready(45), f"not ready; logs in {cluster.log_dir}"
        assert await cluster.wait_serving(45), f"not serving; logs in {cluster.log_dir}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            h = Harness(cluster, http)
            before = len(await h.decisions(via="a4"))
            for name in victims:
                cluster.kill(name, signal.SIGSTOP)
            try:

                async def mode_is(wanted: str) -> bool:
                    answer = await cluster.get_json("a4", "/v1/status")
                    return answer is not None and answer[1]["mode"] == wanted

                await wait_until(lambda: mode_is("cascade"), 20)
                await asyncio.sleep(4.0)  # past every lease: whatever would move has moved
                metrics_url = cluster.config.server("a4").agent_url + "/metrics"
                async with http.get(metrics_url) as resp:
                    assert 'moonwatch_mode{mode="cascade"} 1.0' in await resp.text()
            finally:
                for name in victims:
                    cluster.kill(name, signal.SIGCONT)
            decisions = (await h.decisions(via="a4"))[before:]  # a thawed agent lags behind
            moved = [d for d in decisions if d["kind"] == "slot_assigned"]
            held = [d for d in decisions if d["kind"] == "action_held"]
            assert len(moved) <= 1, moved  # the cascade budget
            assert {d["evidence"]["previous_owner"] for d in moved} <= set(victims)
            assert len(held) >= 1, [(d["kind"], d["subject"], d["at"]) for d in decisions]
            assert all(d["evidence"]["mode"] == "cascade" for d in held)
            entered = next(d for d in decisions if d["kind"] == "mode_changed")
            assert entered["evidence"]["to"] == "cascade"
            assert entered["evidence"]["rule"] == "verdict_rate"

            await wait_until(lambda: mode_is("normal"), 40)
            final = await h.decisions(via="a4")
            modes = [d["evidence"]["to"] for d in final if d["kind"] == "mode_changed"]
            assert modes == ["cascade", "recovering", "normal"]
            replaced = {
                d["evidence"]["previous_owner"] for d in final if d["kind"] == "slot_assigned"
            }
            assert replaced <= set(victims)  # nobody else was replaced
    finally:
        await cluster.stop(timeout_s=10.0)
    checked = Harness(cluster, None).check_overlap()  # type: ignore[arg-type]
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_drain_under_load_moves_the_slot_with_at_most_a_short_503(harness: Harness) -> None:
    """While a client reads a tenant through the edge, an operator drains its server."""
    h = harness
    leader = await h.leader()
    victim = next(n for n in ("a1", "a2", "a3") if n != leader)
    slot = (await h.status())["slots"][int(victim[1]) - 1]
    tenant = slot["tenants"][0]
    url = h.cluster.config.server(leader).edge_url + "/"
    seen: list[tuple[int, str | None, str | None]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                async with h.http.get(url, headers={"Host": f"{tenant}.localhost"}) as resp:
                    seen.append(
                        (
                            resp.status,
                            resp.headers.get("X-Moonwatch-Server"),
                            resp.headers.get("Retry-After"),
                        )
                    )
            except (aiohttp.ClientError, TimeoutError):
                seen.append((0, None, None))
            await asyncio.sleep(0.02)

    reader = asyncio.create_task(client())
    try:
        await asyncio.sleep(0.5)
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agent", "drain", victim, "--config",
             str(h.cluster.config_path), "--reason", "kernel upgrade"],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        await wait_until(lambda: served_by_other(h, tenant, victim, leader), 20)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await reader
    statuses = {s for s, _, _ in seen}
    assert statuses <= {200, 503}, seen  # no connection errors, no 502
    unavailable = [r for r in seen if r[0] == 503]
    assert all(retry is not None for _, _, retry in unavailable)
    assert len(unavailable) * 0.02 < 5.0  # a short window, not an outage
    assert seen[0][1] == victim and seen[-1][1] not in (None, victim)
    assert await h.verdicts() == []  # maintenance is not a failure
    servers = {s["name"]: s for s in (await h.status())["servers"]}
    assert servers[victim]["state"] == "draining"
