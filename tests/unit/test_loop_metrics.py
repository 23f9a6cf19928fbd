"""What the decision loop counts for alerting: commit latency, verdicts, replacements and
changes of leader. One leader's loop over in-memory consensus and a clock moved by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.config import ClusterConfig, parse_config
from agent.loop import DecisionLoop, bootstrap_command
from agent.metrics import AgentMetrics, code_class
from consensus.commands import Command, ReportProbe, ServerUp
from consensus.memory import MemoryConsensus, MemoryLog
from tests.support import StaticDriver, cluster_config

WALL = 1_700_000_000.0


class HandClock:
    """Both clocks move only when the test (or a sleep) moves them; each read costs 1 ms."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        self.now += 0.001
        return self.now

    def wall(self) -> float:
        return WALL + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class IdleDriver(StaticDriver):
    """Runs no app instance."""


class Leader:
    def __init__(self, config: ClusterConfig, log: MemoryLog, consensus: MemoryConsensus) -> None:
        self.clock = HandClock()
        self.log = log
        self.consensus = consensus
        self.metrics = AgentMetrics(consensus.snapshot)
        self.loop = DecisionLoop(
            config=config,
            server="a1",
            incarnation=1,
            consensus=consensus,
            driver=IdleDriver(),
            clock=self.clock,
            metrics=self.metrics,
        )

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def commit(self, command: Command) -> None:
        assert (await self.consensus.submit(command, timeout_s=1.0)).ok


async def leader(tmp_path: Path, up: tuple[str, ...] = ("a1", "a2", "a3", "p1")) -> Leader:
    config = parse_config(cluster_config(tmp_path / "data", spares=1, voters=3), tmp_path, {})
    log = MemoryLog(voters=config.voters)
    consensus = MemoryConsensus(log, "a1", HandClock())
    await consensus.start()
    log.elect("a1")
    made = Leader(config, log, consensus)
    await made.commit(bootstrap_command(config, WALL))
    for name in up:
        await made.commit(ServerUp(id=f"up:{name}", at=WALL, server=name, incarnation=1))
    return made


async def test_every_committed_command_has_its_commit_latency_observed(tmp_path: Path) -> None:
    agent = await leader(tmp_path, up=("a2", "a3", "p1"))
    await agent.loop.tick()
    committed = sum(
        sample.value
        for metric in agent.metrics.registry.collect()
        if metric.name == "moonwatch_commands"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["status"] == "committed"
    )
    assert committed >= 1  # at least this agent's own server_up
    assert agent.sample("moonwatch_raft_commit_seconds_count") == committed
    assert agent.sample("moonwatch_raft_commit_seconds_sum") > 0


async def test_a_verdict_and_the_replacement_it_causes_are_counted(tmp_path: Path) -> None:
    agent = await leader(tmp_path)
    for observer in ("a1", "a2"):
        await agent.commit(
            ReportProbe(
                id=f"probe:{observer}",
                at=agent.clock.wall(),
                observer=observer,
                target="a3",
                incarnation=1,
                reachable=False,
            )
        )
    for _ in range(20):  # the suspicion window, then a lost lease, then the spare
        await agent.loop.tick()
        await agent.clock.sleep(0.5)
        if agent.sample("moonwatch_verdicts_total", server="a3"):
            break
    assert agent.sample("moonwatch_verdicts_total", server="a3") == 1
    assert agent.sample("moonwatch_verdicts_total", server="a2") == 0
    for _ in range(20):
        await agent.loop.tick()
        await agent.clock.sleep(0.5)
        if any(s.owner == "p1" for s in agent.consensus.snapshot().state.slots):
            break
    # Every change of owner after the first is one replacement committed by this leader.
    slots = agent.consensus.snapshot().state.slots
    assert any(s.owner == "p1" for s in slots)
    assert {s.name: agent.sample("moonwatch_assignments_total", slot=s.name) for s in slots} == {
        s.name: s.epoch - 1 for s in slots
    }


async def test_a_change_of_leader_is_counted_but_the_first_leader_is_not(tmp_path: Path) -> None:
    agent = await leader(tmp_path)
    await agent.loop.tick()
    assert agent.sample("moonwatch_raft_leader_changes_total") == 0
    agent.log.elect(None)
    await agent.loop.tick()
    agent.log.elect("a1")  # the same leader again, in a new term: no change of leader
    await agent.loop.tick()
    assert agent.sample("moonwatch_raft_leader_changes_total") == 0
    agent.log.elect("a2")
    await agent.loop.tick()
    agent.log.elect("a1")
    await agent.loop.tick()
    assert agent.sample("moonwatch_raft_leader_changes_total") == 2


def test_status_codes_fall_into_bounded_classes() -> None:
    cases = {200: "2xx", 204: "2xx", 302: "3xx", 404: "4xx", 499: "4xx", 503: "5xx"}
    cases |= {599: "5xx", 0: "5xx", 99: "5xx", 600: "5xx", 101: "1xx"}
    assert {status: code_class(status) for status in cases} == cases
