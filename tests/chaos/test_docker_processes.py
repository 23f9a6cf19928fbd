"""Real agents whose app instances are containers on a real dockerd: the SIGKILL of a slot's
owner (its agent's whole process group; its container is not in it) moves the slot to a
spare's container, the dead owner's container stops serving and exits on its own, and no two
instances ever served the slot at once (the overlap checker)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.docker_client import open_docker
from agent.driver_docker import LABEL_CLUSTER, LABEL_SERVER
from tests.chaos.test_replacement_processes import Harness, running, served_by_other
from tests.support import cluster_config, wait_until, write_config
from tests.support_docker import Dockerd

pytestmark = [pytest.mark.processes, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
async def docker_harness(tmp_path: Path, dockerd: Dockerd, image: str) -> AsyncIterator[Harness]:
    config = cluster_config(
        tmp_path / "data", actives=3, spares=1, voters=3, cascade={"min_verdicts": 10}
    )
    config["app"] = {"driver": "docker", "docker": {"url": dockerd.url, "image": image}}
    try:
        async with running(write_config(tmp_path / "cluster.yml", config), 90, 15) as h:
            yield h
    finally:
        remove_containers(dockerd, "test")  # the killed agent could not remove its own


def remove_containers(daemon: Dockerd, cluster: str) -> None:
    client = open_docker(daemon.url, 30)
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_CLUSTER}={cluster}"}
        ):
            container.remove(force=True)
    finally:
        client.close()


def containers_of(client: Any, server: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_SERVER}={server}"}))


async def test_sigkill_of_an_owner_moves_its_slot_to_a_spare_container(
    docker_harness: Harness, docker_client: Any
) -> None:
    h = docker_harness
    assert {c.labels[LABEL_SERVER] for c in docker_client.containers.list()} == {"a1", "a2", "a3"}
    leader = await h.leader()
    victim = next(n for n in ("a1", "a2", "a3") if n != leader)
    slot = (await h.status())["slots"][int(victim[1]) - 1]
    tenant = slot["tenants"][0]
    h.cluster.kill(victim, signal.SIGKILL)

    await wait_until(lambda: served_by_other(h, tenant, victim, leader), 60)
    moved = await h.slot(slot["name"])
    assert moved["owner"] == "p1" and moved["state"] == "serving"
    running = [c for c in containers_of(docker_client, "p1") if c.status == "running"]
    assert len(running) == 1

    async def victims_container_gone() -> bool:
        # With its agent gone its stdin closed: it stopped serving and exited by itself.
        return all(c.status != "running" for c in containers_of(docker_client, victim))

    await wait_until(victims_container_gone, 30)
