"""Transitions of servers: joining, suspicion, refutation, failure verdicts and return."""

from __future__ import annotations

import dataclasses
from typing import Final

from consensus.commands import (
    DrainServer,
    DropSuspicion,
    MarkServerFailed,
    ReportProbe,
    ReturnServer,
    ServerUp,
)
from consensus.rules import (
    CommandRejected,
    decide,
    known_server,
    moved_to,
    put_server,
    put_slot,
    with_failure,
)
from consensus.state import ClusterState, ProbeReport, ServerState, Suspicion

# Evidence attached to a probe report is bounded: it lives in every snapshot.
MAX_EVIDENCE_KEYS: Final = 16


def server_up(state: ClusterState, cmd: ServerUp) -> ClusterState:
    """A (re)started or refuting agent: a newer incarnation. A failed server comes back
    quarantined; it owns nothing until an operator returns it to the pool."""
    server = known_server(state, cmd.server, cmd.kind)
    if cmd.incarnation <= server.incarnation:
        raise CommandRejected(
            f"server_up: {cmd.server} incarnation {cmd.incarnation} is not newer than "
            f"{server.incarnation}",
            stale=True,
        )
    suspected = state.suspicion(cmd.server) is not None
    new_state: ServerState = "up"
    if server.state in ("failed", "quarantined"):
        new_state = "quarantined"
    elif server.state == "draining":
        new_state = "draining"  # a restart does not end maintenance
    state = put_server(state, moved_to(server, new_state, cmd.at, incarnation=cmd.incarnation))
    state = _without_suspicion(state, cmd.server)
    kind = "server_up"
    if new_state == "quarantined":
        kind = "server_back_quarantined"
    elif suspected and server.state == "up":
        kind = "server_refuted"
    evidence = {"incarnation": cmd.incarnation, "previous_state": server.state}
    return decide(state, kind, cmd.at, cmd.server, evidence)


def report_probe(state: ClusterState, cmd: ReportProbe) -> ClusterState:
    target = known_server(state, cmd.target, cmd.kind)
    observer = known_server(state, cmd.observer, cmd.kind)
    if cmd.observer == cmd.target:
        raise CommandRejected("report_probe: a server does not report on itself")
    if target.state != "up":
        raise CommandRejected(f"report_probe: {cmd.target} is {target.state}", stale=True)
    if cmd.incarnation < target.incarnation:
        raise CommandRejected(
            f"report_probe: {cmd.target} is at incarnation {target.incarnation}", stale=True
        )
    if observer.state != "up":  # only servers in service take part in verdicts
        raise CommandRejected(
            f"report_probe: observer {cmd.observer} is {observer.state}", stale=True
        )
    if len(cmd.evidence) > MAX_EVIDENCE_KEYS:
        raise CommandRejected(f"report_probe: evidence has more than {MAX_EVIDENCE_KEYS} keys")
    report = ProbeReport(cmd.observer, cmd.reachable, cmd.at, dict(cmd.evidence))
    current = state.suspicion(cmd.target)
    if current is None:
        if cmd.reachable:
            raise CommandRejected(f"report_probe: no suspicion of {cmd.target}", stale=True)
        suspicion = Suspicion(cmd.target, target.incarnation, cmd.at, (report,))
        state = _with_suspicion(state, suspicion)
        evidence = {**cmd.evidence, "observer": cmd.observer, "incarnation": target.incarnation}
        return decide(state, "server_suspected", cmd.at, cmd.target, evidence)
    previous = next((r for r in current.reports if r.observer == cmd.observer), None)
    if previous is not None and previous.from_confirm() and not report.from_confirm():
        # The observer's vote stands: a routine probe sent since says less than its confirm.
        raise CommandRejected(
            f"report_probe: {cmd.observer} already confirmed on {cmd.target}", stale=True
        )
    others = tuple(r for r in current.reports if r.observer != cmd.observer)
    return _with_suspicion(state, dataclasses.replace(current, reports=(*others, report)))


