"""The agent's watch over its own server: psutil samples off the event loop, levels by
`agent.resource_levels`, and the one self-drain a server that cannot serve safely commits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource as rlimits
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil
import structlog

from agent.clock import Clock
from agent.config_resources import RESOURCES, Resource, ResourcesConfig
from agent.disk_reserve import ReserveUnsupported, reserve_ahead
from agent.mqtt import pause
from agent.resource_levels import UNITS, Change, DrainRequest, Health, Sample, evaluate
from consensus.commands import DrainServer
from consensus.protocol import Consensus

_log = structlog.get_logger("moonwatch.resources")
_T = TypeVar("_T")
_GIB = 1024**3
_MIB = 1024**2


class Sampler(Protocol):
    """Measures this server's resources."""

    async def sample(self) -> Mapping[Resource, Sample]:
        """One value per resource it could measure (value None with the reason otherwise).
        Returns within about the configured timeout, even when a measurement hangs; never
        raises."""


class OffLoop:
    """Runs one blocking call at a time on a daemon thread and waits at most `timeout_s`.

    Not asyncio.to_thread: a call stuck for good (statvfs on a dead NFS mount) would hold a
    thread of the default executor, which asyncio.run joins at exit, so the agent could never
    stop. While a call is stuck, the next one fails at once instead of piling up threads."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._busy: asyncio.Future[Any] | None = None

    async def call(self, work: Callable[[], _T], timeout_s: float) -> _T:
        """`work()`'s result; TimeoutError when it (or an earlier call) is still running."""
        if self._busy is not None and not self._busy.done():
            raise TimeoutError("the previous measurement is still stuck")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        future.add_done_callback(_retrieve)

        def settle(result: _T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]  # None only with an error

        def run() -> None:
            try:
                result, error = work(), None
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting task
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(settle, result, error)

        self._busy = future
        threading.Thread(target=run, name=f"moonwatch-{self._name}", daemon=True).start()
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned call's exception as seen (it was already reported as a timeout)."""
    if not future.cancelled():
        future.exception()


class PsutilSampler:
    """The real sampler: the file system of `disk_path`, memory, open files, CPU steal, load.

    With `journal`, each disk sample also holds the blocks the Raft journal grows into next
    (agent.disk_reserve); when even that finds no space, the disk counts as full (100 %)."""

    def __init__(self, disk_path: Path, timeout_s: float, journal: Path | None = None) -> None:
        self._disk_path = disk_path
        self._timeout_s = timeout_s
        self._journal = journal
        self._disk = OffLoop("disk-sample")
        self._rest = OffLoop("resource-sample")
        self._process = psutil.Process()
        self._cpu: Any = None  # the previous psutil.cpu_times(), for the steal share

    async def sample(self) -> Mapping[Resource, Sample]:
        samples: dict[Resource, Sample] = {}
        try:
            samples["disk"] = await self._disk.call(self._sample_disk, self._timeout_s)
        except TimeoutError as exc:
            samples["disk"] = Sample(None, f"{self._disk_path}: no answer in time ({exc})")
        except OSError as exc:
            samples["disk"] = Sample(None, f"{self._disk_path}: {exc.strerror or exc}")
        try:
            samples.update(await self._rest.call(self._sample_rest, self._timeout_s))
        except (TimeoutError, OSError, psutil.Error) as exc:
            why = str(exc) or type(exc).__name__
            samples.update({r: Sample(None, why) for r in RESOURCES if r != "disk"})
        return samples

    def _sample_disk(self) -> Sample:
        path = self._disk_path
        while not path.exists() and path != path.parent:
            path = path.parent  # the data directory may not exist yet: its file system does
        usage = psutil.disk_usage(str(path))
        detail = f"{usage.free / _GIB:.1f} GiB free of {usage.total / _GIB:.1f} GiB at {path}"
        if self._journal is not None:
            try:
                reserve_ahead(self._journal)
            except ReserveUnsupported as exc:
                _log.warning(
                    "journal_reserve_unsupported", journal=str(self._journal), why=str(exc)
                )
                self._journal = None  # nothing to hold here; the percentage alone decides
            except OSError as exc:
                why = exc.strerror or str(exc)
                return Sample(100.0, f"{detail}; no space for the Raft journal to grow: {why}")
        return Sample(usage.percent, detail)

    def _sample_rest(self) -> dict[Resource, Sample]:
        memory = psutil.virtual_memory()
        available = f"{memory.available // _MIB} MiB available of {memory.total // _MIB} MiB"
        cpus = os.cpu_count() or 1
        load = os.getloadavg()[0]
        return {
            "memory": Sample(memory.percent, available),
            "fds": self._sample_fds(),
            "steal": self._sample_steal(),
            "load": Sample(load / cpus, f"1-minute load {load:.2f} on {cpus} CPUs"),
        }

    def _sample_fds(self) -> Sample:
        soft, _ = rlimits.getrlimit(rlimits.RLIMIT_NOFILE)
        opened = self._process.num_fds()
        shares = []
        detail = f"agent {opened} of {soft} open"
        if 0 < soft != rlimits.RLIM_INFINITY:
            shares.append(100.0 * opened / soft)
        with contextlib.suppress(OSError, ValueError):
            allocated, _, most = Path("/proc/sys/fs/file-nr").read_text().split()[:3]
            if int(most) > 0:
                shares.append(100.0 * int(allocated) / int(most))
                detail += f"; system {allocated} of {most}"
        return Sample(max(shares) if shares else None, detail)

    def _sample_steal(self) -> Sample:
        times = psutil.cpu_times()
        before, self._cpu = self._cpu, times
        if not hasattr(times, "steal"):
            return Sample(None, "not reported on this platform")
        if before is None:
            return Sample(None, "first sample: measured from the next one on")
        total = sum(times) - sum(before)
        stolen = times.steal - before.steal
        share = 100.0 * stolen / total if total > 0 else 0.0
        return Sample(max(0.0, share), f"{share:.1f} % of CPU time since the last sample")


