"""Transitions of slots: bootstrap, assignment under a new epoch, serving, leases, release."""

from __future__ import annotations

import dataclasses

from consensus.commands import AssignSlot, Bootstrap, ReleaseSlot, RenewLease, SlotServing
from consensus.rules import CommandRejected, decide, known_server, known_slot, put_server, put_slot
from consensus.state import ClusterState, ServerRecord, SlotRecord


def bootstrap(state: ClusterState, cmd: Bootstrap) -> ClusterState:
    if state.bootstrapped:
        raise CommandRejected(
            f"bootstrap: cluster {state.cluster!r} is already bootstrapped", stale=True
        )
    names = [s.name for s in cmd.servers]
    if len(set(names)) != len(names) or not names:
        raise CommandRejected("bootstrap: server names must be unique and non-empty")
    slot_names = [s.name for s in cmd.slots]
    if len(set(slot_names)) != len(slot_names):
        raise CommandRejected("bootstrap: slot names must be unique")
    tenants = [t for s in cmd.slots for t in s.tenants]
    if len(set(tenants)) != len(tenants):
        raise CommandRejected("bootstrap: a tenant belongs to exactly one slot")
    if not cmd.lease_s > 0:
        raise CommandRejected(f"bootstrap: lease_s must be positive, got {cmd.lease_s}")
    roles = {s.name: s.role for s in cmd.servers}
    for slot in cmd.slots:
        if roles.get(slot.owner) != "active":
            raise CommandRejected(f"bootstrap: slot {slot.name} owner {slot.owner!r} is not active")
    servers = tuple(ServerRecord(name=s.name, role=s.role, domain=s.domain) for s in cmd.servers)
    slots = tuple(
        SlotRecord(
            name=s.name,
            tenants=s.tenants,
            owner=s.owner,
            epoch=1,
            state="assigned",
            lease_s=cmd.lease_s,
        )
        for s in cmd.slots
    )
    unknown = sorted(set(cmd.voters) - set(names))
    if unknown or len(set(cmd.voters)) != len(cmd.voters):
        raise CommandRejected(f"bootstrap: voters must be distinct known servers, not {unknown}")
    state = dataclasses.replace(
        state,
        cluster=cmd.cluster,
        config_digest=cmd.config_digest,
        servers=servers,
        slots=slots,
        voters=tuple(sorted(cmd.voters)),
    )
    evidence = {"servers": names, "slots": {s.name: s.owner for s in cmd.slots}}
    return decide(state, "bootstrap", cmd.at, cmd.cluster, evidence)


def assign_slot(state: ClusterState, cmd: AssignSlot) -> ClusterState:
    slot = known_slot(state, cmd.slot, cmd.kind)
    if cmd.epoch != slot.epoch + 1:
        raise CommandRejected(
            f"assign_slot: {cmd.slot} epoch {cmd.epoch} does not follow current epoch {slot.epoch}",
            stale=cmd.epoch <= slot.epoch,
        )
    owner = known_server(state, cmd.owner, cmd.kind)
    if owner.state != "up":
        raise CommandRejected(f"assign_slot: {cmd.owner} is {owner.state} and cannot own a slot")
    updated = dataclasses.replace(
        slot, owner=cmd.owner, epoch=cmd.epoch, state="assigned", address=None, lease_seq=0
    )
    state = put_slot(state, updated)
    if owner.role == "spare":  # a spare that takes a slot is active from now on
        state = put_server(state, dataclasses.replace(owner, role="active"))
    state = _back_to_the_pool(state, slot.owner)
    evidence = {
        **cmd.evidence,
        "owner": cmd.owner,
        "previous_owner": slot.owner,
        "epoch": cmd.epoch,
        "reason": cmd.reason,
    }
    return decide(state, "slot_assigned", cmd.at, cmd.slot, evidence)


