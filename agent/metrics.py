"""Prometheus metrics of one agent, read from its snapshot at scrape time (own registry)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent.resource_metrics import ResourceCollector
from consensus.protocol import Snapshot
from consensus.state import ServerState, SlotState

# Inputs the agent refused, by where they came from and why: fixed label values only.
InputSource = Literal["http"]
HttpRejectReason = Literal[
    "malformed",
    "unauthorized",
    "forbidden",
    "not_found",
    "bad_method",
    "conflict",
    "too_large",
    "other",
]
REJECT_REASONS: Final[dict[InputSource, tuple[str, ...]]] = {
    "http": get_args(HttpRejectReason),
}
_HTTP_REASON_OF: Final[dict[int, HttpRejectReason]] = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "bad_method",
    409: "conflict",
    413: "too_large",
}


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
        yield from _per_name(snap)
        yield GaugeMetricFamily(
            "moonwatch_raft_voters", "Raft voters as committed", value=len(snap.state.voters)
        )
        yield GaugeMetricFamily(
            "moonwatch_raft_voter_change",
            "1 while a failed Raft voter is being replaced",
            value=snap.state.voter_change is not None,
        )


def _per_name(snap: Snapshot) -> Iterable[Metric]:
    """Per server, slot and stopped tenant: every name comes from the configuration."""
    state = snap.state
    server_state = GaugeMetricFamily(
        "moonwatch_server_state",
        "1 for each server's committed state, 0 for the others",
        labels=["server", "state"],
    )
    for server in state.servers:
        for name in get_args(ServerState):
            server_state.add_metric([server.name, name], 1 if server.state == name else 0)
    yield server_state
    slot_state = GaugeMetricFamily(
        "moonwatch_slot_state",
        "1 for each slot's committed state (serving: its owner serves it), 0 for the others",
        labels=["slot", "state"],
    )
    for slot in state.slots:
        for name in get_args(SlotState):
            slot_state.add_metric([slot.name, name], 1 if slot.state == name else 0)
    yield slot_state
    yield GaugeMetricFamily(
        "moonwatch_spares_available",
        "Spare servers that are up and own no slot (what a replacement can use)",
        value=len(state.free_spares()),
    )
    tenant_slots = {tenant: slot.name for slot in state.slots for tenant in slot.tenants}
    stopped = GaugeMetricFamily(
        "moonwatch_tenant_stopped",
        "1 while a tenant listed in a slot is stopped at every edge (committed)",
        labels=["tenant", "slot"],
    )
    for stop in state.stops:
        slot_name = tenant_slots.get(stop.subdomain)
        if slot_name is not None:  # a stop of a name no slot lists would be unbounded
            stopped.add_metric([stop.subdomain, slot_name], 1)
    yield stopped


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
        self.vip_errors = Counter(
            "moonwatch_vip_errors_total",
            "Claims or releases of a slot's virtual IP that failed (each is retried)",
            ["slot"],
            registry=self.registry,
        )

        self.rejected_inputs = Counter(
            "moonwatch_rejected_inputs_total",
            "Inputs this agent refused, by source and reason (probe datagrams: "
            "moonwatch_detector_events; traffic reports: moonwatch_traffic_reports)",
            ["source", "reason"],
            registry=self.registry,
        )
        for source, reasons in REJECT_REASONS.items():
            for reason in reasons:
                self.rejected_inputs.labels(source, reason)
        self._healing_metrics()
        self._backup_metrics()

    def _healing_metrics(self) -> None:
        self.verdicts = Counter(
            "moonwatch_verdicts_total",
            "Servers this agent, as the Raft leader, committed as failed",
            ["server"],
            registry=self.registry,
        )
        self.assignments = Counter(
            "moonwatch_assignments_total",
            "Slots this agent, as the Raft leader, committed to a new owner (replacements)",
            ["slot"],
            registry=self.registry,
        )
        self.commit_latency = Histogram(
            "moonwatch_raft_commit_seconds",
            "Submit to commit of the decision loop's commands (committed ones only)",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.leader_changes = Counter(
            "moonwatch_raft_leader_changes_total",
            "Times this agent saw the Raft leader become another server than the last it knew",
            registry=self.registry,
        )
        self.probe_rtt = Histogram(
            "moonwatch_probe_rtt_seconds",
            "Round trip of acknowledged direct failure-detector probes, by probed server",
            ["peer"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
        )
        self.edge_requests = Counter(
            "moonwatch_edge_requests_total",
            "Answers of this edge to tenants' requests, by slot and status class",
            ["slot", "code_class"],
            registry=self.registry,
        )

    def _backup_metrics(self) -> None:
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

    def start_at_zero(self, slots: Iterable[str]) -> None:
        """Export the per-slot counters at 0 from the start, so the first increase shows."""
        for slot in slots:
            self.backup_failures.labels(slot)
            self.assignments.labels(slot)
            for code in ("2xx", "3xx", "4xx", "5xx"):
                self.edge_requests.labels(slot, code)

    def rejected_input(self, source: InputSource, reason: HttpRejectReason) -> None:
        """Count one refused input (the reason must be one of REJECT_REASONS[source])."""
        self.rejected_inputs.labels(source, reason).inc()

    def edge_response(self, slot: str, status: int) -> None:
        """Count one answer of the edge for a tenant of `slot` by its status class."""
        self.edge_requests.labels(slot, code_class(status)).inc()

    def probe_round_trip(self, peer: str, rtt_s: float) -> None:
        """Observe the round trip of a direct probe of `peer` that was acknowledged."""
        self.probe_rtt.labels(peer).observe(rtt_s)

    def watch_counters(self, name: str, doc: str, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export counters kept elsewhere, by kind, at scrape time (`name` without _total)."""
        self.registry.register(_CountersCollector(name, doc, stats))

    def watch_detector(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the failure detector's counters at scrape time."""
        self.registry.register(_DetectorCollector(stats))

    def watch_resources(self, status: Callable[[], Mapping[str, object]]) -> None:
        """Export this server's resource levels (the `resources` block of /v1/status)."""
        self.registry.register(ResourceCollector(status))

    def watch_mqtt(self, status: Callable[[], Mapping[str, object]]) -> None:
        """Export the events connection's state (the `mqtt` block of /v1/status) at scrape."""
        self.registry.register(_MqttCollector(status))


def http_reject_reason(status: int) -> HttpRejectReason:
    """The reason label of a refused HTTP request, from its 4xx status."""
    return _HTTP_REASON_OF.get(status, "other")


def code_class(status: int) -> str:
    """`2xx` for 200..299 and so on; anything outside 100..599 counts as a server error."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "5xx"


class _MqttCollector(Collector):
    """The MQTT events connection: connected, events waiting for the broker, events dropped."""

    def __init__(self, status: Callable[[], Mapping[str, object]]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        status = self._status()
        buffered, dropped = status.get("buffered"), status.get("dropped")
        yield GaugeMetricFamily(
            "moonwatch_mqtt_connected",
            "1 while the events connection to the MQTT broker is up",
            value=1 if status.get("connected") else 0,
        )
        yield GaugeMetricFamily(
            "moonwatch_mqtt_events_buffered",
            "Events waiting for the MQTT broker (bounded; the oldest are dropped when full)",
            value=buffered if isinstance(buffered, int) else 0,
        )
        yield CounterMetricFamily(
            "moonwatch_mqtt_events_dropped",
            "Events dropped because the buffer was full while the broker was away",
            value=dropped if isinstance(dropped, int) else 0,
        )
        rejected = status.get("rejected_cursors")
        yield CounterMetricFamily(
            "moonwatch_mqtt_rejected_cursors",
            "Retained event cursors on the broker that were malformed and ignored",
            value=rejected if isinstance(rejected, int) else 0,
        )
