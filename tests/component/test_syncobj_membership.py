"""Raft membership changes over real pysyncobj: a read-only node becomes a voter, a dead voter
leaves, and the group keeps a quorum through the next failure."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consensus.commands import VoterStep
from consensus.protocol import SubmitResult
from consensus.syncobj_consensus import RaftSettings, SyncObjConsensus
from tests.component.test_syncobj_consensus import (
    BOOT,
    COMMITTED,
    PASSWORD,
    SUBMIT_S,
    VOTERS,
    Cluster,
    Timer,
    free_ports,
    up,
    wait_until,
)

pytestmark = pytest.mark.filterwarnings(
    r"ignore:unclosed file <_io\.BufferedReader name='[^']*raft\.journal\.meta'>:ResourceWarning"
)
BOOT_VOTERS = dataclasses.replace(BOOT, voters=VOTERS)


class Group(Cluster):
    """m1..m3 voters and m4 read-only, every one with a Raft address it may vote from."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        (port,) = free_ports(1)
        self.peers = {**self.voters, "m4": f"127.0.0.1:{port}"}

    async def start(self, *names: str) -> None:
        for name in names or VOTERS:
            settings = RaftSettings(
                server=name,
                voters=self.voters,
                peers=self.peers,
                password=PASSWORD,
                journal_dir=self.root / name,
            )
            self.nodes[name] = node = SyncObjConsensus(settings, Timer())
            await node.start()

    def members(self, name: str) -> tuple[str, ...]:
        return self.raft(name).members


@pytest.fixture
async def group(tmp_path: Path) -> AsyncIterator[Group]:
    cluster = Group(tmp_path)
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_every_node_reports_the_members_raft_counts(group: Group) -> None:
    await group.start(*VOTERS, "m4")
    await group.wait_leader()
    assert await wait_until(lambda: group.members("m4") == VOTERS, SUBMIT_S), group.describe()
    assert {group.members(n) for n in VOTERS} == {VOTERS}


async def test_a_dead_voter_is_replaced_and_the_group_survives_the_next_failure(
    group: Group,
) -> None:
    await group.start(*VOTERS, "m4")
    leader = await group.wait_leader()
    assert await group.nodes[leader].submit(BOOT_VOTERS, SUBMIT_S) == COMMITTED
    assert await group.nodes["m4"].submit(up("m4"), SUBMIT_S) == COMMITTED
    await group.wait_applied(2)

    victim = next(v for v in VOTERS if v != leader)
    await group.stop(victim)
    await group.nodes["m4"].rejoin((*VOTERS, "m4"))  # a full node, not yet counted
    assert group.raft("m4").voter

    added = await group.nodes[leader].add_voter("m4", SUBMIT_S)
    assert added == COMMITTED, added
    assert await wait_until(lambda: "m4" in group.members("m4"), SUBMIT_S), group.describe()
    removed = await group.nodes[leader].remove_voter(victim, SUBMIT_S)
    assert removed == COMMITTED, removed
    survivors = tuple(sorted({*VOTERS, "m4"} - {victim}))
    assert await wait_until(
        lambda: all(group.members(n) == survivors for n in group.nodes), SUBMIT_S
    ), group.describe()

    # The next failure: the old leader goes too; two of the three voters still decide.
    await group.stop(leader)
    new_leader = await group.wait_leader()
    assert new_leader in survivors
    step = VoterStep(id="t", at=1.0, step="prepare", add="m4", remove=victim)
    assert await group.nodes["m4"].submit(step, SUBMIT_S) == COMMITTED
    assert await group.nodes[new_leader].submit(up("m4", 2), SUBMIT_S) == COMMITTED


async def test_membership_changes_are_idempotent_and_refused_off_the_leader(group: Group) -> None:
    await group.start(*VOTERS)
    leader = await group.wait_leader()
    follower = next(v for v in VOTERS if v != leader)
    assert await group.nodes[leader].add_voter(follower, 1.0) == SubmitResult(
        "committed", "already a voter"
    )
    assert await group.nodes[leader].remove_voter("m4", 1.0) == SubmitResult(
        "committed", "not a voter"
    )
    refused = await group.nodes[follower].remove_voter(leader, 1.0)
    assert refused.status == "failed"
    # Nobody listens on m4's address: the add is refused rather than stalling every commit.
    absent = await group.nodes[leader].add_voter("m4", 0.5)
    assert absent.status == "failed" and "does not listen" in absent.reason
    assert "m4" not in group.members(leader)
    assert await group.nodes[leader].submit(BOOT_VOTERS, SUBMIT_S) == COMMITTED


async def test_a_removed_voter_rejoins_read_only_and_follows_again(group: Group) -> None:
    await group.start(*VOTERS, "m4")
    leader = await group.wait_leader()
    assert await group.nodes[leader].submit(BOOT_VOTERS, SUBMIT_S) == COMMITTED
    await group.nodes["m4"].rejoin((*VOTERS, "m4"))
    assert await group.nodes[leader].add_voter("m4", SUBMIT_S) == COMMITTED
    victim = next(v for v in VOTERS if v != leader)
    assert await group.nodes[leader].remove_voter(victim, SUBMIT_S) == COMMITTED

    voters = tuple(sorted({*VOTERS, "m4"} - {victim}))
    await group.nodes[victim].rejoin(voters)
    assert not group.raft(victim).voter
    assert await group.nodes[victim].submit(up(victim, 2), SUBMIT_S) == COMMITTED
    state = await group.wait_applied(2)
    server = state.server(victim)
    assert server is not None and server.incarnation == 2


async def test_a_voter_removed_while_down_rejoins_read_only_despite_its_own_elections(
    group: Group,
) -> None:
    await group.start(*VOTERS, "m4")
    leader = await group.wait_leader()
    assert await group.nodes[leader].submit(BOOT_VOTERS, SUBMIT_S) == COMMITTED
    victim = next(v for v in VOTERS if v != leader)
    await group.stop(victim)  # frozen or down while the cluster replaces it
    await group.nodes["m4"].rejoin((*VOTERS, "m4"))
    assert await group.nodes[leader].add_voter("m4", SUBMIT_S) == COMMITTED
    assert await group.nodes[leader].remove_voter(victim, SUBMIT_S) == COMMITTED
    assert await group.nodes[leader].submit(up("m4", 2), SUBMIT_S) == COMMITTED

    await group.start(victim)  # back with its old membership; it may campaign on its own
    await asyncio.sleep(2.0)
    assert group.raft(victim).leader is None  # nobody answers a voter they removed

    voters = tuple(sorted({*VOTERS, "m4"} - {victim}))
    await group.nodes[victim].rejoin(voters)
    assert await wait_until(lambda: group.state(victim).applied >= 2, SUBMIT_S), group.describe()
    assert group.raft(victim).leader == leader and not group.raft(victim).voter
