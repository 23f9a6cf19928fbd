"""DockerDriver against a real dockerd the fixture starts (skipped with the reason where it
cannot), with the app image built from this repository: nothing is pulled from a registry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.clock import SystemClock
from agent.driver_docker import (
    EXIT_NOT_STARTED,
    LABEL_CLUSTER,
    LABEL_SERVER,
    DockerDriver,
    DockerSettings,
    container_name,
)
from agent.instances import InstanceSpec, RestartPolicy
from tests.support import free_port_block
from tests.support_docker import Dockerd

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


# The dockerd is shared by the whole test session: these tests look only at their own cluster.
CLUSTER = "drv"


def ours(client: Any) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_CLUSTER}={CLUSTER}"}))


def settings(dockerd: Dockerd, image: str, server: str = "m1") -> DockerSettings:
    return DockerSettings(
        url=dockerd.url, image=image, cluster=CLUSTER, server=server, health_interval_s=1.0
    )


def spec(tmp_path: Path, epoch: int = 1, port: int | None = None) -> InstanceSpec:
    return InstanceSpec(
        slot="s1",
        epoch=epoch,
        server="m1",
        host="127.0.0.1",
        port=port or free_port_block(1),
        base_domain="localhost",
        tenants=("acme",),
        data_dir=tmp_path / "slot",
        overlap_log=tmp_path / "overlap" / "s1.log",
    )


async def until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def overlap_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def healthy(driver: DockerDriver) -> bool:
    await driver.probe()
    status = driver.instances().get("s1")
    return status is not None and status.healthy


async def test_a_container_serves_only_under_its_lease_hardened_and_health_checked(
    tmp_path: Path, dockerd: Dockerd, image: str, docker_client: Any
) -> None:
    clock = SystemClock()
    driver = DockerDriver(settings(dockerd, image), clock, RestartPolicy(health_interval_s=0.2))
    wanted = spec(tmp_path)
    try:
        await driver.ensure_running(wanted)
        await until(lambda: healthy(driver), 60, "the container reports healthy")
        status = driver.instances()["s1"]
        assert status.running and not status.serving
        async with aiohttp.ClientSession() as http:
            url = f"http://{wanted.address}/"
            async with http.get(url, headers={"Host": "acme.localhost"}) as resp:
                assert resp.status == 503  # no lease yet
            driver.grant_lease("s1", 1, clock.monotonic() + 60.0)

            async def served() -> bool:  # the lease travels on the attach: not at once
                async with http.get(url, headers={"Host": "acme.localhost"}) as resp:
                    return resp.status != 503

            await until(served, 20, "the app serves under its lease")
            async with http.get(f"http://{wanted.address}/healthz") as resp:
                body = await resp.json()
        assert driver.instances()["s1"].serving
        # Host PID namespace: the app's own pid is the one the driver knows.
        assert status.pid is not None and body["pid"] == status.pid > 0

        container = docker_client.containers.get(container_name(settings(dockerd, image), "s1"))
        host = container.attrs["HostConfig"]
        assert container.labels[LABEL_CLUSTER] == CLUSTER and container.labels[LABEL_SERVER] == "m1"
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["NetworkMode"] == "host" and host["RestartPolicy"]["Name"] == "no"
        assert container.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"

        def health() -> str:
            container.reload()
            return str(container.attrs["State"].get("Health", {}).get("Status"))

        async def docker_says_healthy() -> bool:
            return await asyncio.to_thread(health) == "healthy"

        await until(docker_says_healthy, 40, "docker's own health check passes")
    finally:
        await driver.close(timeout_s=5.0)
    assert ours(docker_client) == []
    stops = [r for r in overlap_records(wanted.overlap_log or Path()) if r["event"] == "stop"]
    assert stops and "recorded by the agent" not in stops[-1]["reason"]  # it stopped itself


async def test_a_killed_container_is_restarted_with_backoff_then_given_up(
    tmp_path: Path, dockerd: Dockerd, image: str, docker_client: Any
) -> None:
    policy = RestartPolicy(health_interval_s=0.2, max_restarts=1, first_backoff_s=0.2)
    driver = DockerDriver(settings(dockerd, image), SystemClock(), policy)
    wanted = spec(tmp_path)
    name = container_name(settings(dockerd, image), "s1")
    try:
        for round_ in range(2):
            await driver.ensure_running(wanted)
            await until(lambda: healthy(driver), 60, f"healthy (round {round_})")
            docker_client.containers.get(name).kill()

            async def crashed() -> bool:
                await driver.probe()
                return not driver.instances()["s1"].running

            await until(crashed, 30, "the driver notices the kill")
            status = driver.instances()["s1"]
            assert status.exit_code == 137 and status.exit_reason == "exited with 137"
            await asyncio.sleep(0.5)  # the backoff
        assert driver.instances()["s1"].gave_up
        await driver.ensure_running(wanted)
        assert not driver.instances()["s1"].running  # given up: the cluster replaces it
    finally:
        await driver.close(timeout_s=5.0)
    killed = [r for r in overlap_records(wanted.overlap_log or Path()) if r["event"] == "stop"]
    assert len(killed) == 2 and all("recorded by the agent" in r["reason"] for r in killed)


async def test_a_new_epoch_replaces_the_container_and_a_missing_image_is_a_clear_error(
    tmp_path: Path, dockerd: Dockerd, image: str, docker_client: Any
) -> None:
    driver = DockerDriver(settings(dockerd, image), SystemClock(), RestartPolicy(0, 60, 0.1))
    port = free_port_block(1)
    try:
        await driver.ensure_running(spec(tmp_path, epoch=1, port=port))
        await until(lambda: healthy(driver), 60, "epoch 1 healthy")
        first = driver.instances()["s1"].pid
        await driver.ensure_running(spec(tmp_path, epoch=2, port=port))
        await until(lambda: healthy(driver), 60, "epoch 2 healthy")
        assert driver.instances()["s1"].epoch == 2 and driver.instances()["s1"].pid != first
        assert len(ours(docker_client)) == 1
    finally:
        await driver.close(timeout_s=5.0)

    missing = DockerDriver(
        settings(dockerd, "moonwatch-app:missing"), SystemClock(), RestartPolicy(0, 60, 0.1)
    )
    try:
        await missing.ensure_running(spec(tmp_path))

        async def ended() -> bool:
            await missing.probe()
            return missing.instances()["s1"].gave_up

        await until(ended, 30, "the start fails")
        status = missing.instances()["s1"]
        assert status.exit_code == EXIT_NOT_STARTED
        assert status.exit_reason is not None
        assert "moonwatch-app:missing is not on dockerd" in status.exit_reason
        assert "moonwatch image build" in status.exit_reason
    finally:
        await missing.close(timeout_s=5.0)


AGENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agent.clock import SystemClock
    from agent.driver_docker import DockerDriver, DockerSettings
    from agent.instances import InstanceSpec, RestartPolicy

    async def main():
        url, image, port, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
        clock = SystemClock()
        driver = DockerDriver(DockerSettings(url, image, "drv", "m1"), clock, RestartPolicy())
        spec = InstanceSpec("s1", 1, "m1", "127.0.0.1", port, "localhost", ("acme",),
                            root / "slot", root / "overlap" / "s1.log")
        await driver.ensure_running(spec)
        while True:
            await driver.probe()
            if driver.instances()["s1"].healthy:
                driver.grant_lease("s1", 1, clock.monotonic() + 60.0)
                print("serving", flush=True)
            await asyncio.sleep(0.2)

    asyncio.run(main())
    """
)