def slot_serving(state: ClusterState, cmd: SlotServing) -> ClusterState:
    slot = _current_owner_slot(state, cmd.slot, cmd.owner, cmd.epoch, cmd.kind)
    if slot.state == "serving" and slot.address == cmd.address:
        raise CommandRejected(f"slot_serving: {cmd.slot} is already serving", stale=True)
    _require_held(state, slot, cmd.kind)
    first = slot.state == "assigned"
    state = put_slot(state, dataclasses.replace(slot, state="serving", address=cmd.address))
    if not first or slot.epoch <= 1:
        return state  # a restart on the same owner, or the first owner: no incident to close
    assigned = next(
        (
            d
            for d in reversed(state.decisions)
            if d.kind == "slot_assigned"
            and d.subject == slot.name
            and d.evidence.get("epoch") == slot.epoch
        ),
        None,
    )
    evidence = {
        "owner": cmd.owner,
        "epoch": cmd.epoch,
        "address": cmd.address,
        "previous_owner": assigned.evidence.get("previous_owner") if assigned else None,
    }
    return decide(state, "slot_serving", cmd.at, cmd.slot, evidence)


def renew_lease(state: ClusterState, cmd: RenewLease) -> ClusterState:
    slot = _current_owner_slot(state, cmd.slot, cmd.owner, cmd.epoch, cmd.kind)
    _require_held(state, slot, cmd.kind)
    return put_slot(state, dataclasses.replace(slot, lease_seq=slot.lease_seq + 1))


def release_slot(state: ClusterState, cmd: ReleaseSlot) -> ClusterState:
    slot = _current_owner_slot(state, cmd.slot, cmd.owner, cmd.epoch, cmd.kind)
    if slot.state in ("released", "lost"):
        raise CommandRejected(f"release_slot: {cmd.slot} is already {slot.state}", stale=True)
    state = put_slot(state, dataclasses.replace(slot, state="released", address=None))
    evidence = {"owner": cmd.owner, "epoch": cmd.epoch, "reason": cmd.reason}
    return decide(state, "slot_released", cmd.at, cmd.slot, evidence)


def _current_owner_slot(
    state: ClusterState, name: str, owner: str, epoch: int, kind: str
) -> SlotRecord:
    """The slot, if `owner` owns it at exactly `epoch`; anything else is a stale or wrong claim."""
    slot = known_slot(state, name, kind)
    if epoch < slot.epoch:
        raise CommandRejected(
            f"{kind}: {name} epoch {epoch} is older than {slot.epoch}", stale=True
        )
    if epoch > slot.epoch:
        raise CommandRejected(f"{kind}: {name} epoch {epoch} is from the future ({slot.epoch})")
    if slot.owner != owner:
        raise CommandRejected(f"{kind}: {owner} does not own {name} (owner {slot.owner})")
    return slot


def _require_held(state: ClusterState, slot: SlotRecord, kind: str) -> None:
    """Serving and renewing need a slot still held by an owner the cluster counts as up: a
    server declared failed can renew nothing, so its lease runs out and fences it."""
    if slot.state in ("released", "lost"):
        raise CommandRejected(f"{kind}: {slot.name} was {slot.state} at epoch {slot.epoch}")
    owner = state.server(slot.owner or "")
    if owner is None or owner.state != "up":
        state_name = "unknown" if owner is None else owner.state
        raise CommandRejected(f"{kind}: owner {slot.owner} of {slot.name} is {state_name}")


def _back_to_the_pool(state: ClusterState, name: str | None) -> ClusterState:
    """A server still up whose slot moved away (it stopped renewing its lease while cut off or
    stalled) and that serves nothing else is a spare again, as if it had been returned: left
    active, it would be idle and out of every replacement's reach."""
    server = state.server(name) if name else None
    if server is None or server.role != "active" or server.state != "up":
        return state
    if any(s.state in ("assigned", "serving") for s in state.slots_owned_by(server.name)):
        return state
    return put_server(state, dataclasses.replace(server, role="spare"))
