"""Real processes: a message posted through the edge before its slot's owner dies is readable
through the edge after a spare took the slot over (the spare opens the same slot data: the
SQLite file of the shared data directory, or the slot's PostgreSQL database)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.cli import main as moonwatch
from tests.chaos.test_replacement_processes import (
    Harness,
    app_children,
    five_servers,
    harness,
    running,
    served_by_other,
)
from tests.support import wait_until, write_config
from tests.support_pg import PostgresServer, pg_server

pytestmark = [pytest.mark.processes, pytest.mark.timeout(150)]
__all__ = ["harness", "pg_server"]  # fixtures, imported for pytest

PASSWORD = "correct horse battery staple"


class Client:
    """A signed-in person of one tenant, talking to the API through one edge or another."""

    def __init__(self, h: Harness, tenant: str) -> None:
        self.h = h
        self.host = f"{tenant}.localhost"
        self.cookie = ""

    async def call(self, method: str, path: str, via: str, body: Any = None) -> tuple[int, Any]:
        url = self.h.cluster.config.server(via).edge_url + "/api/v1" + path
        headers = {"Host": self.host, "Origin": f"http://{self.host}"}
        if self.cookie:
            headers["Cookie"] = f"mw_session={self.cookie}"
        try:
            async with self.h.http.request(method, url, json=body, headers=headers) as resp:
                if "mw_session" in resp.cookies:
                    self.cookie = resp.cookies["mw_session"].value
                text = await resp.text()
                return resp.status, json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError):
            return 0, None


def provision(h: Harness, tenant: str, slot: str) -> str:
    """The owner's setup token, as `moonwatch tenant create` gets it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.admin",
            "tenant-create",
            "--data-dir",
            str(h.cluster.config.data_dir / "slots" / slot),
            "--name",
            tenant,
            "--admin-email",
            "owner@example.test",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return str(json.loads(done.stdout.strip().splitlines()[-1])["setup_token"])


@pytest.fixture
async def pg_harness(
    tmp_path: Path, pg_server: PostgresServer
) -> AsyncIterator[tuple[Harness, Path]]:
    """The five-server cluster with every slot's data in its own PostgreSQL database."""
    config = five_servers(3)(tmp_path / "data")
    dsns = [pg_server.create_database() for _ in config["slots"]]
    for slot, dsn in zip(config["slots"], dsns, strict=True):
        # The test server trusts loopback, so any password works: this one must never leak.
        slot["database_url"] = dsn.replace("postgres@", "postgres:test-pg-password@", 1)
    path = write_config(tmp_path / "cluster.yml", config)
    try:
        async with running(path, check_overlap=False) as h:
            yield h, path
    finally:
        for dsn in dsns:
            pg_server.drop_database(dsn.rpartition("/")[2])


async def test_a_message_posted_before_the_owner_dies_is_read_after_the_failover(
    harness: Harness,
) -> None:
    h = harness
    leader = await h.leader()
    victim = next(n for n in ("a1", "a2", "a3") if n != leader)
    slot = next(s for s in (await h.status())["slots"] if s["owner"] == victim)
    await survives_failover(h, victim, slot, provision(h, slot["tenants"][0], slot["name"]))


async def test_on_postgresql_too_and_the_password_stays_out_of_argv(
    pg_harness: tuple[Harness, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    h, config_path = pg_harness
    leader = await h.leader()
    victim = next(n for n in ("a1", "a2", "a3") if n != leader)
    slot = next(s for s in (await h.status())["slots"] if s["owner"] == victim)
    tenant = slot["tenants"][0]
    argv = ["tenant", "create", tenant, "--admin-email", "o@example.test"]
    assert await asyncio.to_thread(moonwatch, [*argv, "--config", str(config_path)]) == 0
    link = next(line for line in capsys.readouterr().out.splitlines() if "/join?token=" in line)
    for agent in h.cluster.alive():
        for child in app_children(h.cluster.servers[agent].process.pid):
            assert "test-pg-password" not in " ".join(child.cmdline())
    assert not (h.cluster.config.data_dir / "slots" / slot["name"] / "app.sqlite3").exists()
    await survives_failover(h, victim, slot, link.rpartition("token=")[2])


async def survives_failover(h: Harness, victim: str, slot: dict[str, Any], token: str) -> None:
    """Post a message as the tenant's new owner, SIGKILL ``victim`` (the slot's owner), and
    read the message back through the edge once another server serves the slot."""
    leader = await h.leader()
    tenant = slot["tenants"][0]
    person = Client(h, tenant)

    body = {"token": token, "display_name": "Owner", "password": PASSWORD}
    status, _ = await person.call("POST", "/invitations/accept", leader, body)
    assert status == 201
    status, space = await person.call("POST", "/spaces", leader, {"name": "general"})
    assert status == 201, space
    status, thread = await person.call(
        "POST", f"/spaces/{space['id']}/threads", leader, {"title": "Before the failure"}
    )
    assert status == 201, thread
    status, posted = await person.call(
        "POST", f"/threads/{thread['id']}/messages", leader, {"body": "still here <b>after</b>?"}
    )
    assert status == 201, posted

    h.cluster.kill(victim, signal.SIGKILL)
    await wait_until(lambda: served_by_other(h, tenant, victim, leader), 30)

    status, page = await person.call("GET", f"/threads/{thread['id']}/messages", leader)
    assert status == 200, page
    (message,) = page["items"]
    assert message["id"] == posted["id"]
    assert message["body"] == "still here <b>after</b>?"
    assert "&lt;b&gt;" in message["html"]
    moved = next(s for s in (await h.status())["slots"] if s["name"] == slot["name"])
    assert moved["owner"] != victim and moved["epoch"] == 2
