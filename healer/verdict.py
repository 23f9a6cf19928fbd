"""The leader's verdicts: a suspicion becomes `server failed` only when enough observers agree."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consensus.commands import Command, DropSuspicion, MarkServerFailed
from consensus.state import ClusterState, Suspicion
from healer.suspicion import suspicion_timeout
from healer.witnesses import WITNESSES, witnesses


@dataclass(frozen=True, slots=True)
class VerdictPolicy:
    """How much agreement and how much time a verdict needs."""

    min_observers: int = 2
    suspicion_min_s: float = 0.8
    suspicion_max_s: float = 2.4
    expire_s: float = 10.0
    # Servers asked to probe a suspected server (healer.witnesses); None: every up server.
    witnesses: int | None = WITNESSES


@dataclass(frozen=True, slots=True)
class Tally:
    """Who agrees about one suspicion, among the servers entitled to an opinion."""

    eligible: tuple[str, ...]
    unreachable: tuple[str, ...]
    reachable: tuple[str, ...]
    required: int

    @property
    def agreed(self) -> bool:
        return len(self.unreachable) >= self.required

    @property
    def refuted(self) -> bool:
        return len(self.reachable) >= self.required


def tally(state: ClusterState, suspicion: Suspicion, policy: VerdictPolicy) -> Tally:
    """The witnesses of a suspicion probe its target once it is committed, so they and every
    other up server that confirmed on it are the ones that probed it in the window: the
    eligible observers. A verdict needs a majority of them and never fewer than `min_observers`.

    Only confirm probes vote "unreachable": a witness sends one only after several attempts in
    a row found nobody to vouch for the target. A single failed routine probe (which opens a
    suspicion, and which a lossy link produces every few periods) is an accusation, not a vote.
    """
    chosen = set(witnesses(state, suspicion, policy.witnesses))
    confirmers = {r.observer for r in suspicion.reports if r.from_confirm()}
    eligible = tuple(
        s.name
        for s in state.up_servers()
        if s.name != suspicion.target and (s.name in chosen or s.name in confirmers)
    )
    required = max(policy.min_observers, len(eligible) // 2 + 1)
    allowed = set(eligible)
    unreachable = tuple(
        r.observer
        for r in suspicion.reports
        if not r.reachable and r.observer in allowed and r.from_confirm()
    )
    reachable = tuple(o for o in suspicion.reachable_by() if o in allowed)
    return Tally(eligible, unreachable, reachable, required)


def plan_verdicts(
    state: ClusterState,
    first_seen: Mapping[str, float],
    now: float,
    wall: float,
    policy: VerdictPolicy,
) -> tuple[list[Command], list[str]]:
    """Commands for every open suspicion that is agreed, refuted or expired, and a note for
    each one still waiting. `first_seen` maps a target to when this leader first saw its
    suspicion (on its own monotonic clock); a new leader starts counting from its election."""
    commands: list[Command] = []
    notes: list[str] = []
    for suspicion in state.suspicions:
        elapsed = now - first_seen.get(suspicion.target, now)
        votes = tally(state, suspicion, policy)
        timeout = suspicion_timeout(
            len(votes.unreachable) - 1,
            max(1, len(votes.eligible) - 1),
            policy.suspicion_min_s,
            policy.suspicion_max_s,
        )
        if votes.agreed and elapsed >= timeout:
            commands.append(_verdict(suspicion, votes, elapsed, timeout, wall))
        elif votes.refuted or elapsed >= policy.expire_s:
            why = "reachable by a majority" if votes.refuted else f"no verdict in {elapsed:.1f} s"
            commands.append(_drop(suspicion, why, wall))
        else:
            notes.append(
                f"{suspicion.target} suspected by {len(votes.unreachable)}/{votes.required} "
                f"for {elapsed:.1f}/{timeout:.1f} s"
            )
    return commands, notes


def _verdict(
    suspicion: Suspicion, votes: Tally, elapsed: float, timeout: float, wall: float
) -> MarkServerFailed:
    evidence: dict[str, Any] = {
        "observers": list(votes.unreachable),
        "reachable_by": list(votes.reachable),
        "eligible": list(votes.eligible),
        "required": votes.required,
        "suspected_for_s": round(elapsed, 3),
        "timeout_s": round(timeout, 3),
        "suspected_at": suspicion.since,
        "reports": [
            {**r.evidence, "observer": r.observer, "reachable": r.reachable, "at": r.at}
            for r in suspicion.reports
        ],
    }
    return MarkServerFailed(
        id=f"verdict:{suspicion.target}:{suspicion.incarnation}",
        at=wall,
        server=suspicion.target,
        incarnation=suspicion.incarnation,
        evidence=evidence,
    )


def _drop(suspicion: Suspicion, reason: str, wall: float) -> DropSuspicion:
    return DropSuspicion(
        id=f"drop:{suspicion.target}:{suspicion.incarnation}:{suspicion.since}",
        at=wall,
        target=suspicion.target,
        incarnation=suspicion.incarnation,
        reason=reason,
    )
