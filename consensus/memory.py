"""MemoryConsensus: the Consensus protocol over one shared in-memory log, for tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from consensus.commands import Command, encode_command
from consensus.machine import apply_payload
from consensus.protocol import RaftStatus, Snapshot, SubmitResult, Timer
from consensus.state import ClusterState


@dataclass
class MemoryLog:
    """The agreed log shared by a group of MemoryConsensus nodes; tests steer leader and links.

    A node in `isolated` neither submits nor learns new entries, like a partitioned follower.
    Commits need a leader that is not isolated, and a majority of voters not isolated.
    """

    voters: tuple[str, ...]
    leader: str | None = None
    term: int = 0
    isolated: set[str] = field(default_factory=set)
    # Servers whose node is stopped (add_voter fails for them); tests keep it up to date.
    down: set[str] = field(default_factory=set)
    entries: list[str] = field(default_factory=list)
    nodes: list[MemoryConsensus] = field(default_factory=list)

    def elect(self, leader: str | None) -> None:
        self.leader = leader
        self.term += 1
        self.publish()

    def isolate(self, *servers: str) -> None:
        self.isolated.update(servers)
        self.publish()

    def heal(self) -> None:
        self.isolated.clear()
        self.publish()

    def has_quorum(self) -> bool:
        reachable = [v for v in self.voters if v not in self.isolated]
        return (
            self.leader is not None
            and self.leader not in self.isolated
            and len(reachable) * 2 > len(self.voters)
        )

    def append(self, payload: str) -> int:
        self.entries.append(payload)
        self.publish()
        return len(self.entries)

    def publish(self) -> None:
        for node in self.nodes:
            node.catch_up()


class MemoryConsensus:
    """One node's view of a MemoryLog. Deterministic; never touches the network."""

    def __init__(self, log: MemoryLog, server: str, timer: Timer) -> None:
        self._log = log
        self._server = server
        self._timer = timer
        self._state = ClusterState()
        self._applied = 0
        self._results: dict[int, SubmitResult] = {}
        self._changed = asyncio.Event()
        self._version = 0
        self._running = False
        self._role_voter: bool | None = None  # set by rejoin; None: as the log's voters say
        log.nodes.append(self)

    async def start(self) -> None:
        self._running = True
        self.catch_up()

    async def stop(self) -> None:
        self._running = False

    def catch_up(self) -> None:
        if not self._running or self._server in self._log.isolated:
            return
        while self._applied < len(self._log.entries):
            self._state, result = apply_payload(self._state, self._log.entries[self._applied])
            self._applied += 1
            self._results[self._applied] = result
        self._version += 1
        self._changed.set()

    def snapshot(self) -> Snapshot:
        connected = self._server not in self._log.isolated
        leader = self._log.leader if connected else None
        raft = RaftStatus(
            server=self._server,
            voter=(
                self._role_voter
                if self._role_voter is not None
                else self._server in self._log.voters
            ),
            leader=leader,
            term=self._log.term,
            is_leader=connected and leader == self._server,
            commit_index=self._applied,
            last_applied=self._applied,
            ready=connected and leader is not None,
            members=self._log.voters,
        )
        return Snapshot(state=self._state, raft=raft, version=self._version)

    async def wait_changed(self, since: int, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                while self._version <= since:
                    self._changed.clear()
                    if self._version > since:
                        break
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def submit(self, command: Command, timeout_s: float) -> SubmitResult:
        deadline = self._timer.monotonic() + timeout_s
        payload = encode_command(command)
        while self._running:
            if self._server not in self._log.isolated and self._log.has_quorum():
                index = self._log.append(payload)
                return self._results.pop(index, SubmitResult("failed", "not applied locally"))
            if self._timer.monotonic() >= deadline:
                break
            await self._timer.sleep(0.05)
        return SubmitResult("failed", "no leader with a quorum before the deadline")

    async def add_voter(self, server: str, timeout_s: float) -> SubmitResult:
        return await self._change_members(server, adding=True, timeout_s=timeout_s)

    async def remove_voter(self, server: str, timeout_s: float) -> SubmitResult:
        return await self._change_members(server, adding=False, timeout_s=timeout_s)

    async def rejoin(self, voters: tuple[str, ...]) -> None:
        """One shared log has nothing to restart: only this node's role follows `voters`
        (the log's voters still decide what commits)."""
        self._role_voter = self._server in voters
        self._version += 1
        self._changed.set()

    async def _change_members(self, server: str, *, adding: bool, timeout_s: float) -> SubmitResult:
        log = self._log
        if (server in log.voters) == adding:
            return SubmitResult("committed", "already so")
        if log.leader != self._server or not log.has_quorum():
            return SubmitResult("failed", "only a leader with a quorum changes the voters")
        if adding:
            if server in log.isolated or server in log.down:
                return SubmitResult("failed", f"{server} does not answer as a voter")
            log.voters = tuple(sorted((*log.voters, server)))
        else:
            log.voters = tuple(v for v in log.voters if v != server)
        log.publish()
        return SubmitResult("committed")
