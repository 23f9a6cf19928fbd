"""The systemd unit (systemd-analyze verify, its keys) and a real agent's sd_notify messages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.config import load_config
from agent.config_policy import TimingConfig
from agent.daemon import EXIT_OK, EXIT_USAGE
from agent.heartbeat import JOINING_STATUS
from agent.launcher import LocalCluster
from tests.support import REPO, cluster_config, wait_until, write_config

UNIT = REPO / "scripts" / "systemd" / "moonwatch-agent.service"
INSTALL = REPO / "scripts" / "install.sh"
EXEC_START = (
    "/opt/moonwatch/venv/bin/moonwatch agent --config /etc/moonwatch/cluster.yml --server %H"
)


def unit_keys(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values, in order (a key may repeat), of a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify insists that ExecStart's binary exists: point a copy at this interpreter.
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START}\n" in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(EXEC_START, f"{sys.executable} -m agent agent --server %H"))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown keys and bad values are only warnings (exit 0): no line may name our unit.
    about_us = [line for line in done.stderr.splitlines() if UNIT.name in line]
    assert done.returncode == 0, done.stderr
    assert about_us == [], done.stderr


def test_unit_keys() -> None:
    keys = unit_keys(UNIT.read_text())
    service = {key: values[-1] for key, values in keys["Service"].items()}
    assert keys["Service"]["ExecStart"] == [EXEC_START]
    assert keys["Install"]["WantedBy"] == ["multi-user.target"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "10",
        "Restart": "on-failure",
        "RestartSec": "2",
        "RestartPreventExitStatus": str(EXIT_USAGE),
        "KillMode": "mixed",
        "User": "moonwatch",
        "StateDirectory": "moonwatch",
        "ReadWritePaths": "/var/lib/moonwatch",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        "CapabilityBoundingSet": "CAP_NET_ADMIN CAP_NET_RAW",
        "AmbientCapabilities": "CAP_NET_ADMIN CAP_NET_RAW",
    }
    assert {key: service.get(key) for key in expected} == expected
    # systemd must give the agent's own bounded shutdown time before it SIGKILLs the rest.
    assert float(service["TimeoutStopSec"]) > TimingConfig().shutdown_timeout_s + 5
    assert int(service["LimitNOFILE"]) >= 4096


def test_install_script_dry_run_changes_nothing(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        linted = subprocess.run(
            [shellcheck, str(INSTALL)], capture_output=True, text=True, timeout=60, check=False
        )
        assert linted.returncode == 0, linted.stdout
    done = subprocess.run(
        ["bash", str(INSTALL), "--dry-run", "--python", sys.executable],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"/etc/systemd/system/{UNIT.name}" in done.stdout
    assert "pip install" in done.stdout
    assert "Next steps:" in done.stdout


# ---------------------------------------------------------------- a real agent under "systemd"


class NotifyListener:
    """The service manager's end: a datagram socket the agent's $NOTIFY_SOCKET names."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.messages.append(data.decode())

    def fields(self) -> list[str]:
        return [field for message in self.messages for field in message.split("\n")]


@pytest.fixture
async def listener() -> AsyncIterator[NotifyListener]:
    with tempfile.TemporaryDirectory(prefix="mw-") as directory:  # a short socket path
        listening = NotifyListener(str(Path(directory) / "notify"))
        task = asyncio.create_task(listening.run())
        try:
            yield listening
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            listening.sock.close()


@pytest.mark.processes
@pytest.mark.timeout(120)
async def test_agent_tells_systemd_ready_alive_and_stopping(
    tmp_path: Path, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "cluster.yml", cluster_config(tmp_path / "data"))
    cluster = LocalCluster(path, load_config(path), SystemClock())
    try:
        # a1 runs as systemd would start it; alone it cannot join (no majority, no leader).
        with monkeypatch.context() as env:
            env.setenv("NOTIFY_SOCKET", listener.path)
            env.setenv("WATCHDOG_USEC", "2000000")
            env.delenv("WATCHDOG_PID", raising=False)
            cluster.log_dir.mkdir(parents=True, exist_ok=True)
            agent = (await cluster.start_server("a1")).process

        async def said(field: str) -> bool:
            return field in listener.fields()

        await wait_until(lambda: said(f"STATUS={JOINING_STATUS}"), 30)
        assert "READY=1" not in listener.fields()
        await cluster.start(["a2", "a3"])

        await wait_until(lambda: said("READY=1"), 30)
        ready = await cluster.get_json("a1", "/readyz")
        assert ready is not None and ready[0] == 200, ready
        assert listener.fields().index("READY=1") > listener.fields().index(
            f"STATUS={JOINING_STATUS}"
        )

        async def pings() -> bool:
            return listener.fields().count("WATCHDOG=1") >= 3

        await wait_until(pings, 10)
        statuses = [f for f in listener.fields() if f.startswith("STATUS=")]
        assert len(statuses) >= 2 and all(len(s) > len("STATUS=") for s in statuses)

        os.kill(agent.pid, signal.SIGTERM)  # what KillMode=mixed does: the agent alone
        await wait_until(lambda: said("STOPPING=1"), 10)
        assert await cluster.wait_exit("a1", 20) == EXIT_OK
        after = listener.fields()[listener.fields().index("STOPPING=1") :]
        assert "WATCHDOG=1" not in after
    finally:
        await cluster.stop(timeout_s=10.0)
