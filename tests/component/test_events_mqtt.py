"""Events and server states through a real Mosquitto that wants a password: each committed
decision arrives once with its id, retained states and the last will, a refused login, a
broker outage, and `moonwatch events`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from agent.clock import SystemClock
from agent.config import ClusterConfig, MqttConfig, parse_config
from agent.daemon import Agent
from agent.event_publisher import EventPublisher
from agent.events import decision_event, encode, server_topic
from agent.eventscmd import events_command
from agent.launcher import LocalCluster
from agent.wiring import build_agent
from consensus.commands import Bootstrap, ServerSpec, ServerUp, SetMode, SlotSpec
from consensus.memory import MemoryConsensus, MemoryLog
from consensus.protocol import Consensus
from consensus.state import Decision
from tests.component.test_agent_api import FakeDriver
from tests.support import (
    MQTT_PASSWORD,
    MQTT_USER,
    REPO,
    cluster_config,
    free_port_block,
    mosquitto_binary,
    mosquitto_broker,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(90)

LOGIN = (MQTT_USER, MQTT_PASSWORD)
EVENTS = "moonwatch/test/events/+"
CURSOR = "moonwatch/test/cursor"
SERVERS = "moonwatch/test/servers/+"


def mqtt_config(port: int, password: str = MQTT_PASSWORD) -> MqttConfig:
    return MqttConfig(port=port, username=MQTT_USER, password=password)  # type: ignore[arg-type]


@dataclass
class Inbox:
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def on(self, topic_filter: str) -> list[dict[str, Any]]:
        prefix = topic_filter.rstrip("+")
        return [doc for topic, doc in self.messages if topic.startswith(prefix)]

    def event_ids(self) -> list[str]:
        return [doc["id"] for doc in self.on(EVENTS)]

    def server(self, name: str) -> dict[str, Any] | None:
        states = self.on(server_topic("moonwatch", "test", name))
        return states[-1] if states else None


@contextlib.asynccontextmanager
async def listening(port: int, *topics: str) -> AsyncIterator[Inbox]:
    """A subscriber with the agents' login, collecting JSON messages until the block ends."""
    inbox = Inbox()
    async with aiomqtt.Client("127.0.0.1", port, username=LOGIN[0], password=LOGIN[1]) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def pump() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                inbox.messages.append((str(message.topic), json.loads(message.payload)))

        task = asyncio.create_task(pump())
        try:
            yield inbox
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def config_with_mqtt(tmp_path: Path, port: int, password: str = MQTT_PASSWORD) -> ClusterConfig:
    raw = cluster_config(tmp_path / "data")
    raw["mqtt"] = {"port": port, "username": MQTT_USER, "password": password}
    return parse_config(raw, tmp_path, {})


@dataclass
class RunningAgent:
    config: ClusterConfig
    log: MemoryLog
    consensus: MemoryConsensus
    http: aiohttp.ClientSession

    async def get(self, path: str) -> Any:
        async with self.http.get(self.config.server("a1").agent_url + path) as resp:
            return await (resp.json() if resp.content_type == "application/json" else resp.text())


@contextlib.asynccontextmanager
async def running_agent(config: ClusterConfig) -> AsyncIterator[RunningAgent]:
    """Agent a1 in this process (in-memory consensus, fake driver), elected leader."""
    log = MemoryLog(voters=config.voters)
    consensus = MemoryConsensus(log, "a1", SystemClock())
    parts = build_agent(config, "a1", SystemClock(), consensus=consensus, driver=FakeDriver())
    stopping = asyncio.Event()
    task = asyncio.create_task(Agent(parts).serve(stopping))
    log.elect("a1")
    async with aiohttp.ClientSession() as http:
        agent = RunningAgent(config, log, consensus, http)
        try:
            await wait_until(lambda: _bootstrapped(consensus), 10.0)
            yield agent
        finally:
            stopping.set()
            assert await asyncio.wait_for(task, 15.0) == 0


async def _bootstrapped(consensus: Consensus) -> bool:
    return consensus.snapshot().state.bootstrapped


async def commit_modes(consensus: Consensus, count: int, tag: str) -> None:
    """`count` committed mode changes (each one a decision)."""
    for i in range(count):
        mode = "normal" if consensus.snapshot().state.mode == "cascade" else "cascade"
        command = SetMode(id=f"{tag}-{i}", at=1000.0 + i, mode=mode, reason=f"{tag} {i}")
        assert (await consensus.submit(command, 5.0)).ok


