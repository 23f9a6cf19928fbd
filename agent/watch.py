"""Wiring of failure detection into the agent: members from committed state, reports to Raft."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping

import structlog

from agent.clock import Clock
from agent.config import ClusterConfig
from agent.swim.detector import Detector, DetectorConfig
from agent.swim.messages import Codec, derive_probe_key
from agent.swim.probe import ProbeReport
from agent.swim.runner import SwimRunner
from agent.swim.transport import UdpTransport
from consensus.commands import ReportProbe
from consensus.protocol import Consensus
from consensus.state import ClusterState

_log = structlog.get_logger("moonwatch.watch")
_CONFIRM_SUBMITS = 3


def adds_nothing(state: ClusterState, report: ProbeReport) -> bool:
    """A routine probe's report on a server already suspected: the suspicion's witnesses and
    their confirm probes decide it, and this report would only be one more log entry."""
    routine = report.evidence.get("kind") == "periodic"
    return routine and state.suspicion(report.target) is not None


class Watch:
    """One agent's failure detector: probes the servers the cluster counts as up over UDP on
    the agent port, and submits what it concludes as ReportProbe commands."""

    def __init__(
        self,
        config: ClusterConfig,
        server: str,
        consensus: Consensus,
        clock: Clock,
        incarnation: int,
        round_trip: Callable[[str, float], None] | None = None,
    ) -> None:
        self._server = server
        self._consensus = consensus
        self._clock = clock
        self._sequence = itertools.count(1)
        timing = config.timing
        self.detector = Detector(
            server,
            DetectorConfig(
                probe_interval_s=timing.probe_interval_s,
                probe_timeout_s=timing.probe_timeout_s,
                indirect_probes=config.detection.indirect_probes,
            ),
            random.Random(),
            incarnation,
        )
        names = frozenset(s.name for s in config.servers)
        me = config.server(server)
        addresses = {s.name: (s.host, s.agent_port) for s in config.servers if s.name != server}
        self.transport = UdpTransport(me.host, me.agent_port, lambda: addresses)
        self.runner = SwimRunner(
            server,
            self.detector,
            Codec(derive_probe_key(config.secrets.raft_password.get_secret_value()), names),
            self.transport,
            clock,
            self.submit_report,
            self._members,
            tick_s=timing.probe_timeout_s / 2,
            round_trip=round_trip,
        )

    def _members(self) -> dict[str, int]:
        """The servers to probe, with the incarnation the cluster has committed for each."""
        state = self._consensus.snapshot().state
        return {s.name: s.incarnation for s in state.up_servers() if s.name != self._server}

    def confirm(self, target: str) -> None:
        self.runner.confirm(target)

    def set_incarnation(self, incarnation: int) -> None:
        self.detector.set_incarnation(incarnation)

    def stats(self) -> Mapping[str, int]:
        return self.runner.stats()

    async def submit_report(self, report: ProbeReport) -> None:
        """Submit one conclusion of the detector as a ReportProbe (see the rules below)."""
        if adds_nothing(self._consensus.snapshot().state, report):
            return
        routine = report.evidence.get("kind") == "periodic"
        command = ReportProbe(
            id=f"probe:{self._server}:{report.target}:{report.incarnation}:{next(self._sequence)}"
            f":{self._clock.wall():.3f}",
            at=self._clock.wall(),
            observer=self._server,
            target=report.target,
            incarnation=report.incarnation,
            reachable=report.reachable,
            evidence=dict(report.evidence),
        )
        # A confirm report is a witness's vote: without it a dead server waits out the whole
        # suspicion, so it is retried (same id, applied at most once) while Raft cannot commit.
        for _ in range(_CONFIRM_SUBMITS if not routine else 1):
            result = await self._consensus.submit(command, timeout_s=1.0)
            if result.status != "failed":  # committed, or refused: the same again would be too
                break
        if not result.ok:
            (_log.debug if result.stale else _log.info)(
                "probe_report_not_applied",
                target=report.target,
                kind=report.evidence.get("kind"),
                reachable=report.reachable,
                why=result.reason,
            )