def drop_suspicion(state: ClusterState, cmd: DropSuspicion) -> ClusterState:
    current = state.suspicion(cmd.target)
    if current is None or current.incarnation != cmd.incarnation:
        raise CommandRejected(f"drop_suspicion: no such suspicion of {cmd.target}", stale=True)
    state = _without_suspicion(state, cmd.target)
    evidence = {
        "reason": cmd.reason,
        "unreachable_by": list(current.unreachable_by()),
        "reachable_by": list(current.reachable_by()),
    }
    return decide(state, "suspicion_dropped", cmd.at, cmd.target, evidence)


def mark_server_failed(state: ClusterState, cmd: MarkServerFailed) -> ClusterState:
    """The verdict: the server is failed, its slots are lost (the lease still fences them), and
    the verdict's time joins the server's failures (the flap evidence)."""
    server = known_server(state, cmd.server, cmd.kind)
    if cmd.incarnation < server.incarnation:
        raise CommandRejected(
            f"mark_server_failed: {cmd.server} has refuted with incarnation {server.incarnation}",
            stale=True,
        )
    if server.state in ("failed", "quarantined"):
        raise CommandRejected(
            f"mark_server_failed: {cmd.server} is already {server.state}", stale=True
        )
    # Keep the highest incarnation seen, so a ServerUp at the failed incarnation stays stale.
    incarnation = max(server.incarnation, cmd.incarnation)
    failed = moved_to(server, "failed", cmd.at, incarnation=incarnation)
    state = put_server(state, with_failure(failed, cmd.at))
    state = _without_suspicion(state, cmd.server)
    lost = []
    for slot in state.slots_owned_by(cmd.server):
        if slot.state in ("assigned", "serving"):
            state = put_slot(state, dataclasses.replace(slot, state="lost", address=None))
            lost.append(slot.name)
    # Facts the state machine records win over anything the submitter put in its evidence.
    evidence = {**cmd.evidence, "incarnation": cmd.incarnation, "slots_lost": lost}
    return decide(state, "server_failed", cmd.at, cmd.server, evidence)


def return_server(state: ClusterState, cmd: ReturnServer) -> ClusterState:
    """An operator puts a failed or quarantined server back as a spare. A quarantined one has a
    live agent and is up at once; a failed one is up once its agent joins again. Slots it lost
    stay lost until the leader hands them over; their lease still fences the old instance.
    Its failures stay with it: a server that fails again soon after is flapping."""
    server = known_server(state, cmd.server, cmd.kind)
    if server.state not in ("failed", "quarantined", "draining"):
        raise CommandRejected(f"return_server: {cmd.server} is {server.state}, not out of the pool")
    if server.state == "draining":
        owned = [s.name for s in state.slots_owned_by(cmd.server) if s.state not in ("released",)]
        if owned:
            raise CommandRejected(
                f"return_server: {cmd.server} is still handing over {', '.join(owned)}"
            )
    new_state: ServerState = "up" if server.state in ("quarantined", "draining") else "new"
    state = put_server(state, moved_to(server, new_state, cmd.at, role="spare"))
    evidence = {"reason": cmd.reason, "previous_state": server.state, "state": new_state}
    return decide(state, "server_returned", cmd.at, cmd.server, evidence)


def _with_suspicion(state: ClusterState, suspicion: Suspicion) -> ClusterState:
    others = tuple(s for s in state.suspicions if s.target != suspicion.target)
    return dataclasses.replace(state, suspicions=(*others, suspicion))


def _without_suspicion(state: ClusterState, target: str) -> ClusterState:
    return dataclasses.replace(
        state, suspicions=tuple(s for s in state.suspicions if s.target != target)
    )


def drain_server(state: ClusterState, cmd: DrainServer) -> ClusterState:
    server = known_server(state, cmd.server, cmd.kind)
    if server.state == "draining":
        raise CommandRejected(f"drain_server: {cmd.server} is already draining", stale=True)
    if server.state != "up":
        raise CommandRejected(f"drain_server: {cmd.server} is {server.state}, not in service")
    state = put_server(state, moved_to(server, "draining", cmd.at))
    state = _without_suspicion(state, cmd.server)
    slots = [s.name for s in state.slots_owned_by(cmd.server) if s.state in ("assigned", "serving")]
    # Facts the state machine records win over anything the submitter put in its evidence.
    evidence = {**cmd.evidence, "reason": cmd.reason, "slots": slots, "operator": cmd.operator}
    return decide(state, "server_draining", cmd.at, cmd.server, evidence)