def decisions(consensus: Consensus) -> tuple[Decision, ...]:
    return consensus.snapshot().state.decisions


async def test_committed_decisions_arrive_once_with_their_ids(tmp_path: Path) -> None:
    async with mosquitto_broker(tmp_path, login=LOGIN) as port, listening(port, EVENTS) as inbox:
        config = config_with_mqtt(tmp_path, port)
        async with running_agent(config) as agent:
            await commit_modes(agent.consensus, 3, "op")
            committed = decisions(agent.consensus)

            async def all_arrived() -> bool:
                return set(inbox.event_ids()) >= {d.id for d in committed}

            await wait_until(all_arrived, 15.0)

            async def all_acknowledged() -> dict[str, Any] | None:
                # An event leaves the buffer when the broker's PUBACK is back, which may come
                # a moment after a subscriber already has it.
                answer = await agent.get("/v1/status")
                return answer if answer["mqtt"]["buffered"] == 0 else None

            status = await wait_until(all_acknowledged, 15.0)
            metrics = await agent.get("/metrics")
        ids = inbox.event_ids()
        assert ids[: len(committed)] == [d.id for d in committed]  # in order
        assert collections.Counter(ids).most_common(1)[0][1] == 1  # once each
        by_id = {doc["id"]: doc for doc in inbox.on(EVENTS)}
        for decision in committed:
            assert by_id[decision.id] == decision_event(decision, "test")
        kinds = {topic.rsplit("/", 1)[-1] for topic, _ in inbox.messages}
        assert {"bootstrap", "mode_changed"} <= kinds
        assert status["mqtt"] == {
            "connected": True,
            "buffered": 0,
            "dropped": 0,
            "rejected_cursors": 0,
            "last_error": None,
        }
        assert "moonwatch_mqtt_connected 1.0" in metrics
        assert "moonwatch_mqtt_events_buffered 0.0" in metrics
        assert "moonwatch_mqtt_events_dropped_total 0.0" in metrics
        assert "moonwatch_mqtt_rejected_cursors_total 0.0" in metrics


BOOT = Bootstrap(
    id="boot",
    at=100.0,
    cluster="test",
    config_digest="sha256:test",
    servers=tuple(ServerSpec(name=f"a{i}", role="active", domain=f"r{i}") for i in (1, 2, 3)),
    slots=(SlotSpec(name="s1", owner="a1", tenants=("t1",)),),
    lease_s=5.0,
    voters=("a1", "a2", "a3"),
)


@contextlib.asynccontextmanager
async def publishing(publisher: EventPublisher) -> AsyncIterator[EventPublisher]:
    stopping = asyncio.Event()
    task = asyncio.create_task(publisher.run(stopping))
    try:
        yield publisher
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10.0)


async def bootstrapped_log(*servers: str) -> tuple[MemoryLog, dict[str, MemoryConsensus]]:
    log = MemoryLog(voters=("a1", "a2", "a3"), leader="a1")
    nodes = {name: MemoryConsensus(log, name, SystemClock()) for name in servers}
    for node in nodes.values():
        await node.start()
    first = next(iter(nodes.values()))
    assert (await first.submit(BOOT, 2.0)).ok
    for name in servers:
        assert (
            await first.submit(ServerUp(id=f"up-{name}", at=101.0, server=name, incarnation=1), 2.0)
        ).ok
    return log, nodes


async def test_after_a_leader_change_the_new_leader_continues_from_the_cursor(
    tmp_path: Path,
) -> None:
    log, nodes = await bootstrapped_log("a1", "a2")
    async with mosquitto_broker(tmp_path, login=LOGIN) as port, listening(port, EVENTS) as inbox:
        one = EventPublisher(mqtt_config(port), "test", "a1", nodes["a1"], SystemClock())
        two = EventPublisher(mqtt_config(port), "test", "a2", nodes["a2"], SystemClock())
        async with publishing(one), publishing(two):
            await commit_modes(nodes["a1"], 2, "first")
            before = [d.id for d in decisions(nodes["a1"])]

            async def first_part_published() -> bool:
                return inbox.event_ids() == before and two.seen_cursor == len(before)

            await wait_until(first_part_published, 15.0)
            assert two.counts.published == 0  # a follower publishes nothing
            log.elect("a2")
            await commit_modes(nodes["a2"], 2, "second")
            after = [d.id for d in decisions(nodes["a2"])]

            async def second_part_published() -> bool:
                return inbox.event_ids() == after

            await wait_until(second_part_published, 15.0)
        assert two.counts.published == len(after) - len(before)
        assert one.counts.published == len(before)


