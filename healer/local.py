"""What this agent should do now about its own server and slots, from committed state alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from consensus.commands import Bootstrap, Command, ServerUp, SlotServing
from consensus.protocol import RaftStatus
from consensus.state import ClusterState, SlotRecord


@dataclass(frozen=True, slots=True)
class Instance:
    """What the server driver reports about one local app instance."""

    slot: str
    epoch: int
    address: str
    running: bool
    healthy: bool


@dataclass(frozen=True, slots=True)
class LocalView:
    """This agent's own facts: who it is and what runs here."""

    server: str
    incarnation: int
    instances: Mapping[str, Instance] = field(default_factory=dict)


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
    """One tick's decision: commands to submit, instances to start and stop, and one sentence."""

    summary: str
    commands: tuple[Command, ...] = ()
    starts: tuple[StartInstance, ...] = ()
    stops: tuple[StopInstance, ...] = ()


def plan_local(
    state: ClusterState,
    raft: RaftStatus,
    view: LocalView,
    bootstrap: Bootstrap,
    addresses: Mapping[str, str],
    now: float,
) -> LocalPlan:
    """Decide one tick. `addresses` maps each slot to the address this server serves it on;
    `bootstrap` is the command that creates the state from our config, used only by a leader
    that finds the cluster empty. Without a known leader nothing is submitted."""
    stops = _stops(state, view)
    if not state.bootstrapped:
        if raft.is_leader:
            return LocalPlan("leader: bootstrapping the cluster", (bootstrap,), (), stops)
        return LocalPlan("waiting for the leader to bootstrap the cluster", (), (), stops)
    me = state.server(view.server)
    if me is None:
        return LocalPlan(f"{view.server} is not a member of the committed cluster", (), (), stops)
    if me.state != "up" or me.incarnation != view.incarnation:
        up = ServerUp(
            id=f"up:{view.server}:{view.incarnation}",
            at=now,
            server=view.server,
            incarnation=view.incarnation,
        )
        return LocalPlan(f"joining as incarnation {view.incarnation}", (up,), (), stops)
    owned = [s for s in state.slots_owned_by(view.server) if s.state in ("assigned", "serving")]
    starts = tuple(
        StartInstance(s.name, s.epoch, s.tenants) for s in owned if _needs_start(s, view)
    )
    serving = tuple(
        _serving(s, view.server, addresses[s.name], now)
        for s in owned
        if _ready_to_announce(s, view, addresses.get(s.name))
    )
    return LocalPlan(_summary(view.server, owned, starts, serving, stops), serving, starts, stops)


def _stops(state: ClusterState, view: LocalView) -> tuple[StopInstance, ...]:
    """Instances this server must not run: not its slot, an old epoch, or a released slot."""
    stops: list[StopInstance] = []
    for name, instance in sorted(view.instances.items()):
        slot = state.slot(name)
        if not state.bootstrapped:
            continue
        if slot is None:
            stops.append(StopInstance(name, "slot is not in the committed state"))
        elif slot.owner != view.server:
            stops.append(StopInstance(name, f"slot is owned by {slot.owner} at epoch {slot.epoch}"))
        elif slot.epoch != instance.epoch:
            stops.append(
                StopInstance(name, f"instance runs epoch {instance.epoch}, not {slot.epoch}")
            )
        elif slot.state == "released":
            stops.append(StopInstance(name, "slot was released"))
    return tuple(stops)


def _needs_start(slot: SlotRecord, view: LocalView) -> bool:
    instance = view.instances.get(slot.name)
    return instance is None or instance.epoch != slot.epoch or not instance.running


def _ready_to_announce(slot: SlotRecord, view: LocalView, address: str | None) -> bool:
    instance = view.instances.get(slot.name)
    if instance is None or address is None or instance.epoch != slot.epoch:
        return False
    if not (instance.running and instance.healthy):
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


def _summary(
    server: str,
    owned: list[SlotRecord],
    starts: tuple[StartInstance, ...],
    serving: tuple[SlotServing, ...],
    stops: tuple[StopInstance, ...],
) -> str:
    parts: list[str] = []
    if starts:
        parts.append("starting " + ", ".join(f"{s.slot}@{s.epoch}" for s in starts))
    if serving:
        parts.append("announcing " + ", ".join(c.slot for c in serving))
    if stops:
        parts.append("stopping " + ", ".join(f"{s.slot} ({s.reason})" for s in stops))
    if parts:
        return "; ".join(parts)
    if not owned:
        return f"no action: {server} owns no slot"
    names = ", ".join(f"{s.name}@{s.epoch} {s.state}" for s in owned)
    return f"no action: {server} holds {names}"
