"""The real `moonwatch up` with a managed Mosquitto that wants a password: the agents log in
and keep their retained states, strangers are refused, the ACL holds the agents' user to its
topic prefix, a SIGKILLed server's last will and failure events arrive, and Ctrl-C stops the
broker and every agent. A config whose password file is missing starts nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.support import (
    MQTT_PASSWORD,
    MQTT_USER,
    REPO,
    cluster_config,
    free_port_block,
    mosquitto_binary,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]

PREFIX = "moonwatch/test"
SERVERS = f"{PREFIX}/servers/+"
EVENTS = f"{PREFIX}/events/+"
PASSWORD_ENV = "MOONWATCH_TEST_MQTT_PASSWORD"


@dataclass
class Inbox:
    """JSON messages one subscriber received, in order, and whether its connection broke."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lost: bool = False

    def state(self, server: str) -> dict[str, Any] | None:
        states = [doc for topic, doc in self.messages if topic == f"{PREFIX}/servers/{server}"]
        return states[-1] if states else None

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Events of `kind`, each once (QoS 1 may deliver one twice; its id tells)."""
        found = {d["id"]: d for t, d in self.messages if t == f"{PREFIX}/events/{kind}"}
        return list(found.values())


@contextlib.asynccontextmanager
async def listening(port: int, *topics: str) -> AsyncIterator[Inbox]:
    """A subscriber with the agents' login until the block ends (or the broker goes)."""
    inbox = Inbox()
    async with aiomqtt.Client(
        "127.0.0.1", port, username=MQTT_USER, password=MQTT_PASSWORD, timeout=5.0
    ) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def pump() -> None:
            try:
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    inbox.messages.append((str(message.topic), json.loads(message.payload)))
            except aiomqtt.MqttError:
                inbox.lost = True

        task = asyncio.create_task(pump())
        try:
            yield inbox
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A data directory the broker can reach: run as root, mosquitto drops to its own user
    before it reads the password file, and pytest's tmp_path is for root only."""
    base = Path(tempfile.mkdtemp(prefix="moonwatch-up-auth-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def up_config(tmp_path: Path, data_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Three actives, one spare and a managed broker whose password is in a file."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    raw = cluster_config(data_dir, actives=3, spares=1)
    taken = {s[key] for s in raw["servers"] for key in ("agent_port", "raft_port", "edge_port")}
    taken |= {s["app_port"] + i for s in raw["servers"] for i in range(len(raw["slots"]))}
    port = free_port_block(1)
    while port in taken:
        port = free_port_block(1)
    (tmp_path / "mqtt-password.txt").write_text(MQTT_PASSWORD + "\n")
    raw["mqtt"] = {
        "host": "127.0.0.1",
        "port": port,
        "managed": True,
        "username": MQTT_USER,
        "password_file": "mqtt-password.txt",
    }
    return write_config(tmp_path / "cluster.yml", raw), raw


def publish_reason(port: int, topic: str) -> ReasonCode | None:
    """Publish at QoS 1 over MQTT 5 with the agents' login and return the broker's PUBACK
    reason (aiomqtt does not hand it on); None if none came within 10 s. Blocking."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.username_pw_set(MQTT_USER, MQTT_PASSWORD)
    connected: list[ReasonCode] = []
    acked: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.append(reason)
    client.on_publish = lambda _c, _u, _mid, reason, _p: acked.append(reason)
    deadline = time.monotonic() + 10.0
    client.connect("127.0.0.1", port)
    try:
        while not connected and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        assert connected and not connected[0].is_failure, f"login refused: {connected}"
        client.publish(topic, b"probe", qos=1)
        while not acked and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        client.disconnect()
    return acked[0] if acked else None


async def sys_topic_is_hidden(port: int) -> bool:
    """Whether the agents' user does not get the broker's retained `$SYS/broker/version` (the
    ACL grants it nothing outside the prefix). Mosquitto grants every subscription and checks
    read access per message, and it sends a subscription's retained messages before it reads
    the next packet: once our own marker is back, the retained one would have come first."""
    marker = f"{PREFIX}/probe/read-acl"
    received: list[str] = []
    async with aiomqtt.Client(
        "127.0.0.1", port, username=MQTT_USER, password=MQTT_PASSWORD, timeout=5.0
    ) as client:
        await client.subscribe("$SYS/broker/version", qos=1)
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"marker", qos=1)
        async with asyncio.timeout(10.0):
            async for message in client.messages:
                received.append(str(message.topic))
                if str(message.topic) == marker:
                    break
    return received == [marker]


async def refused(port: int, username: str | None, password: str | None) -> str:
    """The broker's answer to a login it must refuse, as aiomqtt words it."""
    with pytest.raises(aiomqtt.MqttError) as refusal:
        async with aiomqtt.Client(
            "127.0.0.1", port, username=username, password=password, timeout=5.0
        ):
            pass
    return str(refusal.value)


def broker_of(up_pid: int, config_path: Path) -> psutil.Process:
    """The mosquitto that `moonwatch up` started (its child, reading our data dir's config)."""
    for child in psutil.Process(up_pid).children():
        with contextlib.suppress(psutil.Error):
            if child.name() == "mosquitto" and str(config_path) in child.cmdline():
                return child
    raise AssertionError(f"moonwatch up (pid {up_pid}) runs no mosquitto")


def live_in_group(pgid: int) -> list[int]:
    """Processes (zombies left out) of process group `pgid`."""
    found = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                found.append(process.pid)
    return found


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class Follower:
    """`moonwatch events --follow --json` as a subprocess, and the events it printed."""

    process: asyncio.subprocess.Process
    printed: list[dict[str, Any]] = field(default_factory=list)

    async def read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.printed.append(json.loads(line))

    def ids(self, kind: str) -> list[tuple[str, str]]:
        return [(e["kind"], e["subject"]) for e in self.printed if e.get("kind") == kind]


@contextlib.asynccontextmanager
async def following(tmp_path: Path, raw: dict[str, Any]) -> AsyncIterator[Follower]:
    """`moonwatch events --follow` with the same login given as password_env this time."""
    events_raw = {**raw, "mqtt": {**raw["mqtt"], "password_env": PASSWORD_ENV}}
    del events_raw["mqtt"]["password_file"]
    path = write_config(tmp_path / "events.yml", events_raw)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "agent", "events", "--follow", "--json", "--config", str(path)),
        cwd=REPO,
        env={**os.environ, PASSWORD_ENV: MQTT_PASSWORD},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    follower = Follower(process)
    reader = asyncio.create_task(follower.read())
    try:
        yield follower
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15.0) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def subscribed(follower: Follower, port: int) -> None:
    """Publish a probe event until the follower prints it: from then on it misses nothing."""
    async with aiomqtt.Client(
        "127.0.0.1", port, username=MQTT_USER, password=MQTT_PASSWORD, timeout=5.0
    ) as client:

        async def printed() -> bool:
            probe = {"id": "probe", "kind": "probe", "subject": "test", "at": 0.0}
            await client.publish(f"{PREFIX}/events/probe", json.dumps(probe), qos=1)
            return bool(follower.ids("probe"))

        await wait_until(printed, 20.0, interval_s=0.25)