# What a change of level is published as (an MQTT event kind) besides the log.
Notify = Callable[[Change, Mapping[str, Any]], None]


class ResourceWatch:
    """Samples every `interval_s`, keeps the levels, reports changes and commits this server's
    drain once per critical episode (only through a leader with a quorum: a Raft command).
    Never un-drains: an operator returns the server (`moonwatch return NAME`)."""

    def __init__(
        self,
        *,
        settings: ResourcesConfig,
        server: str,
        sampler: Sampler,
        consensus: Consensus,
        clock: Clock,
        notify: Notify | None = None,
    ) -> None:
        self._settings = settings
        self._limits = settings.thresholds()
        self._server = server
        self._sampler = sampler
        self._consensus = consensus
        self._clock = clock
        self._notify = notify
        self.health = Health()
        self.sampled_at: float | None = None
        self.drain_note: str | None = None  # why a due drain is not committed yet
        self.drain_at: float | None = None  # when this agent's drain committed
        self._drain_id: str | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - a bad round must not end the watch
                _log.exception("resource_check_failed")
            await pause(self._clock, stopping, self._settings.interval_s)

    async def check(self) -> Health:
        """One round: sample, evaluate, report changes, drain if due."""
        samples = await self._sampler.sample()
        settings = self._settings
        result = evaluate(
            samples,
            self._limits,
            self.health,
            self._clock.monotonic(),
            settings.drain_on,
            settings.drain_after_s,
        )
        self.health = result.health
        self.sampled_at = self._clock.wall()
        for change in result.changes:
            self._report(change)
        if result.health.drain == "armed":
            self._drain_id, self.drain_note = None, None
        if result.drain is not None:
            await self._drain(result.drain)
        return self.health

    def _report(self, change: Change) -> None:
        limits = self._limits[change.resource]
        evidence = {
            "resource": change.resource,
            "from": change.before,
            "to": change.after,
            "value": change.value,
            "unit": UNITS[change.resource],
            "warning": limits.warning,
            "critical": limits.critical,
            "detail": change.detail,
        }
        log = _log.warning if change.degraded else _log.info
        log("resource_degraded" if change.degraded else "resource_recovered", **evidence)
        if self._notify is not None:
            self._notify(change, evidence)

    async def _drain(self, request: DrainRequest) -> None:
        snap = self._consensus.snapshot()
        me = snap.state.server(self._server)
        if me is not None and me.state == "draining":
            self.health = self.health.requested()
            self.drain_note = "this server was already draining"
            return
        if me is None or me.state != "up":
            state = "not a member" if me is None else me.state
            self._hold(f"held: this server is {state}, not in service")
            return
        if snap.raft.leader is None:
            self._hold("held: no Raft leader (no quorum) to commit it")
            return
        self._drain_id = self._drain_id or f"self-drain:{self._server}:{uuid.uuid4().hex}"
        command = DrainServer(
            id=self._drain_id,
            at=self._clock.wall(),
            server=self._server,
            reason=request.reason,
            operator=False,
            evidence=request.evidence,
        )
        result = await self._consensus.submit(command, timeout_s=self._settings.interval_s)
        if result.ok or result.stale:
            self.health = self.health.requested()
            self.drain_at, self.drain_note = command.at, None
            _log.warning("resource_drain_committed", reason=request.reason)
        else:
            self._hold(f"not committed: {result.reason}")

    def _hold(self, note: str) -> None:
        if note != self.drain_note:
            _log.warning("resource_drain_waiting", note=note, reason=self.health.drain_reason)
        self.drain_note = note

    def status(self) -> dict[str, Any]:
        """The `resources` block of /v1/status."""
        now = self._clock.monotonic()
        conditions = {}
        for resource, limits in self._limits.items():
            c = self.health.conditions.get(resource)
            conditions[resource] = {
                "level": c.level if c is not None else "ok",
                "value": c.value if c is not None else None,
                "unit": UNITS[resource],
                "warning": limits.warning,
                "critical": limits.critical,
                "hysteresis": limits.hysteresis,
                "for_s": round(now - c.since, 1) if c is not None else None,
                "detail": c.detail if c is not None else "not sampled yet",
            }
        return {
            "enabled": self._settings.enabled,
            "sampled_at": self.sampled_at,
            "conditions": conditions,
            "drain": {
                "state": self.health.drain,
                "on": list(self._settings.drain_on),
                "reason": self.health.drain_reason,
                "note": self.drain_note,
                "committed_at": self.drain_at,
            },
        }
