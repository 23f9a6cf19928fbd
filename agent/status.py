"""The documents the status API serves, built from one snapshot of committed state."""

from __future__ import annotations

import dataclasses
from typing import Any

from consensus.protocol import Snapshot
from consensus.state import Decision


def status_document(cluster: str, server: str, pid: int, snap: Snapshot) -> dict[str, Any]:
    """`GET /v1/status`: this agent's view of the cluster; the keys are a public contract."""
    state = snap.state
    return {
        "cluster": cluster,
        "server": server,
        "pid": pid,
        "leader": snap.raft.leader,
        "term": snap.raft.term,
        "mode": state.mode,
        "voters": list(state.voters),
        "voter_change": (
            None if state.voter_change is None else dataclasses.asdict(state.voter_change)
        ),
        "servers": [
            {
                "name": s.name,
                "role": s.role,
                "state": s.state,
                "incarnation": s.incarnation,
                "domain": s.domain,
                "voter": s.name in state.voters,
            }
            for s in state.servers
        ],
        "slots": [
            {
                "name": s.name,
                "owner": s.owner,
                "state": s.state,
                "epoch": s.epoch,
                "tenants": list(s.tenants),
                "address": s.address,
            }
            for s in state.slots
        ],
        "stops": [
            {"subdomain": s.subdomain, "until": s.until, "reason": s.reason, "pinned": s.pinned}
            for s in state.stops
        ],
        "suspicions": [
            {
                "target": s.target,
                "incarnation": s.incarnation,
                "since": s.since,
                "unreachable_by": list(s.unreachable_by()),
                "reachable_by": list(s.reachable_by()),
            }
            for s in state.suspicions
        ],
        "raft": {
            "voter": snap.raft.voter,
            "is_leader": snap.raft.is_leader,
            "commit_index": snap.raft.commit_index,
            "last_applied": snap.raft.last_applied,
            "members": list(snap.raft.members),
        },
        "bootstrapped": state.bootstrapped,
        "config_digest": state.config_digest,
    }


def decision_document(decision: Decision) -> dict[str, Any]:
    return dataclasses.asdict(decision)


def decisions_document(snap: Snapshot) -> dict[str, Any]:
    """`GET /v1/decisions`: every retained decision, oldest first."""
    return {"decisions": [decision_document(d) for d in snap.state.decisions]}
