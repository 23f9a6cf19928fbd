"""Automatic return of repaired servers to the spare pool, and the flap quarantine that stops it.

A server that comes back after a verdict is quarantined. Once it has stayed quarantined (alive,
serving nothing) for `auto_return_s`, the leader returns it to the spare pool, in every mode:
a spare only adds capacity. A server that flaps (`flap_failures` verdicts within
`flap_window_s`, counted back from its latest verdict) stays quarantined until an operator
returns it; the leader records that once per server and incarnation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from consensus.commands import Command, RecordHeld, ReturnServer
from consensus.state import ClusterState, ServerRecord

# The reason of every automatic return starts with this, so readers can tell it from an
# operator's return (ReturnServer itself does not say who sent it).
AUTO_RETURN: Final = "auto return"
FLAP_QUARANTINE: Final = "flap quarantine"


@dataclass(frozen=True, slots=True)
class ReturnPolicy:
    """When a quarantined server rejoins the spare pool by itself (the `healing` config)."""

    # None: only an operator returns a server.
    auto_return_s: float | None = 120.0
    flap_failures: int = 2
    flap_window_s: float = 3600.0


def flap_verdicts(server: ServerRecord, policy: ReturnPolicy) -> list[float]:
    """The verdicts that make `server` a flapper: its latest one and those at most
    `flap_window_s` before it, if they are at least `flap_failures`; otherwise none. The window
    ends at the latest verdict, not now, so a flapper stays quarantined however long it waits."""
    if not server.failures:
        return []
    latest = max(server.failures)
    recent = [at for at in server.failures if at >= latest - policy.flap_window_s]
    return recent if len(recent) >= policy.flap_failures else []


def plan_returns(
    state: ClusterState, wall: float, policy: ReturnPolicy
) -> tuple[list[Command], list[str]]:
    """A ReturnServer for every quarantined server that has been back for `auto_return_s` and
    does not flap; a RecordHeld (once) for a flapper that would be due; a note for the rest.
    `wall` is the leader's wall clock, the same clock as `ServerRecord.since`."""
    if policy.auto_return_s is None:
        return [], []
    commands: list[Command] = []
    notes: list[str] = []
    for server in state.servers:
        if server.state != "quarantined":
            continue
        due = server.since > 0 and wall - server.since >= policy.auto_return_s
        flaps = flap_verdicts(server, policy)
        if flaps:
            notes.append(
                f"{server.name} stays quarantined: {len(flaps)} verdicts within "
                f"{policy.flap_window_s:g} s ({FLAP_QUARANTINE})"
            )
            if due and not _flap_recorded(state, server):
                commands.append(_hold(server, flaps, wall, policy))
        elif server.since <= 0:  # quarantined before its time was recorded: leave it be
            notes.append(f"{server.name} quarantined at an unknown time: an operator returns it")
        elif due:
            commands.append(_return(server, wall, policy.auto_return_s))
        else:
            notes.append(
                f"{server.name} quarantined: {AUTO_RETURN} after {policy.auto_return_s:g} s back"
            )
    return commands, notes


def _return(server: ServerRecord, wall: float, auto_return_s: float) -> ReturnServer:
    return ReturnServer(
        id=f"auto-return:{server.name}:{server.incarnation}",
        at=wall,
        server=server.name,
        reason=f"{AUTO_RETURN}: healthy for {auto_return_s:g} s after its verdict",
    )


def _hold(
    server: ServerRecord, flaps: list[float], wall: float, policy: ReturnPolicy
) -> RecordHeld:
    return RecordHeld(
        id=f"flap-quarantine:{server.name}:{server.incarnation}",
        at=wall,
        subject=server.name,
        action="return_server",
        reason=FLAP_QUARANTINE,
        evidence={
            "failures": flaps,
            "window_s": policy.flap_window_s,
            "flap_failures": policy.flap_failures,
            "incarnation": server.incarnation,
        },
    )


def _flap_recorded(state: ClusterState, server: ServerRecord) -> bool:
    """True when this server's flap quarantine at its incarnation is already a decision: the
    command id alone would be forgotten once it leaves the log's recent commands."""
    return any(
        d.kind == "action_held"
        and d.subject == server.name
        and d.evidence.get("action") == "return_server"
        and d.evidence.get("incarnation") == server.incarnation
        for d in state.decisions
    )