def test_when_its_agent_dies_the_container_stops_serving_and_exits(
    tmp_path: Path, dockerd: Dockerd, image: str, docker_client: Any
) -> None:
    port = free_port_block(1)
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, dockerd.url, image, str(port), str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert agent.stdout is not None
        # Its stdout carries its log and the app's too (forwarded from the container).
        for line in agent.stdout:
            if line == b"serving\n":
                break
        else:
            raise AssertionError(f"the agent ended ({agent.wait(10)}) before it served")
        name = container_name(settings(dockerd, image), "s1")
        assert docker_client.containers.get(name).status == "running"
        os.killpg(agent.pid, signal.SIGKILL)  # the server's agent is gone, with no goodbye
        agent.wait(10)
        deadline = time.monotonic() + 30
        while docker_client.containers.get(name).status == "running":
            assert time.monotonic() < deadline, "the container outlived its agent"
            time.sleep(0.2)
        container = docker_client.containers.get(name)
        assert container.attrs["State"]["ExitCode"] == 0
        stops = [
            r for r in overlap_records(tmp_path / "overlap" / "s1.log") if r["event"] == "stop"
        ]
        assert stops and stops[-1]["reason"] == "control_closed"
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(10)
        if agent.stdout is not None:
            agent.stdout.close()
        for container in ours(docker_client):
            container.remove(force=True)


async def test_containers_an_earlier_run_left_behind_are_removed_at_start(
    tmp_path: Path, dockerd: Dockerd, image: str, docker_client: Any
) -> None:
    python = docker_client.images.get(image).attrs["Config"]["Entrypoint"][0]
    labels = {LABEL_CLUSTER: CLUSTER, LABEL_SERVER: "m1"}
    leftover = docker_client.containers.create(
        image, ["-c", "import time; time.sleep(120)"], entrypoint=[python], labels=labels,
        name="moonwatch-drv-m1-old",
    )  # fmt: skip
    other = docker_client.containers.create(
        image, ["-c", "pass"], entrypoint=[python], labels={**labels, LABEL_SERVER: "m2"}
    )
    leftover.start()
    driver = DockerDriver(settings(dockerd, image), SystemClock(), RestartPolicy())
    try:
        await driver.ensure_running(spec(tmp_path))
        await until(lambda: healthy(driver), 60, "healthy")
        names = {c.name for c in ours(docker_client)}
        assert "moonwatch-drv-m1-old" not in names
        assert other.name in names  # another server's container is not ours to remove
    finally:
        await driver.close(timeout_s=5.0)
        other.remove(force=True)
