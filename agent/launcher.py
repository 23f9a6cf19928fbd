"""LocalCluster: every server of a config as its own local process group (`moonwatch up`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import aiohttp

from agent.broker_auth import BrokerAuth, write_broker_auth
from agent.clock import Clock
from agent.config import ClusterConfig, MqttConfig

# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
MOSQUITTO_DIRS: Final = ("/usr/sbin", "/usr/local/sbin")
BROKER_START_TIMEOUT_S: Final = 5.0


@dataclass
class LocalServer:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pgid(self) -> int:
        """The agent leads its own process group; its app instances are in it."""
        return self.process.pid


def ports_in_use(config: ClusterConfig, servers: list[str] | None = None) -> list[str]:
    """Each port the given servers need that something already listens on, as a sentence."""
    taken: list[str] = []
    for server in config.servers:
        if servers is not None and server.name not in servers:
            continue
        wanted = {  # any server may become a Raft voter, so every raft_port counts
            "agent_port": server.agent_port,
            "raft_port": server.raft_port,
            "edge_port": server.edge_port,
            **{
                f"app_port for {slot.name}": config.app_port(server.name, slot.name)
                for slot in config.slots
            },
        }
        for what, port in wanted.items():
            if not _can_bind(server.host, port):
                taken.append(f"{server.host}:{port} ({server.name} {what}) is already in use")
    if servers is None:
        taken += _broker_port_taken(config.mqtt)
    return taken


def _broker_port_taken(mqtt: MqttConfig | None) -> list[str]:
    """The managed broker's port, if `moonwatch up` will start one there and it is taken."""
    if mqtt is None or not mqtt.managed or find_mosquitto() is None:
        return []
    if _can_bind(mqtt.host, mqtt.port):
        return []
    return [f"{mqtt.host}:{mqtt.port} (mqtt port of the managed broker) is already in use"]


