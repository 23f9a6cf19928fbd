"""When to stop a flooding tenant, for how long, and when to let it in again (pure).

The leader sums every edge's per-second counts into cluster-wide rates per tenant. A tenant
over any of its limits (requests per second, share of all traffic, concurrent requests) for
the whole confirmation window is stopped; a tenant stopped again within the repeat window is
stopped twice as long as the time before, up to a cap. Stops end by themselves: the leader
lifts each one once its time is over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from consensus.commands import Command, LiftStop, StopTenant
from consensus.state import ClusterState


@dataclass(frozen=True, slots=True)
class Limits:
    """What one tenant may use of the whole cluster. None: no such limit."""

    rps: float | None = None
    share: float | None = None
    concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    limits: Limits = Limits(rps=20.0, share=0.5, concurrent=10)
    overrides: Mapping[str, Limits] = field(default_factory=dict)
    # The share limit counts only when the cluster carries at least this much traffic.
    share_min_rps: float = 50.0
    confirm_s: float = 1.0
    stop_s: float = 30.0
    max_stop_s: float = 3600.0
    repeat_window_s: float = 3600.0

    def limits_for(self, tenant: str) -> Limits:
        override = self.overrides.get(tenant)
        if override is None:
            return self.limits
        base = self.limits
        return Limits(
            rps=override.rps if override.rps is not None else base.rps,
            share=override.share if override.share is not None else base.share,
            concurrent=override.concurrent if override.concurrent is not None else base.concurrent,
        )

    def stop_for(self, offence: int) -> float:
        """Seconds of the `offence`-th stop within the repeat window: doubling, capped."""
        doublings = min(max(0, offence - 1), 64)  # 2**64 x stop_s is past any cap
        return min(self.max_stop_s, self.stop_s * 2.0**doublings)


@dataclass(frozen=True, slots=True)
class TenantRate:
    """One tenant's traffic over the last reporting interval, summed over every edge."""

    rps: float = 0.0
    errors_ps: float = 0.0
    bytes_ps: float = 0.0
    concurrent: int = 0
    edges: int = 0


def over_limit(
    tenant: str, rate: TenantRate, total_rps: float, policy: ThrottlePolicy
) -> tuple[str, dict[str, float]] | None:
    """The first limit `rate` breaks, with the figures, or None."""
    limits = policy.limits_for(tenant)
    if limits.rps is not None and rate.rps > limits.rps:
        return "rps", {"rps": round(rate.rps, 1), "limit": limits.rps}
    if limits.concurrent is not None and rate.concurrent > limits.concurrent:
        return "concurrent", {"concurrent": rate.concurrent, "limit": limits.concurrent}
    if (
        limits.share is not None
        and total_rps >= policy.share_min_rps
        and rate.rps > limits.share * total_rps
    ):
        share = rate.rps / total_rps
        return "share", {"share": round(share, 3), "limit": limits.share, "total_rps": total_rps}
    return None


@dataclass
class FloodWatch:
    """The leader's memory of which tenant has been over a limit since when (its own view,
    like LeaderClock: a new leader starts confirming afresh)."""

    over_since: dict[str, float] = field(default_factory=dict)


def plan_stops(
    state: ClusterState,
    rates: Mapping[str, TenantRate],
    watch: FloodWatch,
    wall: float,
    policy: ThrottlePolicy,
) -> tuple[list[Command], list[str]]:
    """Stops for confirmed floods and lifts for expired stops; notes for floods not yet
    confirmed. Only tenants the cluster serves are considered."""
    commands: list[Command] = []
    notes: list[str] = []
    for stop in state.stops:
        if not stop.active(wall):
            commands.append(
                LiftStop(
                    id=f"lift:{stop.subdomain}:{stop.since}",
                    at=wall,
                    subdomain=stop.subdomain,
                    reason="expired",
                )
            )
    total = sum(r.rps for r in rates.values())
    seen: set[str] = set()
    for tenant, rate in sorted(rates.items()):
        if state.tenant_slot(tenant) is None:
            continue
        broken = over_limit(tenant, rate, total, policy)
        current = state.stop(tenant)
        if broken is None or (current is not None and current.active(wall)):
            continue
        seen.add(tenant)
        since = watch.over_since.setdefault(tenant, wall)
        if wall - since < policy.confirm_s:
            notes.append(f"{tenant} over its {broken[0]} limit for {wall - since:.1f} s")
            continue
        commands.append(_stop(state, tenant, rate, broken, since, wall, policy))
    watch.over_since = {t: v for t, v in watch.over_since.items() if t in seen}
    return commands, notes


def _stop(
    state: ClusterState,
    tenant: str,
    rate: TenantRate,
    broken: tuple[str, dict[str, float]],
    since: float,
    wall: float,
    policy: ThrottlePolicy,
) -> StopTenant:
    previous = state.offence(tenant)
    repeat = previous is not None and wall - previous.last < policy.repeat_window_s
    offence = previous.count + 1 if repeat and previous is not None else 1
    duration = policy.stop_for(offence)
    rule, figures = broken
    return StopTenant(
        id=f"stop:{tenant}:{offence}:{since}",
        at=wall,
        subdomain=tenant,
        until=wall + duration,
        reason=f"over its {rule} limit for {wall - since:.1f} s",
        offence=offence,
        evidence={
            "rule": rule,
            **figures,
            "over_for_s": round(wall - since, 3),
            "errors_ps": round(rate.errors_ps, 1),
            "edges": rate.edges,
            "stop_s": duration,
        },
    )
