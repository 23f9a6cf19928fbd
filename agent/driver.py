"""The ServerDriver seam and ProcessDriver: run a slot's app as a child process of the agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import structlog

from agent.clock import Clock, clock_monotonic

_log = structlog.get_logger("moonwatch.driver")
# The environment variable that carries a slot's database URL to its app instance.
DATABASE_URL_ENV = "MOONWATCH_DATABASE_URL"


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
    overlap_log: Path | None = None
    # postgresql://... (a secret: handed over in the environment, never in argv or repr).
    database_url: str | None = field(default=None, repr=False)
    max_upload_mb: int | None = None
    # Addresses or CIDR ranges whose X-Forwarded-For the app believes (the cluster's edges).
    trusted_proxies: tuple[str, ...] = ()

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
    serving: bool = False
    gave_up: bool = False
    restarts: int = 0
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Local healing: restart a crashed or hung instance with backoff, a bounded number of
    times per window; after that the slot is given up for the cluster to replace."""

    max_restarts: int = 3
    window_s: float = 60.0
    first_backoff_s: float = 0.5
    hung_after_failures: int = 5
    start_grace_s: float = 15.0
    health_interval_s: float = 0.5


class ServerDriver(Protocol):
    """Runs app instances. Every method is idempotent and bounded in time."""

    async def ensure_running(self, spec: InstanceSpec) -> None:
        """Start `spec` unless the same slot and epoch already runs (or waits out a restart
        backoff, or gave up); another epoch of the same slot is stopped first. Returns once
        spawned, not once healthy."""

    async def stop(self, slot: str, timeout_s: float) -> None:
        """Stop the slot's instance: SIGTERM, then SIGKILL after `timeout_s`. No-op if absent."""

    def grant_lease(self, slot: str, epoch: int, until: float) -> None:
        """Let the slot's instance serve until `until` (an instant of Clock.monotonic). Ignored
        for an absent instance or another epoch; never blocks."""

    async def probe(self) -> None:
        """Refresh health (HTTP /healthz naming the right slot and epoch), notice crashes and
        hangs, restart within the policy."""

    def instances(self) -> Mapping[str, InstanceStatus]:
        """The latest known status per slot."""

    async def close(self, timeout_s: float) -> None:
        """Stop every instance."""


@dataclass
class _Running:
    spec: InstanceSpec
    proc: asyncio.subprocess.Process | None
    started_at: float
    healthy: bool = False
    failures: int = 0
    next_probe: float = 0.0
    lease_until: float = 0.0
    crashes: list[float] = field(default_factory=list)
    restart_after: float = 0.0
    gave_up: bool = False
    exit_code: int | None = None