@dataclass
class Up:
    """A running `moonwatch up` subprocess, its output files and what it started."""

    process: asyncio.subprocess.Process
    out: Path
    err: Path
    manifest: Path

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def pgids(self) -> dict[str, int]:
        doc = json.loads(self.manifest.read_text())
        return {name: int(entry["pgid"]) for name, entry in doc.items()}


@contextlib.asynccontextmanager
async def moonwatch_up(tmp_path: Path, config_path: Path, data_dir: Path) -> AsyncIterator[Up]:
    """`moonwatch up` in its own process group. On the way out whatever is still running of
    it is killed: its group, then the agents' groups of its manifest and its broker."""
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "agent", "up", "--config", str(config_path)),
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    up = Up(process, out, err, data_dir / "up.json")
    broker: psutil.Process | None = None
    try:
        broker = await wait_until(lambda: _broker_started(up, data_dir), 20.0, interval_s=0.1)
        yield up
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 20.0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        for pgid in up.pgids().values() if up.manifest.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if broker is not None and not gone(broker):
            broker.kill()


async def _broker_started(up: Up, data_dir: Path) -> psutil.Process | None:
    assert up.process.returncode is None, f"moonwatch up ended early:\n{up.output()}"
    if not up.manifest.exists():  # written once the broker accepts logins and agents run
        return None
    assert "without an MQTT broker" not in up.output(), up.output()
    return broker_of(up.process.pid, data_dir / "mosquitto.conf")


async def states_up(inbox: Inbox, names: list[str]) -> bool:
    states = [inbox.state(name) for name in names]
    return all(s is not None and s["state"] == "up" for s in states)


