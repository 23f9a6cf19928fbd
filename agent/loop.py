"""The decision loop: one snapshot, one plan, its effects, and one sentence per tick."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from agent.clock import Clock
from agent.config import ClusterConfig, TenantLimits
from agent.driver import InstanceSpec, ServerDriver
from agent.explain import incident_start
from agent.leadership import LeaderClock, plan_leader
from agent.lease import LeaseKeeper
from agent.metrics import AgentMetrics
from consensus.commands import (
    AssignSlot,
    Bootstrap,
    Command,
    MarkServerFailed,
    ServerSpec,
    SlotSpec,
)
from consensus.protocol import Consensus, Snapshot
from healer.cascade import CascadePolicy
from healer.local import Instance, LocalPlan, LocalView, plan_local
from healer.replace import LeasePolicy
from healer.returns import ReturnPolicy
from healer.throttle import Limits, TenantRate, ThrottlePolicy
from healer.verdict import VerdictPolicy

_log = structlog.get_logger("moonwatch.loop")


@dataclass(frozen=True, slots=True)
class TickReport:
    summary: str
    at_monotonic: float


def bootstrap_command(config: ClusterConfig, now: float, digest: str | None = None) -> Bootstrap:
    """The command that creates the cluster state from this configuration."""
    digest = digest or config.digest()
    return Bootstrap(
        id=f"bootstrap:{digest}",
        at=now,
        cluster=config.cluster,
        config_digest=digest,
        servers=tuple(ServerSpec(s.name, s.role, s.domain) for s in config.servers),
        slots=tuple(SlotSpec(s.name, s.owner, s.tenants) for s in config.slots),
        lease_s=config.timing.lease_s,
        voters=tuple(config.voters),
    )


def throttle_policy(config: ClusterConfig) -> ThrottlePolicy:
    """The pure throttle rule's policy from the `throttle` block of the configuration."""
    t = config.throttle

    def limits(given: TenantLimits) -> Limits:
        return Limits(rps=given.rps, share=given.share, concurrent=given.concurrent)

    return ThrottlePolicy(
        limits=limits(t.limits),
        overrides={name: limits(given) for name, given in t.tenants.items()},
        share_min_rps=t.share_min_rps,
        confirm_s=t.confirm_s,
        stop_s=t.stop_s,
        max_stop_s=t.max_stop_s,
        repeat_window_s=t.repeat_window_s,
    )


class Prober(Protocol):
    """What the decision loop needs of the failure detector."""

    def confirm(self, target: str) -> None:
        """Probe `target` now, out of band, and report the result either way."""

    def set_incarnation(self, incarnation: int) -> None:
        """Answer probes with this incarnation from now on."""


