"""The state machine: `apply(state, command) -> state`, deterministic, rejecting stale commands."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final

from consensus.commands import (
    COMMAND_VERSION,
    AssignSlot,
    Bootstrap,
    Command,
    CommandDecodeError,
    MarkServerFailed,
    ReleaseSlot,
    RenewLease,
    ServerUp,
    SlotServing,
    decode_command,
)
from consensus.protocol import SubmitResult
from consensus.state import (
    MAX_DECISIONS,
    MAX_REMEMBERED_COMMANDS,
    ClusterState,
    Decision,
    ServerRecord,
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


def apply(state: ClusterState, command: Command) -> ClusterState:
    """Apply one committed command. Raises CommandRejected; never mutates `state`."""
    if command.version != COMMAND_VERSION:
        raise CommandRejected(f"{command.kind}: unsupported command version {command.version}")
    if command.id in state.recent_commands:
        raise CommandRejected(f"{command.kind}: duplicate command {command.id}", duplicate=True)
    if not state.bootstrapped and not isinstance(command, Bootstrap):
        raise CommandRejected(f"{command.kind}: the cluster is not bootstrapped yet")
    handler = _HANDLERS[type(command)]
    new_state: ClusterState = handler(state, command)
    remembered = (*state.recent_commands, command.id)[-MAX_REMEMBERED_COMMANDS:]
    return dataclasses.replace(new_state, applied=state.applied + 1, recent_commands=remembered)


def _bootstrap(state: ClusterState, cmd: Bootstrap) -> ClusterState:
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
    state = dataclasses.replace(
        state, cluster=cmd.cluster, config_digest=cmd.config_digest, servers=servers, slots=slots
    )
    evidence = {"servers": names, "slots": {s.name: s.owner for s in cmd.slots}}
    return _decide(state, "bootstrap", cmd.at, cmd.cluster, evidence)


def _server_up(state: ClusterState, cmd: ServerUp) -> ClusterState:
    server = _known_server(state, cmd.server, cmd.kind)
    if cmd.incarnation <= server.incarnation:
        raise CommandRejected(
            f"server_up: {cmd.server} incarnation {cmd.incarnation} is not newer than "
            f"{server.incarnation}",
            stale=True,
        )
    if server.state == "quarantined":
        raise CommandRejected(f"server_up: {cmd.server} is quarantined; an operator returns it")
    updated = dataclasses.replace(server, state="up", incarnation=cmd.incarnation)
    state = _put_server(state, updated)
    evidence = {"incarnation": cmd.incarnation, "previous_state": server.state}
    return _decide(state, "server_up", cmd.at, cmd.server, evidence)


def _mark_server_failed(state: ClusterState, cmd: MarkServerFailed) -> ClusterState:
    server = _known_server(state, cmd.server, cmd.kind)
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
    state = _put_server(state, dataclasses.replace(server, state="failed", incarnation=incarnation))
    # Facts the state machine records win over anything the submitter put in its evidence.
    evidence = {**cmd.evidence, "incarnation": cmd.incarnation}
    return _decide(state, "server_failed", cmd.at, cmd.server, evidence)


def _assign_slot(state: ClusterState, cmd: AssignSlot) -> ClusterState:
    slot = _known_slot(state, cmd.slot, cmd.kind)
    if cmd.epoch != slot.epoch + 1:
        raise CommandRejected(
            f"assign_slot: {cmd.slot} epoch {cmd.epoch} does not follow current epoch {slot.epoch}",
            stale=cmd.epoch <= slot.epoch,
        )
    owner = _known_server(state, cmd.owner, cmd.kind)
    if owner.state in ("failed", "quarantined"):
        raise CommandRejected(f"assign_slot: {cmd.owner} is {owner.state} and cannot own a slot")
    updated = dataclasses.replace(
        slot, owner=cmd.owner, epoch=cmd.epoch, state="assigned", address=None, lease_seq=0
    )
    state = _put_slot(state, updated)
    evidence = {
        **cmd.evidence,
        "previous_owner": slot.owner,
        "epoch": cmd.epoch,
        "reason": cmd.reason,
    }
    return _decide(state, "slot_assigned", cmd.at, cmd.slot, evidence)


def _slot_serving(state: ClusterState, cmd: SlotServing) -> ClusterState:
    slot = _current_owner_slot(state, cmd.slot, cmd.owner, cmd.epoch, cmd.kind)
    if slot.state == "serving" and slot.address == cmd.address:
        raise CommandRejected(f"slot_serving: {cmd.slot} is already serving", stale=True)
    if slot.state == "released":
        raise CommandRejected(f"slot_serving: {cmd.slot} was released at epoch {slot.epoch}")
    return _put_slot(state, dataclasses.replace(slot, state="serving", address=cmd.address))


def _renew_lease(state: ClusterState, cmd: RenewLease) -> ClusterState:
    slot = _current_owner_slot(state, cmd.slot, cmd.owner, cmd.epoch, cmd.kind)
    if slot.state == "released":
        raise CommandRejected(f"renew_lease: {cmd.slot} was released at epoch {slot.epoch}")
    return _put_slot(state, dataclasses.replace(slot, lease_seq=slot.lease_seq + 1))


def _release_slot(state: ClusterState, cmd: ReleaseSlot) -> ClusterState:
    slot = _current_owner_slot(state, cmd.slot, cmd.owner, cmd.epoch, cmd.kind)
    if slot.state == "released":
        raise CommandRejected(f"release_slot: {cmd.slot} is already released", stale=True)
    state = _put_slot(state, dataclasses.replace(slot, state="released", address=None))
    evidence = {"owner": cmd.owner, "epoch": cmd.epoch, "reason": cmd.reason}
    return _decide(state, "slot_released", cmd.at, cmd.slot, evidence)


def _known_server(state: ClusterState, name: str, kind: str) -> ServerRecord:
    server = state.server(name)
    if server is None:
        raise CommandRejected(f"{kind}: unknown server {name!r}")
    return server


def _known_slot(state: ClusterState, name: str, kind: str) -> SlotRecord:
    slot = state.slot(name)
    if slot is None:
        raise CommandRejected(f"{kind}: unknown slot {name!r}")
    return slot


def _current_owner_slot(
    state: ClusterState, name: str, owner: str, epoch: int, kind: str
) -> SlotRecord:
    """The slot, if `owner` owns it at exactly `epoch`; anything else is a stale or wrong claim."""
    slot = _known_slot(state, name, kind)
    if epoch < slot.epoch:
        raise CommandRejected(
            f"{kind}: {name} epoch {epoch} is older than {slot.epoch}", stale=True
        )
    if epoch > slot.epoch:
        raise CommandRejected(f"{kind}: {name} epoch {epoch} is from the future ({slot.epoch})")
    if slot.owner != owner:
        raise CommandRejected(f"{kind}: {owner} does not own {name} (owner {slot.owner})")
    return slot


def _put_server(state: ClusterState, record: ServerRecord) -> ClusterState:
    servers = tuple(record if s.name == record.name else s for s in state.servers)
    return dataclasses.replace(state, servers=servers)


def _put_slot(state: ClusterState, record: SlotRecord) -> ClusterState:
    slots = tuple(record if s.name == record.name else s for s in state.slots)
    return dataclasses.replace(state, slots=slots)


def _decide(
    state: ClusterState, kind: str, at: float, subject: str, evidence: dict[str, Any]
) -> ClusterState:
    """Append a decision with a deterministic id; the oldest fall off past MAX_DECISIONS."""
    seq = state.decision_seq + 1
    decision = Decision(id=f"d{seq:06d}", kind=kind, at=at, subject=subject, evidence=evidence)
    decisions = (*state.decisions, decision)[-MAX_DECISIONS:]
    return dataclasses.replace(state, decisions=decisions, decision_seq=seq)


_HANDLERS: Final[dict[type, Callable[[ClusterState, Any], ClusterState]]] = {
    Bootstrap: _bootstrap,
    ServerUp: _server_up,
    MarkServerFailed: _mark_server_failed,
    AssignSlot: _assign_slot,
    SlotServing: _slot_serving,
    RenewLease: _renew_lease,
    ReleaseSlot: _release_slot,
}


def apply_payload(state: ClusterState, payload: str) -> tuple[ClusterState, SubmitResult]:
    """Decode and apply one log entry as every replica does; bad payloads change nothing."""
    try:
        command = decode_command(payload)
        return apply(state, command), SubmitResult("committed")
    except CommandDecodeError as exc:
        return state, SubmitResult("rejected", str(exc))
    except CommandRejected as exc:
        if exc.duplicate:  # a retry of a command that did commit: the caller's intent holds
            return state, SubmitResult("committed", "already committed")
        return state, SubmitResult("rejected", exc.reason, stale=exc.stale)
