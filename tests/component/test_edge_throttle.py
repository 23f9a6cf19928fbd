"""The real edge in front of a tiny upstream on 127.0.0.1: stops, local bucket, concurrency
cap, counting, random-subdomain floods, absurd Host headers and the client address."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import string
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.clock import SystemClock
from agent.config import DefaultLimits, TenantLimits, ThrottleConfig
from agent.edge import STOPPED_HEADER, Edge
from agent.metrics import AgentMetrics
from agent.traffic import TrafficCounter
from agent.traffic_counts import TenantCounts
from consensus.memory import MemoryConsensus, MemoryLog
from consensus.state import ClusterState, SlotRecord, Stop
from tests.support import wait_until

BASE = "localhost"
NOW = 1_700_000_000.0


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """Run `app` on 127.0.0.1, port 0, until the block ends; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        address = runner.addresses[0]
        yield int(address[1])
    finally:
        await runner.cleanup()


@dataclass
class Upstream:
    """The stand-in app: echoes what it was sent; /slow waits until `release` is set."""

    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/bytes/{n}", self.nbytes)
        app.router.add_get("/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "xff": request.headers.getall("X-Forwarded-For", []),
                "real_ip": request.headers.getall("X-Real-IP", []),
                "host": request.headers.get("Host"),
            }
        )

    async def slow(self, request: web.Request) -> web.Response:
        self.waiting += 1
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        return web.Response(text="slow")

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), body=b"x" * 10)

    async def nbytes(self, request: web.Request) -> web.Response:
        return web.Response(body=b"b" * int(request.match_info["n"]))


def dead_address() -> str:
    """A loopback address where nothing listens (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def cluster(upstream_port: int, stops: tuple[Stop, ...] = ()) -> ClusterState:
    address = f"127.0.0.1:{upstream_port}"
    return ClusterState(
        cluster="test",
        slots=(
            SlotRecord("s1", ("acme", "globex"), "m1", 1, "serving", address, 2.0, 1),
            SlotRecord("s2", ("initech",), "m2", 1, "assigned", None, 2.0, 0),
            SlotRecord("s3", ("umbrella",), "m3", 1, "serving", dead_address(), 2.0, 1),
        ),
        stops=stops,
    )


class World:
    """A settable committed state and fake clocks for the edge."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.wall = NOW
        self.monotonic = 500.0


@dataclass
class Running:
    edge: Edge
    world: World
    upstream: Upstream
    url: str
    session: aiohttp.ClientSession

    async def get(self, tenant: str, path: str = "/", **headers: str) -> aiohttp.ClientResponse:
        response = await self.session.get(
            f"{self.url}{path}", headers={"Host": f"{tenant}.{BASE}", **headers}
        )
        await response.read()
        response.release()
        return response

    async def echo(self, tenant: str, **headers: str) -> dict[str, Any]:
        response = await self.session.get(
            f"{self.url}/echo", headers={"Host": f"{tenant}.{BASE}", **headers}
        )
        async with response:
            assert response.status == 200
            document: dict[str, Any] = await response.json()
            return document


@asynccontextmanager
async def running(
    throttle: ThrottleConfig | None = None,
    stops: tuple[Stop, ...] = (),
    counter: TrafficCounter | None = None,
    answered: Callable[[str, int], None] | None = None,
) -> AsyncIterator[Running]:
    upstream = Upstream()
    async with serving(upstream.application()) as upstream_port:
        upstream.port = upstream_port
        world = World(cluster(upstream_port, stops))
        edge = Edge(
            BASE,
            lambda: world.state,
            "m1",
            throttle=throttle,
            counter=counter,
            wall=lambda: world.wall,
            monotonic=lambda: world.monotonic,
            answered=answered,
        )
        async with (
            serving(edge.application()) as edge_port,
            aiohttp.ClientSession() as session,
        ):
            try:
                yield Running(edge, world, upstream, f"http://127.0.0.1:{edge_port}", session)
            finally:
                upstream.release.set()  # let any slow request still waiting finish


