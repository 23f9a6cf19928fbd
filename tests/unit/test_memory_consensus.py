"""MemoryConsensus over a shared MemoryLog: commits, isolation, lost quorum and healing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from consensus.commands import (
    AssignSlot,
    Bootstrap,
    Command,
    DropSuspicion,
    MarkServerFailed,
    RenewLease,
    ReportProbe,
    ServerSpec,
    ServerUp,
    SlotSpec,
)
from consensus.memory import MemoryConsensus, MemoryLog
from consensus.protocol import Consensus, RaftStatus, SubmitResult
from consensus.state import ClusterState, encode_state

VOTERS = ("m1", "m2", "m3")
TIMEOUT_S = 2.0
BOOT = Bootstrap(
    id="c-boot",
    at=100.0,
    cluster="moon",
    config_digest="sha256:cafe",
    servers=(
        ServerSpec(name="m1", role="active", domain="rack-a"),
        ServerSpec(name="m2", role="active", domain="rack-b"),
        ServerSpec(name="m3", role="active", domain="rack-c"),
        ServerSpec(name="m4", role="spare", domain="rack-d"),
    ),
    slots=(SlotSpec(name="s1", owner="m1", tenants=("acme",)),),
    lease_s=5.0,
)


def up(server: str, incarnation: int = 1) -> ServerUp:
    return ServerUp(
        id=f"up-{server}-{incarnation}", at=101.0, server=server, incarnation=incarnation
    )


def probe(observer: str, target: str, *, reachable: bool = False) -> ReportProbe:
    return ReportProbe(
        id=f"probe-{observer}-{target}-{reachable}",
        at=102.0,
        observer=observer,
        target=target,
        incarnation=1,
        reachable=reachable,
        evidence={"rtt_ms": None, "via": ["direct"]},
    )


class FakeTimer:
    """Monotonic time that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would


@dataclass
class Cluster:
    log: MemoryLog
    timer: FakeTimer
    nodes: dict[str, MemoryConsensus]

    def state(self, server: str) -> ClusterState:
        return self.nodes[server].snapshot().state

    def raft(self, server: str) -> RaftStatus:
        return self.nodes[server].snapshot().raft

    def encoded(self, *servers: str) -> set[str]:
        return {encode_state(self.state(s)) for s in servers or self.nodes}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """Three voters (m1 leads) and one read-only follower m4, bootstrapped."""
    log = MemoryLog(voters=VOTERS)
    timer = FakeTimer()
    nodes = {name: MemoryConsensus(log, name, timer) for name in (*VOTERS, "m4")}
    for node in nodes.values():
        await node.start()
    log.elect("m1")
    assert await nodes["m1"].submit(BOOT, TIMEOUT_S) == SubmitResult("committed")
    try:
        yield Cluster(log, timer, nodes)
    finally:
        for node in nodes.values():
            await node.stop()


def test_memory_consensus_satisfies_the_protocol() -> None:
    node: Consensus = MemoryConsensus(MemoryLog(voters=VOTERS), "m1", FakeTimer())
    assert node.snapshot().state == ClusterState()


async def test_a_command_submitted_anywhere_commits_on_every_node(cluster: Cluster) -> None:
    for submitter, server in (("m2", "m2"), ("m4", "m4"), ("m1", "m3")):
        result = await cluster.nodes[submitter].submit(up(server), TIMEOUT_S)
        assert result == SubmitResult("committed"), submitter

    assert len(cluster.encoded()) == 1
    state = cluster.state("m3")
    assert state.applied == 4
    assert [s.state for s in state.servers] == ["new", "up", "up", "up"]
    for name in cluster.nodes:
        raft = cluster.raft(name)
        assert (raft.leader, raft.is_leader, raft.ready) == ("m1", name == "m1", True)
        assert (raft.commit_index, raft.last_applied) == (4, 4)
        assert raft.voter is (name in VOTERS)


async def test_a_rejected_command_is_reported_and_changes_nothing(cluster: Cluster) -> None:
    before = cluster.encoded()

    result = await cluster.nodes["m2"].submit(dataclasses.replace(BOOT, id="c-boot-2"), TIMEOUT_S)

    assert (result.status, result.stale, result.ok) == ("rejected", True, False)
    assert "already bootstrapped" in result.reason
    # The rejected entry is in the log (applied by nobody), so the state itself is unchanged.
    assert len(cluster.log.entries) == 2
    assert cluster.encoded() == before


