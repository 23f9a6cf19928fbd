"""The Consensus seam: submit a command, read committed state; plus what it needs of a clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from consensus.commands import Command
from consensus.state import ClusterState


class Timer(Protocol):
    """The part of the agent's clock that consensus needs (structurally satisfied by Clock)."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class RaftStatus:
    """This node's view of Raft at one instant. `leader` may be stale by an election timeout."""

    server: str
    voter: bool
    leader: str | None = None
    term: int = 0
    is_leader: bool = False
    commit_index: int = 0
    last_applied: int = 0
    ready: bool = False
    # The voters this node's Raft layer counts right now (it may be ahead of committed state:
    # a membership change takes effect when it is appended to the log).
    members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Committed state as this node has applied it, with the Raft view it was read under."""

    state: ClusterState
    raft: RaftStatus
    # Grows by one with every published change; compare it to wait for the next one.
    version: int = 0


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What became of a submitted command.

    committed: applied by the state machine. rejected: committed to the log but refused by
    `apply` (`stale` when overtaken by newer state). failed: no commit within the timeout
    (no leader, no quorum, or unknown outcome); resubmitting the same command is safe because
    the state machine drops duplicate command ids.
    """

    status: Literal["committed", "rejected", "failed"]
    reason: str = ""
    stale: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "committed"


class Consensus(Protocol):
    """Agreement on the cluster state among the agents."""

    async def start(self) -> None:
        """Join the cluster (bind, open the journal, replay it). Returns without waiting for a
        leader. Raises ConsensusError when the node cannot run at all (port taken, bad journal)."""

    async def stop(self) -> None:
        """Leave the cluster and release ports and threads. Idempotent; bounded (~2 s)."""

    def snapshot(self) -> Snapshot:
        """The latest committed state and Raft view; never blocks, never raises."""

    async def wait_changed(self, since: int, timeout_s: float) -> bool:
        """Wait until the snapshot version is newer than `since` (at once if it already is);
        False on timeout."""

    async def submit(self, command: Command, timeout_s: float) -> SubmitResult:
        """Commit `command` through the current leader, retrying leader changes until
        `timeout_s` has passed. Never raises for cluster conditions (see SubmitResult)."""

    # Raft membership: one voter changed at a time, on the leader, each change waited for.
    async def add_voter(self, server: str, timeout_s: float) -> SubmitResult:
        """Add `server` as a voter once its Raft node listens; committed means the new voter
        has caught up with the log. Already a voter: committed at once."""

    async def remove_voter(self, server: str, timeout_s: float) -> SubmitResult:
        """Remove `server` from the voters. Not a voter: committed at once."""

    async def rejoin(self, voters: tuple[str, ...]) -> None:
        """Restart this node's Raft layer for the membership `voters`: as a voter when this
        server is one of them, read-only otherwise. The snapshot never goes back in time."""


class ConsensusError(Exception):
    """The consensus node cannot run (configuration, port or journal problem)."""
