"""Cascade suppression: when many servers fail at once, hold back replacement and say why.

normal -> cascade when verdicts crowd a window, a failure domain loses most of its servers, or
the spares run out (only the spare reserve, if any, is left); cascade -> recovering after a
quiet period once most of the failed servers are back or replaced; recovering -> normal after
a second quiet period (hysteresis); a new verdict while recovering goes back to cascade. An
operator resume ends it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from consensus.state import ClusterState, Decision

Mode = Literal["normal", "cascade", "recovering"]


@dataclass(frozen=True, slots=True)
class CascadePolicy:
    window_s: float = 60.0
    min_verdicts: int = 2
    verdict_fraction: float = 0.3
    quiet_s: float = 30.0
    # Replacements allowed while in cascade mode, per budget window.
    budget: int = 1
    budget_window_s: float = 300.0
    # Replacements allowed in normal mode per budget window (None: no limit).
    normal_budget: int | None = None

    def threshold(self, actives: int) -> int:
        return max(self.min_verdicts, math.ceil(self.verdict_fraction * actives))


@dataclass(frozen=True, slots=True)
class ModeChange:
    mode: Mode
    reason: str
    evidence: dict[str, Any]


def verdicts_since(state: ClusterState, since: float) -> list[Decision]:
    return [d for d in state.decisions if d.kind == "server_failed" and d.at >= since]


def cascade_trigger(
    state: ClusterState,
    now: float,
    policy: CascadePolicy,
    since: float = 0.0,
    spare_reserve: int = 0,
) -> ModeChange | None:
    """Why the cluster should be in cascade mode now, or None. Only verdicts after `since`
    (the last mode change) count, so an operator's resume is not overturned by the failures
    it was resuming from; a lost domain or missing spares count only with a fresh verdict.
    Spares run out when no more than `spare_reserve` of them are up."""
    recent = verdicts_since(state, max(now - policy.window_s, since))
    if not recent:
        return None
    actives = sum(1 for s in state.servers if s.role == "active")
    threshold = policy.threshold(actives)
    if len(recent) >= threshold:
        return ModeChange(
            "cascade",
            f"{len(recent)} verdicts within {policy.window_s:.0f} s (threshold {threshold})",
            {
                "rule": "verdict_rate",
                "verdicts": [d.subject for d in recent],
                "threshold": threshold,
            },
        )
    domain = _domain_lost(state)
    if domain is not None:
        return ModeChange(
            "cascade",
            f"failure domain {domain[0]} lost {domain[1]} of {domain[2]} servers",
            {"rule": "domain_lost", "domain": domain[0], "lost": domain[1], "servers": domain[2]},
        )
    return _spares_run_out(state, spare_reserve)


def _spares_run_out(state: ClusterState, spare_reserve: int) -> ModeChange | None:
    waiting = [s.name for s in state.slots if s.state in ("lost", "released", "unassigned")]
    spares = state.free_spares()
    if not waiting or len(spares) > spare_reserve:
        return None
    if not spare_reserve:
        return ModeChange(
            "cascade",
            f"no spare left for {', '.join(waiting)}",
            {"rule": "spares_exhausted", "slots_waiting": waiting},
        )
    return ModeChange(
        "cascade",
        f"no spare beyond the reserve of {spare_reserve} left for {', '.join(waiting)}",
        {
            "rule": "spares_exhausted",
            "slots_waiting": waiting,
            "spares_up": len(spares),
            "spare_reserve": spare_reserve,
        },
    )


def _domain_lost(state: ClusterState) -> tuple[str, int, int] | None:
    domains: dict[str, list[str]] = {}
    for server in state.servers:
        domains.setdefault(server.domain, []).append(server.state)
    for domain, states in sorted(domains.items()):
        lost = sum(1 for s in states if s == "failed")
        if len(states) >= 2 and lost * 2 > len(states):
            return domain, lost, len(states)
    return None


def next_mode(
    state: ClusterState,
    mode_since: float,
    now: float,
    policy: CascadePolicy,
    spare_reserve: int = 0,
) -> ModeChange | None:
    """The mode change due now, if any. `mode_since` is when the current mode was committed
    (wall clock, like decision times); `now` is the leader's wall clock."""
    mode: Mode = state.mode
    if mode == "normal":
        return cascade_trigger(state, now, policy, since=mode_since, spare_reserve=spare_reserve)
    last_verdict = max((d.at for d in verdicts_since(state, mode_since)), default=mode_since)
    quiet_for = now - max(last_verdict, mode_since)
    if mode == "recovering":
        if last_verdict > mode_since:
            return ModeChange("cascade", "a new verdict while recovering", {"rule": "relapse"})
        if quiet_for >= policy.quiet_s:
            return ModeChange(
                "normal",
                f"quiet for {quiet_for:.0f} s while recovering",
                {"rule": "quiet", "quiet_s": round(quiet_for, 1)},
            )
        return None
    back, failed = _recovered(state, mode_since, policy)
    if quiet_for >= policy.quiet_s and failed and back * 2 > failed:
        return ModeChange(
            "recovering",
            f"no verdict for {quiet_for:.0f} s and {back} of {failed} failed servers back or "
            "replaced",
            {"rule": "quiet_and_recovered", "back_or_replaced": back, "failed": failed},
        )
    return None


def _recovered(state: ClusterState, since: float, policy: CascadePolicy) -> tuple[int, int]:
    """How many servers failed in this episode, and how many of them are back (their agent
    rejoined) or no longer hold a slot (replaced)."""
    episode = {d.subject for d in verdicts_since(state, since - policy.window_s)}
    back = 0
    for name in episode:
        server = state.server(name)
        owns = [s for s in state.slots if s.owner == name and s.state != "released"]
        if server is None or server.state in ("quarantined", "up") or not owns:
            back += 1
    return back, len(episode)


def replacements_left(state: ClusterState, now: float, policy: CascadePolicy) -> int | None:
    """How many more assignments the current mode allows now (None: no limit). Cascade and
    recovering share `budget`; normal mode has its own `normal_budget`, if any."""
    since = now - policy.budget_window_s
    if state.mode == "normal":
        if policy.normal_budget is None:
            return None
        return max(0, policy.normal_budget - _assignments_since(state, since, ("normal",)))
    return max(0, policy.budget - _assignments_since(state, since, ("cascade", "recovering")))


def _assignments_since(state: ClusterState, since: float, modes: tuple[str, ...]) -> int:
    return sum(
        1
        for d in state.decisions
        if d.kind == "slot_assigned" and d.at >= since and d.evidence.get("mode") in modes
    )
