"""A deterministic whole cluster on fake time: real detectors, state machine and healer plans."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from agent.leadership import LeaderClock, plan_leader
from agent.swim.detector import Detector, DetectorConfig
from agent.watch import adds_nothing
from consensus.commands import (
    Bootstrap,
    Command,
    RenewLease,
    ReportProbe,
    ServerSpec,
    SlotSpec,
    encode_command,
)
from consensus.machine import apply_payload
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState, Decision, SlotRecord
from healer.cascade import CascadePolicy
from healer.local import Instance, LocalPlan, LocalView, plan_local
from healer.replace import LeasePolicy
from healer.returns import ReturnPolicy
from healer.verdict import VerdictPolicy
from tests.cluster.swimsim import SwimSim

_EPS = 1e-9


@dataclass(frozen=True)
class SimTiming:
    """Every duration of the simulation (the agent's defaults unless a test says otherwise)."""

    step_s: float = 0.01
    tick_s: float = 0.1
    lease_renew_s: float = 0.4
    delay_s: tuple[float, float] = (0.001, 0.005)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    verdicts: VerdictPolicy = field(default_factory=VerdictPolicy)
    leases: LeasePolicy = field(default_factory=LeasePolicy)
    cascade: CascadePolicy = field(default_factory=CascadePolicy)
    # The `healing` config: automatic return of quarantined servers, and the spare reserve.
    returns: ReturnPolicy = field(default_factory=ReturnPolicy)
    spare_reserve: int = 0


@dataclass(frozen=True)
class Committed:
    """A committed decision and the fake time at which it committed."""

    t: float
    decision: Decision


@dataclass
class SimAgent:
    """One server's agent: what its decision loop and lease keeper remember between ticks."""

    name: str
    next_tick: float
    incarnation: int = 1
    alive: bool = True
    frozen: ClusterState | None = None  # the last state seen, while cut off from Raft
    instances: dict[str, Instance] = field(default_factory=dict)
    confirmed: set[tuple[str, int, float]] = field(default_factory=set)
    leases: dict[str, tuple[int, float]] = field(default_factory=dict)  # slot -> (epoch, sent)
    reports: int = 0
    renewals: int = 0


class ClusterSim:
    """`n_servers` servers s00.. of which the first `n_active` own one slot each, the rest spares.

    Every server runs the real SWIM `Detector` (through `SwimSim`, over a `MemoryNetwork`) and the
    real `plan_local`; the lowest-named live server that reaches the log is the Raft leader and
    runs `plan_leader` under `timing.cascade`, `timing.returns` and `timing.spare_reserve` (a
    new one takes office at once, with a fresh `LeaderClock`). A killed server can be restarted
    with its stored incarnation. Raft is one shared log applied in order through
    `encode_command` and `apply_payload`: every server sees the same committed state, except
    one cut off from Raft, which keeps its last view and whose commands are dropped. The driver
    is a fake whose instances serve as soon as they start.
    Nothing reads a clock: `now` is `SwimSim.now`, also used as wall time in commands.

    Each step of `timing.step_s`: the network delivers due datagrams and live detectors tick
    (`SwimSim.step`); new probe reports become `ReportProbe` commands; every `tick_s` each live
    agent runs `plan_local` (and the leader `plan_leader` on the same snapshot) and renews its
    leases every `lease_renew_s`; detectors then probe the servers the committed state counts up.
    Safety violations (two owners at one epoch, an owner change without a higher epoch, a slot
    reassigned while its previous owner's lease could still be valid, or, for a slot its owner
    released, while that owner still runs it) go to `violations`.
    """

    def __init__(
        self,
        n_servers: int = 50,
        n_active: int = 40,
        *,
        seed: int,
        loss: float = 0.0,
        timing: SimTiming | None = None,
    ) -> None:
        if not 0 < n_active <= n_servers:
            raise ValueError("need 0 < n_active <= n_servers")
        self.timing = timing or SimTiming()
        t = self.timing
        self.swim = SwimSim(
            n_servers,
            seed,
            loss=(loss, loss),
            delay_s=t.delay_s,
            config=t.detector,
            step_s=t.step_s,
        )
        self.names = list(self.swim.names)
        self.actives = self.names[:n_active]
        self.spares = self.names[n_active:]
        self.slot_of = {name: f"slot{i:02d}" for i, name in enumerate(self.actives)}
        phase = random.Random(f"phase-{seed}")
        self.agents = {
            name: SimAgent(name, next_tick=round(phase.uniform(0, t.tick_s), 3))
            for name in self.names
        }
        for node in self.swim.nodes.values():
            node.detector.set_incarnation(1)  # a first start: the stored incarnation becomes 1
        self._addresses = {
            name: {slot: f"{name}:{9000 + i}" for i, slot in enumerate(self.slot_of.values())}
            for name in self.names
        }
        self.state = ClusterState()
        self.decisions: list[Committed] = []
        self.rejected: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.violations: list[str] = []
        self.owners: dict[tuple[str, int], str] = {}
        self.lease_sent: dict[tuple[str, int], float] = {}
        # For each change of owner: how long after the old owner's lease ended it committed.
        self.fence_slack_s: list[float] = []
        self.leader: str | None = None
        self.term = 0
        self.leaders: list[tuple[float, str | None]] = []
        self._leader_clock = LeaderClock()
        self._seen_reports = 0
        self._members_of: object = None
        self.bootstrap = self._bootstrap_command()
        self.submit(self.names[0], self.bootstrap)
        self._elect()

    # ------------------------------------------------------------------ what tests drive

    @property
    def now(self) -> float:
        return self.swim.now

    def run_until(self, t: float) -> None:
        while self.now < t - _EPS:
            self.step()

    def kill(self, name: str) -> None:
        """Stop `name` completely: silent detector, no renewals, no plans, nothing runs."""
        self.agents[name].alive = False
        self.agents[name].instances.clear()
        self.swim.kill(name)
        self._elect()

    def restart(self, name: str) -> None:
        """Start a killed `name` again: a fresh detector and agent that keep only the stored
        incarnation, so its first tick joins the cluster (a failed server comes back
        quarantined)."""
        agent = self.agents[name]
        if agent.alive:
            raise ValueError(f"{name} is running")
        node = self.swim.nodes[name]
        rng = random.Random(node.rng.random())
        node.detector = Detector(name, self.timing.detector, rng, agent.incarnation)
        node.alive, node.due = True, float("-inf")
        self.swim.network.set_up(name, True)
        agent.alive, agent.frozen, agent.next_tick = True, None, self.now
        agent.instances.clear()
        agent.confirmed.clear()
        agent.leases.clear()
        self._members_of = None  # the new detector learns the members on the next step
        self._elect()

    def isolate(self, name: str) -> None:
        """Drop all of `name`'s datagrams both ways; it still reaches the shared log."""
        self.swim.network.isolate(name)

    def heal(self) -> None:
        self.swim.network.heal()

    def cut_raft(self, name: str) -> None:
        """`name` no longer reaches the log: its commands are dropped, it sees no new state."""
        self.agents[name].frozen = self.state
        self._elect()

    def heal_raft(self, name: str) -> None:
        self.agents[name].frozen = None
        self._elect()

    def decided(self, kind: str | None = None, subject: str | None = None) -> list[Committed]:
        return [
            c
            for c in self.decisions
            if (kind is None or c.decision.kind == kind)
            and (subject is None or c.decision.subject == subject)
        ]

    def owner_history(self, slot: str) -> list[tuple[int, str]]:
        return sorted(
            (epoch, owner) for (name, epoch), owner in self.owners.items() if name == slot
        )

    # ------------------------------------------------------------------ the log

    def submit(self, origin: str, command: Command) -> bool:
        """Commit `command` from `origin` as every replica would apply it; True if applied."""
        agent = self.agents[origin]
        if not agent.alive or agent.frozen is not None:
            self.dropped[command.kind] += 1
            return False
        before = self.state
        after, result = apply_payload(before, encode_command(command))
        if not result.ok:
            self.rejected[f"{command.kind}{' (stale)' if result.stale else ''}"] += 1
            return False
        if after is before:  # a duplicate of a command that did commit
            return True
        self.state = after
        fresh = after.decision_seq - before.decision_seq
        if fresh:
            self.decisions.extend(Committed(self.now, d) for d in after.decisions[-fresh:])
        if isinstance(command, RenewLease):
            self.lease_sent[(command.slot, command.epoch)] = self.now
        if after.slots is not before.slots:
            self._check_slots(before, after)
        return True

    def _check_slots(self, before: ClusterState, after: ClusterState) -> None:
        olds = before.slots or tuple(SlotRecord(s.name, s.tenants) for s in after.slots)
        for old, new in zip(olds, after.slots, strict=True):
            if new is old or new.owner is None:
                continue
            known = self.owners.setdefault((new.name, new.epoch), new.owner)
            if known != new.owner:
                self.violations.append(f"{self.now:.2f}: {new.name}@{new.epoch} owned by two")
            if new.owner != old.owner and not new.epoch > old.epoch:
                self.violations.append(f"{self.now:.2f}: {new.name} changed owner at same epoch")
            if new.epoch > old.epoch and old.owner is not None:
                if old.state == "released":
                    # Given up (a drain, or crashes): the owner stopped its instance before the
                    # release committed, so only a still-running instance would overlap.
                    running = self.agents[old.owner].instances.get(old.name)
                    if running is not None and running.epoch == old.epoch:
                        self.violations.append(
                            f"{self.now:.2f}: {new.name} reassigned while {old.owner} still "
                            "runs the released slot"
                        )
                    continue
                sent = self.lease_sent.get((old.name, old.epoch), float("-inf"))
                self.fence_slack_s.append(self.now - (sent + self.timing.leases.lease_s))
                if self.now < sent + self.timing.leases.lease_s:
                    self.violations.append(
                        f"{self.now:.2f}: {new.name} reassigned while {old.owner}'s lease "
                        f"(renewed at {sent:.2f}) could still be valid"
                    )

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        self.swim.step()
        now = self.now
        self._commit_reports()
        for name in self.names:
            agent = self.agents[name]
            if agent.alive and now + _EPS >= agent.next_tick:
                agent.next_tick += self.timing.tick_s
                self._tick(agent, now)
        self._sync_members()

    def _commit_reports(self) -> None:
        """Each new detector report becomes a ReportProbe from its observer (as `Watch` does)."""
        seen = self.swim.seen
        for item in seen[self._seen_reports :]:
            agent, report = self.agents[item.observer], item.report
            if adds_nothing(self._snapshot(agent).state, report):
                continue
            agent.reports += 1
            command = ReportProbe(
                id=f"probe:{agent.name}:{report.target}:{report.incarnation}:{agent.reports}"
                f":{self.now:.3f}",
                at=self.now,
                observer=agent.name,
                target=report.target,
                incarnation=report.incarnation,
                reachable=report.reachable,
                evidence=dict(report.evidence),
            )
            self.submit(agent.name, command)
        self._seen_reports = len(seen)

    def _tick(self, agent: SimAgent, now: float) -> None:
        """One pass of the agent's decision loop, then of its lease keeper."""
        snap = self._snapshot(agent)
        agent.confirmed &= {(s.target, s.incarnation, s.since) for s in snap.state.suspicions}
        view = LocalView(
            agent.name, agent.incarnation, dict(agent.instances), frozenset(agent.confirmed)
        )
        plan = plan_local(
            snap.state, snap.raft, view, self.bootstrap, self._addresses[agent.name], now
        )
        if plan.incarnation is not None and plan.incarnation != agent.incarnation:
            agent.incarnation = plan.incarnation
            self.swim.nodes[agent.name].detector.set_incarnation(plan.incarnation)
        led: list[Command] = []
        if snap.raft.is_leader:
            self._leader_clock.observe(snap, now)
            t = self.timing
            led, _ = plan_leader(
                snap,
                self._leader_clock,
                now,
                now,
                t.verdicts,
                t.leases,
                t.cascade,
                returns=t.returns,
                spare_reserve=t.spare_reserve,
            )
        self._carry_out(agent, plan)
        for command in (*plan.commands, *led):
            self.submit(agent.name, command)
        self._renew(agent, now)

    def _carry_out(self, agent: SimAgent, plan: LocalPlan) -> None:
        """The fake driver: stops are immediate, a started instance is healthy and serving."""
        for stop in plan.stops:
            agent.instances.pop(stop.slot, None)
        for start in plan.starts:
            address = self._addresses[agent.name][start.slot]
            agent.instances[start.slot] = Instance(
                start.slot, start.epoch, address, True, True, True
            )
        for key in plan.confirm:
            agent.confirmed.add(key)
            self.swim.confirm(agent.name, key[0])

    def _renew(self, agent: SimAgent, now: float) -> None:
        """`LeaseKeeper._due` and `_renew`: every owned slot, every `lease_renew_s`."""
        state = agent.frozen if agent.frozen is not None else self.state
        me = state.server(agent.name)
        if me is None or me.state != "up":
            agent.leases.clear()
            return
        for slot in state.slots_owned_by(agent.name):
            lease = agent.leases.get(slot.name)
            if slot.state not in ("assigned", "serving") or (
                lease is not None
                and lease[0] == slot.epoch
                and now - lease[1] < self.timing.lease_renew_s - _EPS
            ):
                continue
            agent.renewals += 1
            command = RenewLease(
                id=f"renew:{slot.name}:{slot.epoch}:{agent.name}:{agent.renewals}",
                at=now,
                slot=slot.name,
                owner=agent.name,
                epoch=slot.epoch,
            )
            if self.submit(agent.name, command):
                agent.leases[slot.name] = (slot.epoch, now)

    def _snapshot(self, agent: SimAgent) -> Snapshot:
        cut = agent.frozen is not None
        state = agent.frozen if agent.frozen is not None else self.state
        leader = None if cut else self.leader
        raft = RaftStatus(
            server=agent.name,
            voter=True,
            leader=leader,
            term=self.term,
            is_leader=leader == agent.name,
            commit_index=state.applied,
            last_applied=state.applied,
            ready=leader is not None,
        )
        return Snapshot(state=state, raft=raft, version=state.applied)

    def _sync_members(self) -> None:
        """Detectors probe the servers the committed state counts up (`Watch._members`)."""
        if self.state.servers is self._members_of:
            return
        self._members_of = self.state.servers
        up = {s.name: s.incarnation for s in self.state.up_servers()}
        for name, agent in self.agents.items():
            if agent.alive and agent.frozen is None:
                node = self.swim.nodes[name]
                node.detector.set_members(up.keys(), up)
                node.due = float("-inf")

    def _elect(self) -> None:
        """The lowest-named live server that reaches the log leads; a new one starts afresh."""
        leader = next(
            (n for n in self.names if self.agents[n].alive and self.agents[n].frozen is None),
            None,
        )
        if leader != self.leader:
            self.leader = leader
            self.term += 1
            self._leader_clock = LeaderClock()
            self.leaders.append((self.now, leader))

    def _bootstrap_command(self) -> Bootstrap:
        return Bootstrap(
            id="bootstrap:sim",
            at=0.0,
            cluster="sim",
            config_digest="sim",
            servers=tuple(
                ServerSpec(n, "active" if n in self.slot_of else "spare", f"d{i % 5}")
                for i, n in enumerate(self.names)
            ),
            slots=tuple(
                SlotSpec(slot, owner, (f"t-{slot}",)) for owner, slot in self.slot_of.items()
            ),
            lease_s=self.timing.leases.lease_s,
        )
