"""A moonwatch cluster in the network lab: its cluster.yml on lab addresses, one agent per
server namespace (its own process group), mosquitto in the broker's namespace, and the
agents' HTTP API read over the management links."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml

from tests.chaos.netlab import BROKER, Topology, kill_group, remove_leftovers, require_lab
from tests.support import REPO, mosquitto_binary

AGENT_PORT, RAFT_PORT, EDGE_PORT, APP_PORT, MQTT_PORT = 7000, 7001, 7002, 7100, 1883
BASE_DOMAIN = "lab.test"
API_TOKEN = "netlab-api-token"


def server_names(actives: int = 3, spares: int = 2) -> list[str]:
    """The lab's server names: a1.. for the actives, then p1.. for the spares."""
    return [f"a{i + 1}" for i in range(actives)] + [f"p{i + 1}" for i in range(spares)]


def lab_config(
    topo: Topology,
    data_dir: Path,
    actives: int,
    spares: int,
    voters: int,
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The cluster.yml of a lab: a1.. active, p1.. spare, one slot of two tenants per active."""
    names = server_names(actives, spares)
    servers = [
        {
            "name": name,
            "host": topo.hosts[name].address,
            "agent_port": AGENT_PORT,
            "raft_port": RAFT_PORT,
            "edge_port": EDGE_PORT,
            "app_port": APP_PORT,
            "role": "active" if name.startswith("a") else "spare",
            "domain": f"rack-{i % 3}",
        }
        for i, name in enumerate(names)
    ]
    slots = [
        {"name": f"s{i + 1}", "owner": f"a{i + 1}", "tenants": [f"t{i + 1}a", f"t{i + 1}b"]}
        for i in range(actives)
    ]
    return {
        "cluster": "netlab",
        "base_domain": BASE_DOMAIN,
        "data_dir": str(data_dir),
        "secrets": {"raft_password": "netlab-raft-password", "api_token": API_TOKEN},
        "servers": servers,
        "voters": names[:voters],
        "slots": slots,
        "timing": {"shutdown_timeout_s": 5.0, **(timing or {})},
        # Lab scenarios test detection and fencing, not chain-failure suppression.
        "cascade": {"min_verdicts": 10},
        "throttle": {"limits": {"rps": 100000.0, "share": None, "concurrent": 10000}},
        "mqtt": {"host": topo.hosts[BROKER].address, "port": MQTT_PORT, "managed": False},
    }


class LabCluster:
    """Agents and a broker in a Topology. Use as `async with LabCluster.build(...)`."""

    def __init__(self, topo: Topology, workdir: Path, config: dict[str, Any]) -> None:
        self.topo = topo
        self.workdir = workdir
        self.config = config
        self.config_path = workdir / "cluster.yml"
        self.data_dir = Path(config["data_dir"])
        self.log_dir = workdir / "logs"
        self.names = [s["name"] for s in config["servers"]]
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.broker: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self.own_disk: set[str] = set()  # servers whose state directory is their own tmpfs

    @classmethod
    @contextlib.asynccontextmanager
    async def build(
        cls,
        workdir: Path,
        actives: int = 3,
        spares: int = 2,
        voters: int = 3,
        timing: dict[str, float] | None = None,
        tmpfs_mb: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Any:
        """A started, serving lab cluster; everything is removed on exit. `tmpfs_mb` gives
        servers a tmpfs of that size as their own state directory (data_dir/servers/NAME),
        which their agent also watches as its disk; `extra` adds top-level config keys."""
        require_lab()
        remove_leftovers()
        topo = Topology(server_names(actives, spares))
        workdir = workdir / f"mw-lab-{topo.suffix}"
        workdir.mkdir(parents=True)
        config = lab_config(topo, workdir / "data", actives, spares, voters, timing)
        config.update(extra or {})
        lab = cls(topo, workdir, config)
        lab.own_disk = set(tmpfs_mb or {})
        try:
            topo.create()
            for name, size in (tmpfs_mb or {}).items():
                topo.mount_tmpfs(lab.data_dir / "servers" / name, size)
            await lab.start()
            yield lab
        finally:
            await lab.stop()
            topo.close()

    def server_config_path(self, name: str) -> Path:
        """The config `name`'s agent reads: the shared one, but for a server with its own
        disk the local key `resources.disk_path` (left out of the config digest) points there."""
        if name not in self.own_disk:
            return self.config_path
        path = self.workdir / f"cluster-{name}.yml"
        config = dict(self.config)
        disk = str(self.data_dir / "servers" / name)
        config["resources"] = {**config.get("resources", {}), "disk_path": disk}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    async def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await self.start_broker()
        for name in self.names:
            await self.start_agent(name)
        pending = await self.wait_ready(60.0)
        assert not pending, f"agents not ready: {pending}; logs in {self.log_dir}"
        assert await self.wait_serving(60.0), f"not all slots serving; logs in {self.log_dir}"

    async def spawn(self, host: str, argv: list[str], log_name: str) -> asyncio.subprocess.Process:
        log: IO[bytes]
        with (self.log_dir / log_name).open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                "nsenter",
                f"--net={self.topo.hosts[host].netns_path}",
                "--",
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        self.topo.record.add_process(process.pid)
        return process

    async def start_agent(self, name: str) -> asyncio.subprocess.Process:
        config = str(self.server_config_path(name))
        argv = [sys.executable, "-m", "agent", "agent", "--config", config]
        self.processes[name] = await self.spawn(name, [*argv, "--server", name], f"{name}.log")
        return self.processes[name]

    async def restart_agent(self, name: str, timeout_s: float = 10.0) -> asyncio.subprocess.Process:
        """Start `name`'s agent again in its namespace once its previous process (killed by
        the caller, e.g. `signal(name, SIGKILL)`) has exited; the new one is recorded like
        the first, so `stop` and the lab record still remove it."""
        previous = self.processes[name]
        if previous.returncode is None:
            await asyncio.wait_for(previous.wait(), timeout_s)
        return await self.start_agent(name)

    async def start_broker(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            return  # the agents work without a broker; MQTT is never needed for safety
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {MQTT_PORT} {self.topo.hosts[BROKER].address}\nallow_anonymous true\n"
            "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        )
        conf.chmod(0o644)
        self.broker = await self.spawn(BROKER, [binary, "-c", str(conf)], "mosquitto.log")

    async def stop_broker(self) -> None:
        if self.broker is not None and self.broker.returncode is None:
            kill_group(self.broker.pid, None)
            await asyncio.wait_for(self.broker.wait(), 5.0)

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Signal `name`'s whole process group (agent and app instances)."""
        process = self.processes[name]
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)

    async def stop(self) -> None:
        """SIGCONT and SIGTERM every agent group, wait, SIGKILL what is left; stop the broker."""
        for name in self.processes:
            self.signal(name, signal.SIGCONT)
            self.signal(name, signal.SIGTERM)
        waits = [asyncio.wait_for(p.wait(), 15.0) for p in self.processes.values()]
        await asyncio.gather(*waits, return_exceptions=True)
        for process in self.processes.values():
            kill_group(process.pid, None)  # orphaned app instances left in the group
        await asyncio.gather(
            *(asyncio.wait_for(p.wait(), 5.0) for p in self.processes.values()),
            return_exceptions=True,
        )
        with contextlib.suppress(TimeoutError):
            await self.stop_broker()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ------------------------------------------------------------ reading the agents

    def url(self, name: str, port: int, path: str) -> str:
        return f"http://{self.topo.hosts[name].address}:{port}{path}"

    def app_url(self, name: str, slot: str, path: str) -> str:
        index = next(i for i, s in enumerate(self.config["slots"]) if s["name"] == slot)
        return self.url(name, APP_PORT + index, path)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            timeout = aiohttp.ClientTimeout(total=1.0)
            self._http = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    async def get_json(self, name: str, path: str, timeout_s: float = 1.0) -> Any:
        """GET the agent API of `name`; None when it does not answer 200 with JSON."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.http.get(self.url(name, AGENT_PORT, path)) as resp:
                    return await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    def alive(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.returncode is None]

    async def status(self, among: list[str] | None = None) -> dict[str, Any] | None:
        for name in among or self.alive():
            doc = await self.get_json(name, "/v1/status")
            if doc is not None:
                return dict(doc)
        return None

    async def leader(self, among: list[str] | None = None) -> str | None:
        """The leader all of `among` (default: every agent) agree on, if they do."""
        names = among or self.names
        docs = await asyncio.gather(*(self.get_json(n, "/v1/status") for n in names))
        leaders = {d["leader"] if d else None for d in docs}
        return leaders.pop() if len(leaders) == 1 else None

    async def decisions(self, among: list[str] | None = None) -> list[dict[str, Any]]:
        """Every committed decision any agent of `among` (default: all alive) has applied, in
        commit order: one that just rejoined, or is cut off, may be behind the others, and
        reading only it would hide decisions (a checker would miss a verdict)."""
        names = among or self.alive()
        docs = await asyncio.gather(*(self.get_json(n, "/v1/decisions") for n in names))
        merged: dict[str, dict[str, Any]] = {}
        for doc in docs:
            for decision in (doc or {}).get("decisions", []):
                merged.setdefault(decision["id"], decision)
        return sorted(merged.values(), key=lambda d: d["id"])

    async def verdicts(self, among: list[str] | None = None) -> list[dict[str, Any]]:
        """Every committed `server_failed` decision."""
        return [d for d in await self.decisions(among) if d["kind"] == "server_failed"]

    async def wait_ready(self, timeout_s: float) -> list[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = list(self.names)
        while pending and loop.time() < deadline and self.alive():  # none alive: config error
            answers = await asyncio.gather(*(self.get_json(n, "/readyz") for n in pending))
            pending = [n for n, a in zip(pending, answers, strict=True) if a is None]
            await asyncio.sleep(0.2)
        return pending

    async def wait_serving(self, timeout_s: float, among: list[str] | None = None) -> bool:
        """Until an agent reports every slot serving on a live owner."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            doc = await self.status(among)
            if doc and all(s["state"] == "serving" for s in doc["slots"]):
                return True
            await asyncio.sleep(0.2)
        return False
