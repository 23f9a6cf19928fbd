"""The Prometheus files under scripts/prometheus: promtool accepts them, the alert rules pass
their unit tests, and every moonwatch metric the rules use is served by a real agent."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.config import parse_config
from agent.loop import bootstrap_command
from agent.wiring import build_agent
from consensus.commands import StopTenant
from consensus.memory import MemoryConsensus, MemoryLog
from tests.component.test_stops_api import WALL, FrozenClock, IdleDriver
from tests.support import cluster_config

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "scripts" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "scripts" / "prometheus" / "alerts_test.yml"
SCRAPE_CONFIG = ROOT / "scripts" / "prometheus" / "prometheus.yml"
PROMTOOL = shutil.which("promtool")
# Every series a family of each type adds to its name in the text format.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def promtool(*args: str) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_alert_rules_are_valid() -> None:
    promtool("check", "rules", str(RULES))


@needs_promtool
def test_the_alert_rules_pass_their_unit_tests() -> None:
    promtool("test", "rules", str(RULE_TESTS))


@needs_promtool
def test_the_example_scrape_config_is_valid() -> None:
    promtool("check", "config", str(SCRAPE_CONFIG))


def test_every_alert_has_a_duration_a_severity_and_annotations() -> None:
    rules = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    assert {rule["alert"] for rule in rules} == {
        "MoonwatchAgentDown",
        "MoonwatchServerFailed",
        "MoonwatchReplacementStuck",
        "MoonwatchCascadeMode",
        "MoonwatchNoQuorum",
        "MoonwatchSparesLow",
        "MoonwatchSubdomainStopped",
        "MoonwatchBackupFailed",
    }
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def metric_names_in_rules() -> set[str]:
    exprs = [
        str(rule["expr"])
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    ]
    return {name for expr in exprs for name in re.findall(r"\bmoonwatch_[a-z0-9_]+", expr)}


@pytest.fixture
async def metrics_text(tmp_path: Path) -> AsyncIterator[str]:
    """GET /metrics of one agent built as in production, over in-memory consensus, with one
    tenant stopped (so the per-tenant gauge has a sample)."""
    raw = cluster_config(tmp_path / "data")
    raw["slots"][0]["tenants"] = ["acme", "globex"]
    config = parse_config(raw, tmp_path, {})
    clock = FrozenClock()
    log = MemoryLog(voters=config.voters)
    consensus = MemoryConsensus(log, "a1", clock)
    await consensus.start()
    log.elect("a1")
    assert (await consensus.submit(bootstrap_command(config, WALL - 60.0), 1.0)).ok
    stop = StopTenant(
        id="stop:acme",
        at=WALL - 5.0,
        subdomain="acme",
        until=WALL + 25.0,
        reason="over its rps limit for 1.0 s",
        offence=1,
    )
    assert (await consensus.submit(stop, 1.0)).ok
    parts = build_agent(config, "a1", clock, consensus=consensus, driver=IdleDriver())
    runner = web.AppRunner(parts.api)
    await runner.setup()
    await web.TCPSite(runner, parts.host, parts.agent_port).start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(config.server("a1").agent_url + "/metrics") as resp,
        ):
            assert resp.status == 200
            yield await resp.text()
    finally:
        await runner.cleanup()
        await consensus.stop()


def exported_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def test_every_moonwatch_metric_in_the_rules_is_exported(metrics_text: str) -> None:
    used = metric_names_in_rules()
    assert len(used) >= 8
    assert used - exported_names(metrics_text) == set()


async def test_the_state_metrics_name_servers_slots_and_stopped_tenants(metrics_text: str) -> None:
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("moonwatch_server_state", server="a2", state="new") == 1.0
    assert value("moonwatch_server_state", server="a2", state="failed") == 0.0
    assert value("moonwatch_slot_state", slot="s1", state="assigned") == 1.0
    assert value("moonwatch_slot_state", slot="s1", state="serving") == 0.0
    assert value("moonwatch_tenant_stopped", tenant="acme", slot="s1") == 1.0
    assert value("moonwatch_tenant_stopped", tenant="globex", slot="s1") is None
    assert value("moonwatch_spares_available") == 0.0
    assert value("moonwatch_backup_failures_total", slot="s2") == 0.0
    assert value("moonwatch_edge_requests_total", slot="s3", code_class="5xx") == 0.0
