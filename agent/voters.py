"""Keeping the Raft membership whole: the leader replaces a failed voter, every agent follows.

On the leader, a failed voter is replaced by a healthy non-voter in recorded steps (see
healer/voters.py): prepare (committed intent), add (Raft membership change, committed once
the newcomer caught up), remove (the failed voter leaves). The newcomer's agent restarts its
Raft node as a full node when it sees the committed intent. A removed or stale agent, cut off
from any leader, asks its peers' status API for the agreed voters and rejoins with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
import structlog

from agent.clock import Clock
from consensus.commands import VoterStep
from consensus.protocol import Consensus, ConsensusError, Snapshot, SubmitResult
from healer.voters import PREPARE_TIMEOUT_S, VoterPlan, plan_voters

_log = structlog.get_logger("moonwatch.voters")

_STEP_TIMEOUT_S: Final = 10.0
# How long a node restarted as a voter waits to be added before it asks its peers again: the
# leader abandons a change after PREPARE_TIMEOUT_S.
_JOIN_PATIENCE_S: Final = PREPARE_TIMEOUT_S + 15.0
Step = Literal["prepare", "added", "removed", "abandoned"]
_STEPS: Final[dict[str, Step]] = {
    "prepare": "prepare",
    "record_added": "added",
    "record_removed": "removed",
    "abandon": "abandoned",
}

# Fetches the agreed voters from one peer agent: None when it has no leader or no answer.
PeerVoters = Callable[[str], Awaitable[tuple[str, ...] | None]]


@dataclass(frozen=True, slots=True)
class VoterSettings:
    server: str
    replace_voters: bool
    voters_file: Path
    peer_status_urls: Mapping[str, str]  # peer name -> its agent's /v1/status URL
    refresh_after_s: float = 10.0
    period_s: float = 0.5


class VoterKeeper:
    def __init__(
        self,
        settings: VoterSettings,
        consensus: Consensus,
        clock: Clock,
        peer_voters: PeerVoters | None = None,
    ) -> None:
        self._s = settings
        self._consensus = consensus
        self._clock = clock
        self._peer_voters = peer_voters or fetch_peer_voters
        self._stored = read_voters(settings.voters_file)
        self._leader_seen = clock.monotonic()
        self._last_refresh = clock.monotonic()
        self._joining_since = -_JOIN_PATIENCE_S

    async def run(self, stopping: asyncio.Event) -> None:
        version = -1
        while not stopping.is_set():
            await self._consensus.wait_changed(version, self._s.period_s)
            snap = self._consensus.snapshot()
            version = snap.version
            try:
                await self.step(snap)
            except ConsensusError as exc:  # the node could not restart; try again later
                _log.error("raft_rejoin_failed", error=str(exc))
                await self._clock.sleep(self._s.period_s)

    async def step(self, snap: Snapshot) -> None:
        """One pass: remember the voters, follow a committed change, lead one, or rejoin."""
        if not caught_up(snap):
            # A restarted node replays its journal through states long past (an old voter
            # change naming this node, old voters): acting on them, or storing them as the
            # voters to start with, would rejoin Raft with a membership that no longer holds.
            return
        self._remember(snap)
        if await self._follow(snap):
            return
        if snap.raft.is_leader and self._s.replace_voters:
            await self._lead(snap)
        await self._refresh(snap)

    # ------------------------------------------------------------------ every agent
    def _remember(self, snap: Snapshot) -> None:
        voters = snap.state.voters
        if voters and voters != self._stored:
            write_voters(self._s.voters_file, voters)
            self._stored = voters

    async def _follow(self, snap: Snapshot) -> bool:
        """Restart the Raft node when the committed membership says this node's role changed."""
        state, me = snap.state, self._s.server
        change = state.voter_change
        if change is not None and change.add == me and not snap.raft.voter:
            _log.info("raft_becoming_voter", replaces=change.remove)
            self._joining_since = self._clock.monotonic()
            await self._consensus.rejoin(tuple(sorted({*state.voters, me})))
            return True
        if change is None and state.voters and snap.raft.voter and me not in state.voters:
            _log.info("raft_no_longer_voter", voters=list(state.voters))
            await self._consensus.rejoin(state.voters)
            return True
        return False

    async def _refresh(self, snap: Snapshot) -> None:
        """Cut off from any leader for long: ask the peers which voters they agree on."""
        now = self._clock.monotonic()
        if snap.raft.leader is not None:
            self._leader_seen = now
            return
        wait = self._s.refresh_after_s
        if now - self._leader_seen < wait or now - self._last_refresh < wait:
            return
        if now - self._joining_since < _JOIN_PATIENCE_S:
            return  # joining as a voter: no leader talks to us until the leader adds us
        self._last_refresh = now
        agreed = await self._agreed_voters()
        if agreed is None:
            return
        role_differs = (self._s.server in agreed) != snap.raft.voter
        if role_differs or set(agreed) != set(snap.raft.members):
            _log.warning("raft_membership_stale", members=list(snap.raft.members), agreed=agreed)
            await self._consensus.rejoin(agreed)

    async def _agreed_voters(self) -> tuple[str, ...] | None:
        urls = self._s.peer_status_urls
        answers = await asyncio.gather(*(self._peer_voters(u) for u in urls.values()))
        for answer in answers:
            if answer:
                return answer
        return None

    # ------------------------------------------------------------------ the leader
    async def _lead(self, snap: Snapshot) -> None:
        plan, note = plan_voters(snap.state, snap.raft.members, self._clock.wall())
        if plan is None:
            if note:
                _log.debug("voter_replacement_waiting", note=note)
            return
        _log.info("voter_step", action=plan.action, add=plan.add, remove=plan.remove)
        if plan.action == "add":
            result = await self._consensus.add_voter(plan.add, _STEP_TIMEOUT_S)
            if result.ok:
                result = await self._record(plan, "added")
        elif plan.action == "remove":
            result = await self._consensus.remove_voter(plan.remove, _STEP_TIMEOUT_S)
            if result.ok:
                result = await self._record(plan, "removed")
        else:
            result = await self._record(plan, _STEPS[plan.action])
        if not result.ok:
            _log.warning("voter_step_failed", action=plan.action, reason=result.reason)

    async def _record(self, plan: VoterPlan, step: Step) -> SubmitResult:
        since = self._consensus.snapshot().state.voter_change
        mark = since.since if since is not None else self._clock.wall()
        command = VoterStep(
            id=f"voters:{step}:{plan.add}:{plan.remove}:{mark}",
            at=self._clock.wall(),
            step=step,
            add=plan.add,
            remove=plan.remove,
            reason=plan.reason,
        )
        return await self._consensus.submit(command, _STEP_TIMEOUT_S)


def caught_up(snap: Snapshot) -> bool:
    """Whether this node has applied every entry it knows to be committed (its journal's
    included), so that its state is the latest it can know rather than a replayed past one."""
    return snap.raft.last_applied >= snap.raft.commit_index


async def fetch_peer_voters(url: str) -> tuple[str, ...] | None:
    """The voters a peer agent reports, if it has a leader; None otherwise or on any error."""
    timeout = aiohttp.ClientTimeout(total=1.0)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                return None
            body: Any = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("leader") is None:
        return None
    voters = body.get("voters")
    if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
        return None
    return tuple(voters) or None


def read_voters(path: Path) -> tuple[str, ...]:
    """The voters this server last saw committed; empty when it never saw any."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, list) and all(isinstance(v, str) for v in data):
            return tuple(data)
    return ()


def write_voters(path: Path, voters: tuple[str, ...]) -> None:
    """Durably replace the remembered voters (write, fsync, rename); best effort."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(list(voters)))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        _log.warning("voters_not_stored", path=str(path), error=str(exc))
