"""Failure detection at fleet scale on fake time: every SWIM detector, a modelled Raft log."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from agent.leadership import LeaderClock, plan_leader
from agent.swim.detector import DetectorConfig
from agent.watch import adds_nothing
from consensus.commands import Bootstrap, Command, ReportProbe, ServerSpec, encode_command
from consensus.machine import apply_payload
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState
from healer.local import LocalView, plan_local
from healer.replace import LeasePolicy
from healer.verdict import VerdictPolicy
from healer.witnesses import WITNESSES, witnesses
from tests.cluster.swimsim import SwimSim

_EPS = 1e-9


@dataclass(frozen=True)
class ScaleTiming:
    """The durations of the simulation (the agent's defaults)."""

    step_s: float = 0.01
    tick_s: float = 0.1
    delay_s: tuple[float, float] = (0.001, 0.005)
    detector: DetectorConfig = field(default_factory=DetectorConfig)


@dataclass(frozen=True)
class Crash:
    """A server killed at `at`; `verdict_at` is when its failure verdict committed."""

    server: str
    at: float
    suspected_at: float | None = None
    verdict_at: float | None = None


@dataclass
class _Agent:
    name: str
    phase: int  # the step (mod steps per tick) at which its decision loop runs
    incarnation: int = 0
    confirmed: set[tuple[str, int, float]] = field(default_factory=set)
    planned: int = -1  # state.applied at its last plan


class ScaleSim:
    """`n` agents s000.. with no slots: detection and verdicts only, at fleet size.

    The SWIM layer is complete: every agent runs the real `Detector` and `Codec` over a
    `MemoryNetwork` (`SwimSim`) with `loss` on every link. Raft is modelled as in `ClusterSim`:
    one shared log applied in order through `encode_command` and `apply_payload`, so every agent
    sees the same committed state at once; the first server leads and is never crashed, and runs
    the real `plan_leader` every `tick_s`. Each agent's decision loop is the real `plan_local`,
    run on its own tick phase, but only for the agents it could tell to do something: the
    targets of open suspicions (they refute) and their witnesses (they confirm). Every other
    agent owns no slot and is up at its own incarnation, so its plan would be empty. Detectors
    learn the committed up servers and their incarnations whenever those change.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        loss: float = 0.0,
        witness_count: int | None = WITNESSES,
        timing: ScaleTiming | None = None,
    ) -> None:
        self.timing = t = timing or ScaleTiming()
        self.witness_count = witness_count
        self.verdicts = VerdictPolicy(witnesses=witness_count)
        self.swim = SwimSim(
            n, seed, uniform_loss=loss, delay_s=t.delay_s, config=t.detector, step_s=t.step_s
        )
        self.names = list(self.swim.names)
        self.leader = self.names[0]
        self._per_tick = max(1, round(t.tick_s / t.step_s))
        phase = random.Random(f"phase-{seed}")
        self.agents = {name: _Agent(name, phase.randrange(self._per_tick)) for name in self.names}
        self.state = ClusterState()
        self.committed: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.crashes: dict[str, Crash] = {}
        self.false_verdicts: list[tuple[float, str]] = []
        self.suspicions_opened = 0
        self._clock = LeaderClock()
        self._seen_reports = 0
        self._interested: tuple[str, ...] = ()
        self._interest_of: object = None
        self._incarnations: dict[str, int] = {}
        self._servers_of: object = None
        self.bootstrap = Bootstrap(
            id="bootstrap:scale",
            at=0.0,
            cluster="scale",
            config_digest="scale",
            servers=tuple(ServerSpec(s, "active", f"d{i % 5}") for i, s in enumerate(self.names)),
            slots=(),
            lease_s=LeasePolicy().lease_s,
        )
        self.submit(self.leader, self.bootstrap)
        for agent in self.agents.values():  # every agent's first tick: it joins
            self._plan(agent, 0.0)
        self._sync_members()

    @property
    def now(self) -> float:
        return self.swim.now

    def kill(self, name: str) -> None:
        """Crash `name` (never the leader): its detector and decision loop stop."""
        if name == self.leader:
            raise ValueError("the modelled leader is never crashed")
        self.swim.kill(name)
        self.crashes[name] = Crash(name, self.now)

    def alive(self) -> list[str]:
        return [n for n in self.names if self.swim.nodes[n].alive]

    def run_until(self, t: float) -> None:
        while self.now < t - _EPS:
            self.step()

    def step(self) -> None:
        self.swim.step()
        now = self.now
        self._commit_reports()
        due = self.swim.steps % self._per_tick
        for name in self._interesting():
            agent = self.agents[name]
            if agent.phase == due and agent.planned != self.state.applied:
                self._plan(agent, now)
        if self.agents[self.leader].phase == due:
            self._lead(now)
        self._sync_members()

    def submit(self, origin: str, command: Command) -> bool:
        """Commit `command` as every replica would apply it; True if it changed the state."""
        if not self.swim.nodes[origin].alive:
            return False
        before = self.state
        after, result = apply_payload(before, encode_command(command))
        if not result.ok:
            self.rejected[command.kind] += 1
            return False
        if after is before:
            return False
        self.state = after
        self.committed[command.kind] += 1
        for decision in after.decisions[
            len(after.decisions) - (after.decision_seq - before.decision_seq) :
        ]:
            self._note(decision.kind, decision.subject)
        return True

    def _note(self, kind: str, subject: str) -> None:
        crash = self.crashes.get(subject)
        if kind == "server_suspected":
            self.suspicions_opened += 1
            if crash is not None and crash.suspected_at is None:
                self.crashes[subject] = Crash(crash.server, crash.at, self.now, crash.verdict_at)
        elif kind == "server_failed":
            if crash is None:
                self.false_verdicts.append((self.now, subject))
            elif crash.verdict_at is None:
                self.crashes[subject] = Crash(crash.server, crash.at, crash.suspected_at, self.now)

    def _commit_reports(self) -> None:
        """Each new detector report becomes a ReportProbe from its observer (as `Watch` does)."""
        seen = self.swim.seen
        for n, item in enumerate(seen[self._seen_reports :], start=self._seen_reports):
            report = item.report
            if adds_nothing(self.state, report):
                continue
            command = ReportProbe(
                id=f"probe:{item.observer}:{report.target}:{report.incarnation}:{n}",
                at=self.now,
                observer=item.observer,
                target=report.target,
                incarnation=report.incarnation,
                reachable=report.reachable,
                evidence=dict(report.evidence),
            )
            self.submit(item.observer, command)
        self._seen_reports = len(seen)

    def _interesting(self) -> tuple[str, ...]:
        """Live agents whose plan could say something: suspected servers and their witnesses."""
        if self.state.suspicions is not self._interest_of:
            self._interest_of = self.state.suspicions
            names: set[str] = set()
            for suspicion in self.state.suspicions:
                names.add(suspicion.target)
                names.update(witnesses(self.state, suspicion, self.witness_count))
            self._interested = tuple(n for n in sorted(names) if self.swim.nodes[n].alive)
        return self._interested

    def _plan(self, agent: _Agent, now: float) -> None:
        """One pass of the agent's decision loop (`Loop`): plan, refute or confirm, submit."""
        node = self.swim.nodes[agent.name]
        if not node.alive:
            return
        state = self.state
        agent.confirmed &= {(s.target, s.incarnation, s.since) for s in state.suspicions}
        view = LocalView(agent.name, agent.incarnation, {}, frozenset(agent.confirmed))
        plan = plan_local(
            state,
            self._raft(agent.name, state),
            view,
            self.bootstrap,
            {},
            now,
            witness_count=self.witness_count,
        )
        agent.planned = state.applied
        if plan.incarnation is not None and plan.incarnation != agent.incarnation:
            agent.incarnation = plan.incarnation
            node.detector.set_incarnation(plan.incarnation)
        for key in plan.confirm:
            agent.confirmed.add(key)
            self.swim.confirm(agent.name, key[0])
        for command in plan.commands:
            self.submit(agent.name, command)

    def _lead(self, now: float) -> None:
        snap = Snapshot(self.state, self._raft(self.leader, self.state), self.state.applied)
        self._clock.observe(snap, now)
        commands, _ = plan_leader(snap, self._clock, now, now, self.verdicts, LeasePolicy())
        for command in commands:
            self.submit(self.leader, command)

    def _raft(self, server: str, state: ClusterState) -> RaftStatus:
        return RaftStatus(
            server=server,
            voter=server == self.leader,
            leader=self.leader,
            term=1,
            is_leader=server == self.leader,
            commit_index=state.applied,
            last_applied=state.applied,
            ready=True,
        )

    def _sync_members(self) -> None:
        """Detectors probe the servers the committed state counts up (`Watch._members`)."""
        if self.state.servers is self._servers_of:
            return
        self._servers_of = self.state.servers
        incarnations = {s.name: s.incarnation for s in self.state.up_servers()}
        changed = {name: n for name, n in incarnations.items() if self._incarnations.get(name) != n}
        self._incarnations = incarnations
        if not changed:
            return
        up = frozenset(incarnations)
        for node in self.swim.nodes.values():
            if node.alive:
                node.detector.set_members(up, changed)
                node.due = float("-inf")
