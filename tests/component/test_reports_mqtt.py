"""Traffic reports through a real Mosquitto, the HTTP fallback to the leader, and the broker
that `moonwatch up` manages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from agent.clock import SystemClock
from agent.config import MqttConfig, parse_config
from agent.launcher import LocalCluster, ports_in_use
from agent.mqtt import HttpReportPoster, LeaderListening, MqttLink, ReportPublisher
from agent.reports import (
    MAX_REPORT_BYTES,
    Aggregator,
    ReportIntake,
    TrafficReport,
    encode_report,
    report_key,
    traffic_handler,
)
from agent.traffic_counts import TenantCounts
from tests.support import (
    cluster_config,
    free_port_block,
    mosquitto_binary,
    mosquitto_broker,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

KEY = report_key("test-raft-password")
CLUSTER = "test"
SERVERS = frozenset({"a1", "a2", "a3"})


def report(server: str, seq: int, boot: int = 1, cluster: str = CLUSTER) -> TrafficReport:
    counts = {"t1x1": TenantCounts(requests=10 * seq, inflight_peak=2)}
    return TrafficReport(cluster, server, seq, boot, time.time(), 1.0, counts)


def new_intake() -> ReportIntake:
    aggregator = Aggregator(time.monotonic, 5.0, SERVERS, wall=time.time)
    return ReportIntake(aggregator, KEY, CLUSTER)


def latest_seq(intake: ReportIntake, server: str) -> int | None:
    held = intake.aggregator.fresh().get(server)
    return None if held is None else held.seq


@dataclass
class Node:
    link: MqttLink
    intake: ReportIntake


@contextlib.asynccontextmanager
async def linked(port: int, server: str, intake: ReportIntake | None = None) -> AsyncIterator[Node]:
    """An MqttLink for `server` feeding `intake` (a new one by default), running until the
    block ends; its stop is bounded."""
    intake = intake or new_intake()
    link = MqttLink(MqttConfig(port=port), CLUSTER, server, intake.offer, SystemClock())
    stopping = asyncio.Event()
    task = asyncio.create_task(link.run(stopping))
    try:
        yield Node(link, intake)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10.0)


@contextlib.asynccontextmanager
async def http_leader(intake: ReportIntake) -> AsyncIterator[str]:
    """A real aiohttp server with POST /v1/traffic on a free port; yields its base URL."""
    app = web.Application()
    app.router.add_post(
        "/v1/traffic",
        traffic_handler(intake.aggregator, KEY, CLUSTER, intake.stats),
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_two_links_exchange_reports_through_mosquitto(tmp_path: Path) -> None:
    async with (
        mosquitto_broker(tmp_path) as port,
        linked(port, "a1") as one,
        linked(port, "a2") as two,
    ):
        await wait_until(_both_connected(one, two), 10.0)
        assert await one.link.publish(encode_report(report("a1", 1), KEY))
        assert await two.link.publish(encode_report(report("a2", 1), KEY))

        async def exchanged() -> bool:
            return all(
                latest_seq(node.intake, server) == 1
                for node in (one, two)
                for server in ("a1", "a2")
            )

        await wait_until(exchanged, 5.0)
        assert one.link.topic == "moonwatch/test/traffic/a1"
        assert two.intake.aggregator.rates()["t1x1"].edges == 2
        assert one.intake.stats.rejected == {}


def _both_connected(*nodes: Node) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(node.link.connected for node in nodes)

    return check


async def test_forged_and_garbage_payloads_are_dropped_and_counted(tmp_path: Path) -> None:
    forged = [
        b"garbage",
        os.urandom(200),
        encode_report(report("a2", 1), report_key("not-the-password")),
        encode_report(report("a2", 1, cluster="other"), KEY),
        encode_report(report("a3", 1), KEY)[:-1] + b"!",
        b"\x00" * (MAX_REPORT_BYTES + 1),
    ]
    async with mosquitto_broker(tmp_path) as port, linked(port, "a1") as node:
        await wait_until(_both_connected(node), 10.0)
        topic = "moonwatch/test/traffic/a2"
        async with aiomqtt.Client("127.0.0.1", port) as raw:
            for payload in forged:
                await raw.publish(topic, payload, qos=1)
            await raw.publish(topic, encode_report(report("a2", 1), KEY), qos=1)

        async def valid_one_arrived() -> bool:
            return latest_seq(node.intake, "a2") == 1

        await wait_until(valid_one_arrived, 5.0)
        assert node.intake.stats.rejected == {
            "malformed": 1,
            "bad_mac": 3,
            "wrong_cluster": 1,
            "too_big": 1,
        }
        assert node.intake.stats.accepted == 1
        assert node.link.connected and node.link.stats.callback_errors == 0


async def test_publisher_falls_back_to_http_and_back_to_mqtt(tmp_path: Path) -> None:
    leader_intake = new_intake()
    follower_aggregator = Aggregator(time.monotonic, 5.0, SERVERS)
    poster = HttpReportPoster(timeout_s=0.5)
    port = free_port_block(1)
    async with (
        http_leader(leader_intake) as leader_url,
        linked(port, "a1", leader_intake) as leader,
        linked(port, "a2") as follower,
    ):
        publisher = ReportPublisher(
            cluster=CLUSTER,
            server="a2",
            key=KEY,
            interval_s=1.0,
            take=lambda: {"t1x1": TenantCounts(requests=5)},
            aggregator=follower_aggregator,
            clock=SystemClock(),
            link=follower.link,
            poster=poster,
            leader_url=lambda: leader_url,
        )

        def leader_has(seq: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return latest_seq(leader_intake, "a2") == seq

            return check

        try:
            async with mosquitto_broker(tmp_path, port):
                await wait_until(_both_connected(leader, follower), 15.0)
                assert await publisher.publish_once() == "mqtt"
                await wait_until(leader_has(1), 5.0)
            # The broker is SIGKILLed: the next report goes over HTTP, whether or not the
            # link has noticed yet (a publish to a dead broker is not acknowledged).
            assert await publisher.publish_once() == "http"
            assert latest_seq(leader_intake, "a2") == 2
            await wait_until(_not_connected(follower), 10.0)
            assert await publisher.publish_once() == "http"
            assert latest_seq(leader_intake, "a2") == 3
            async with mosquitto_broker(tmp_path, port):
                await wait_until(_both_connected(leader, follower), 15.0)
                assert await publisher.publish_once() == "mqtt"
                await wait_until(leader_has(4), 5.0)
        finally:
            await poster.close()
    stats = publisher.stats
    assert (stats.sent_mqtt, stats.sent_http, stats.mqtt_failures) == (2, 2, 2)
    assert set(follower_aggregator.fresh()) == {"a2"}
    assert leader_intake.stats.rejected == {}


def _not_connected(node: Node) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not node.link.connected

    return check


async def test_traffic_handler_status_codes() -> None:
    intake = new_intake()
    async with http_leader(intake) as base, aiohttp.ClientSession() as http:

        async def post(data: bytes) -> tuple[int, dict[str, object]]:
            async with http.post(base + "/v1/traffic", data=data) as resp:
                doc = await resp.json() if resp.status != 204 else {}
                return resp.status, doc

        good = encode_report(report("a2", 1), KEY)
        assert await post(good) == (204, {})
        assert await post(good) == (204, {})  # a duplicate is fine, and ignored
        status, doc = await post(encode_report(report("a2", 2), report_key("wrong-password")))
        assert (status, doc["reason"]) == (403, "bad_mac")
        status, doc = await post(b"x" * (MAX_REPORT_BYTES + 1))
        assert (status, doc["reason"]) == (413, "too_big")
        status, doc = await post(b"\x00" * 40 + b"{}")
        assert (status, doc["reason"]) == (403, "bad_mac")
        status, doc = await post(b"garbage")
        assert (status, doc["reason"]) == (400, "malformed")
        status, doc = await post(encode_report(report("a2", 3, cluster="other"), KEY))
        assert (status, doc["reason"]) == (400, "wrong_cluster")
        status, doc = await post(encode_report(report("zz", 1), KEY))
        assert (status, doc["reason"]) == (400, "unknown_server")
        assert isinstance(doc["error"], str) and doc["status"] == 400

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"y" * (64 * 1024)

        async with http.post(base + "/v1/traffic", data=chunks()) as resp:
            assert resp.status == 413  # no Content-Length: the read itself is capped
    assert (intake.stats.accepted, intake.stats.ignored) == (1, 1)
    assert intake.stats.rejected == {
        "bad_mac": 2,
        "too_big": 2,
        "malformed": 1,
        "wrong_cluster": 1,
        "unknown_server": 1,
    }


# ---------------------------------------------------------------- the managed broker


def _managed(tmp_path: Path, port: int) -> LocalCluster:
    raw = cluster_config(tmp_path / "var")
    raw["mqtt"] = {"host": "127.0.0.1", "port": port, "managed": True}
    config = parse_config(raw, tmp_path, {})
    return LocalCluster(tmp_path / "cluster.yml", config, SystemClock())


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_managed_broker_runs_until_the_cluster_stops(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    port = free_port_block(1)
    cluster = _managed(tmp_path, port)
    assert cluster.config.mqtt is not None
    try:
        broker = await cluster.start_broker(cluster.config.mqtt)
        assert broker is not None
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.publish("moonwatch/test/ping", b"x", qos=1)
        assert f"listener {port} 127.0.0.1" in broker.config_path.read_text()
        assert broker.config_path.parent == cluster.config.data_dir
        assert broker.log_path.parent == cluster.log_dir
        assert [line for line in ports_in_use(cluster.config) if "mqtt" in line] == [
            f"127.0.0.1:{port} (mqtt port of the managed broker) is already in use"
        ]
    finally:
        await cluster.stop(timeout_s=5.0)
    assert broker.process.returncode is not None
    assert cluster.broker is None
    assert "running" in broker.log_path.read_text()
    assert _bindable(port)


async def test_managed_broker_that_cannot_start_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cluster = _managed(tmp_path, port)
        assert cluster.config.mqtt is not None
        try:
            assert await cluster.start_broker(cluster.config.mqtt) is None
        finally:
            await cluster.stop(timeout_s=5.0)
    assert cluster.broker is None
    assert cluster.broker_problem is not None and "did not start" in cluster.broker_problem
    err = capsys.readouterr().err
    assert "running without an MQTT broker" in err and "over HTTP" in err


# ---------------------------------------------------------------- link behaviour


async def test_link_logs_each_change_once_and_outlives_its_broker(tmp_path: Path) -> None:
    port = free_port_block(1)
    with capture_logs() as logs:
        async with linked(port, "a1") as node:
            await wait_until(_attempted(node, 3), 10.0)  # 0.5 s, then 1 s of backoff
            async with mosquitto_broker(tmp_path, port):
                await wait_until(_both_connected(node), 15.0)
            await wait_until(_not_connected(node), 10.0)
            await wait_until(_attempted(node, node.link.stats.attempts + 2), 10.0)
    events = [e["event"] for e in logs if str(e["event"]).startswith("mqtt_")]
    assert events == ["mqtt_unavailable", "mqtt_connected", "mqtt_disconnected"]
    assert (node.link.stats.connects, node.link.stats.disconnects) == (1, 1)


def _attempted(node: Node, attempts: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return node.link.stats.attempts >= attempts

    return check


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return header >> 4, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def silent_broker() -> AsyncIterator[int]:
    """Just enough of an MQTT broker to connect and subscribe; it never acknowledges a
    PUBLISH, as a broker that hangs mid-publish would not."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        answers: dict[int, Callable[[bytes], bytes]] = {
            1: lambda _: b"\x20\x02\x00\x00",  # CONNECT -> CONNACK
            8: lambda body: b"\x90\x03" + body[:2] + b"\x00",  # SUBSCRIBE -> SUBACK
            12: lambda _: b"\xd0\x00",  # PINGREQ -> PINGRESP; PUBLISH -> nothing
        }
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, body = await _read_packet(reader)
                if kind in answers:
                    writer.write(answers[kind](body))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_publish_to_a_broker_that_never_acknowledges_is_bounded() -> None:
    async with silent_broker() as port, linked(port, "a1") as node:
        await wait_until(_both_connected(node), 10.0)
        published = await asyncio.wait_for(node.link.publish(b"report"), 3.0)
        assert not published
        assert node.link.stats.publish_failures == 1


async def test_peers_see_who_listens_and_a_publish_counts_only_while_the_leader_does(
    tmp_path: Path,
) -> None:
    async with mosquitto_broker(tmp_path) as port, linked(port, "a1") as one:
        await wait_until(_both_connected(one), 10.0)
        leader = LeaderListening(one.link, lambda: "a2")
        payload = encode_report(report("a1", 1), KEY)
        assert not one.link.listening("a2")
        assert not await leader.publish(payload)  # the leader is not on the broker: post too
        async with linked(port, "a2") as two:
            await wait_until(_both_connected(two), 10.0)

            async def seen() -> bool:
                return one.link.listening("a2")

            await wait_until(seen, 5.0)
            assert await leader.publish(payload)

        async def gone() -> bool:  # a clean stop says "offline" (a death: the broker's will)
            return not one.link.listening("a2")

        await wait_until(gone, 5.0)
        assert not await leader.publish(payload)
        assert await LeaderListening(one.link, lambda: None).publish(payload)
