"""The ServerDriver seam, and SupervisingDriver: restarts, health checks and leases for app
instances, whatever runs them. ProcessDriver runs them as child processes of the agent;
agent.driver_docker.DockerDriver runs them as containers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import structlog

from agent.clock import Clock, clock_monotonic
from agent.instances import (
    InstanceHandle,
    InstanceRuntime,
    InstanceSpec,
    InstanceStatus,
    RestartPolicy,
    ServerDriver,
)

__all__ = [
    "DATABASE_URL_ENV",
    "InstanceSpec",
    "InstanceStatus",
    "ProcessDriver",
    "RestartPolicy",
    "ServerDriver",
    "SupervisingDriver",
    "app_arguments",
]

_log = structlog.get_logger("moonwatch.driver")
# The environment variable that carries a slot's database URL to its app instance.
DATABASE_URL_ENV = "MOONWATCH_DATABASE_URL"


@dataclass
class _Running:
    spec: InstanceSpec
    handle: InstanceHandle | None
    started_at: float
    healthy: bool = False
    failures: int = 0
    next_probe: float = 0.0
    lease_until: float = 0.0
    crashes: list[float] = field(default_factory=list)
    restart_after: float = 0.0
    gave_up: bool = False
    exit_code: int | None = None
    exit_reason: str | None = None


class SupervisingDriver:
    """The ServerDriver over any InstanceRuntime. Each instance is told its lease on its
    control channel and refuses to serve past it."""

    def __init__(
        self,
        runtime: InstanceRuntime,
        clock: Clock,
        policy: RestartPolicy | None = None,
        busy: Callable[[str], str | None] | None = None,
    ) -> None:
        self._runtime = runtime
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
        if current.handle is not None:
            if current.handle.returncode is None:
                return
            # It exited since the last probe: count the crash before deciding to restart.
            self._crashed(current, self._clock.monotonic())
        if current.gave_up or self._clock.monotonic() < current.restart_after:
            return
        await self._spawn(current)

    async def _spawn(self, run: _Running) -> None:
        spec = run.spec
        spec.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if spec.overlap_log is not None:
            spec.overlap_log.parent.mkdir(parents=True, exist_ok=True)
        run.handle = await self._runtime.spawn(spec)
        run.started_at = self._clock.monotonic()
        run.healthy, run.failures, run.next_probe, run.lease_until = False, 0, 0.0, 0.0
        _log.info("instance_started", slot=spec.slot, epoch=spec.epoch, pid=run.handle.pid)

    async def stop(self, slot: str, timeout_s: float) -> None:
        run = self._slots.pop(slot, None)
        if run is None or run.handle is None or run.handle.returncode is not None:
            return
        handle = run.handle
        await handle.terminate(timeout_s)
        _log.info("instance_stopped", slot=slot, pid=handle.pid, exit_code=handle.returncode)
        if handle.returncode != 0:  # killed: it could not record its own stop
            _record_exit(run.spec, handle.pid, self._clock.monotonic(), "killed by its agent")

    def grant_lease(self, slot: str, epoch: int, until: float) -> None:
        run = self._slots.get(slot)
        if run is None or run.spec.epoch != epoch or run.handle is None:
            return
        if run.handle.returncode is not None or until <= run.lease_until:
            return
        if run.handle.send(f"lease {until:.6f}\n".encode()):
            run.lease_until = until

    async def probe(self) -> None:
        now = self._clock.monotonic()
        for run in list(self._slots.values()):
            if run.handle is None:
                continue
            if run.handle.returncode is not None:
                self._crashed(run, now)
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
        if hung and run.handle is not None:
            _log.warning("instance_hung", slot=run.spec.slot, failures=run.failures)
            await run.handle.terminate(0.0)
            self._crashed(run, now, "hung")

    def _crashed(self, run: _Running, now: float, why: str | None = None) -> None:
        assert run.handle is not None
        handle = run.handle
        why = why or handle.exit_reason
        run.exit_code, run.exit_reason = handle.returncode, why
        _record_exit(run.spec, handle.pid, now, why)
        run.handle, run.healthy, run.lease_until = None, False, 0.0
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
                pid=run.handle.pid if run.handle else None,
                running=run.handle is not None and run.handle.returncode is None,
                healthy=run.healthy,
                serving=run.healthy and run.lease_until > now,
                gave_up=run.gave_up,
                restarts=len(run.crashes),
                exit_code=run.exit_code,
                exit_reason=run.exit_reason,
            )
            for slot, run in self._slots.items()
        }

    async def close(self, timeout_s: float) -> None:
        await asyncio.gather(*(self.stop(slot, timeout_s) for slot in list(self._slots)))
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._runtime.close()

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


class ProcessDriver(SupervisingDriver):
    """App instances as child processes in the agent's own process group, so that killing the
    group (a server failure) kills them too."""

    def __init__(
        self,
        clock: Clock,
        policy: RestartPolicy | None = None,
        busy: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(_ProcessRuntime(), clock, policy, busy)


class _ProcessRuntime:
    async def spawn(self, spec: InstanceSpec) -> InstanceHandle:
        argv = [sys.executable, "-m", "app", *app_arguments(spec), "--parent-pid", str(os.getpid())]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, env=_app_environment(spec)
        )
        return _ProcessHandle(proc)

    async def close(self) -> None:
        return None


class _ProcessHandle:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def exit_reason(self) -> str:
        return f"exited with {self._proc.returncode}"

    def send(self, line: bytes) -> bool:
        if self._proc.stdin is None or self._proc.returncode is not None:
            return False
        try:
            self._proc.stdin.write(line)
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            return False
        return True

    async def terminate(self, timeout_s: float) -> None:
        proc = self._proc
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if timeout_s > 0 else signal.SIGKILL)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s if timeout_s > 0 else 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


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


def _app_environment(spec: InstanceSpec) -> dict[str, str]:
    """The agent's environment, plus the slot's database URL where it has one (the app reads
    it from DATABASE_URL_ENV, so it never shows in the process list)."""
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    if spec.database_url is not None:
        env[DATABASE_URL_ENV] = spec.database_url
    return env


def app_arguments(spec: InstanceSpec) -> list[str]:
    """The app's command line for `spec` (after `python -m app`), control on stdin."""
    args = [
        "--slot", spec.slot, "--server", spec.server, "--epoch", str(spec.epoch),
        "--host", spec.host, "--port", str(spec.port), "--base-domain", spec.base_domain,
        "--data-dir", str(spec.data_dir), "--control", "stdin",
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