SCRIPT = """
import asyncio, sys
from agent.clock import SystemClock
from agent.config import MqttConfig
from agent.event_publisher import EventPublisher
from tests.component.test_events_mqtt import bootstrapped_log

async def main() -> None:
    _, nodes = await bootstrapped_log("a1")
    config = MqttConfig(port=int(sys.argv[1]), username=sys.argv[2], password=sys.argv[3])
    publisher = EventPublisher(config, "test", "a1", nodes["a1"], SystemClock())
    stopping = asyncio.Event()
    task = asyncio.create_task(publisher.run(stopping))
    while not publisher.connected:
        await asyncio.sleep(0.02)
    print("connected", flush=True)
    await task

asyncio.run(main())
"""


async def test_server_state_is_retained_and_the_last_will_says_offline(tmp_path: Path) -> None:
    async with mosquitto_broker(tmp_path, login=LOGIN) as port:
        config = config_with_mqtt(tmp_path, port)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SCRIPT,
            str(port),
            *LOGIN,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            while (
                line := await asyncio.wait_for(process.stdout.readline(), 15.0)
            ) != b"connected\n":
                assert line, "the publishing process ended"  # other lines are its logs
            async with listening(port, SERVERS) as inbox:

                async def up() -> bool:
                    state = inbox.server("a1")
                    return state is not None and state["state"] == "up"

                await wait_until(up, 10.0)  # retained: published before we subscribed
                state = inbox.server("a1")
                assert state is not None
                assert (state["leader"], state["voter"], state["role"]) == (True, True, "active")
                printed = await states_printed(config)
                assert printed.split()[:5] == ["a1", "up", "active", "voter", "leader"]
                process.kill()  # no DISCONNECT: the broker sends the last will
                await asyncio.wait_for(process.wait(), 10.0)

                async def offline() -> bool:
                    state = inbox.server("a1")
                    return state is not None and state["state"] == "offline"

                await wait_until(offline, 10.0)
            assert (await states_printed(config)).split()[:2] == ["a1", "offline"]
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def states_printed(config: ClusterConfig) -> str:
    """What `moonwatch events` (without --follow) prints, run in a thread of its own."""
    out = io.StringIO()
    code = await asyncio.to_thread(
        events_command, config, follow=False, kind=None, as_json=False, out=out
    )
    assert code == 0
    return out.getvalue()


async def test_a_wrong_password_is_reported_in_status_and_nothing_crashes(tmp_path: Path) -> None:
    async with mosquitto_broker(tmp_path, login=LOGIN) as port:
        config = config_with_mqtt(tmp_path, port, password="not-the-password")
        async with running_agent(config) as agent:

            async def refused() -> Any:
                mqtt = (await agent.get("/v1/status"))["mqtt"]
                return mqtt if mqtt["last_error"] else None

            mqtt = await wait_until(refused, 15.0)
            assert mqtt["connected"] is False
            assert mqtt["last_error"].startswith(f"the broker refused user '{MQTT_USER}'")
            assert "check mqtt.username and the password" in mqtt["last_error"]
            await commit_modes(agent.consensus, 2, "still")  # decisions go on
            assert (await agent.get("/healthz"))["status"] == "ok"
            assert "moonwatch_mqtt_connected 0.0" in await agent.get("/metrics")


