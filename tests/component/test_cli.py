"""The moonwatch command line: check-config, agent with bad input, up with a taken port, status."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.statusview import render_status
from tests.support import REPO, cluster_config, write_config


def run_cli(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
        check=False,
    )


def test_check_config_accepts_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(REPO / "cluster.yml")]) == 0
    assert capsys.readouterr().out.strip() == "ok"


def test_check_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = cluster_config(tmp_path)
    config["voters"] = ["a1", "a2"]
    config["servers"][1]["colour"] = "red"
    path = write_config(tmp_path / "bad.yml", config)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "servers[1].colour" in err


def test_malformed_config_never_starts_an_agent(tmp_path: Path) -> None:
    config = cluster_config(tmp_path)
    agent_port = config["servers"][0]["agent_port"]
    config["timing"] = {"probe_timeout_s": 5.0, "probe_interval_s": 1.0}
    path = write_config(tmp_path / "bad.yml", config)
    done = run_cli("agent", "--config", str(path), "--server", "a1")
    assert done.returncode == 2
    assert "timing.probe_timeout_s" in done.stderr
    assert done.stdout == ""
    with socket.socket() as probe:  # nothing was bound
        probe.bind(("127.0.0.1", agent_port))


@pytest.mark.parametrize(
    "text",
    ["servers: [\n", "- just a list\n", "cluster: a\ncluster: b\n", ""],
    ids=["broken-yaml", "not-a-mapping", "duplicate-key", "empty"],
)
def test_unreadable_configs_exit_2(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    done = run_cli("agent", "--config", str(path), "--server", "a1")
    assert done.returncode == 2 and str(path) in done.stderr


def test_unknown_server_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yml", cluster_config(tmp_path))
    done = run_cli("agent", "--config", str(path), "--server", "zz")
    assert done.returncode == 2 and "no server 'zz'" in done.stderr


def test_up_refuses_a_taken_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = cluster_config(tmp_path / "data")
    path = write_config(tmp_path / "c.yml", config)
    edge_port = config["servers"][1]["edge_port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", edge_port))
        squatter.listen()
        assert main(["up", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{edge_port} (a2 edge_port) is already in use" in err
    assert not (tmp_path / "data" / "logs").exists()  # nothing was started


def test_status_without_any_agent_fails_clearly(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yml", cluster_config(tmp_path))
    done = run_cli("status", "--config", str(path))
    assert done.returncode == 1 and "no agent answered" in done.stderr


def test_status_rejects_non_http_urls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "file:///etc/passwd"]) == 1
    assert "only http:// and https://" in capsys.readouterr().err


def test_render_status_marks_the_leader() -> None:
    doc = {
        "cluster": "demo",
        "server": "m2",
        "pid": 42,
        "leader": "m1",
        "term": 3,
        "mode": "normal",
        "servers": [
            {"name": "m1", "role": "active", "state": "up", "incarnation": 2, "domain": "a"},
            {"name": "m4", "role": "spare", "state": "up", "incarnation": 1, "domain": "b"},
        ],
        "slots": [
            {"name": "s1", "owner": "m1", "state": "serving", "epoch": 1, "tenants": ["x", "y"]}
        ],
        "stops": [],
    }
    text = render_status("http://127.0.0.1:7102", doc)
    assert "leader m1" in text and "term 3" in text
    lines = text.splitlines()
    assert any(line.startswith("* m1") for line in lines)
    assert any(line.startswith("  m4") for line in lines)
    assert any(line.split()[:3] == ["s1", "m1", "serving"] for line in lines)
    json.dumps(doc)  # the document is plain JSON


def test_demo_config_matches_the_readme_promise() -> None:
    raw = yaml.safe_load((REPO / "cluster.yml").read_text())
    roles = [s["role"] for s in raw["servers"]]
    assert roles.count("active") == 3 and roles.count("spare") == 2
    assert len(raw["voters"]) == 3 and raw["base_domain"] == "localhost"
    assert [s["name"] for s in raw["slots"]] == ["s1", "s2", "s3"]
    assert all(len(s["tenants"]) >= 2 for s in raw["slots"])
