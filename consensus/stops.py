"""Transitions of tenant stops: a flooding tenant refused everywhere for a while, then let in."""

from __future__ import annotations

import dataclasses
import math
from typing import Final

from consensus.commands import LiftStop, StopTenant
from consensus.rules import CommandRejected, decide
from consensus.state import MAX_OFFENCES, MAX_STOPS, ClusterState, Offence, Stop

# Evidence of a stop lives in every snapshot: keep it small.
MAX_STOP_EVIDENCE_KEYS: Final = 16


def stop_tenant(state: ClusterState, cmd: StopTenant) -> ClusterState:
    if state.tenant_slot(cmd.subdomain) is None:
        raise CommandRejected(f"stop_tenant: no tenant {cmd.subdomain!r}")
    if not (math.isfinite(cmd.until) and cmd.until > cmd.at):
        raise CommandRejected(f"stop_tenant: until {cmd.until} is not after {cmd.at}")
    if len(cmd.evidence) > MAX_STOP_EVIDENCE_KEYS:
        raise CommandRejected(f"stop_tenant: evidence has more than {MAX_STOP_EVIDENCE_KEYS} keys")
    current = state.stop(cmd.subdomain)
    if current is not None and current.active(cmd.at) and not cmd.operator:
        raise CommandRejected(f"stop_tenant: {cmd.subdomain} is already stopped", stale=True)
    if current is None and len(state.stops) >= MAX_STOPS:
        raise CommandRejected(f"stop_tenant: {MAX_STOPS} stops already")
    offence = current.offence if (cmd.operator and current is not None) else cmd.offence
    stop = Stop(
        subdomain=cmd.subdomain,
        since=cmd.at,
        until=cmd.until,
        reason=cmd.reason,
        offence=offence,
        pinned=cmd.operator,
        evidence=dict(cmd.evidence),
    )
    others = tuple(s for s in state.stops if s.subdomain != cmd.subdomain)
    state = dataclasses.replace(state, stops=(*others, stop))
    if not cmd.operator:
        state = _record_offence(state, Offence(cmd.subdomain, cmd.offence, cmd.at))
    evidence = {
        **cmd.evidence,
        "until": cmd.until,
        "for_s": round(cmd.until - cmd.at, 3),
        "reason": cmd.reason,
        "offence": offence,
        "operator": cmd.operator,
    }
    return decide(state, "tenant_stopped", cmd.at, cmd.subdomain, evidence)


def lift_stop(state: ClusterState, cmd: LiftStop) -> ClusterState:
    current = state.stop(cmd.subdomain)
    if current is None:
        raise CommandRejected(f"lift_stop: {cmd.subdomain!r} is not stopped", stale=True)
    if not cmd.operator and current.active(cmd.at):
        raise CommandRejected(
            f"lift_stop: {cmd.subdomain} is stopped until {current.until}; only an operator "
            "lifts a stop early",
            stale=True,
        )
    state = dataclasses.replace(
        state, stops=tuple(s for s in state.stops if s.subdomain != cmd.subdomain)
    )
    evidence = {
        "reason": cmd.reason,
        "operator": cmd.operator,
        "stopped_since": current.since,
        "until": current.until,
        "pinned": current.pinned,
    }
    return decide(state, "stop_lifted", cmd.at, cmd.subdomain, evidence)


def _record_offence(state: ClusterState, offence: Offence) -> ClusterState:
    others = [o for o in state.offences if o.subdomain != offence.subdomain]
    kept = sorted(others, key=lambda o: o.last)[-(MAX_OFFENCES - 1) :]
    return dataclasses.replace(state, offences=(*kept, offence))