class GatedClock(SystemClock):
    """Real time whose sleeps wait while the gate is shut: holds a reconnect back."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()

    async def sleep(self, seconds: float) -> None:
        await self.gate.wait()
        await super().sleep(seconds)


async def test_a_broker_outage_buffers_events_and_sends_them_when_it_is_back(
    tmp_path: Path,
) -> None:
    _, nodes = await bootstrapped_log("a1")
    node = nodes["a1"]
    port = free_port_block(1)
    clock = GatedClock()
    publisher = EventPublisher(
        mqtt_config(port), "test", "a1", node, clock, capacity=4, backoff_max_s=0.5
    )
    async with publishing(publisher):
        async with mosquitto_broker(tmp_path, port, login=LOGIN), listening(port, EVENTS) as inbox:
            await commit_modes(node, 1, "before")

            async def sent() -> bool:
                return inbox.event_ids() == [d.id for d in decisions(node)]

            await wait_until(sent, 15.0)
        # The broker is SIGKILLed; the publisher finds out and waits to reconnect.
        await wait_until(lambda: _disconnected(publisher), 15.0)
        clock.gate.clear()
        await commit_modes(node, 6, "during")  # decisions keep committing
        during = [d.id for d in decisions(node)][-6:]

        async def buffered() -> bool:
            return publisher.buffer.ids() == during[2:]

        await wait_until(buffered, 5.0)
        assert publisher.status() == {
            "connected": False,
            "buffered": 4,
            "dropped": 2,
            "rejected_cursors": 0,
            "last_error": publisher.last_error,
        }
        assert publisher.last_error
        assert publisher.buffer.ids() == during[2:]  # the oldest went first
        async with mosquitto_broker(tmp_path, port, login=LOGIN), listening(port, EVENTS) as inbox:
            clock.gate.set()

            async def resent() -> bool:
                return inbox.event_ids() == during[2:]

            await wait_until(resent, 15.0)
            assert publisher.status()["buffered"] == 0
            assert publisher.status()["dropped"] == 2
            assert publisher.connected


async def _disconnected(publisher: EventPublisher) -> bool:
    return not publisher.connected


async def test_events_follow_prints_each_event_of_its_kind(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password.txt"
    secret.write_text(MQTT_PASSWORD + "\n")
    async with mosquitto_broker(tmp_path, login=LOGIN) as port:
        raw = cluster_config(tmp_path / "data")
        raw["mqtt"] = {"port": port, "username": MQTT_USER, "password_file": secret.name}
        config_path = write_config(tmp_path / "cluster.yml", raw)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "events",
            "--follow",
            "--kind",
            "server_failed",
            "--config",
            str(config_path),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            line = await _publish_until_printed(port, process.stdout)
            assert "server_failed" in line and " a2 " in line
            assert "a2 was declared failed" in line
            assert "mode_changed" not in line
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 10.0) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _publish_until_printed(port: int, stdout: asyncio.StreamReader) -> str:
    """Publish events (until the CLI has subscribed and prints one); the first line."""
    read = asyncio.ensure_future(stdout.readline())
    async with aiomqtt.Client("127.0.0.1", port, username=LOGIN[0], password=LOGIN[1]) as client:
        for n in range(1, 100):
            other = Decision(id=f"d{2 * n:06d}", kind="mode_changed", at=1.0, subject="test")
            failed = Decision(
                id=f"d{2 * n + 1:06d}",
                kind="server_failed",
                at=1_700_000_000.0,
                subject="a2",
                evidence={"observers": ["a1", "a3"], "eligible": ["a1", "a3"], "required": 2},
            )
            for decision in (other, failed):
                payload = encode(decision_event(decision, "test"))
                await client.publish(f"moonwatch/test/events/{decision.kind}", payload, qos=1)
            done, _ = await asyncio.wait({read}, timeout=0.2)
            if done:
                return read.result().decode()
    read.cancel()
    raise AssertionError("moonwatch events --follow printed nothing")


async def test_the_managed_broker_wants_the_configured_login(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    # Run as root, mosquitto reads its password file as its own user: a directory it can enter.
    base = Path(tempfile.mkdtemp(prefix="moonwatch-up-"))
    os.chmod(base, 0o755)
    port = free_port_block(1)
    try:
        raw = cluster_config(base / "var")
        raw["mqtt"] = {"port": port, "managed": True, "username": MQTT_USER, "password": "pw-1"}
        config = parse_config(raw, base, {})
        cluster = LocalCluster(base / "cluster.yml", config, SystemClock())
        assert config.mqtt is not None
        try:
            broker = await cluster.start_broker(config.mqtt)
            assert broker is not None
            text = broker.config_path.read_text()
            assert "allow_anonymous false" in text and "password_file" in text
            assert "acl_file" in text
            passwd = config.data_dir / "mosquitto.passwd"
            assert oct(passwd.stat().st_mode & 0o777) == "0o600"
            assert "pw-1" not in passwd.read_text()
            async with aiomqtt.Client("127.0.0.1", port, username=MQTT_USER, password="pw-1") as c:
                await c.publish("moonwatch/test/ping", b"x", qos=1)
            for username, password in ((None, None), (MQTT_USER, "wrong")):
                with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
                    async with aiomqtt.Client(
                        "127.0.0.1", port, username=username, password=password
                    ):
                        pass
        finally:
            await cluster.stop(timeout_s=5.0)
    finally:
        shutil.rmtree(base, ignore_errors=True)
