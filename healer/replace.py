"""The leader's replacements: hand a slot to a ready spare once its old lease cannot be valid."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from consensus.commands import AssignSlot, Command
from consensus.state import ClusterState, ServerRecord, SlotRecord

NO_SPARE: Final = "no spare is ready"


def reserve_reason(spare_reserve: int) -> str:
    """Why a slot waits although a spare is up: only the reserve is left."""
    return f"spare reserve ({spare_reserve} kept)"


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """Lease timing as the leader sees it (see docs/fencing.md for the argument)."""

    lease_s: float = 2.0
    # Bound on the rate error of any server's clock (1 % is far beyond real quartz drift).
    drift: float = 0.01
    # Extra wait after the old lease must have ended, for a stop in progress to finish.
    margin_s: float = 0.25
    # A bootstrap owner whose agent has not joined yet gets this long before its slot moves,
    # so a fleet that starts up slowly does not shuffle its slots.
    join_grace_s: float = 30.0

    @property
    def wait_s(self) -> float:
        """How long after the last renewal it saw the leader waits before reassigning: the
        owner's lease, stretched by the worst clock-rate error on both sides, plus the margin."""
        return self.lease_s * (1 + self.drift) / (1 - self.drift) + self.margin_s


def plan_replacements(
    state: ClusterState,
    lease_seen: Mapping[str, float],
    now: float,
    wall: float,
    policy: LeasePolicy,
    spare_reserve: int = 0,
) -> tuple[list[Command], list[str]]:
    """AssignSlot for each slot that needs a new owner and may have one now. `lease_seen` maps a
    slot to when this leader last saw its lease renewed or reassigned (its monotonic clock).
    The last `spare_reserve` free spares are left alone, except for a slot an operator drains."""
    commands, notes, _ = _plan(state, lease_seen, now, wall, policy, spare_reserve)
    return commands, notes


def _plan(
    state: ClusterState,
    lease_seen: Mapping[str, float],
    now: float,
    wall: float,
    policy: LeasePolicy,
    spare_reserve: int,
) -> tuple[list[Command], list[str], list[tuple[str, str]]]:
    """plan_replacements, with the slots that may have a new owner now but get none: (slot,
    reason), the reason being NO_SPARE or the spare reserve."""
    commands: list[Command] = []
    notes: list[str] = []
    blocked: list[tuple[str, str]] = []
    taken: set[str] = set()
    for slot in state.slots:
        why = _needs_owner(state, slot, lease_seen, now, policy)
        if why is None:
            continue
        silent_s = now - lease_seen.get(slot.name, now)
        wait_s = _wait_for(state, slot, policy)
        if slot.state not in ("released", "unassigned") and silent_s < wait_s:
            notes.append(f"{slot.name}: {why}; lease ends in {wait_s - silent_s:.1f} s")
            continue
        keep = 0 if _drained(state, slot) else spare_reserve
        spare = pick_spare(state, slot, taken, keep)
        if spare is None:
            if pick_spare(state, slot, taken) is None:
                notes.append(f"{slot.name}: {why}; {NO_SPARE}")
                blocked.append((slot.name, NO_SPARE))
            else:
                notes.append(f"{slot.name}: {why}; held: {reserve_reason(keep)}")
                blocked.append((slot.name, reserve_reason(keep)))
            continue
        taken.add(spare.name)
        commands.append(_assign(slot, spare, why, silent_s, wall, policy))
    return commands, notes, blocked


def _drained(state: ClusterState, slot: SlotRecord) -> bool:
    """An operator is draining the slot's owner: that handover may use the spare reserve."""
    owner = state.server(slot.owner) if slot.owner else None
    return owner is not None and owner.state == "draining"


def _needs_owner(
    state: ClusterState,
    slot: SlotRecord,
    lease_seen: Mapping[str, float],
    now: float,
    policy: LeasePolicy,
) -> str | None:
    if slot.owner is None or slot.state == "unassigned":
        return "no owner"
    if slot.state == "lost":
        return f"owner {slot.owner} failed"
    if slot.state == "released":
        return f"released by {slot.owner}"
    owner = state.server(slot.owner)
    if owner is None or owner.state != "up":
        return f"owner {slot.owner} is {'unknown' if owner is None else owner.state}"
    if now - lease_seen.get(slot.name, now) >= _wait_for(state, slot, policy):
        return f"{slot.owner} stopped renewing its lease"
    return None


def _wait_for(state: ClusterState, slot: SlotRecord, policy: LeasePolicy) -> float:
    owner = state.server(slot.owner) if slot.owner else None
    if owner is not None and owner.state == "new" and slot.lease_seq == 0:
        return max(policy.wait_s, policy.join_grace_s)
    return policy.wait_s


def pick_spare(
    state: ClusterState, slot: SlotRecord, taken: set[str], spare_reserve: int = 0
) -> ServerRecord | None:
    """A spare that is up and owns nothing: preferably one nobody suspects right now (a spare
    cut off from the leader's side of a partition could not serve), then one in another failure
    domain than the slot's previous owner; ties broken by name so every leader picks the same
    one. None as well when no more than `spare_reserve` such spares are left (not counting
    those in `taken`)."""
    previous = state.server(slot.owner) if slot.owner else None
    # A returned server whose old slot is lost may get that very slot back, under a new epoch.
    candidates = [s for s in state.free_spares() if s.name not in taken]
    if len(candidates) <= spare_reserve:
        return None
    avoid = previous.domain if previous else None
    suspected = {s.target for s in state.suspicions}
    return min(candidates, key=lambda s: (s.name in suspected, s.domain == avoid, s.name))


def _assign(
    slot: SlotRecord,
    spare: ServerRecord,
    why: str,
    silent_s: float,
    wall: float,
    policy: LeasePolicy,
) -> AssignSlot:
    return AssignSlot(
        id=f"assign:{slot.name}:{slot.epoch + 1}:{spare.name}",
        at=wall,
        slot=slot.name,
        owner=spare.name,
        epoch=slot.epoch + 1,
        reason=why,
        evidence={
            "previous_state": slot.state,
            "lease_silent_s": round(silent_s, 3),
            "lease_wait_s": round(policy.wait_s, 3),
            "spare_domain": spare.domain,
        },
    )


def plan_replacements_within(
    state: ClusterState,
    lease_seen: Mapping[str, float],
    now: float,
    wall: float,
    policy: LeasePolicy,
    budget: int | None,
    spare_reserve: int = 0,
) -> tuple[list[Command], list[str], list[tuple[str, str]]]:
    """plan_replacements, limited to `budget` assignments (None: no limit). Slots that get no
    spare (none ready, or only the reserve left) and assignments beyond the budget are held:
    returned as (slot, reason) for the record, not carried out."""
    commands, notes, blocked = _plan(state, lease_seen, now, wall, policy, spare_reserve)
    tagged = [
        dataclasses.replace(c, evidence={**c.evidence, "mode": state.mode})
        if isinstance(c, AssignSlot)
        else c
        for c in commands
    ]
    if budget is None or len(tagged) <= budget:
        return tagged, notes, blocked
    held = [
        (c.slot, f"{state.mode} mode: replacement budget used")
        for c in tagged[budget:]
        if isinstance(c, AssignSlot)
    ]
    notes += [f"{slot}: held ({why})" for slot, why in held]
    return tagged[:budget], notes, blocked + held