class ProcessDriver:
    """App instances as child processes in the agent's own process group, so that killing the
    group (a server failure) kills them too. Each instance is told its lease on stdin and
    refuses to serve past it."""

    def __init__(
        self,
        clock: Clock,
        policy: RestartPolicy | None = None,
        busy: Callable[[str], str | None] | None = None,
    ) -> None:
        self._clock = clock
        self._policy = policy or RestartPolicy()
        self._slots: dict[str, _Running] = {}
        self._session: aiohttp.ClientSession | None = None
        # Why a slot's instance is saturated by its own traffic (None: it is not). A saturated
        # instance that misses health checks is overloaded, not hung: it is not restarted.
        self._busy = busy or (lambda _slot: None)
        self.overload_holds = 0

    async def ensure_running(self, spec: InstanceSpec) -> None:
        current = self._slots.get(spec.slot)
        if current is not None and current.spec != spec:
            await self.stop(spec.slot, timeout_s=5.0)
            current = None
        if current is None:
            current = self._slots[spec.slot] = _Running(spec, None, self._clock.monotonic())
        if current.proc is not None:
            if current.proc.returncode is None:
                return
            # It exited since the last probe: count the crash before deciding to restart.
            self._crashed(
                current, self._clock.monotonic(), f"exited with {current.proc.returncode}"
            )
        if current.gave_up or self._clock.monotonic() < current.restart_after:
            return
        await self._spawn(current)

    async def _spawn(self, run: _Running) -> None:
        spec = run.spec
        spec.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if spec.overlap_log is not None:
            spec.overlap_log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "app", *_app_arguments(spec)]
        run.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, env=_app_environment(spec)
        )
        run.started_at = self._clock.monotonic()
        run.healthy, run.failures, run.next_probe, run.lease_until = False, 0, 0.0, 0.0
        _log.info("instance_started", slot=spec.slot, epoch=spec.epoch, pid=run.proc.pid)

    async def stop(self, slot: str, timeout_s: float) -> None:
        run = self._slots.pop(slot, None)
        if run is None or run.proc is None or run.proc.returncode is not None:
            return
        await _terminate(run.proc, timeout_s)
        _log.info("instance_stopped", slot=slot, pid=run.proc.pid, exit_code=run.proc.returncode)
        if run.proc.returncode != 0:  # killed: it could not record its own stop
            _record_exit(run.spec, run.proc.pid, self._clock.monotonic(), "killed by its agent")

    def grant_lease(self, slot: str, epoch: int, until: float) -> None:
        run = self._slots.get(slot)
        if run is None or run.spec.epoch != epoch or run.proc is None or run.proc.stdin is None:
            return
        if run.proc.returncode is not None or until <= run.lease_until:
            return
        try:
            run.proc.stdin.write(f"lease {until:.6f}\n".encode())
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            return
        run.lease_until = until

    async def probe(self) -> None:
        now = self._clock.monotonic()
        for run in list(self._slots.values()):
            if run.proc is None:
                continue
            if run.proc.returncode is not None:
                self._crashed(run, now, f"exited with {run.proc.returncode}")
            elif now >= run.next_probe:
                await self._check(run, now)

    async def _check(self, run: _Running, now: float) -> None:
        healthy = await self._healthy(run.spec)
        run.healthy = healthy
        run.failures = 0 if healthy else run.failures + 1
        interval = self._policy.health_interval_s
        run.next_probe = now + (interval if healthy else interval / 5)
        in_grace = now - run.started_at < self._policy.start_grace_s
        hung = run.failures >= self._policy.hung_after_failures and not in_grace
        overload = self._busy(run.spec.slot) if hung else None
        if overload is not None:
            # Overload is not failure: restarting would drop every tenant of the slot, and the
            # edges are already refusing the tenant that floods it.
            self.overload_holds += 1
            run.failures = 0
            _log.warning("instance_overloaded_not_restarted", slot=run.spec.slot, why=overload)
            return
        if hung and run.proc is not None:
            _log.warning("instance_hung", slot=run.spec.slot, failures=run.failures)
            await _terminate(run.proc, 0.0)
            self._crashed(run, now, "hung")

    def _crashed(self, run: _Running, now: float, why: str) -> None:
        assert run.proc is not None
        run.exit_code = run.proc.returncode
        _record_exit(run.spec, run.proc.pid, now, why)
        run.proc, run.healthy, run.lease_until = None, False, 0.0
        run.crashes = [t for t in run.crashes if now - t < self._policy.window_s] + [now]
        if len(run.crashes) > self._policy.max_restarts:
            run.gave_up = True
            _log.error("instance_gave_up", slot=run.spec.slot, crashes=len(run.crashes), why=why)
            return
        backoff = self._policy.first_backoff_s * 2 ** (len(run.crashes) - 1)
        run.restart_after = now + backoff
        _log.warning("instance_crashed", slot=run.spec.slot, why=why, restart_in_s=backoff)

    def instances(self) -> Mapping[str, InstanceStatus]:
        now = self._clock.monotonic()
        return {
            slot: InstanceStatus(
                slot=slot,
                epoch=run.spec.epoch,
                address=run.spec.address,
                pid=run.proc.pid if run.proc else None,
                running=run.proc is not None and run.proc.returncode is None,
                healthy=run.healthy,
                serving=run.healthy and run.lease_until > now,
                gave_up=run.gave_up,
                restarts=len(run.crashes),
                exit_code=run.exit_code,
            )
            for slot, run in self._slots.items()
        }

    async def close(self, timeout_s: float) -> None:
        await asyncio.gather(*(self.stop(slot, timeout_s) for slot in list(self._slots)))
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _healthy(self, spec: InstanceSpec) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
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


def _record_exit(spec: InstanceSpec, pid: int, now: float, why: str) -> None:
    """Append the stop an instance could not write itself. The process has been reaped, so it
    cannot serve after `now`: the record is true, and it keeps the overlap evidence exact."""
    if spec.overlap_log is None:
        return
    record = {
        "slot": spec.slot,
        "server": spec.server,
        "epoch": spec.epoch,
        "pid": pid,
        "event": "stop",
        "boot": now,
        "mono": clock_monotonic(),
        "until": None,
        "reason": f"exited ({why}); recorded by the agent",
    }
    line = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(spec.overlap_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        _log.warning("overlap_record_failed", slot=spec.slot, error=str(exc))


async def _terminate(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL once `timeout_s` has passed (at once for 0)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM if timeout_s > 0 else signal.SIGKILL)
    try:
        await asyncio.wait_for(proc.wait(), timeout_s if timeout_s > 0 else 5.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _app_environment(spec: InstanceSpec) -> dict[str, str]:
    """The agent's environment, plus the slot's database URL where it has one (the app reads
    it from DATABASE_URL_ENV, so it never shows in the process list)."""
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    if spec.database_url is not None:
        env[DATABASE_URL_ENV] = spec.database_url
    return env


def _app_arguments(spec: InstanceSpec) -> list[str]:
    args = [
        "--slot", spec.slot, "--server", spec.server, "--epoch", str(spec.epoch),
        "--host", spec.host, "--port", str(spec.port), "--base-domain", spec.base_domain,
        "--data-dir", str(spec.data_dir), "--control", "stdin",
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    if spec.overlap_log is not None:
        args += ["--overlap-log", str(spec.overlap_log)]
    if spec.max_upload_mb is not None:
        args += ["--max-upload-mb", str(spec.max_upload_mb)]
    for tenant in spec.tenants:
        args += ["--tenant", tenant]
    for proxy in spec.trusted_proxies:
        args += ["--trusted-proxy", proxy]
    return args