def stop(tenant: str, until: float, reason: str = "over its rps limit for 1.2 s") -> Stop:
    return Stop(subdomain=tenant, since=NOW - 10, until=until, reason=reason)


# ---------------------------------------------------------------- committed stops


async def test_a_stopped_tenant_gets_503_while_another_is_served() -> None:
    async with running(stops=(stop("acme", NOW + 29.2),)) as r:
        refused = await r.session.get(f"{r.url}/x", headers={"Host": "acme.localhost"})
        async with refused:
            page = await refused.text()
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "30"
        assert refused.headers[STOPPED_HEADER] == "over its rps limit for 1.2 s"
        assert "temporarily stopped" in page
        assert "too many requests" in page
        assert "30 seconds" in page
        assert len(page) < 1000
        assert (await r.get("globex")).status == 200
        counts = r.edge.counter.take()
        assert counts["acme"].refused == 1
        assert counts["acme"].errors == 1
        assert counts["globex"] == TenantCounts(
            requests=1, bytes=counts["globex"].bytes, inflight_peak=1
        )


async def test_an_expired_stop_lets_the_tenant_in() -> None:
    async with running(stops=(stop("acme", NOW - 0.5),)) as r:
        assert (await r.get("acme")).status == 200
        r.world.state = cluster(r.upstream.port, (stop("acme", NOW + 0.2),))
        response = await r.get("acme")
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"  # never less than a second
        r.world.wall = NOW + 0.2  # the stop ends at `until`
        assert (await r.get("acme")).status == 200


