"""What runs a slot's app instance: its spec and status, the restart policy, and the seams
(ServerDriver for the agent, InstanceRuntime and InstanceHandle for what starts instances)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


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
    # Why the last instance ended ("exited with 1", "image ... is not on dockerd", ...).
    exit_reason: str | None = None


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


class InstanceHandle(Protocol):
    """One started instance, as its runtime sees it."""

    @property
    def pid(self) -> int:
        """The process id the instance's own records carry (in its PID namespace)."""

    @property
    def returncode(self) -> int | None:
        """None while it runs (or is still starting); its exit code once it has ended."""

    @property
    def exit_reason(self) -> str:
        """Why it ended, in words ("exited with 1", "image not found", ...)."""

    def send(self, line: bytes) -> bool:
        """Write one control line (see app/control.py) without blocking; False if it was not
        written (not started yet, or gone)."""

    async def terminate(self, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL once `timeout_s` has passed (at once for 0); returns when it
        has ended and everything it held is released."""


class InstanceRuntime(Protocol):
    """What starts instances: child processes, containers."""

    async def spawn(self, spec: InstanceSpec) -> InstanceHandle:
        """Start `spec` and return at once; a start that fails later ends the handle."""

    async def close(self) -> None:
        """Release what the runtime holds (not the instances: the driver stops those)."""
