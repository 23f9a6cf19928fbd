"""Replacing a failed Raft voter: which step comes next, decided from committed state alone.

One change at a time, add before remove, so the voter count never drops: with 3 voters and
one failed, the group goes 3 -> 4 -> 3 and a majority of the configured count is always
there. The Raft layer's own view of its members (`members`) tells which steps already took
effect, so a leader elected half-way through finishes its predecessor's change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from consensus.state import ClusterState, ServerRecord

# How long the newcomer's agent has to restart its Raft node as a full node.
PREPARE_TIMEOUT_S: Final = 30.0

Action = Literal["prepare", "add", "record_added", "remove", "record_removed", "abandon"]


@dataclass(frozen=True, slots=True)
class VoterPlan:
    """The next step: `action` on the pair (add, remove), for `reason`."""

    action: Action
    add: str
    remove: str
    reason: str


def plan_voters(
    state: ClusterState,
    members: tuple[str, ...],
    wall: float,
    prepare_timeout_s: float = PREPARE_TIMEOUT_S,
) -> tuple[VoterPlan | None, str | None]:
    """The next step of a voter replacement, or None and a note saying why there is none."""
    if not state.bootstrapped or not state.voters:
        return None, None
    change = state.voter_change
    if change is None:
        return _start(state)
    pair = (change.add, change.remove)
    if change.step == "added":
        if change.remove not in members:
            return VoterPlan("record_removed", *pair, "Raft no longer counts it"), None
        return VoterPlan("remove", *pair, f"{change.add} is a voter and caught up"), None
    if change.add in members:
        return VoterPlan("record_added", *pair, "Raft counts it as a voter"), None
    newcomer = state.server(change.add)
    if newcomer is None or newcomer.state != "up":
        why = f"{change.add} is {newcomer.state if newcomer else 'gone'}"
        return VoterPlan("abandon", *pair, why), None
    if wall - change.since > prepare_timeout_s:
        why = f"{change.add} did not start as a voter within {prepare_timeout_s:.0f} s"
        return VoterPlan("abandon", *pair, why), None
    return VoterPlan("add", *pair, f"{change.remove} failed"), None


def _start(state: ClusterState) -> tuple[VoterPlan | None, str | None]:
    failed = sorted(v for v in state.voters if _state_of(state, v) == "failed")
    if not failed:
        return None, None
    remove = failed[0]
    newcomer = pick_voter(state)
    if newcomer is None:
        return None, f"voter {remove} failed; no healthy non-voter without slots to replace it"
    reason = f"voter {remove} failed; {newcomer.name} takes its place"
    return VoterPlan("prepare", newcomer.name, remove, reason), None


def pick_voter(state: ClusterState) -> ServerRecord | None:
    """A server that is up, not a voter and owns no slot (its Raft node restarts to become a
    voter, which must not interrupt its lease renewals); spares first, then a failure domain
    no voter is in, then by name so every leader picks the same one."""
    owners = {s.owner for s in state.slots if s.owner and s.state != "released"}
    domains = {s.domain for s in state.servers if s.name in state.voters and s.state != "failed"}
    candidates = [
        s
        for s in state.servers
        if s.state == "up" and s.name not in state.voters and s.name not in owners
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda s: (s.role != "spare", s.domain in domains, s.name))


def _state_of(state: ClusterState, name: str) -> str:
    server = state.server(name)
    return server.state if server else "unknown"