async def test_an_isolated_node_cannot_commit_and_keeps_its_old_state(cluster: Cluster) -> None:
    booted = cluster.state("m3")
    cluster.log.isolate("m3")
    started = cluster.timer.now

    result = await cluster.nodes["m3"].submit(up("m3"), TIMEOUT_S)

    assert result.status == "failed"
    assert "no leader with a quorum" in result.reason
    assert TIMEOUT_S <= cluster.timer.now - started < TIMEOUT_S + 0.1
    assert len(cluster.log.entries) == 1
    # The majority goes on without it; the isolated node does not learn of it.
    assert await cluster.nodes["m2"].submit(up("m2"), TIMEOUT_S) == SubmitResult("committed")
    assert cluster.state("m3") is booted
    assert cluster.state("m2").applied == 2
    raft = cluster.raft("m3")
    assert (raft.leader, raft.is_leader, raft.ready, raft.commit_index) == (None, False, False, 1)


@pytest.mark.parametrize(
    ("leader", "isolated"),
    [
        pytest.param(None, (), id="no-leader"),
        pytest.param("m1", ("m1",), id="leader-isolated"),
        pytest.param("m1", ("m2", "m3"), id="majority-isolated"),
        pytest.param("m1", ("m3", "m2", "m4"), id="only-the-leader-left"),
    ],
)
async def test_without_a_quorum_nothing_commits(
    cluster: Cluster, leader: str | None, isolated: tuple[str, ...]
) -> None:
    cluster.log.elect(leader)
    cluster.log.isolate(*isolated)
    before = cluster.encoded()

    for name, node in cluster.nodes.items():
        started = cluster.timer.now
        result = await node.submit(up(name), TIMEOUT_S)
        assert result.status == "failed", name
        assert cluster.timer.now - started >= TIMEOUT_S

    assert len(cluster.log.entries) == 1
    assert cluster.encoded() == before


async def test_an_isolated_read_only_node_does_not_cost_the_quorum(cluster: Cluster) -> None:
    cluster.log.isolate("m4", "m3")

    assert await cluster.nodes["m1"].submit(up("m1"), TIMEOUT_S) == SubmitResult("committed")
    assert cluster.state("m4").applied == 1


async def test_a_healed_node_catches_up(cluster: Cluster) -> None:
    cluster.log.isolate("m3")
    for name in ("m1", "m2"):
        assert (await cluster.nodes[name].submit(up(name), TIMEOUT_S)).ok
    assert cluster.state("m3").applied == 1

    cluster.log.heal()

    assert len(cluster.encoded()) == 1
    assert cluster.state("m3").applied == 3
    assert cluster.raft("m3").leader == "m1"


async def test_a_submit_waiting_for_a_quorum_commits_once_healed(cluster: Cluster) -> None:
    cluster.log.isolate("m2", "m3")
    started = cluster.timer.now
    waiting = asyncio.create_task(cluster.nodes["m1"].submit(up("m1"), TIMEOUT_S))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()

    cluster.log.heal()

    assert await waiting == SubmitResult("committed")
    assert cluster.timer.now - started < TIMEOUT_S
    assert len(cluster.encoded()) == 1


async def test_resubmitting_after_a_failure_is_safe(cluster: Cluster) -> None:
    command = up("m3")
    cluster.log.isolate("m3")
    assert (await cluster.nodes["m3"].submit(command, TIMEOUT_S)).status == "failed"
    cluster.log.heal()

    assert await cluster.nodes["m3"].submit(command, TIMEOUT_S) == SubmitResult("committed")
    again = await cluster.nodes["m3"].submit(command, TIMEOUT_S)

    assert again == SubmitResult("committed", "already committed")  # applied once, not twice
    assert cluster.state("m1").applied == 2


