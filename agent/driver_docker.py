"""DockerDriver: each slot's app instance as a container of the locally built image
(agent/docker_image.py), supervised like a child process.

- The container shares the host's network and PID namespaces: it listens on the slot's port
  as a process would, and its process id is the one its own overlap records carry.
- The lease travels on the container's stdin, through an attach this driver holds open
  (StdinOnce): when the agent dies, the attach closes, the app reads EOF and stops serving and
  exits, exactly as a child process would. The same attach carries the app's output to the
  agent's own stdout and stderr, and its end tells the driver the container has exited.
- Hardened: read-only root filesystem with a private /tmp, every capability dropped,
  no-new-privileges, the agent's own user, optional memory and CPU limits, no restart by
  docker (the driver restarts with backoff and gives up, as for processes).
- Docker's own health check runs `python -m app.healthcheck` in the container (for operators:
  `docker ps` shows it); the driver's decisions use its own /healthz probe, as for processes.
- A starting agent removes the containers an earlier run of the same server left behind.

The Docker SDK is synchronous; every call runs in a thread. ensure_running returns once the
start is under way; a start that fails (no image, dockerd unreachable) ends the instance
with exit code 125 and the reason, and the driver's restart policy takes it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from agent.clock import Clock
from agent.config import ClusterConfig
from agent.docker_attach import ATTACH_TIMEOUT_S, LineCopier, attach
from agent.docker_client import open_docker
from agent.driver import DATABASE_URL_ENV, SupervisingDriver, app_arguments
from agent.instances import InstanceHandle, InstanceSpec, RestartPolicy

_log = structlog.get_logger("moonwatch.driver.docker")

# docker run's own exit code for "the container could not be started".
EXIT_NOT_STARTED: Final = 125
LABEL_CLUSTER: Final = "io.moonwatch.cluster"
LABEL_SERVER: Final = "io.moonwatch.server"
LABEL_SLOT: Final = "io.moonwatch.slot"
LABEL_EPOCH: Final = "io.moonwatch.epoch"
_EXIT_WAIT_S: Final = 15
_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class DockerSettings:
    url: str  # unix:///var/run/docker.sock or tcp://host:port
    image: str
    cluster: str
    server: str
    memory_mb: int | None = None
    cpus: float | None = None
    health_interval_s: float = 5.0
    tmp_mb: int = 64


class DockerDriver(SupervisingDriver):
    def __init__(
        self,
        settings: DockerSettings,
        clock: Clock,
        policy: RestartPolicy | None = None,
        busy: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(DockerRuntime(settings), clock, policy, busy)


def container_name(settings: DockerSettings, slot: str) -> str:
    return f"moonwatch-{settings.cluster}-{settings.server}-{slot}"


class DockerRuntime:
    def __init__(self, settings: DockerSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._swept = False
        self._lock = asyncio.Lock()
        self._entrypoints: dict[str, str] = {}

    async def spawn(self, spec: InstanceSpec) -> InstanceHandle:
        handle = ContainerHandle(self, container_name(self._settings, spec.slot))
        handle.begin(spec)
        return handle

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    async def client(self) -> Any:
        """The docker client, made on first use; leftovers of an earlier run are removed then."""
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(_connect, self._settings.url)
            if not self._swept:
                removed = await asyncio.to_thread(_sweep, self._client, self._settings)
                self._swept = True
                if removed:
                    _log.warning("containers_left_behind_removed", names=removed)
            return self._client

    def create_arguments(self, spec: InstanceSpec, python: str) -> dict[str, Any]:
        """Keyword arguments of the SDK's low-level create_container, the host configuration
        (create_host_config's arguments) under "host_config"."""
        s = self._settings
        url = f"http://{spec.address}/healthz"
        binds = {str(spec.data_dir): {"bind": str(spec.data_dir), "mode": "rw"}}
        if spec.overlap_log is not None:
            folder = str(spec.overlap_log.parent)
            binds[folder] = {"bind": folder, "mode": "rw"}
        check = [python, "-m", "app.healthcheck", url, "--slot", spec.slot]
        host_config: dict[str, Any] = {
            "network_mode": "host",
            "pid_mode": "host",
            "binds": binds,
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={s.tmp_mb}m"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "restart_policy": {"Name": "no"},
            "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
            **({"mem_limit": f"{s.memory_mb}m"} if s.memory_mb is not None else {}),
            **({"nano_cpus": int(s.cpus * _NS)} if s.cpus is not None else {}),
        }
        return {
            "image": s.image,
            "command": app_arguments(spec),
            "name": container_name(s, spec.slot),
            "labels": {
                LABEL_CLUSTER: s.cluster,
                LABEL_SERVER: s.server,
                LABEL_SLOT: spec.slot,
                LABEL_EPOCH: str(spec.epoch),
            },
            "environment": (
                {DATABASE_URL_ENV: spec.database_url} if spec.database_url is not None else {}
            ),
            # Not detached, with stdin open: the SDK sets StdinOnce (stdin closes when the
            # agent's attach ends) and attaches stdin, stdout and stderr.
            "stdin_open": True,
            "detach": False,
            "tty": False,
            "user": f"{os.getuid()}:{os.getgid()}",
            "volumes": sorted(binds),
            "healthcheck": {
                "test": ["CMD", *check, "--epoch", str(spec.epoch)],
                "interval": int(s.health_interval_s * _NS),
                "timeout": 3 * _NS,
                "retries": 3,
                "start_period": 15 * _NS,
            },
            "host_config": host_config,
        }

    @property
    def url(self) -> str:
        return self._settings.url

    @property
    def image(self) -> str:
        return self._settings.image

    def entrypoint_python(self, client: Any) -> str:
        """The interpreter the image runs the app with (its entrypoint's first word)."""
        image = client.images.get(self._settings.image)
        if image.id not in self._entrypoints:
            entrypoint = image.attrs.get("Config", {}).get("Entrypoint") or []
            if len(entrypoint) < 3 or entrypoint[1:3] != ["-m", "app"]:
                raise ValueError(f"image {self._settings.image} does not run `python -m app`")
            self._entrypoints[image.id] = entrypoint[0]
        return self._entrypoints[image.id]


class ContainerHandle:
    """One container, from the first API call to its removal."""

    def __init__(self, runtime: DockerRuntime, name: str) -> None:
        self._runtime = runtime
        self.name = name
        self.container_id: str | None = None
        self._pid = 0
        self._returncode: int | None = None
        self._reason = ""
        self._writer: asyncio.StreamWriter | None = None
        self._starting: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def exit_reason(self) -> str:
        return self._reason

    def begin(self, spec: InstanceSpec) -> None:
        self._starting = asyncio.create_task(self._start(spec), name=f"start {self.name}")

    def send(self, line: bytes) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing() or self._returncode is not None:
            return False
        writer.write(line)
        return True

    async def _start(self, spec: InstanceSpec) -> None:
        try:
            client = await self._runtime.client()
            python = await asyncio.to_thread(self._runtime.entrypoint_python, client)
            arguments = self._runtime.create_arguments(spec, python)
            container_id = await asyncio.to_thread(_create, client, arguments)
            self.container_id = container_id
            reader, self._writer = await attach(self._runtime.url, container_id)
            await asyncio.to_thread(client.api.start, container_id)
            state = await asyncio.to_thread(_state, client, container_id)
            self._pid = int(state.get("Pid") or 0)
        except Exception as exc:  # noqa: BLE001 (docker raises many kinds; each ends the start)
            self._end(EXIT_NOT_STARTED, _start_failure(exc, spec, self._runtime))
            await self._remove()
            return
        _log.info("container_started", name=self.name, pid=self._pid, id=container_id[:12])
        self._pump = asyncio.create_task(self._forward(reader), name=f"output {self.name}")

    async def _forward(self, reader: asyncio.StreamReader) -> None:
        """Copy the app's output until the attach ends, then learn how the container ended."""
        lines = {1: LineCopier(sys.stdout.buffer), 2: LineCopier(sys.stderr.buffer)}
        try:
            while True:
                header = await reader.readexactly(8)
                stream, size = header[0], struct.unpack(">I", header[4:])[0]
                data = await reader.readexactly(size)
                if stream in lines:
                    lines[stream].feed(data)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        code, reason = await self._exit_status()
        self._end(code, reason)
        await self._remove()

    async def _exit_status(self) -> tuple[int, str]:
        try:
            client = await self._runtime.client()
            result = await asyncio.to_thread(_wait, client, self.container_id)
        except Exception as exc:  # noqa: BLE001
            return 1, f"lost the container ({_one_line(exc)})"
        code, oom = result
        return code, "killed: out of memory" if oom else f"exited with {code}"

    def _end(self, code: int, reason: str) -> None:
        if self._returncode is None:
            self._returncode, self._reason = code, reason
        if self._writer is not None:
            self._writer.close()
        self._ended.set()

    async def terminate(self, timeout_s: float) -> None:
        if self._starting is not None and not self._starting.done():
            await asyncio.wait({self._starting}, timeout=ATTACH_TIMEOUT_S)
        if self.container_id is not None and not self._ended.is_set():
            with contextlib.suppress(Exception):
                client = await self._runtime.client()
                await asyncio.to_thread(_stop, client, self.container_id, timeout_s)
        try:
            await asyncio.wait_for(self._ended.wait(), max(timeout_s, 0.0) + _EXIT_WAIT_S)
        except TimeoutError:
            self._end(1, "did not end after it was stopped")
        if self._pump is not None:
            await asyncio.wait({self._pump}, timeout=_EXIT_WAIT_S)
        await self._remove()

    async def _remove(self) -> None:
        if self.container_id is None:
            return
        container_id, self.container_id = self.container_id, None
        try:
            client = await self._runtime.client()
            await asyncio.to_thread(_remove, client, container_id)
        except Exception as exc:  # noqa: BLE001
            _log.warning("container_not_removed", name=self.name, error=_one_line(exc))


# ---- synchronous Docker SDK calls (run in threads) ------------------------------------------


def _connect(url: str) -> Any:
    return open_docker(url, 30)


def _sweep(client: Any, settings: DockerSettings) -> list[str]:
    labels = [f"{LABEL_CLUSTER}={settings.cluster}", f"{LABEL_SERVER}={settings.server}"]
    found = client.containers.list(all=True, filters={"label": labels})
    for container in found:
        container.remove(force=True)
    return [container.name for container in found]


def _create(client: Any, arguments: dict[str, Any]) -> str:
    """Create the container (replacing a leftover of the same name); its id."""
    import docker

    arguments = {
        **arguments,
        "host_config": client.api.create_host_config(**arguments["host_config"]),
    }
    try:
        return str(client.api.create_container(**arguments)["Id"])
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: a container of that name is left over
            raise
    client.api.remove_container(arguments["name"], force=True)
    return str(client.api.create_container(**arguments)["Id"])


def _state(client: Any, container_id: str) -> dict[str, Any]:
    return dict(client.api.inspect_container(container_id).get("State", {}))


def _wait(client: Any, container_id: str | None) -> tuple[int, bool]:
    if container_id is None:
        return 1, False
    result = client.api.wait(container_id, timeout=_EXIT_WAIT_S)
    state = _state(client, container_id)
    return int(result.get("StatusCode", 1)), bool(state.get("OOMKilled"))


def _stop(client: Any, container_id: str, timeout_s: float) -> None:
    if timeout_s <= 0:
        client.api.kill(container_id)
    else:
        client.api.stop(container_id, timeout=max(1, round(timeout_s)))


def _remove(client: Any, container_id: str) -> None:
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_container(container_id, force=True)


def _start_failure(exc: Exception, spec: InstanceSpec, runtime: DockerRuntime) -> str:
    import docker

    image = runtime.image
    if isinstance(exc, docker.errors.ImageNotFound):
        return f"image {image} is not on dockerd ({runtime.url}); build it: moonwatch image build"
    if isinstance(exc, docker.errors.DockerException | ConnectionError | OSError):
        return f"docker ({runtime.url}) could not start slot {spec.slot}: {_one_line(exc)}"
    return f"could not start slot {spec.slot} in a container: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def docker_settings(config: ClusterConfig, server: str) -> DockerSettings:
    """The docker driver's settings for `server` from the cluster config."""
    docker = config.app.docker
    return DockerSettings(
        url=docker.url,
        image=docker.image,
        cluster=config.cluster,
        server=server,
        memory_mb=docker.memory_mb,
        cpus=docker.cpus,
        health_interval_s=docker.health_interval_s,
        # aiohttp may spool a large form to /tmp: room for two at the largest size.
        tmp_mb=max(64, 2 * config.app.max_upload_mb + 16),
    )
