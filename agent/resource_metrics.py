"""Prometheus families of this server's resource health, read from its status at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

_LEVEL_VALUES = {"ok": 0, "warning": 1, "critical": 2}
_DRAIN_STATES = ("armed", "due", "requested")


class ResourceCollector(Collector):
    """Per resource condition (a fixed set): its level (0 ok, 1 warning, 2 critical) and its
    last value; and where this server stands with draining itself."""

    def __init__(self, status: Callable[[], Mapping[str, object]]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        status = self._status()
        conditions = status.get("conditions")
        level = GaugeMetricFamily(
            "moonwatch_resource_level",
            "This server's resource condition: 0 ok, 1 warning, 2 critical",
            labels=["resource"],
        )
        value = GaugeMetricFamily(
            "moonwatch_resource_value",
            "This server's last sampled value per resource, in its threshold's unit (disk, "
            "memory: % used; fds: % of the open-file limit; steal: % of CPU; load: per CPU)",
            labels=["resource"],
        )
        for name, condition in conditions.items() if isinstance(conditions, Mapping) else ():
            if not isinstance(condition, Mapping):
                continue
            level.add_metric([name], _LEVEL_VALUES.get(str(condition.get("level")), 0))
            sampled = condition.get("value")
            if isinstance(sampled, int | float):
                value.add_metric([name], sampled)
        yield level
        yield value
        drain = status.get("drain")
        state = drain.get("state") if isinstance(drain, Mapping) else None
        family = GaugeMetricFamily(
            "moonwatch_resource_drain",
            "1 for where this server stands with draining itself for lack of resources "
            "(armed: not in this critical episode; due: not committed yet; requested: done)",
            labels=["state"],
        )
        for name in _DRAIN_STATES:
            family.add_metric([name], 1 if state == name else 0)
        yield family
