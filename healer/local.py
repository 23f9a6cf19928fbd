"""What this agent should do now about its own server and slots, from committed state alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from consensus.commands import Bootstrap, Command, ReleaseSlot, ServerUp, SlotServing
from consensus.protocol import RaftStatus
from consensus.state import ClusterState, ServerRecord, SlotRecord
from healer.witnesses import WITNESSES, witnesses


@dataclass(frozen=True, slots=True)
class Instance:
    """What the server driver reports about one local app instance."""

    slot: str
    epoch: int
    address: str
    running: bool
    healthy: bool
    serving: bool = False
    gave_up: bool = False  # it kept crashing: local healing is exhausted


@dataclass(frozen=True, slots=True)
class LocalView:
    """This agent's own facts: who it is, what runs here, what it has already checked."""

    server: str
    incarnation: int
    instances: Mapping[str, Instance] = field(default_factory=dict)
    # (target, incarnation, since) of suspicions this agent already probed for itself.
    confirmed: frozenset[tuple[str, int, float]] = frozenset()


@dataclass(frozen=True, slots=True)
class StartInstance:
    slot: str
    epoch: int
    tenants: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StopInstance:
    slot: str
    reason: str


@dataclass(frozen=True, slots=True)
class LocalPlan:
    """One tick's decision: commands, instances to start and stop, suspicions to check for
    ourselves, the incarnation to live at, and one sentence."""

    summary: str
    commands: tuple[Command, ...] = ()
    starts: tuple[StartInstance, ...] = ()
    stops: tuple[StopInstance, ...] = ()
    confirm: tuple[tuple[str, int, float], ...] = ()
    incarnation: int | None = None


def plan_local(
    state: ClusterState,
    raft: RaftStatus,
    view: LocalView,
    bootstrap: Bootstrap,
    addresses: Mapping[str, str],
    now: float,
    *,
    witness_count: int | None = WITNESSES,
) -> LocalPlan:
    """Decide one tick. `addresses` maps each slot to the address this server serves it on;
    `bootstrap` is used only by a leader that finds the cluster empty. `now` is wall time,
    recorded in the commands. This server checks the suspicions it is a witness of (at most
    `witness_count` servers are, as in `VerdictPolicy.witnesses`)."""
    if not state.bootstrapped:
        if raft.is_leader:
            return LocalPlan("leader: bootstrapping the cluster", (bootstrap,))
        return LocalPlan("waiting for the leader to bootstrap the cluster")
    me = state.server(view.server)
    if me is None:
        stops = tuple(StopInstance(s, "not a member") for s in sorted(view.instances))
        return LocalPlan(f"{view.server} is not a member of the committed cluster", stops=stops)
    stops = _stops(state, me, view)
    if me.state == "draining" and me.incarnation == view.incarnation:
        return _drain(state, view, stops, now)
    membership = _membership(state, me, view, now)
    if membership is not None:
        return LocalPlan(membership[0], membership[1], (), stops, incarnation=membership[2])
    confirm = tuple(
        key
        for s in state.suspicions
        if s.target != view.server
        and (key := (s.target, s.incarnation, s.since)) not in view.confirmed
        and view.server in witnesses(state, s, witness_count)
    )
    owned = [s for s in state.slots_owned_by(view.server) if s.state in ("assigned", "serving")]
    releases = tuple(_release(s, view.server, now) for s in owned if _gave_up(s, view))
    owned = [s for s in owned if not _gave_up(s, view)]
    starts = tuple(
        StartInstance(s.name, s.epoch, s.tenants) for s in owned if _needs_start(s, view)
    )
    serving = tuple(
        _serving(s, view.server, addresses[s.name], now)
        for s in owned
        if _ready_to_announce(s, view, addresses.get(s.name))
    )
    stops += tuple(StopInstance(c.slot, "gave up after repeated crashes") for c in releases)
    summary = _summary(view.server, owned, starts, serving, stops, confirm, releases)
    return LocalPlan(summary, (*releases, *serving), starts, stops, confirm)


def _drain(
    state: ClusterState, view: LocalView, stops: tuple[StopInstance, ...], now: float
) -> LocalPlan:
    """Maintenance: stop every instance, then release each slot so the leader can hand it to a
    spare at once (the instance is stopped before the release commits, so nothing overlaps)."""
    held = [s for s in state.slots_owned_by(view.server) if s.state in ("assigned", "serving")]
    releases = tuple(
        dataclasses.replace(_release(s, view.server, now), reason="its server is draining")
        for s in held
    )
    if not releases and not stops:
        return LocalPlan("draining: nothing left to hand over; an operator returns this server")
    names = ", ".join(r.slot for r in releases) or "nothing"
    return LocalPlan(f"draining: stopping and releasing {names}", releases, (), stops)


