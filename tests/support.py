"""Shared test support: free loopback ports, generated cluster configs, bounded waiting,
a throwaway Mosquitto broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.broker_auth import write_broker_auth
from agent.driver import InstanceSpec, InstanceStatus

REPO = Path(__file__).resolve().parents[1]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int) -> int:
    """The first port of `size` consecutive free loopback ports (outside the ephemeral range)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - size)
        if all(_bindable(base + i) for i in range(size)):
            return base
    raise RuntimeError("no free block of loopback ports")


def cluster_config(
    data_dir: Path,
    *,
    actives: int = 3,
    spares: int = 0,
    voters: int = 3,
    tenants_per_slot: int = 2,
    timing: dict[str, float] | None = None,
    cascade: dict[str, float] | None = None,
    throttle: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A valid config dict: servers a1.. (active) then p1.. (spare), one slot per active.
    Tenant limits are far above what a test client sends unless `throttle` says otherwise."""
    names = [f"a{i + 1}" for i in range(actives)] + [f"p{i + 1}" for i in range(spares)]
    per_server = 3 + actives  # agent, raft, edge, one app port per slot
    base = free_port_block(per_server * len(names))
    servers = []
    for i, name in enumerate(names):
        first = base + i * per_server
        servers.append(
            {
                "name": name,
                "host": "127.0.0.1",
                "agent_port": first,
                "raft_port": first + 1,
                "edge_port": first + 2,
                "app_port": first + 3,
                "role": "active" if name.startswith("a") else "spare",
                "domain": f"rack-{i % 3}",
            }
        )
    slots = [
        {
            "name": f"s{i + 1}",
            "owner": f"a{i + 1}",
            "tenants": [f"t{i + 1}x{j + 1}" for j in range(tenants_per_slot)],
        }
        for i in range(actives)
    ]
    return {
        "cluster": "test",
        "base_domain": "localhost",
        "data_dir": str(data_dir),
        "secrets": {"raft_password": "test-raft-password", "api_token": "test-api-token"},
        "servers": servers,
        "voters": names[:voters],
        "slots": slots,
        "timing": {"shutdown_timeout_s": 5.0, **(timing or {})},
        **({"cascade": cascade} if cascade else {}),
        "throttle": throttle or {"limits": {"rps": 100000.0, "share": None, "concurrent": 10000}},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def wait_until(
    predicate: Callable[[], Awaitable[Any]], timeout_s: float, interval_s: float = 0.05
) -> Any:
    """Poll an async predicate until it returns a truthy value; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last value: {last!r})")


_broker_starts = itertools.count(1)


def mosquitto_binary() -> str | None:
    """The mosquitto executable (Debian puts it in /usr/sbin), or None."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("mosquitto", path=search)


MQTT_USER = "moonwatch"
MQTT_PASSWORD = "test-mqtt-password"


@contextlib.asynccontextmanager
async def mosquitto_broker(
    tmp_path: Path,
    port: int | None = None,
    login: tuple[str, str] | None = None,
    topic_prefix: str = "moonwatch",
) -> AsyncIterator[int]:
    """A mosquitto listening on 127.0.0.1:`port` (default: a free port), yielding the port once
    it accepts connections; on exit that one process is SIGKILLed and reaped. Enter again with
    the same port to restart a broker. Skips the test when mosquitto is not installed.
    With `login` (user, password) anonymous access is off and that user may use
    `topic_prefix`/# only (a password file and an ACL, as `moonwatch up` writes them)."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port = port if port is not None else free_port_block(1)
    start = next(_broker_starts)
    conf = tmp_path / f"mosquitto-{port}-{start}.conf"
    log_path = tmp_path / f"mosquitto-{port}-{start}.log"
    # Run as root, mosquitto reads these files as its own user: keep them out of tmp_path,
    # which only root may enter.
    auth_dir = Path(tempfile.mkdtemp(prefix="moonwatch-broker-")) if login else None
    access = "allow_anonymous true\n"
    if auth_dir is not None and login is not None:
        auth_dir.chmod(0o711)
        access = "\n".join(write_broker_auth(auth_dir, *login, topic_prefix).config_lines()) + "\n"
    conf.write_text(
        f"listener {port} 127.0.0.1\n{access}persistence false\n"
        "log_dest stderr\nlog_type all\nconnection_messages true\n"
    )
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await _wait_accepting(port, process, log_path, timeout_s=5.0)
        yield port
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), 5.0)
        if auth_dir is not None:
            shutil.rmtree(auth_dir, ignore_errors=True)


async def _wait_accepting(
    port: int, process: asyncio.subprocess.Process, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.returncode is not None:
            break
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise AssertionError(f"mosquitto on port {port} did not accept connections:\n{_tail(log_path)}")


def _tail(path: Path, size: int = 2000) -> str:
    return path.read_text(errors="replace")[-size:]


class StaticDriver:
    """A ServerDriver that starts and stops nothing and reports a fixed set of instances
    (none by default): for agents built in process whose decision loop does not run apps."""

    def __init__(self, instances: Mapping[str, InstanceStatus] | None = None) -> None:
        self.running: dict[str, InstanceStatus] = dict(instances or {})

    async def ensure_running(self, spec: InstanceSpec) -> None:
        return None

    async def stop(self, slot: str, timeout_s: float) -> None:
        return None

    def grant_lease(self, slot: str, epoch: int, until: float) -> None:
        return None

    async def probe(self) -> None:
        return None

    def instances(self) -> Mapping[str, InstanceStatus]:
        return dict(self.running)

    async def close(self, timeout_s: float) -> None:
        return None
