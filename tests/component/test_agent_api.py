"""One agent's HTTP API and edge on 127.0.0.1, over in-memory consensus and a fake driver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent.clock import SystemClock
from agent.config import ClusterConfig, parse_config
from agent.daemon import Agent
from agent.driver import InstanceSpec, InstanceStatus
from agent.wiring import build_agent
from consensus.commands import MarkServerFailed, SetMode
from consensus.memory import MemoryConsensus, MemoryLog
from tests.support import cluster_config


class FakeDriver:
    """Instances that become healthy at once; an optional real HTTP stand-in for the app."""

    def __init__(self) -> None:
        self.specs: dict[str, InstanceSpec] = {}
        self.leases: dict[str, tuple[int, float]] = {}
        self.closed = False

    def grant_lease(self, slot: str, epoch: int, until: float) -> None:
        if slot in self.specs and self.specs[slot].epoch == epoch:
            self.leases[slot] = (epoch, until)

    async def ensure_running(self, spec: InstanceSpec) -> None:
        self.specs[spec.slot] = spec

    async def stop(self, slot: str, timeout_s: float) -> None:
        self.specs.pop(slot, None)

    async def probe(self) -> None:
        return None

    def instances(self) -> Mapping[str, InstanceStatus]:
        return {
            s.slot: InstanceStatus(
                s.slot,
                s.epoch,
                s.address,
                1,
                running=True,
                healthy=True,
                serving=s.slot in self.leases,
            )
            for s in self.specs.values()
        }

    async def close(self, timeout_s: float) -> None:
        self.closed = True
        self.specs.clear()


@dataclass
class Running:
    config: ClusterConfig
    log: MemoryLog
    driver: FakeDriver
    http: aiohttp.ClientSession
    stopping: asyncio.Event
    task: asyncio.Task[int]

    @property
    def url(self) -> str:
        return self.config.server("a1").agent_url

    async def get(self, path: str, **kwargs: object) -> tuple[int, object, Mapping[str, str]]:
        async with self.http.get(self.url + path, **kwargs) as resp:  # type: ignore[arg-type]
            is_json = resp.content_type == "application/json"
            body = await resp.json() if is_json else await resp.text()
            return resp.status, body, resp.headers


async def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Running]:
    config = parse_config(cluster_config(tmp_path / "data"), tmp_path, {})
    log = MemoryLog(voters=config.voters)
    consensus = MemoryConsensus(log, "a1", SystemClock())
    driver = FakeDriver()
    parts = build_agent(config, "a1", SystemClock(), consensus=consensus, driver=driver)
    stopping = asyncio.Event()
    task = asyncio.create_task(Agent(parts).serve(stopping))
    log.elect("a1")
    async with aiohttp.ClientSession() as http:
        running = Running(config, log, driver, http, stopping, task)

        async def ready() -> bool:
            try:
                return (await running.get("/readyz"))[0] == 200
            except aiohttp.ClientError:
                return False

        try:
            await wait_for(ready)
            yield running
        finally:
            stopping.set()
            assert await asyncio.wait_for(task, 10) == 0


async def test_healthz_reports_a_live_loop(agent: Running) -> None:
    status, body, _ = await agent.get("/healthz")
    assert status == 200
    assert isinstance(body, dict) and body["status"] == "ok"


async def test_readyz_needs_a_leader(agent: Running) -> None:
    agent.log.elect(None)
    status, body, _ = await agent.get("/readyz")
    assert status == 503
    assert body == {"ready": False, "joined": True, "leader": None}


async def test_status_has_the_public_shape(agent: Running) -> None:
    async def a1_serving() -> bool:
        _, body, _ = await agent.get("/v1/status")
        assert isinstance(body, dict)
        return bool(body["slots"][0]["state"] == "serving")

    await wait_for(a1_serving)
    status, body, _ = await agent.get("/v1/status")
    assert status == 200 and isinstance(body, dict)
    contract = {"cluster", "server", "pid", "leader", "term", "mode", "servers", "slots", "stops"}
    assert contract <= set(body)
    assert body["cluster"] == "test" and body["server"] == "a1" and body["leader"] == "a1"
    assert body["mode"] == "normal" and body["stops"] == []
    assert isinstance(body["pid"], int) and isinstance(body["term"], int)
    for server in body["servers"]:
        assert set(server) >= {"name", "role", "state", "incarnation"}
        assert server["role"] in ("active", "spare")
    s1 = body["slots"][0]
    assert s1["name"] == "s1" and s1["owner"] == "a1" and s1["epoch"] == 1
    assert s1["tenants"] == ["t1x1", "t1x2"]


async def test_decisions_oldest_first_and_by_id(agent: Running) -> None:
    status, body, _ = await agent.get("/v1/decisions")
    assert status == 200 and isinstance(body, dict)
    decisions = body["decisions"]
    assert decisions[0]["kind"] == "bootstrap" and decisions[0]["id"] == "d000001"
    assert [d["id"] for d in decisions] == sorted(d["id"] for d in decisions)
    for decision in decisions:
        assert set(decision) == {"id", "kind", "at", "subject", "evidence"}
    status, one, _ = await agent.get("/v1/decisions/d000001")
    assert status == 200 and isinstance(one, dict)
    assert {k: one[k] for k in decisions[0]} == decisions[0]
    assert one["explanation"] == "cluster test was created from its configuration."
    assert one["timeline"][0]["id"] == "d000001"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/decisions/nope", 404),
        ("/v1/decisions/%0d%0aX-Injected:%20yes", 404),
        ("/v1/nothing", 404),
        ("/" + "a" * 5000, 404),
    ],
)
async def test_bad_requests_get_json_errors(agent: Running, path: str, status: int) -> None:
    got, body, headers = await agent.get(path)
    assert got == status
    assert isinstance(body, dict) and body["status"] == status and "error" in body
    assert "X-Injected" not in headers


async def test_wrong_method_is_405_with_json(agent: Running) -> None:
    async with agent.http.post(agent.url + "/v1/status", data=b"x") as resp:
        assert resp.status == 405
        assert (await resp.json())["status"] == 405


async def test_metrics_are_prometheus_text(agent: Running) -> None:
    status, body, headers = await agent.get("/metrics")
    assert status == 200 and isinstance(body, str)
    assert headers["Content-Type"].startswith("text/plain")
    assert "moonwatch_raft_is_leader 1.0" in body
    assert "moonwatch_raft_term" in body and "moonwatch_raft_commit_index" in body
    assert 'moonwatch_servers{state="up"}' in body


async def test_edge_routes_by_subdomain(agent: Running, tmp_path: Path) -> None:
    """The edge proxies to the serving address; a stand-in app plays the instance."""
    a1 = agent.config.server("a1")
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=f"hello {request.host}",
            headers={"X-Moonwatch-Slot": "s1", "X-Moonwatch-Server": "a1"},
        )

    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", agent.config.app_port("a1", "s1")).start()
    try:
        edge = a1.edge_url

        async def routed() -> bool:
            async with agent.http.get(edge + "/", headers={"Host": "t1x1.localhost"}) as r:
                return r.status == 200

        await wait_for(routed)
        async with agent.http.get(edge + "/x?y=1", headers={"Host": "t1x1.localhost:80"}) as r:
            assert r.status == 200
            assert await r.text() == "hello t1x1.localhost:80"
            assert r.headers["X-Moonwatch-Slot"] == "s1"
            assert r.headers["X-Moonwatch-Server"] == "a1"
        async with agent.http.get(edge + "/", headers={"Host": "nobody.localhost"}) as r:
            assert r.status == 404
        async with agent.http.get(edge + "/", headers={"Host": "example.com"}) as r:
            assert r.status == 404
        # s2's owner a2 never announced serving: the tenant waits with a 503 and Retry-After.
        async with agent.http.get(edge + "/", headers={"Host": "t2x1.localhost"}) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "2"
            assert r.headers["X-Moonwatch-Slot"] == "s2"
    finally:
        await runner.cleanup()


async def test_shutdown_stops_instances(agent: Running) -> None:
    agent.stopping.set()
    assert await asyncio.wait_for(agent.task, 10) == 0
    assert agent.driver.closed
    agent.stopping = asyncio.Event()  # the fixture's own stop is then a no-op


async def post_return(
    agent: Running, name: str, token: str | None, body: object = None
) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = f"{agent.url}/v1/servers/{name}/return"
    async with agent.http.post(url, headers=headers, json=body) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_operator_calls_need_the_token(agent: Running, token: str | None) -> None:
    status, body = await post_return(agent, "a2", token)
    assert status == 401 and body["status"] == 401


async def test_return_refuses_unknown_and_healthy_servers(agent: Running) -> None:
    status, _ = await post_return(agent, "zz", "test-api-token")
    assert status == 404
    status, body = await post_return(agent, "a1", "test-api-token")
    assert status == 409 and "not out of the pool" in str(body["error"])
    status, _ = await post_return(agent, "a2", "test-api-token", {"reason": 5})
    assert status == 400


async def test_return_puts_a_failed_server_back_as_spare(agent: Running) -> None:
    consensus = MemoryConsensus(agent.log, "a3", SystemClock())
    await consensus.start()
    failed = MarkServerFailed(id="f-a2", at=1.0, server="a2", incarnation=0, evidence={})
    assert (await consensus.submit(failed, 1.0)).ok
    status, body = await post_return(agent, "a2", "test-api-token", {"reason": "disk replaced"})
    assert status == 200 and body["ok"] is True
    _, doc, _ = await agent.get("/v1/status")
    assert isinstance(doc, dict)
    a2 = next(s for s in doc["servers"] if s["name"] == "a2")
    assert (a2["role"], a2["state"]) == ("spare", "new")
    _, decisions, _ = await agent.get("/v1/decisions")
    assert isinstance(decisions, dict)
    last = decisions["decisions"][-1]
    assert last["kind"] == "server_returned" and last["evidence"]["reason"] == "disk replaced"


async def test_hostile_datagrams_are_dropped_and_counted(agent: Running) -> None:
    """The probe port takes garbage, oversized and replayed datagrams without harm."""
    a1 = agent.config.server("a1")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(a1.host, a1.agent_port)
    )
    try:
        for payload in (b"", b"\x00" * 10, b"x" * 5000, b"{" * 40, bytes(range(256)) * 3):
            transport.sendto(payload)
    finally:
        transport.close()

    async def counted() -> bool:
        _, body, _ = await agent.get("/metrics")
        return 'kind="rejected_' in str(body)

    await wait_for(counted)
    assert (await agent.get("/healthz"))[0] == 200
    _, metrics, _ = await agent.get("/metrics")
    assert 'moonwatch_detector_events_total{kind="rejected_oversized"} 1.0' in str(metrics)


async def test_resume_needs_the_token_and_ends_cascade_mode(agent: Running) -> None:
    url = f"{agent.url}/v1/mode/resume"
    async with agent.http.post(url) as resp:
        assert resp.status == 401
    headers = {"Authorization": "Bearer test-api-token"}
    async with agent.http.post(url, headers=headers) as resp:
        assert resp.status == 409  # already normal
    consensus = MemoryConsensus(agent.log, "a3", SystemClock())
    await consensus.start()
    cascade = SetMode(id="c1", at=1.0, mode="cascade", reason="test", evidence={})
    assert (await consensus.submit(cascade, 1.0)).ok
    _, metrics, _ = await agent.get("/metrics")
    assert 'moonwatch_mode{mode="cascade"} 1.0' in str(metrics)
    async with agent.http.post(url, headers=headers, json={"reason": "network fixed"}) as resp:
        assert resp.status == 200
    _, doc, _ = await agent.get("/v1/status")
    assert isinstance(doc, dict) and doc["mode"] == "normal"
    _, decisions, _ = await agent.get("/v1/decisions")
    assert isinstance(decisions, dict)
    last = decisions["decisions"][-1]
    assert last["kind"] == "mode_changed" and last["evidence"]["operator"] is True
    assert last["evidence"]["reason"] == "network fixed"