def _membership(
    state: ClusterState, me: ServerRecord, view: LocalView, now: float
) -> tuple[str, tuple[Command, ...], int] | None:
    """Join, refute or report back when the committed record of this server is not `up` at our
    incarnation; None when it is and nothing needs saying."""
    if me.state == "quarantined" and me.incarnation == view.incarnation:
        return (
            "quarantined: serving nothing until it is returned to the spare pool",
            (),
            view.incarnation,
        )
    suspected = state.suspicion(view.server) is not None
    if me.state == "up" and me.incarnation == view.incarnation and not suspected:
        return None
    incarnation = view.incarnation
    if me.incarnation >= incarnation or suspected:
        incarnation = me.incarnation + 1  # refute, or rise above a life the cluster remembers
    up = ServerUp(
        id=f"up:{view.server}:{incarnation}", at=now, server=view.server, incarnation=incarnation
    )
    if suspected and me.state == "up":
        return f"refuting a suspicion with incarnation {incarnation}", (up,), incarnation
    return f"joining as incarnation {incarnation} (was {me.state})", (up,), incarnation


def _stops(state: ClusterState, me: ServerRecord, view: LocalView) -> tuple[StopInstance, ...]:
    """Instances this server must not run: not its slot, an old epoch, a released or lost slot,
    or anything at all while the cluster does not count this server as up."""
    stops: list[StopInstance] = []
    for name, instance in sorted(view.instances.items()):
        slot = state.slot(name)
        if me.state != "up":
            stops.append(StopInstance(name, f"this server is {me.state}"))
        elif slot is None:
            stops.append(StopInstance(name, "slot is not in the committed state"))
        elif slot.owner != view.server:
            stops.append(StopInstance(name, f"slot is owned by {slot.owner} at epoch {slot.epoch}"))
        elif slot.epoch != instance.epoch:
            stops.append(
                StopInstance(name, f"instance runs epoch {instance.epoch}, not {slot.epoch}")
            )
        elif slot.state in ("released", "lost"):
            stops.append(StopInstance(name, f"slot is {slot.state}"))
    return tuple(stops)


def _gave_up(slot: SlotRecord, view: LocalView) -> bool:
    instance = view.instances.get(slot.name)
    return instance is not None and instance.epoch == slot.epoch and instance.gave_up


def _needs_start(slot: SlotRecord, view: LocalView) -> bool:
    instance = view.instances.get(slot.name)
    return instance is None or instance.epoch != slot.epoch or not instance.running


def _ready_to_announce(slot: SlotRecord, view: LocalView, address: str | None) -> bool:
    instance = view.instances.get(slot.name)
    if instance is None or address is None or instance.epoch != slot.epoch:
        return False
    if not (instance.running and instance.healthy and instance.serving):
        return False
    return slot.state != "serving" or slot.address != address


def _serving(slot: SlotRecord, server: str, address: str, now: float) -> SlotServing:
    return SlotServing(
        id=f"serving:{slot.name}:{slot.epoch}:{server}:{address}",
        at=now,
        slot=slot.name,
        owner=server,
        epoch=slot.epoch,
        address=address,
    )


def _release(slot: SlotRecord, server: str, now: float) -> ReleaseSlot:
    return ReleaseSlot(
        id=f"release:{slot.name}:{slot.epoch}:{server}",
        at=now,
        slot=slot.name,
        owner=server,
        epoch=slot.epoch,
        reason="the app instance kept failing; local restarts are exhausted",
    )


def _summary(
    server: str,
    owned: list[SlotRecord],
    starts: tuple[StartInstance, ...],
    serving: tuple[SlotServing, ...],
    stops: tuple[StopInstance, ...],
    confirm: tuple[tuple[str, int, float], ...],
    releases: tuple[ReleaseSlot, ...],
) -> str:
    parts: list[str] = []
    if releases:
        parts.append("giving up " + ", ".join(r.slot for r in releases))
    if starts:
        parts.append("starting " + ", ".join(f"{s.slot}@{s.epoch}" for s in starts))
    if serving:
        parts.append("announcing " + ", ".join(c.slot for c in serving))
    if stops:
        parts.append("stopping " + ", ".join(f"{s.slot} ({s.reason})" for s in stops))
    if confirm:
        parts.append("checking suspicion of " + ", ".join(c[0] for c in confirm))
    if parts:
        return "; ".join(parts)
    if not owned:
        return f"no action: {server} owns no slot"
    names = ", ".join(f"{s.name}@{s.epoch} {s.state}" for s in owned)
    return f"no action: {server} holds {names}"
