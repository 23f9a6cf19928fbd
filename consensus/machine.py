"""The state machine: `apply(state, command) -> state`, deterministic, rejecting stale commands."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final

from consensus import membership, modes, ownership, stops, voters
from consensus.commands import (
    COMMAND_VERSION,
    AssignSlot,
    Bootstrap,
    Command,
    CommandDecodeError,
    DrainServer,
    DropSuspicion,
    LiftStop,
    MarkServerFailed,
    RecordHeld,
    ReleaseSlot,
    RenewLease,
    ReportProbe,
    ReturnServer,
    ServerUp,
    SetMode,
    SlotServing,
    StopTenant,
    VoterStep,
    decode_command,
)
from consensus.protocol import SubmitResult
from consensus.rules import CommandRejected
from consensus.state import MAX_REMEMBERED_COMMANDS, ClusterState

__all__ = ["CommandRejected", "apply", "apply_payload"]

_HANDLERS: Final[dict[type, Callable[[ClusterState, Any], ClusterState]]] = {
    Bootstrap: ownership.bootstrap,
    AssignSlot: ownership.assign_slot,
    SlotServing: ownership.slot_serving,
    RenewLease: ownership.renew_lease,
    ReleaseSlot: ownership.release_slot,
    ServerUp: membership.server_up,
    MarkServerFailed: membership.mark_server_failed,
    ReportProbe: membership.report_probe,
    DropSuspicion: membership.drop_suspicion,
    ReturnServer: membership.return_server,
    SetMode: modes.set_mode,
    RecordHeld: modes.record_held,
    DrainServer: membership.drain_server,
    VoterStep: voters.voter_step,
    StopTenant: stops.stop_tenant,
    LiftStop: stops.lift_stop,
}


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
