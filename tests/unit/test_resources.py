"""Resource health: levels with hysteresis, one self-drain per critical episode, its config,
its command and decision, its events and metrics."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from agent.config import ConfigError, parse_config
from agent.config_resources import Resource, ResourcesConfig, Thresholds
from agent.events import resource_event
from agent.explain import explain
from agent.metrics import AgentMetrics
from agent.resource_levels import Change, Health, Sample, evaluate, level_for
from consensus.commands import DrainServer, decode_command, encode_command
from consensus.machine import apply
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState
from tests.support import cluster_config
from tests.unit.test_drain import STATE

LIMITS = ResourcesConfig().thresholds()
DISK = Thresholds(warning=85.0, critical=95.0, hysteresis=2.0)


@pytest.mark.parametrize(
    ("value", "before", "after"),
    [
        (50.0, "ok", "ok"),
        (85.0, "ok", "warning"),
        (95.0, "ok", "critical"),
        (99.0, "warning", "critical"),
        (94.9, "ok", "warning"),
        (93.5, "critical", "critical"),  # within the hysteresis: stays
        (93.0, "critical", "warning"),  # 2 below critical: leaves
        (83.5, "warning", "warning"),
        (83.0, "warning", "ok"),
        (80.0, "critical", "ok"),
        (None, "critical", "critical"),  # unmeasured: keeps its level
        (None, "ok", "ok"),
    ],
)
def test_level_for_enters_at_the_threshold_and_leaves_below_the_hysteresis(
    value: float | None, before: str, after: str
) -> None:
    assert level_for(value, DISK, before) == after  # type: ignore[arg-type]


def test_a_value_hovering_at_the_threshold_does_not_flap() -> None:
    health, changes = Health(), list[Change]()
    for i, value in enumerate([94.0, 95.0, 94.5, 95.2, 93.8, 95.0, 94.1]):
        result = evaluate({"disk": Sample(value)}, LIMITS, health, float(i), ["disk"], 60.0)
        health, changes = result.health, [*changes, *result.changes]
    assert [(c.before, c.after) for c in changes] == [("ok", "warning"), ("warning", "critical")]


def _rounds(
    values: list[float], drain_after_s: float = 10.0, step_s: float = 5.0
) -> list[tuple[str, bool]]:
    """Per round: the drain state and whether a drain was asked for."""
    health, seen = Health(), list[tuple[str, bool]]()
    for i, value in enumerate(values):
        samples: Mapping[Resource, Sample] = {"disk": Sample(value, "1.0 GiB free at /data")}
        result = evaluate(samples, LIMITS, health, i * step_s, ["disk", "memory"], drain_after_s)
        health = result.health
        if result.drain is not None:
            health = health.requested()  # the shell commits it
        seen.append((result.health.drain, result.drain is not None))
    return seen


def test_a_drain_is_due_once_critical_has_lasted_drain_after_s() -> None:
    assert _rounds([99.0, 99.0, 99.0, 99.0]) == [
        ("armed", False),
        ("armed", False),
        ("due", True),  # 10 s at critical
        ("requested", False),  # not again while critical lasts
    ]


def test_a_short_spike_does_not_drain() -> None:
    assert all(not asked for _, asked in _rounds([99.0, 99.0, 50.0, 99.0, 50.0]))


def test_the_drain_is_rearmed_only_when_critical_ends() -> None:
    rounds = _rounds([99.0, 99.0, 99.0, 94.0, 92.0, 99.0, 99.0, 99.0])
    assert [asked for _, asked in rounds] == [False, False, True, False, False, False, False, True]
    assert rounds[3][0] == "requested"  # 94 is still critical (hysteresis)
    assert rounds[4][0] == "armed"


def test_a_due_drain_is_asked_for_until_committed_with_the_reason() -> None:
    health = Health()
    for now in (0.0, 10.0, 15.0):
        result = evaluate(
            {"memory": Sample(98.5, "300 MiB available of 16000 MiB")},
            LIMITS,
            health,
            now,
            ["disk", "memory"],
            10.0,
        )
        health = result.health
    assert result.drain is not None
    assert result.drain.reason.startswith("this server cannot keep serving safely: memory 98.5")
    assert "300 MiB available" in result.drain.reason
    evidence = result.drain.evidence["resources"]["memory"]
    assert evidence["level"] == "critical" and evidence["critical"] == 97.0
    json.dumps(result.drain.evidence, allow_nan=False)


def test_conditions_not_in_drain_on_never_drain() -> None:
    health = Health()
    for now in range(0, 100, 5):
        result = evaluate(
            {"load": Sample(50.0), "steal": Sample(80.0), "fds": Sample(99.0)},
            LIMITS,
            health,
            float(now),
            ["disk", "memory"],
            0.0,
        )
        health = result.health
        assert result.drain is None
    assert {r: c.level for r, c in health.conditions.items()} == {
        "disk": "ok",
        "memory": "ok",
        "fds": "critical",
        "steal": "critical",
        "load": "critical",
    }


def test_config_defaults_and_relative_disk_path(tmp_path: Path) -> None:
    data = cluster_config(tmp_path / "data")
    config = parse_config(data, tmp_path, {})
    assert config.resources == ResourcesConfig()
    assert config.disk_path == (tmp_path / "data").resolve()
    data["resources"] = {"disk_path": "mnt/full", "disk": {"warning": 50, "critical": 60}}
    config = parse_config(data, tmp_path, {})
    assert config.disk_path == (tmp_path / "mnt" / "full").resolve()
    assert config.resources.disk.hysteresis == 0.0
    elsewhere = parse_config(data, tmp_path / "x", {})
    assert elsewhere.digest() == config.digest()  # a local path is not shared config


@pytest.mark.parametrize(
    ("block", "error"),
    [
        ({"disks": {}}, "resources.disks: unknown key"),
        ({"disk": {"warning": 1, "critical": 2, "x": 1}}, "resources.disk.x: unknown key"),
        ({"disk": {"warning": 90, "critical": 80}}, "resources.disk.critical: must be at least"),
        ({"load": {"warning": 1, "critical": 2, "hysteresis": 1}}, "resources.load.hysteresis"),
        ({"memory": {"warning": 90, "critical": 120}}, "resources.memory.critical"),
        ({"timeout_s": 5.0}, "resources.timeout_s: must be below interval_s"),
        ({"drain_on": ["steal"]}, "resources.drain_on[0]"),
        ({"drain_on": ["disk", "disk"]}, "resources.drain_on: lists disk more than once"),
        ({"enabled": "yes"}, "resources.enabled"),
    ],
)
def test_bad_resources_blocks_name_the_key(
    tmp_path: Path, block: dict[str, Any], error: str
) -> None:
    data = cluster_config(tmp_path / "data")
    data["resources"] = block
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path, {})
    assert any(line.startswith(error) for line in caught.value.errors), caught.value.errors


def test_an_old_drain_entry_still_decodes_as_an_operator_drain() -> None:
    old = '{"at":10.0,"id":"d1","kind":"drain_server","reason":"x","server":"m1","version":1}'
    command = decode_command(old)
    assert isinstance(command, DrainServer)
    assert command.operator is True and command.evidence == {}


def test_a_self_drain_is_explained_with_its_reason() -> None:
    evidence = {"resources": {"disk": {"level": "critical", "value": 99.0}}}
    drain = DrainServer(
        id="self-drain:m1:1",
        at=10.0,
        server="m1",
        reason="this server cannot keep serving safely: disk 99.0 % used",
        operator=False,
        evidence=evidence,
    )
    assert decode_command(encode_command(drain)) == drain
    decision = apply(STATE, drain).decisions[-1]
    assert decision.kind == "server_draining"
    assert decision.evidence["operator"] is False
    assert decision.evidence["resources"] == evidence["resources"]
    words = explain(decision)
    assert words.startswith("m1 drained itself: this server cannot keep serving safely: disk")
    assert "until an operator returns it" in words


def test_resource_events_are_past_tense_and_unique_per_resource() -> None:
    evidence = {"resource": "disk", "from": "ok", "to": "critical", "value": 99.0, "unit": "%"}
    event = resource_event("m1", "demo", 12.5, True, {**evidence, "detail": "1 GiB free"})
    assert event["kind"] == "resource_degraded" and event["subject"] == "m1"
    assert event["id"] == "m1:disk:12500"
    assert "from ok to critical" in event["summary"] and event["summary"].endswith("free.")
    back = resource_event("m1", "demo", 13.0, False, {**evidence, "resource": "memory"})
    assert back["kind"] == "resource_recovered" and back["id"] != event["id"]


def test_metrics_export_each_level_and_value() -> None:
    snap = Snapshot(ClusterState(), RaftStatus("m1", True))
    metrics = AgentMetrics(lambda: snap)
    status = {
        "conditions": {"disk": {"level": "critical", "value": 99.5}, "load": {"level": "ok"}},
        "drain": {"state": "requested"},
    }
    metrics.watch_resources(lambda: status)
    text = generate_latest(metrics.registry).decode()
    assert 'moonwatch_resource_level{resource="disk"} 2.0' in text
    assert 'moonwatch_resource_level{resource="load"} 0.0' in text
    assert 'moonwatch_resource_value{resource="disk"} 99.5' in text
    assert 'moonwatch_resource_drain{state="requested"} 1.0' in text
