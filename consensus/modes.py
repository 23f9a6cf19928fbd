"""Transitions of the cluster's healing mode, and the record of actions held back."""

from __future__ import annotations

import dataclasses

from consensus.commands import RecordHeld, SetMode
from consensus.rules import CommandRejected, decide
from consensus.state import ClusterState


def set_mode(state: ClusterState, cmd: SetMode) -> ClusterState:
    if cmd.mode == state.mode:
        raise CommandRejected(f"set_mode: the cluster is already {cmd.mode}", stale=True)
    previous = state.mode
    state = dataclasses.replace(state, mode=cmd.mode, mode_since=cmd.at)
    evidence = {
        **cmd.evidence,
        "from": previous,
        "to": cmd.mode,
        "reason": cmd.reason,
        "operator": cmd.operator,
    }
    return decide(state, "mode_changed", cmd.at, cmd.mode, evidence)


def record_held(state: ClusterState, cmd: RecordHeld) -> ClusterState:
    evidence = {**cmd.evidence, "action": cmd.action, "reason": cmd.reason, "mode": state.mode}
    return decide(state, "action_held", cmd.at, cmd.subject, evidence)
