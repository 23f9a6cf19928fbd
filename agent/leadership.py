"""What only the Raft leader decides: verdicts, modes, replacements, returns, on its own clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consensus.commands import Command, RecordHeld, SetMode
from consensus.protocol import Snapshot
from consensus.state import ClusterState
from healer.cascade import CascadePolicy, next_mode, replacements_left
from healer.replace import NO_SPARE, LeasePolicy, plan_replacements_within, reserve_reason
from healer.returns import ReturnPolicy, plan_returns
from healer.throttle import FloodWatch, TenantRate, ThrottlePolicy, plan_stops
from healer.verdict import VerdictPolicy, plan_verdicts


@dataclass
class LeaderClock:
    """When this leader first saw each suspicion, and each slot's latest lease renewal, on its
    own monotonic clock. A newly elected leader counts everything from its election."""

    term: int = -1
    lease_seen: dict[str, float] = field(default_factory=dict)
    lease_marks: dict[str, tuple[int, int]] = field(default_factory=dict)
    suspicion_seen: dict[str, float] = field(default_factory=dict)
    suspicion_marks: dict[str, tuple[int, float]] = field(default_factory=dict)
    # Held actions already recorded, per (slot, start of the mode that held them).
    held_recorded: set[tuple[str, float]] = field(default_factory=set)
    # Tenants over a limit, and since when (confirmed afresh by each new leader).
    floods: FloodWatch = field(default_factory=FloodWatch)

    def observe(self, snap: Snapshot, now: float) -> None:
        if not snap.raft.is_leader:
            self.term = -1
            return
        if snap.raft.term != self.term:  # took office: every lease counts as renewed now
            self.term = snap.raft.term
            self.lease_marks.clear()
            self.suspicion_marks.clear()
            self.floods = FloodWatch()
        for slot in snap.state.slots:
            # A renewal or a new owner restarts the clock; a verdict does not (the old owner's
            # lease runs from its last renewal, whatever the cluster decided since).
            mark = (slot.epoch, slot.lease_seq)
            if self.lease_marks.get(slot.name) != mark:
                self.lease_marks[slot.name] = mark
                self.lease_seen[slot.name] = now
        open_now = {}
        for suspicion in snap.state.suspicions:
            mark2 = (suspicion.incarnation, suspicion.since)
            open_now[suspicion.target] = mark2
            if self.suspicion_marks.get(suspicion.target) != mark2:
                self.suspicion_seen[suspicion.target] = now
        self.suspicion_marks = open_now
        self.suspicion_seen = {t: v for t, v in self.suspicion_seen.items() if t in open_now}


def plan_leader(
    snap: Snapshot,
    clock: LeaderClock,
    now: float,
    wall: float,
    verdicts: VerdictPolicy,
    leases: LeasePolicy,
    cascade: CascadePolicy | None = None,
    *,
    returns: ReturnPolicy | None = None,
    spare_reserve: int = 0,
    throttle: ThrottlePolicy | None = None,
    rates: Mapping[str, TenantRate] | None = None,
) -> tuple[list[Command], list[str]]:
    """The leader's commands for this tick and a note for everything it is waiting on.
    `returns` None: no automatic return; `spare_reserve` spares are left for operators;
    `throttle` None: no tenant is stopped (expired stops are still lifted)."""
    if not snap.raft.is_leader or not snap.state.bootstrapped:
        return [], []
    state = snap.state
    judged, waiting = plan_verdicts(state, clock.suspicion_seen, now, wall, verdicts)
    cascade = cascade or CascadePolicy()
    change = next_mode(state, state.mode_since, wall, cascade, spare_reserve)
    modes: list[Command] = []
    if change is not None:
        modes.append(
            SetMode(
                id=f"mode:{change.mode}:{state.mode_since}",
                at=wall,
                mode=change.mode,
                reason=change.reason,
                evidence=change.evidence,
            )
        )
    # Entering cascade mode limits this very tick's replacements already.
    ruled = (
        dataclasses.replace(state, mode=change.mode, mode_since=wall)
        if change is not None
        else state
    )
    budget = replacements_left(ruled, wall, cascade)
    moved, pending, held = plan_replacements_within(
        ruled, clock.lease_seen, now, wall, leases, budget, spare_reserve
    )
    records = _held_records(clock, ruled, held, wall, cascade, spare_reserve)
    back, quarantined = plan_returns(state, wall, returns or ReturnPolicy(auto_return_s=None))
    stops, floods = plan_stops(
        state, (rates or {}) if throttle else {}, clock.floods, wall, throttle or ThrottlePolicy()
    )
    if state.mode != "normal":
        waiting.append(f"mode {state.mode} since {state.mode_since:.0f}")
    commands = [*judged, *modes, *moved, *records, *back, *stops]
    return commands, [*waiting, *pending, *quarantined, *floods]


def _held_records(
    clock: LeaderClock,
    ruled: ClusterState,
    held: list[tuple[str, str]],
    wall: float,
    cascade: CascadePolicy,
    spare_reserve: int,
) -> list[Command]:
    """A RecordHeld for each held slot not yet recorded under the current mode."""
    records: list[Command] = []
    for slot, why in held:
        key = (slot, ruled.mode_since)
        if key in clock.held_recorded:
            continue
        clock.held_recorded.add(key)
        evidence: dict[str, Any] = {"budget": cascade.budget, "window_s": cascade.budget_window_s}
        if why == NO_SPARE:
            evidence = {}
        elif why == reserve_reason(spare_reserve):
            evidence = {"spare_reserve": spare_reserve}
        records.append(
            RecordHeld(
                id=f"held:{slot}:{ruled.mode_since}",
                at=wall,
                subject=slot,
                action="assign_slot",
                reason=why,
                evidence=evidence,
            )
        )
    return records
