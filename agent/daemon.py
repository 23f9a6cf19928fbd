"""The agent's lifecycle: startup, serve until told to stop, bounded graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web

from agent.backups import BackupKeeper
from agent.clock import Clock
from agent.driver import ServerDriver
from agent.loop import DecisionLoop
from consensus.protocol import Consensus, ConsensusError

_log = structlog.get_logger("moonwatch.agent")

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2  # bad configuration or command line
EXIT_PORT_TAKEN: Final = 3
EXIT_CONSENSUS: Final = 4  # the Raft node cannot run (journal, port)
EXIT_CRASHED: Final = 5  # the decision loop died


@dataclass
class AgentParts:
    """What wiring built; the daemon only runs it."""

    server: str
    host: str
    agent_port: int
    edge_port: int
    consensus: Consensus
    driver: ServerDriver
    loop: DecisionLoop
    api: web.Application
    edge: web.Application
    clock: Clock
    shutdown_timeout_s: float
    # Other loops that run beside the decision loop (lease renewal, failure detection).
    background: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = field(
        default_factory=list
    )
    # The daily backups of the slots served here (its run is in `background` when enabled).
    backups: BackupKeeper | None = None
    # Called first thing when shutdown begins (telling systemd STOPPING=1); must not block.
    on_stopping: list[Callable[[], None]] = field(default_factory=list)


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Agent:
    def __init__(self, parts: AgentParts) -> None:
        self._p = parts
        self._runners: list[web.AppRunner] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self._loop_stopping = asyncio.Event()

    async def serve(self, stopping: asyncio.Event) -> int:
        """Run until `stopping` is set; return the process exit code."""
        try:
            await self._startup()
        except StartupError as exc:
            _log.error("startup_failed", error=str(exc))
            await self._shutdown()
            return exc.exit_code
        _log.info("agent_started", pid=os.getpid(), agent_port=self._p.agent_port)
        assert self._loop_task is not None
        stop_waiter = asyncio.ensure_future(stopping.wait())
        loops = {self._loop_task, *self._background}
        done, _ = await asyncio.wait({stop_waiter, *loops}, return_when=asyncio.FIRST_COMPLETED)
        code = EXIT_OK
        for task in done & loops:
            error = task.exception() if not task.cancelled() else None
            _log.error("agent_loop_ended", loop=task.get_name(), error=repr(error))
            code = EXIT_CRASHED
        stop_waiter.cancel()
        await self._shutdown()
        return code

    async def _startup(self) -> None:
        p = self._p
        await self._listen(p.api, p.host, p.agent_port, "agent_port")
        await self._listen(p.edge, p.host, p.edge_port, "edge_port")
        try:
            await p.consensus.start()
        except ConsensusError as exc:
            raise StartupError(str(exc), EXIT_CONSENSUS) from exc
        self._loop_task = asyncio.create_task(p.loop.run(self._loop_stopping), name="decision")
        self._background = [
            asyncio.create_task(run(self._loop_stopping), name=getattr(run, "__qualname__", "task"))
            for run in p.background
        ]

    async def _listen(self, app: web.Application, host: str, port: int, what: str) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"{what} {host}:{port} cannot be bound: {exc.strerror}", 3) from exc

    async def _shutdown(self) -> None:
        """Stop in reverse order, each step bounded; the whole stays within the timeout."""
        p = self._p
        deadline = p.clock.monotonic() + p.shutdown_timeout_s
        for announce in p.on_stopping:
            announce()
        self._loop_stopping.set()
        for task in [t for t in (self._loop_task, *self._background) if t is not None]:
            await _bounded(task, max(0.1, min(2.0, deadline - p.clock.monotonic())))
        await _bounded(p.driver.close(timeout_s=3.0), max(0.1, deadline - p.clock.monotonic()))
        for runner in reversed(self._runners):
            await _bounded(runner.cleanup(), max(0.1, min(2.0, deadline - p.clock.monotonic())))
        await _bounded(p.consensus.stop(), max(0.1, deadline - p.clock.monotonic()))
        _log.info("agent_stopped")


async def _bounded(awaitable: object, timeout_s: float) -> None:
    task = asyncio.ensure_future(awaitable)  # type: ignore[call-overload]  # task or coroutine
    try:
        await asyncio.wait_for(task, timeout_s)
    except TimeoutError:
        _log.warning("shutdown_step_timed_out", step=repr(task), timeout_s=timeout_s)
    except Exception:  # noqa: BLE001  # shutdown goes on whatever one step did
        _log.exception("shutdown_step_failed")


def next_incarnation(path: Path) -> int:
    """Read, increment and durably store this server's incarnation counter."""
    previous = 0
    with contextlib.suppress(FileNotFoundError, ValueError):
        previous = int(path.read_text().strip())
    incarnation = previous + 1
    store_incarnation(path, incarnation)
    return incarnation


def store_incarnation(path: Path, incarnation: int) -> None:
    """Durably replace the stored incarnation (write, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write(f"{incarnation}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def install_signal_handlers(stopping: asyncio.Event) -> None:
    """SIGTERM and SIGINT only set the flag; the lifecycle does the rest."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
