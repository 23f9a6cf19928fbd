"""The ServerDriver seam and ProcessDriver: run a slot's app as a child process of the agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import aiohttp
import structlog

from agent.clock import Clock

_log = structlog.get_logger("moonwatch.driver")


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Everything needed to run one slot's app instance on this server."""

    slot: str
    epoch: int
    server: str
    host: str
    port: int
    base_domain: str
    tenants: tuple[str, ...]
    data_dir: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    slot: str
    epoch: int
    address: str
    pid: int | None
    running: bool
    healthy: bool
    exit_code: int | None = None


class ServerDriver(Protocol):
    """Runs app instances. Every method is idempotent and bounded in time."""

    async def ensure_running(self, spec: InstanceSpec) -> None:
        """Start `spec` unless the same slot and epoch already runs; an instance of another
        epoch of the same slot is stopped first. Returns once spawned, not once healthy."""

    async def stop(self, slot: str, timeout_s: float) -> None:
        """Stop the slot's instance: SIGTERM, then SIGKILL after `timeout_s`. No-op if absent."""

    async def probe(self) -> None:
        """Refresh health of every instance (HTTP /healthz that names the right slot and epoch)."""

    def instances(self) -> Mapping[str, InstanceStatus]:
        """The latest known status per slot."""

    async def close(self, timeout_s: float) -> None:
        """Stop every instance."""


class ProcessDriver:
    """App instances as child processes in the agent's own process group, so that killing the
    group (a server failure) kills them too."""

    def __init__(self, clock: Clock, *, health_timeout_s: float = 1.0) -> None:
        self._clock = clock
        self._health_timeout_s = health_timeout_s
        self._specs: dict[str, InstanceSpec] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._status: dict[str, InstanceStatus] = {}
        self._session: aiohttp.ClientSession | None = None

    async def ensure_running(self, spec: InstanceSpec) -> None:
        current = self._specs.get(spec.slot)
        proc = self._procs.get(spec.slot)
        if current == spec and proc is not None and proc.returncode is None:
            return
        if proc is not None:
            await self.stop(spec.slot, timeout_s=5.0)
        spec.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [sys.executable, "-m", "app", *_app_arguments(spec)]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
        self._specs[spec.slot] = spec
        self._procs[spec.slot] = proc
        self._status[spec.slot] = InstanceStatus(
            spec.slot, spec.epoch, spec.address, proc.pid, running=True, healthy=False
        )
        _log.info("instance_started", slot=spec.slot, epoch=spec.epoch, pid=proc.pid)

    async def stop(self, slot: str, timeout_s: float) -> None:
        proc = self._procs.pop(slot, None)
        self._specs.pop(slot, None)
        self._status.pop(slot, None)
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        _log.info("instance_stopped", slot=slot, pid=proc.pid, exit_code=proc.returncode)

    async def probe(self) -> None:
        for slot, spec in list(self._specs.items()):
            proc = self._procs[slot]
            if proc.returncode is not None:
                self._status[slot] = replace(
                    self._status[slot], running=False, healthy=False, exit_code=proc.returncode
                )
                continue
            healthy = await self._healthy(spec)
            if slot in self._status:
                self._status[slot] = replace(self._status[slot], healthy=healthy)

    def instances(self) -> Mapping[str, InstanceStatus]:
        return dict(self._status)

    async def close(self, timeout_s: float) -> None:
        await asyncio.gather(*(self.stop(slot, timeout_s) for slot in list(self._procs)))
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _healthy(self, spec: InstanceSpec) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._health_timeout_s)
            )
        try:
            async with self._session.get(f"http://{spec.address}/healthz") as resp:
                if resp.status != 200:
                    return False
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        return (
            isinstance(body, dict)
            and body.get("slot") == spec.slot
            and body.get("epoch") == spec.epoch
            and body.get("server") == spec.server
        )


def _app_arguments(spec: InstanceSpec) -> list[str]:
    args = [
        "--slot",
        spec.slot,
        "--server",
        spec.server,
        "--epoch",
        str(spec.epoch),
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--base-domain",
        spec.base_domain,
        "--data-dir",
        str(spec.data_dir),
    ]
    for tenant in spec.tenants:
        args += ["--tenant", tenant]
    args += ["--parent-pid", str(os.getpid())]
    return args
