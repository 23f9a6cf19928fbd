"""What every state transition shares: the rejection, lookups, replacement and decisions."""

from __future__ import annotations

import dataclasses
from typing import Any

from consensus.state import (
    MAX_DECISIONS,
    MAX_FAILURES_KEPT,
    ClusterState,
    Decision,
    ServerRecord,
    ServerState,
    SlotRecord,
)


class CommandRejected(Exception):
    """The command does not apply to the current state; the state is unchanged.

    `stale` is True when the command was overtaken by a newer epoch, incarnation or an
    identical earlier command: the submitter's view is old, not wrong.
    """

    def __init__(self, reason: str, *, stale: bool = False, duplicate: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stale = stale or duplicate
        self.duplicate = duplicate


def known_server(state: ClusterState, name: str, kind: str) -> ServerRecord:
    server = state.server(name)
    if server is None:
        raise CommandRejected(f"{kind}: unknown server {name!r}")
    return server


def known_slot(state: ClusterState, name: str, kind: str) -> SlotRecord:
    slot = state.slot(name)
    if slot is None:
        raise CommandRejected(f"{kind}: unknown slot {name!r}")
    return slot


def put_server(state: ClusterState, record: ServerRecord) -> ClusterState:
    servers = tuple(record if s.name == record.name else s for s in state.servers)
    return dataclasses.replace(state, servers=servers)


def moved_to(server: ServerRecord, state: ServerState, at: float, **changes: Any) -> ServerRecord:
    """`server` in `state` (with `changes`); `since` becomes `at` only if its state changes."""
    since = server.since if state == server.state else at
    return dataclasses.replace(server, state=state, since=since, **changes)


def with_failure(server: ServerRecord, at: float) -> ServerRecord:
    """`server` with one more verdict at `at`, keeping only the latest MAX_FAILURES_KEPT."""
    return dataclasses.replace(server, failures=(*server.failures, at)[-MAX_FAILURES_KEPT:])


def put_slot(state: ClusterState, record: SlotRecord) -> ClusterState:
    slots = tuple(record if s.name == record.name else s for s in state.slots)
    return dataclasses.replace(state, slots=slots)


def decide(
    state: ClusterState, kind: str, at: float, subject: str, evidence: dict[str, Any]
) -> ClusterState:
    """Append a decision with a deterministic id; the oldest fall off past MAX_DECISIONS."""
    seq = state.decision_seq + 1
    decision = Decision(id=f"d{seq:06d}", kind=kind, at=at, subject=subject, evidence=evidence)
    decisions = (*state.decisions, decision)[-MAX_DECISIONS:]
    return dataclasses.replace(state, decisions=decisions, decision_seq=seq)