async def test_up_with_a_password_protected_broker(tmp_path: Path, reachable_dir: Path) -> None:
    data_dir = reachable_dir / "data"
    config_path, raw = up_config(tmp_path, data_dir)
    port = raw["mqtt"]["port"]
    names = [s["name"] for s in raw["servers"]]
    async with moonwatch_up(tmp_path, config_path, data_dir) as up:
        broker = broker_of(up.process.pid, data_dir / "mosquitto.conf")
        assert MQTT_PASSWORD not in (data_dir / "mosquitto.passwd").read_text()
        assert (data_dir / "mosquitto.acl").read_text() == (
            f"user {MQTT_USER}\ntopic readwrite moonwatch/#\n"
        )

        # (1) The agents logged in with the password of the file: their retained states.
        async with listening(port, SERVERS, EVENTS) as inbox:
            await wait_until(lambda: states_up(inbox, names), 45.0, interval_s=0.2)

            # (2) No login, a wrong password, an unknown user: refused at CONNACK.
            for username, password in ((None, None), (MQTT_USER, "wrong"), ("intruder", "x")):
                assert "Not authorized" in await refused(port, username, password)
            # The right login may write under the prefix only, and read nothing else.
            inside = await asyncio.to_thread(publish_reason, port, f"{PREFIX}/probe/write")
            outside = await asyncio.to_thread(publish_reason, port, "elsewhere/probe")
            assert inside is not None and not inside.is_failure, inside
            assert outside is not None and str(outside) == "Not authorized"
            assert await sys_topic_is_hidden(port)

            # (3) SIGKILL a server that is not the leader: its will, a verdict, a new owner.
            states = {name: inbox.state(name) or {} for name in names}
            victim = next(n for n in ("a1", "a2", "a3") if not states[n].get("leader"))
            pgid = up.pgids()[victim]
            async with following(tmp_path, raw) as follower:
                await subscribed(follower, port)
                os.killpg(pgid, signal.SIGKILL)

                async def offline() -> bool:
                    return inbox.state(victim) == {"server": victim, "state": "offline"}

                await wait_until(offline, 15.0)

                async def replaced() -> list[dict[str, Any]]:
                    return [
                        e
                        for e in inbox.events("slot_assigned")
                        if e["evidence"].get("previous_owner") == victim
                    ]

                moved = await wait_until(replaced, 40.0, interval_s=0.2)
                assert [e["evidence"]["owner"] for e in moved] == ["p1"]
                assert [e["subject"] for e in inbox.events("server_failed")] == [victim]

                async def followed() -> bool:
                    return follower.ids("server_failed") == [("server_failed", victim)]

                await wait_until(followed, 10.0)
            await wait_until(lambda: _said(up, f"{victim} (pgid {pgid}) stopped: signal 9"), 10.0)

            # (4) Ctrl-C: every agent stops (saying so on the broker), then the broker.
            up.process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(up.process.wait(), 30.0) == 0, up.output()
        assert "stopped." in up.output()
        assert gone(broker), f"broker pid {broker.pid} is still running"
        for name, group in up.pgids().items():
            assert live_in_group(group) == [], f"{name}'s process group {group} is still there"
        survivors = [n for n in names if n != victim]
        finals = [inbox.state(n) or {} for n in survivors]
        assert [s.get("state") for s in finals] == ["offline"] * len(survivors)
        assert all("at" in s for s in finals)  # said by a stopping agent, not by its will


async def _said(up: Up, text: str) -> bool:
    return text in up.out.read_text(errors="replace")


async def test_sigterm_while_starting_stops_everything(tmp_path: Path, reachable_dir: Path) -> None:
    """A signal during the start-up wait (up to a minute when an agent is slow) is not held
    back until the cluster serves: `moonwatch up` stops its agents and broker at once."""
    data_dir = reachable_dir / "data"
    config_path, _ = up_config(tmp_path, data_dir)
    async with moonwatch_up(tmp_path, config_path, data_dir) as up:
        broker = broker_of(up.process.pid, data_dir / "mosquitto.conf")
        up.process.send_signal(signal.SIGTERM)  # the agents were spawned a moment ago
        assert await asyncio.wait_for(up.process.wait(), 30.0) == 0, up.output()
        out = up.out.read_text()
        assert "stopped." in out
        assert "as seen by" not in out, out  # it did not wait for the cluster to serve first
        assert gone(broker), f"broker pid {broker.pid} is still running"
        for name, group in up.pgids().items():
            assert live_in_group(group) == [], f"{name}'s process group {group} is still there"


def test_up_refuses_a_missing_mqtt_password_file(tmp_path: Path) -> None:
    config_path, _ = up_config(tmp_path, tmp_path / "data")
    (tmp_path / "mqtt-password.txt").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "agent", "up", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    missing = tmp_path / "mqtt-password.txt"
    assert f"mqtt.password: cannot read password_file {str(missing)!r}" in done.stderr
    assert "No such file or directory" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "data").exists()  # no agent, no broker, no files