async def test_stops_apply_without_a_throttle_config_and_odd_reasons_are_made_safe() -> None:
    reason = "line one\r\nX-Injected: yes \u2603"
    async with running(stops=(stop("acme", float("inf"), reason),)) as r:
        response = await r.get("acme")
        assert response.status == 503
        assert "X-Injected" not in response.headers
        assert "\n" not in response.headers[STOPPED_HEADER]
        assert int(response.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------- local token bucket


async def test_a_burst_beyond_the_local_bucket_is_refused_while_others_pass() -> None:
    throttle = ThrottleConfig(
        limits=DefaultLimits(rps=0.5, share=None, concurrent=100),
        tenants={"globex": TenantLimits(rps=100.0)},
        local_burst_s=6.0,  # capacity 3
    )
    async with running(throttle) as r:
        statuses = [(await r.get("acme")).status for _ in range(3)]
        assert statuses == [200, 200, 200]
        refused = await r.get("acme")
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "2"  # one token at 0.5 per second
        assert [(await r.get("globex")).status for _ in range(10)] == [200] * 10
        r.world.monotonic += 2.0
        assert (await r.get("acme")).status == 200
        assert (await r.get("acme")).status == 503
        assert r.edge.counter.take()["acme"].refused == 2


# ---------------------------------------------------------------- concurrency cap


async def test_the_request_over_the_concurrency_cap_is_refused_at_once() -> None:
    throttle = ThrottleConfig(limits=DefaultLimits(rps=None, share=None, concurrent=2))
    async with running(throttle) as r:
        slow = [asyncio.create_task(r.get("acme", "/slow")) for _ in range(2)]

        async def both_waiting() -> bool:
            return r.upstream.waiting == 2 and r.edge.counter.inflight("acme") == 2

        await wait_until(both_waiting, timeout_s=10)
        # The upstream is still holding both: an answer now cannot have waited for it.
        third = await r.get("acme", "/slow")
        assert third.status == 503
        assert third.headers["Retry-After"] == "1"
        assert r.upstream.waiting == 2
        assert (await r.get("globex")).status == 200
        r.upstream.release.set()
        assert [t.status for t in await asyncio.gather(*slow)] == [200, 200]
        counts = r.edge.counter.take()["acme"]
        assert (counts.requests, counts.refused, counts.inflight_peak) == (3, 1, 2)
        assert r.edge.counter.inflight("acme") == 0


# ---------------------------------------------------------------- counting


async def test_counts_after_a_mix_of_requests() -> None:
    throttle = ThrottleConfig(
        limits=DefaultLimits(rps=1.0, share=None, concurrent=10), local_burst_s=3.0
    )
    async with running(throttle) as r:
        assert (await r.get("acme", "/bytes/100")).status == 200
        assert (await r.get("acme", "/status/500")).status == 500
        assert (await r.get("acme", "/bytes/7")).status == 200
        refused = await r.get("acme", "/bytes/100")
        assert refused.status == 503
        page_bytes = int(refused.headers["Content-Length"])
        moving = await r.get("initech")  # its slot has no serving owner
        assert moving.status == 503
        dead = await r.get("umbrella")  # its owner does not answer
        assert dead.status == 503
        assert (await r.get("nobody")).status == 404
        counts = r.edge.counter.take()
        assert counts["acme"] == TenantCounts(
            requests=4, errors=2, bytes=100 + 10 + 7 + page_bytes, inflight_peak=1, refused=1
        )
        assert counts["initech"].requests == counts["initech"].errors == 1
        assert counts["initech"].refused == 0
        assert counts["initech"].bytes == int(moving.headers["Content-Length"])
        assert counts["umbrella"].errors == 1
        assert counts["umbrella"].refused == 0
        assert set(counts) == {"acme", "initech", "umbrella"}
        assert r.edge.counter.take() == {}


async def test_answers_are_counted_per_slot_by_status_class_for_prometheus() -> None:
    metrics = AgentMetrics(MemoryConsensus(MemoryLog(voters=("m1",)), "m1", SystemClock()).snapshot)
    metrics.start_at_zero(["s1", "s2", "s3"])
    throttle = ThrottleConfig(
        limits=DefaultLimits(rps=1.0, share=None, concurrent=10), local_burst_s=2.0
    )
    async with running(throttle, answered=metrics.edge_response) as r:
        assert (await r.get("acme", "/bytes/1")).status == 200
        assert (await r.get("globex", "/status/404")).status == 404
        assert (await r.get("acme", "/status/302")).status == 302
        assert (await r.get("acme")).status == 503  # over its local bucket
        assert (await r.get("initech")).status == 503  # s2 has no serving owner
        assert (await r.get("nobody")).status == 404  # no slot: not counted

    def count(slot: str, code_class: str) -> float | None:
        labels = {"slot": slot, "code_class": code_class}
        return metrics.registry.get_sample_value("moonwatch_edge_requests_total", labels)

    assert {c: count("s1", c) for c in ("2xx", "3xx", "4xx", "5xx")} == {
        "2xx": 1.0,
        "3xx": 1.0,
        "4xx": 1.0,
        "5xx": 1.0,
    }
    assert (count("s2", "5xx"), count("s2", "2xx"), count("s3", "5xx")) == (1.0, 0.0, 0.0)


async def test_the_default_edge_counts_and_routes_without_throttling() -> None:
    upstream = Upstream()
    async with serving(upstream.application()) as port:
        state = cluster(port)
        edge = Edge(BASE, lambda: state, "m1")
        async with serving(edge.application()) as edge_port, aiohttp.ClientSession() as s:
            for _ in range(30):
                async with s.get(
                    f"http://127.0.0.1:{edge_port}/", headers={"Host": "acme.localhost"}
                ) as response:
                    assert response.status == 200
                    assert response.headers["X-Moonwatch-Slot"] == "s1"
        assert edge.counter.take()["acme"].requests == 30


async def test_random_subdomains_cost_a_404_and_are_never_tracked() -> None:
    rng = random.Random(11)
    async with running(ThrottleConfig(), counter=TrafficCounter(16)) as r:
        names = {"".join(rng.choices(string.ascii_lowercase, k=10)) for _ in range(3000)}
        statuses: list[int] = []
        names_list = sorted(names)
        for i in range(0, len(names_list), 100):
            batch = names_list[i : i + 100]
            responses = await asyncio.gather(*(r.get(name) for name in batch))
            statuses.extend(response.status for response in responses)
        assert len(statuses) == len(names) > 2900
        assert set(statuses) == {404}
        assert len(r.edge.counter) == 0
        assert r.edge.counter.evicted == 0
        assert r.edge.counter.take() == {}


# ---------------------------------------------------------------- absurd Host headers


async def raw_status(url: str, request: bytes) -> int:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(answer.split(b" ", 2)[1])


def raw_get(host: bytes | None) -> bytes:
    host_line = b"" if host is None else b"Host: " + host + b"\r\n"
    return b"GET / HTTP/1.1\r\n" + host_line + b"Connection: close\r\n\r\n"


@pytest.mark.parametrize(
    "host",
    [
        None,
        b"",
        b" ",
        b"x" * 20_000,
        b"x" * 5_000 + b".localhost",
        b"a" * 64 + b".localhost",
        "\u00e4cme.localhost".encode(),
        "\u212acme.localhost".encode(),  # KELVIN SIGN lowercases to an ASCII k
        b"\xff\xfe.localhost",
        b"acme.localhost:abc:def:99999",
        b"acme..localhost",
        b"..localhost",
        b".localhost",
        b"localhost",
        b"acme.localhost.evil.example",
        b"-acme.localhost",
        b"acme_.localhost",
        b"a.b.localhost",
        b"[::1]:8080",
        b"127.0.0.1",
        b":",
        b"acme.localhost\x00",
        b"%61cme.localhost",
    ],
)
async def test_absurd_host_headers_get_a_clean_4xx(host: bytes | None) -> None:
    async with running(ThrottleConfig()) as r:
        status = await raw_status(r.url, raw_get(host))
        assert 400 <= status < 500
        assert r.edge.counter.take() == {}


@pytest.mark.parametrize(
    "host",
    [b"ACME.LOCALHOST", b"acme.localhost.", b"acme.localhost:8080", b"Acme.LocalHost.:1"],
)
async def test_spellings_of_a_real_tenant_are_routed(host: bytes) -> None:
    async with running(ThrottleConfig()) as r:
        assert await raw_status(r.url, raw_get(host)) == 200
        assert r.edge.counter.take()["acme"].requests == 1


# ---------------------------------------------------------------- client address


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_replaced() -> None:
    async with running(ThrottleConfig()) as r:
        seen = await r.echo("acme", **{"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6"})
        assert seen["xff"] == ["127.0.0.1"]
        assert seen["real_ip"] == ["127.0.0.1"]
        assert seen["host"] == "acme.localhost"
        assert (await r.echo("acme"))["xff"] == ["127.0.0.1"]


async def test_forwarded_for_from_a_trusted_peer_is_believed() -> None:
    trusted = (ipaddress.ip_network("127.0.0.1/32"),)
    async with running(ThrottleConfig(trusted_proxies=trusted)) as r:
        seen = await r.echo("acme", **{"X-Forwarded-For": "198.51.100.1"})
        assert seen["xff"] == ["198.51.100.1"]
        assert seen["real_ip"] == ["198.51.100.1"]
        # a client-supplied left part is never reached past the first untrusted hop
        seen = await r.echo("acme", **{"X-Forwarded-For": "6.6.6.6, 198.51.100.1, 127.0.0.1"})
        assert seen["xff"] == ["198.51.100.1"]
        # garbage from the trusted proxy: the proxy itself
        seen = await r.echo("acme", **{"X-Forwarded-For": "not an address"})
        assert seen["xff"] == ["127.0.0.1"]