class DecisionLoop:
    """Runs the local plan (and, on the leader, verdicts and replacements) every tick or sooner
    when committed state changes, carries it out, and logs its one sentence when it changes."""

    def __init__(
        self,
        *,
        config: ClusterConfig,
        server: str,
        incarnation: int,
        consensus: Consensus,
        driver: ServerDriver,
        clock: Clock,
        metrics: AgentMetrics,
        leases: LeaseKeeper | None = None,
        prober: Prober | None = None,
        persist_incarnation: Callable[[int], None] | None = None,
        rates: Callable[[], Mapping[str, TenantRate]] | None = None,
    ) -> None:
        self._config = config
        self._server = server
        self._incarnation = incarnation
        self._consensus = consensus
        self._driver = driver
        self._clock = clock
        self._metrics = metrics
        self._leases = leases
        self._prober = prober
        self._persist = persist_incarnation
        me = config.server(server)
        self._addresses = {
            slot.name: f"{me.host}:{config.app_port(server, slot.name)}" for slot in config.slots
        }
        timing = config.timing
        self._verdicts = VerdictPolicy(
            min_observers=config.detection.min_observers,
            suspicion_min_s=timing.suspicion_s,
            suspicion_max_s=timing.suspicion_max_s,
            expire_s=timing.suspicion_expire_s,
        )
        self._lease_policy = LeasePolicy(
            lease_s=timing.lease_s, drift=timing.clock_drift, margin_s=timing.lease_margin_s
        )
        cascade = config.cascade
        self._cascade = CascadePolicy(
            window_s=cascade.window_s,
            min_verdicts=cascade.min_verdicts,
            verdict_fraction=cascade.verdict_fraction,
            quiet_s=cascade.quiet_s,
            budget=cascade.budget,
            budget_window_s=cascade.budget_window_s,
            normal_budget=cascade.normal_budget,
        )
        healing = config.healing
        self._returns = ReturnPolicy(
            auto_return_s=healing.auto_return_s,
            flap_failures=healing.flap_failures,
            flap_window_s=healing.flap_window_s,
        )
        self._spare_reserve = healing.spare_reserve
        self._rates = rates
        self._throttle = throttle_policy(config)
        self._leader_clock = LeaderClock()
        self._digest = config.digest()
        self._confirmed: set[tuple[str, int, float]] = set()
        # Slots (and epochs) already counted in the recovery histogram; seeded lazily.
        self._recoveries: set[tuple[str, int]] = set()
        self._recovery_term = -1
        self.last_report: TickReport | None = None
        self._last_summary = ""
        self._known_leader: str | None = None

    @property
    def incarnation(self) -> int:
        return self._incarnation

    def joined(self) -> bool:
        """True once the cluster has committed this agent's current incarnation (as up, or as
        quarantined: a failed server that came back is a member, just out of service; or as
        draining: a server restarted during maintenance still takes part)."""
        me = self._consensus.snapshot().state.server(self._server)
        return (
            me is not None
            and me.state in ("up", "quarantined", "draining")
            and me.incarnation == self._incarnation
        )

    async def run(self, stopping: asyncio.Event) -> None:
        tick_s = self._config.timing.tick_s
        while not stopping.is_set():
            started = self._clock.monotonic()
            seen = self._consensus.snapshot().version
            try:
                await self.tick()
            except Exception:  # noqa: BLE001  # one bad tick must not end the loop; next one retries
                _log.exception("tick_failed")
            self._metrics.ticks.observe(self._clock.monotonic() - started)
            await self._wait_for_news(seen, started + tick_s)

    async def _wait_for_news(self, seen: int, deadline: float) -> None:
        """Until the next tick is due, or sooner when something that matters changed. Lease
        renewals commit several times a second and change nothing a tick decides on."""
        before = _relevant(self._consensus.snapshot())
        while (remaining := deadline - self._clock.monotonic()) > 0:
            if not await self._consensus.wait_changed(seen, remaining):
                return
            snap = self._consensus.snapshot()
            seen = snap.version
            if _relevant(snap) != before:
                return

    async def tick(self) -> TickReport:
        await self._driver.probe()
        snap = self._consensus.snapshot()
        now, wall = self._clock.monotonic(), self._clock.wall()
        self._forget_closed_suspicions(snap)
        view = LocalView(
            self._server, self._incarnation, self._instances(), frozenset(self._confirmed)
        )
        plan = plan_local(
            snap.state,
            snap.raft,
            view,
            bootstrap_command(self._config, wall, self._digest),
            self._addresses,
            wall,
        )
        if plan.incarnation is not None and plan.incarnation != self._incarnation:
            self._adopt_incarnation(plan.incarnation)
        self._leader_clock.observe(snap, now)
        self._note_leader(snap.raft.leader)
        if snap.raft.is_leader:
            self._observe_recoveries(snap, wall)
        led, waiting = plan_leader(
            snap,
            self._leader_clock,
            now,
            wall,
            self._verdicts,
            self._lease_policy,
            self._cascade,
            returns=self._returns,
            spare_reserve=self._spare_reserve,
            throttle=self._throttle if self._rates is not None else None,
            rates=self._rates() if self._rates is not None and snap.raft.is_leader else None,
        )
        await self._carry_out(plan, led)
        summary = "; ".join([plan.summary, *(f"leader: {n}" for n in waiting)])
        report = TickReport(summary, self._clock.monotonic())
        if summary != self._last_summary:
            _log.info("decision", summary=summary, leader=snap.raft.leader)
            self._last_summary = summary
        self.last_report = report
        return report

    def _observe_recoveries(self, snap: Snapshot, wall: float) -> None:
        """Export how long each moved slot took to serve again (once per slot and epoch). A
        new leader counts only what recovers during its term, so nothing is counted twice."""
        if snap.raft.term != self._recovery_term:
            self._recovery_term = snap.raft.term
            self._recoveries = {(s.name, s.epoch) for s in snap.state.slots if s.state == "serving"}
        for slot in snap.state.slots:
            key = (slot.name, slot.epoch)
            if slot.state != "serving" or slot.epoch < 2 or key in self._recoveries:
                continue
            self._recoveries.add(key)
            started = incident_start(snap.state, slot.name, slot.epoch)
            if started is not None and wall >= started:
                self._metrics.recovery.observe(wall - started)
                _log.info(
                    "slot_recovered", slot=slot.name, epoch=slot.epoch, seconds=wall - started
                )

    def _adopt_incarnation(self, incarnation: int) -> None:
        self._incarnation = incarnation
        if self._persist is not None:
            self._persist(incarnation)
        if self._prober is not None:
            self._prober.set_incarnation(incarnation)

    def _forget_closed_suspicions(self, snap: Snapshot) -> None:
        open_keys = {(s.target, s.incarnation, s.since) for s in snap.state.suspicions}
        self._confirmed &= open_keys

    def _instances(self) -> dict[str, Instance]:
        return {
            slot: Instance(s.slot, s.epoch, s.address, s.running, s.healthy, s.serving, s.gave_up)
            for slot, s in self._driver.instances().items()
        }

    async def _carry_out(self, plan: LocalPlan, led: list[Command]) -> None:
        timing = self._config.timing
        for stop in plan.stops:
            _log.info("instance_stop", slot=stop.slot, reason=stop.reason)
            await self._driver.stop(stop.slot, timeout_s=timing.shutdown_timeout_s / 2)
            self._metrics.instance_actions.labels("stop").inc()
        for start in plan.starts:
            await self._driver.ensure_running(self._spec(start.slot, start.epoch, start.tenants))
            self._metrics.instance_actions.labels("start").inc()
        if self._leases is not None:
            self._leases.push()
        for key in plan.confirm:
            self._confirmed.add(key)
            if self._prober is not None:
                self._prober.confirm(key[0])
        for command in (*plan.commands, *led):
            submitted = self._clock.monotonic()
            result = await self._consensus.submit(command, timeout_s=max(1.0, 4 * timing.tick_s))
            self._metrics.submits.labels(command.kind, result.status).inc()
            if result.ok:
                self._count_committed(command, self._clock.monotonic() - submitted)
            if not result.ok:
                _log.info("command_not_applied", kind=command.kind, result=result.reason)
            elif command.kind not in ("slot_serving", "server_up", "renew_lease"):
                _log.info("leader_decided", kind=command.kind, command_id=command.id)

    def _count_committed(self, command: Command, took_s: float) -> None:
        self._metrics.commit_latency.observe(took_s)
        if isinstance(command, MarkServerFailed):
            self._metrics.verdicts.labels(command.server).inc()
        elif isinstance(command, AssignSlot):
            self._metrics.assignments.labels(command.slot).inc()

    def _note_leader(self, leader: str | None) -> None:
        """Count a change of leader: a known leader followed by another (not the first seen)."""
        if leader is None or leader == self._known_leader:
            return
        if self._known_leader is not None:
            self._metrics.leader_changes.inc()
        self._known_leader = leader

    def _spec(self, slot: str, epoch: int, tenants: tuple[str, ...]) -> InstanceSpec:
        me = self._config.server(self._server)
        url = self._config.slot(slot).database_url
        return InstanceSpec(
            slot=slot,
            epoch=epoch,
            server=self._server,
            host=me.host,
            port=self._config.app_port(self._server, slot),
            base_domain=self._config.base_domain,
            tenants=tenants,
            data_dir=self._config.data_dir / "slots" / slot,
            overlap_log=self._config.data_dir / "overlap" / f"{slot}.log",
            database_url=None if url is None else url.get_secret_value(),
            max_upload_mb=self._config.app.max_upload_mb,
            trusted_proxies=app_trusted_proxies(self._config),
        )


def app_trusted_proxies(config: ClusterConfig) -> tuple[str, ...]:
    """Whose X-Forwarded-For an app instance believes: every server of the cluster (their
    edges forward to it) and the configured trusted proxies. A server named by a hostname
    other than localhost is left out (the app takes addresses only): list its edge's address
    in throttle.trusted_proxies."""
    found: list[str] = []
    for server in config.servers:
        if server.host == "localhost":
            found += ["127.0.0.1/32", "::1/128"]
            continue
        try:
            found.append(str(ipaddress.ip_network(server.host)))
        except ValueError:
            continue
    found += [str(network) for network in config.throttle.trusted_proxies]
    return tuple(dict.fromkeys(found))


def _relevant(snap: Snapshot) -> tuple[object, ...]:
    """What a tick decides on: everything but lease renewals and Raft indices."""
    state = snap.state
    return (
        snap.raft.leader,
        snap.raft.term,
        snap.raft.is_leader,
        state.decision_seq,
        state.mode,
        tuple((s.state, s.incarnation) for s in state.servers),
        tuple((s.owner, s.epoch, s.state, s.address) for s in state.slots),
        tuple((s.target, len(s.reports)) for s in state.suspicions),
    )
