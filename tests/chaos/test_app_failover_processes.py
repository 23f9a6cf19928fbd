"""Real processes: a message posted through the edge before its slot's owner dies is readable
through the edge after a spare took the slot over (the spare opens the same slot data)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from tests.chaos.test_replacement_processes import Harness, harness, served_by_other
from tests.support import wait_until

pytestmark = [pytest.mark.processes, pytest.mark.timeout(150)]
__all__ = ["harness"]  # the fixture, imported for pytest

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


async def test_a_message_posted_before_the_owner_dies_is_read_after_the_failover(
    harness: Harness,
) -> None:
    h = harness
    leader = await h.leader()
    victim = next(n for n in ("a1", "a2", "a3") if n != leader)
    slot = next(s for s in (await h.status())["slots"] if s["owner"] == victim)
    tenant = slot["tenants"][0]
    person = Client(h, tenant)
    token = provision(h, tenant, slot["name"])

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
