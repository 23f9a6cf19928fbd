"""Real processes, real Raft: three agents elect a leader, survive its SIGKILL, and rejoin."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SystemClock
from agent.config import load_config
from agent.launcher import LocalCluster
from tests.support import cluster_config, wait_until, write_config

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    path = write_config(tmp_path / "cluster.yml", cluster_config(tmp_path / "data"))
    local = LocalCluster(path, load_config(path), SystemClock())
    try:
        await local.start()
        pending = await local.wait_ready(timeout_s=30.0)
        assert not pending, f"agents not ready: {pending}; logs in {local.log_dir}"
        yield local
    finally:
        await local.stop(timeout_s=10.0)


async def statuses(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    names = cluster.alive()
    answers = await asyncio.gather(*(cluster.get_json(n, "/v1/status") for n in names))
    return {n: a[1] for n, a in zip(names, answers, strict=True) if a is not None and a[0] == 200}


async def agreed_leader(cluster: LocalCluster, among: list[str]) -> str | None:
    """The leader every named agent reports, if they all report the same one."""
    docs = await statuses(cluster)
    leaders = {docs[n]["leader"] for n in among if n in docs}
    if len(docs) < len(among) or len(leaders) != 1:
        return None
    leader = leaders.pop()
    return leader if leader in among else None


async def all_serving(cluster: LocalCluster) -> bool:
    docs = await statuses(cluster)
    return bool(docs) and all(
        slot["state"] == "serving" for doc in docs.values() for slot in doc["slots"]
    )


async def test_leader_sigkill_new_leader_and_rejoin_from_journal(cluster: LocalCluster) -> None:
    everyone = list(cluster.servers)
    leader = await wait_until(lambda: agreed_leader(cluster, everyone), 15)
    await wait_until(lambda: all_serving(cluster), 20)
    before = (await statuses(cluster))[leader]
    assert [s["state"] for s in before["servers"]] == ["up", "up", "up"]
    assert [s["owner"] for s in before["slots"]] == ["a1", "a2", "a3"]

    cluster.kill(leader, signal.SIGKILL)
    assert await cluster.wait_exit(leader, 5) == -signal.SIGKILL
    survivors = [n for n in everyone if n != leader]
    new_leader = await wait_until(lambda: agreed_leader(cluster, survivors), 15)
    assert new_leader != leader
    after = await statuses(cluster)
    assert after[survivors[0]]["term"] > before["term"]

    await cluster.start_server(leader)
    assert not await cluster.wait_ready(timeout_s=30.0, names=[leader])
    rejoined = await wait_until(lambda: agreed_leader(cluster, everyone), 15)
    assert rejoined == new_leader  # a rejoining node does not disturb the sitting leader

    async def same_committed_state() -> bool:
        answers = await asyncio.gather(*(cluster.get_json(n, "/v1/decisions") for n in everyone))
        decisions = [a[1]["decisions"] for a in answers if a is not None]
        return len(decisions) == 3 and all(d == decisions[0] for d in decisions)

    await wait_until(same_committed_state, 10)
    docs = await statuses(cluster)
    back = next(s for s in docs[leader]["servers"] if s["name"] == leader)
    assert back["incarnation"] >= 2  # a restarted agent joins with a higher incarnation
    # Killed for longer than a verdict takes, it was declared failed: it comes back quarantined.
    assert back["state"] in ("quarantined", "up")
    journal = cluster.config.data_dir / "servers" / leader / "raft" / "raft.journal"
    assert journal.stat().st_size > 0


async def test_sigterm_stops_an_agent_and_its_apps_gracefully(cluster: LocalCluster) -> None:
    await wait_until(lambda: all_serving(cluster), 20)
    victim = "a1"
    app_port = cluster.config.app_port(victim, "s1")
    _, writer = await asyncio.open_connection("127.0.0.1", app_port)  # its app is listening
    writer.close()
    await writer.wait_closed()

    cluster.kill(victim, signal.SIGTERM)
    code = await cluster.wait_exit(victim, cluster.config.timing.shutdown_timeout_s + 2)
    assert code == 0
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", app_port)
    log = cluster.servers[victim].log_path.read_text()
    assert '"event": "agent_stopped"' in log