def find_mosquitto() -> str | None:
    """The mosquitto executable: on PATH or in the usual sbin directories; None if missing."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *MOSQUITTO_DIRS])
    return shutil.which("mosquitto", path=search)


def mosquitto_config(mqtt: MqttConfig, auth: BrokerAuth | None = None) -> str:
    """A broker for the local demo: one loopback listener, no persistence, log on stderr
    (mosquitto drops root privileges before it opens a log file, so we keep its stderr).
    With `auth` only its user may connect, and only to the topic prefix."""
    return "\n".join(
        [
            "# written by `moonwatch up` for its own broker; rewritten at every start",
            f"listener {mqtt.port} {mqtt.host}",
            *(auth.config_lines() if auth is not None else ["allow_anonymous true"]),
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "",
        ]
    )


# MQTT 3.1.1 CONNECT (clean session, keepalive 60 s, empty client id) and its CONNACK.
_CONNECT: Final = bytes.fromhex("100c00044d5154540402003c0000")
_CONNACK: Final = bytes.fromhex("2002")
_DISCONNECT: Final = bytes.fromhex("e000")


async def _mqtt_answers(host: str, port: int, timeout_s: float) -> bool:
    """Whether an MQTT broker answers a connection on host:port within `timeout_s`."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(_CONNECT)
        answer = await asyncio.wait_for(reader.readexactly(4), timeout_s)
        writer.write(_DISCONNECT)
        return answer[:2] == _CONNACK  # refusing an anonymous login is an answer too
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class ManagedBroker:
    """The mosquitto that `moonwatch up` runs, as its own process group."""

    process: asyncio.subprocess.Process
    config_path: Path
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.process.pid


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class LocalCluster:
    """Starts, kills and stops agents of one config on this machine. Only ever signals the
    process groups it started itself."""

    def __init__(self, config_path: Path, config: ClusterConfig, clock: Clock) -> None:
        self.config_path = config_path
        self.config = config
        self.clock = clock
        self.servers: dict[str, LocalServer] = {}
        self.log_dir = config.data_dir / "logs"
        self.broker: ManagedBroker | None = None
        self.broker_problem: str | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self, names: list[str] | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.config.mqtt is not None and self.config.mqtt.managed and self.broker is None:
            await self.start_broker(self.config.mqtt)
        for server in self.config.servers:
            if names is None or server.name in names:
                await self.start_server(server.name)

    async def start_broker(self, mqtt: MqttConfig) -> ManagedBroker | None:
        """Start mosquitto on mqtt.host:mqtt.port and wait until it accepts connections. On
        failure, say why on stderr and go on without it: the agents then send their traffic
        reports to the leader over HTTP."""
        binary = find_mosquitto()
        if binary is None:
            self._no_broker("mosquitto is not installed (not on PATH nor in /usr/sbin)", mqtt)
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.config.data_dir / "mosquitto.conf"
        login = mqtt.login
        auth = write_broker_auth(self.config.data_dir, *login, mqtt.topic_prefix) if login else None
        config_path.write_text(mosquitto_config(mqtt, auth))
        log_path = self.log_dir / "mosquitto.log"
        log: IO[bytes]
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        broker = ManagedBroker(process, config_path, log_path)
        if not await self._accepts(mqtt, process):
            await self._stop_broker(broker)
            self._no_broker(f"mosquitto did not start (see {log_path})", mqtt)
            return None
        self.broker = broker
        return broker

    async def _accepts(self, mqtt: MqttConfig, process: asyncio.subprocess.Process) -> bool:
        """Until our mosquitto answers an MQTT CONNECT (a mere TCP accept could come from
        someone else on the port), or exits, or BROKER_START_TIMEOUT_S has passed."""
        deadline = self.clock.monotonic() + BROKER_START_TIMEOUT_S
        while process.returncode is None and self.clock.monotonic() < deadline:
            if await _mqtt_answers(mqtt.host, mqtt.port, timeout_s=0.5):
                return process.returncode is None
            await self.clock.sleep(0.05)
        return False

    def _no_broker(self, why: str, mqtt: MqttConfig) -> None:
        self.broker_problem = why
        print(
            f"moonwatch up: {why}; running without an MQTT broker on {mqtt.host}:{mqtt.port}"
            " (the agents send their traffic reports to the leader over HTTP)",
            file=sys.stderr,
            flush=True,
        )

    async def _stop_broker(self, broker: ManagedBroker) -> None:
        """SIGTERM the broker's process group, then SIGKILL it if it is still there after 2 s
        (mosquitto forks nothing: once it is reaped, its group is gone)."""
        for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            if broker.process.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(broker.pgid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(broker.process.wait(), wait_s)

    async def start_server(self, name: str) -> LocalServer:
        log_path = self.log_dir / f"{name}.log"
        log: IO[bytes]
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent",
                "agent",
                "--config",
                str(self.config_path),
                "--server",
                name,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers[name] = LocalServer(name, process, log_path)
        return self.servers[name]

    def alive(self) -> list[str]:
        return [n for n, s in self.servers.items() if s.process.returncode is None]

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a whole server (agent and its apps), as a machine failure would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.servers[name].pgid, sig)

    async def wait_exit(self, name: str, timeout_s: float) -> int | None:
        try:
            return await asyncio.wait_for(self.servers[name].process.wait(), timeout_s)
        except TimeoutError:
            return None

    async def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every group, wait, then SIGKILL whatever is left of each group."""
        for name in self.servers:
            self.kill(name, signal.SIGTERM)
        await asyncio.gather(*(self.wait_exit(n, timeout_s) for n in self.servers))
        for name in self.servers:
            self.kill(name, signal.SIGKILL)  # leftovers in the group, such as orphaned apps
        await asyncio.gather(*(self.wait_exit(n, 2.0) for n in self.servers))
        if self.broker is not None:
            await self._stop_broker(self.broker)
            self.broker = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def get_json(self, name: str, path: str) -> tuple[int, dict[str, object]] | None:
        """GET an agent's API path; None when the agent does not answer."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        url = self.config.server(name).agent_url + path
        try:
            async with self._http.get(url) as resp:
                body = await resp.json()
                return resp.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def wait_ready(self, timeout_s: float, names: list[str] | None = None) -> list[str]:
        """Wait until every named agent answers /readyz with 200; returns those still not ready."""
        deadline = self.clock.monotonic() + timeout_s
        pending = list(names if names is not None else self.servers)
        while pending and self.clock.monotonic() < deadline:
            results = await asyncio.gather(*(self.get_json(n, "/readyz") for n in pending))
            pending = [n for n, r in zip(pending, results, strict=True) if r is None or r[0] != 200]
            if pending:
                await self.clock.sleep(0.1)
        return pending

    async def wait_serving(self, timeout_s: float) -> bool:
        """Wait until some agent reports every slot serving; False on timeout."""
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline:
            for name in self.alive():
                answer = await self.get_json(name, "/v1/status")
                slots = answer[1].get("slots") if answer else None
                if isinstance(slots, list) and slots:
                    if all(isinstance(s, dict) and s.get("state") == "serving" for s in slots):
                        return True
                    break
            await self.clock.sleep(0.1)
        return False

    def write_manifest(self, path: Path) -> None:
        """Who runs where, for scripts: pids, process groups, URLs and log files."""
        manifest = {
            name: {
                "pid": s.process.pid,
                "pgid": s.pgid,
                "agent_url": self.config.server(name).agent_url,
                "edge_url": self.config.server(name).edge_url,
                "log": str(s.log_path),
            }
            for name, s in self.servers.items()
        }
        path.write_text(json.dumps(manifest, indent=2) + "\n")
