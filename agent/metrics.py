"""Prometheus metrics of one agent, read from its snapshot at scrape time (own registry)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from consensus.protocol import Snapshot
from consensus.state import ServerState, SlotState


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        raft = snap.raft
        yield GaugeMetricFamily("moonwatch_raft_term", "Current Raft term", value=raft.term)
        yield GaugeMetricFamily(
            "moonwatch_raft_is_leader", "1 if this agent is the Raft leader", value=raft.is_leader
        )
        yield GaugeMetricFamily(
            "moonwatch_raft_commit_index", "Raft commit index", value=raft.commit_index
        )
        yield GaugeMetricFamily(
            "moonwatch_raft_has_leader", "1 if a leader is known", value=raft.leader is not None
        )
        servers = GaugeMetricFamily(
            "moonwatch_servers", "Servers by committed state", labels=["state"]
        )
        for state in get_args(ServerState):
            count = sum(1 for s in snap.state.servers if s.state == state)
            servers.add_metric([state], count)
        yield servers
        slots = GaugeMetricFamily("moonwatch_slots", "Slots by committed state", labels=["state"])
        for state in get_args(SlotState):
            slots.add_metric([state], sum(1 for s in snap.state.slots if s.state == state))
        yield slots
        yield GaugeMetricFamily(
            "moonwatch_decisions", "Decisions committed so far", value=snap.state.decision_seq
        )
        mode = GaugeMetricFamily(
            "moonwatch_mode",
            "1 for the cluster's current healing mode (cascade: replacement held back)",
            labels=["mode"],
        )
        for name in ("normal", "cascade", "recovering"):
            mode.add_metric([name], 1 if snap.state.mode == name else 0)
        yield mode
        yield GaugeMetricFamily(
            "moonwatch_tenants_stopped",
            "Tenant subdomains stopped at every edge (committed; expired ones until lifted)",
            value=len(snap.state.stops),
        )
        yield GaugeMetricFamily(
            "moonwatch_raft_voters", "Raft voters as committed", value=len(snap.state.voters)
        )
        yield GaugeMetricFamily(
            "moonwatch_raft_voter_change",
            "1 while a failed Raft voter is being replaced",
            value=snap.state.voter_change is not None,
        )


class _DetectorCollector(Collector):
    """Failure-detector counters (probes, acks, timeouts, rejected datagrams by reason)."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "moonwatch_detector_events", "Failure-detector events by kind", labels=["kind"]
        )
        for kind, count in sorted(self._stats().items()):
            family.add_metric([kind], count)
        yield family


class _CountersCollector(Collector):
    """Any plain counters the shell keeps (traffic reports, edge, driver), read at scrape."""

    def __init__(self, name: str, doc: str, stats: Callable[[], Mapping[str, int]]) -> None:
        self._name, self._doc, self._stats = name, doc, stats

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=["kind"])
        for kind, count in sorted(self._stats().items()):
            family.add_metric([kind], count)
        yield family


class AgentMetrics:
    """The agent's registry plus the instruments the shell updates."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_SnapshotCollector(snapshot))
        self.ticks = Histogram(
            "moonwatch_tick_seconds",
            "Duration of one decision-loop tick",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.submits = Counter(
            "moonwatch_commands_total",
            "Commands submitted by this agent, by kind and outcome",
            ["kind", "status"],
            registry=self.registry,
        )
        self.recovery = Histogram(
            "moonwatch_recovery_seconds",
            "Incident recovery time: first reported missed probe (or release) to the slot "
            "serving again on its new owner; observed by the Raft leader",
            registry=self.registry,
            buckets=(0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 30, 60, 120, 300),
        )
        self.instance_actions = Counter(
            "moonwatch_instance_actions_total",
            "App instances started or stopped by this agent",
            ["action"],
            registry=self.registry,
        )

        self.backup_last_success = Gauge(
            "moonwatch_backup_last_success_timestamp_seconds",
            "When the last checked backup of each slot this agent backs up was made (epoch s)",
            ["slot"],
            registry=self.registry,
        )
        self.backup_failures = Counter(
            "moonwatch_backup_failures",
            "Backups of a slot that failed (error, failed check, timeout, full disk)",
            ["slot"],
            registry=self.registry,
        )
        self.backup_duration = Histogram(
            "moonwatch_backup_duration_seconds",
            "Duration of one slot's backup, its check included",
            registry=self.registry,
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
        )
        self.backup_bytes = Gauge(
            "moonwatch_backup_bytes",
            "Size of the last checked backup of each slot",
            ["slot"],
            registry=self.registry,
        )

    def watch_counters(self, name: str, doc: str, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export counters kept elsewhere, by kind, at scrape time (`name` without _total)."""
        self.registry.register(_CountersCollector(name, doc, stats))

    def watch_detector(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the failure detector's counters at scrape time."""
        self.registry.register(_DetectorCollector(stats))