async def test_a_new_leader_serves_the_same_log(cluster: Cluster) -> None:
    term = cluster.raft("m1").term
    cluster.log.isolate("m1")
    cluster.log.elect("m2")

    assert await cluster.nodes["m3"].submit(up("m3"), TIMEOUT_S) == SubmitResult("committed")

    assert cluster.raft("m3") == RaftStatus(
        server="m3",
        voter=True,
        leader="m2",
        term=term + 1,
        is_leader=False,
        commit_index=2,
        last_applied=2,
        ready=True,
        members=("m1", "m2", "m3"),
    )
    assert cluster.state("m1").applied == 1
    cluster.log.heal()
    assert len(cluster.encoded()) == 1


async def test_a_stopped_node_neither_submits_nor_learns(cluster: Cluster) -> None:
    node = cluster.nodes["m2"]
    await node.stop()
    started = cluster.timer.now

    result = await node.submit(up("m2"), TIMEOUT_S)

    assert result.status == "failed"
    assert cluster.timer.now == started  # no waiting on a stopped node
    assert (await cluster.nodes["m1"].submit(up("m1"), TIMEOUT_S)).ok
    assert cluster.state("m2").applied == 1
    await node.start()
    assert cluster.state("m2").applied == 2


async def test_wait_changed_wakes_on_a_commit_and_times_out_otherwise(cluster: Cluster) -> None:
    follower = cluster.nodes["m3"]
    seen = follower.snapshot().version
    assert not await follower.wait_changed(seen, 0.01)

    waiting = asyncio.create_task(follower.wait_changed(seen, 5.0))
    await asyncio.sleep(0)
    assert (await cluster.nodes["m1"].submit(up("m1"), TIMEOUT_S)).ok

    assert await waiting


async def test_wait_changed_returns_at_once_for_a_change_already_published(
    cluster: Cluster,
) -> None:
    follower = cluster.nodes["m3"]
    seen = follower.snapshot().version
    assert (await cluster.nodes["m1"].submit(up("m1"), TIMEOUT_S)).ok
    assert await follower.wait_changed(seen, 0.0)


async def test_a_failure_verdict_and_replacement_commit_everywhere(cluster: Cluster) -> None:
    """Each agent submits what it saw; every node applies the same verdict and hand-over."""
    for name in (*VOTERS, "m4"):
        assert await cluster.nodes[name].submit(up(name), TIMEOUT_S) == SubmitResult("committed")
    for observer, reachable in (("m2", False), ("m3", False), ("m4", True)):
        report = probe(observer, "m1", reachable=reachable)
        assert await cluster.nodes[observer].submit(report, TIMEOUT_S) == SubmitResult("committed")
    suspicion = cluster.state("m4").suspicion("m1")
    assert suspicion is not None
    assert (suspicion.unreachable_by(), suspicion.reachable_by()) == (("m2", "m3"), ("m4",))

    verdict = MarkServerFailed(id="fail-m1", at=103.0, server="m1", incarnation=1)
    assert await cluster.nodes["m2"].submit(verdict, TIMEOUT_S) == SubmitResult("committed")
    handover = AssignSlot(id="assign-s1", at=104.0, slot="s1", owner="m4", epoch=2, reason="m1")
    assert await cluster.nodes["m2"].submit(handover, TIMEOUT_S) == SubmitResult("committed")

    # The failed owner's renewal and a late report are refused as stale, the same everywhere.
    late: list[Command] = [
        RenewLease(id="renew-m1", at=105.0, slot="s1", owner="m1", epoch=1),
        probe("m4", "m1", reachable=False),
        DropSuspicion(id="drop-m1", at=106.0, target="m1", incarnation=1, reason="timeout"),
    ]
    for command in late:
        result = await cluster.nodes["m1"].submit(command, TIMEOUT_S)
        assert (result.status, result.stale) == ("rejected", True), command.kind
    assert len(cluster.encoded()) == 1
    state = cluster.state("m3")
    assert [d.kind for d in state.decisions[-3:]] == [
        "server_suspected",
        "server_failed",
        "slot_assigned",
    ]
    assert state.decisions[-2].evidence == {"incarnation": 1, "slots_lost": ["s1"]}
    owner = state.server("m4")
    slot = state.slot("s1")
    assert owner is not None and slot is not None
    assert (owner.role, slot.owner, slot.epoch, slot.state) == ("active", "m4", 2, "assigned")
    assert state.suspicions == ()
