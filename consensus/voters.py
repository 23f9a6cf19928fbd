"""Transitions of the recorded Raft membership: one voter replaced at a time, add before remove.

The Raft layer holds the membership that elections and commits actually use; this record is
what the cluster agreed to do about it, so that a new leader can finish a change that its
predecessor started, and so that every agent knows the voters when it restarts.
"""

from __future__ import annotations

import dataclasses

from consensus.commands import VoterStep
from consensus.rules import CommandRejected, decide, known_server
from consensus.state import ClusterState, VoterChange


def voter_step(state: ClusterState, cmd: VoterStep) -> ClusterState:
    known_server(state, cmd.add, cmd.kind)
    known_server(state, cmd.remove, cmd.kind)
    if cmd.step == "prepare":
        return _prepare(state, cmd)
    change = state.voter_change
    expected = {"added": "prepare", "removed": "added", "abandoned": "prepare"}[cmd.step]
    if change is None or (change.add, change.remove) != (cmd.add, cmd.remove):
        raise CommandRejected(
            f"voter_step: no change of {cmd.remove} for {cmd.add} under way", stale=True
        )
    if change.step != expected:
        raise CommandRejected(
            f"voter_step: {cmd.step} needs step {expected}, the change is at {change.step}",
            stale=True,
        )
    evidence = {**cmd.evidence, "add": cmd.add, "remove": cmd.remove, "reason": cmd.reason}
    if cmd.step == "added":
        voters = tuple(sorted({*state.voters, cmd.add}))
        state = dataclasses.replace(
            state, voters=voters, voter_change=dataclasses.replace(change, step="added")
        )
        return decide(state, "voter_added", cmd.at, cmd.add, {**evidence, "voters": list(voters)})
    if cmd.step == "removed":
        voters = tuple(v for v in state.voters if v != cmd.remove)
        state = dataclasses.replace(state, voters=voters, voter_change=None)
        return decide(
            state, "voter_removed", cmd.at, cmd.remove, {**evidence, "voters": list(voters)}
        )
    state = dataclasses.replace(state, voter_change=None)
    return decide(state, "voter_replacement_abandoned", cmd.at, cmd.remove, evidence)


def _prepare(state: ClusterState, cmd: VoterStep) -> ClusterState:
    if state.voter_change is not None:
        change = state.voter_change
        raise CommandRejected(
            f"voter_step: replacing {change.remove} by {change.add} is still under way",
            stale=True,
        )
    if cmd.remove not in state.voters:
        raise CommandRejected(f"voter_step: {cmd.remove} is not a voter", stale=True)
    if cmd.add in state.voters:
        raise CommandRejected(f"voter_step: {cmd.add} is already a voter", stale=True)
    newcomer = state.server(cmd.add)
    if newcomer is None or newcomer.state != "up":
        state_name = newcomer.state if newcomer else "unknown"
        raise CommandRejected(f"voter_step: {cmd.add} is {state_name}, not up", stale=True)
    change = VoterChange(add=cmd.add, remove=cmd.remove, since=cmd.at)
    state = dataclasses.replace(state, voter_change=change)
    evidence = {
        **cmd.evidence,
        "add": cmd.add,
        "remove": cmd.remove,
        "reason": cmd.reason,
        "voters": list(state.voters),
    }
    return decide(state, "voter_replacement_started", cmd.at, cmd.remove, evidence)
