"""The decision loop: one snapshot, one plan, its effects, and one sentence per tick."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from agent.clock import Clock
from agent.config import ClusterConfig
from agent.driver import InstanceSpec, ServerDriver
from agent.metrics import AgentMetrics
from consensus.commands import Bootstrap, ServerSpec, SlotSpec
from consensus.protocol import Consensus
from healer.local import Instance, LocalPlan, LocalView, plan_local

_log = structlog.get_logger("moonwatch.loop")


@dataclass(frozen=True, slots=True)
class TickReport:
    summary: str
    at_monotonic: float


def bootstrap_command(config: ClusterConfig, now: float) -> Bootstrap:
    """The command that creates the cluster state from this configuration."""
    digest = config.digest()
    return Bootstrap(
        id=f"bootstrap:{digest}",
        at=now,
        cluster=config.cluster,
        config_digest=digest,
        servers=tuple(ServerSpec(s.name, s.role, s.domain) for s in config.servers),
        slots=tuple(SlotSpec(s.name, s.owner, s.tenants) for s in config.slots),
        lease_s=config.timing.lease_s,
    )


class DecisionLoop:
    """Runs `plan_local` every tick (or sooner when committed state changes) and carries it out."""

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
    ) -> None:
        self._config = config
        self._server = server
        self._incarnation = incarnation
        self._consensus = consensus
        self._driver = driver
        self._clock = clock
        self._metrics = metrics
        me = config.server(server)
        self._addresses = {
            slot.name: f"{me.host}:{config.app_port(server, slot.name)}" for slot in config.slots
        }
        self.last_report: TickReport | None = None
        self._last_summary = ""

    @property
    def incarnation(self) -> int:
        return self._incarnation

    def joined(self) -> bool:
        """True once the cluster has committed this agent's current incarnation as up."""
        me = self._consensus.snapshot().state.server(self._server)
        return me is not None and me.state == "up" and me.incarnation == self._incarnation

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
            await self._consensus.wait_changed(seen, tick_s)

    async def tick(self) -> TickReport:
        await self._driver.probe()
        snap = self._consensus.snapshot()
        if snap.state.bootstrapped:
            me = snap.state.server(self._server)
            if me is not None and me.incarnation >= self._incarnation and not self.joined():
                # Our journal or incarnation file was lost: continue above the committed one.
                self._incarnation = me.incarnation + 1
        view = LocalView(self._server, self._incarnation, self._instances())
        plan = plan_local(
            snap.state,
            snap.raft,
            view,
            bootstrap_command(self._config, self._clock.wall()),
            self._addresses,
            self._clock.wall(),
        )
        await self._carry_out(plan)
        report = TickReport(plan.summary, self._clock.monotonic())
        if plan.summary != self._last_summary:
            _log.info("decision", summary=plan.summary, leader=snap.raft.leader)
            self._last_summary = plan.summary
        self.last_report = report
        return report

    def _instances(self) -> dict[str, Instance]:
        return {
            slot: Instance(s.slot, s.epoch, s.address, s.running, s.healthy)
            for slot, s in self._driver.instances().items()
        }

    async def _carry_out(self, plan: LocalPlan) -> None:
        timing = self._config.timing
        for stop in plan.stops:
            _log.info("instance_stop", slot=stop.slot, reason=stop.reason)
            await self._driver.stop(stop.slot, timeout_s=timing.shutdown_timeout_s / 2)
            self._metrics.instance_actions.labels("stop").inc()
        for start in plan.starts:
            await self._driver.ensure_running(self._spec(start.slot, start.epoch, start.tenants))
            self._metrics.instance_actions.labels("start").inc()
        for command in plan.commands:
            result = await self._consensus.submit(command, timeout_s=max(1.0, 4 * timing.tick_s))
            self._metrics.submits.labels(command.kind, result.status).inc()
            if not result.ok:
                _log.info("command_not_applied", kind=command.kind, result=result.reason)

    def _spec(self, slot: str, epoch: int, tenants: tuple[str, ...]) -> InstanceSpec:
        me = self._config.server(self._server)
        return InstanceSpec(
            slot=slot,
            epoch=epoch,
            server=self._server,
            host=me.host,
            port=self._config.app_port(self._server, slot),
            base_domain=self._config.base_domain,
            tenants=tenants,
            data_dir=self._config.data_dir / "slots" / slot,
        )
