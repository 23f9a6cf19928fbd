"""Tells systemd when the agent takes part in the cluster, that its loop progresses, and why."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.clock import Clock
from agent.loop import TickReport

JOINING_STATUS = "joining the cluster"
STOPPING_STATUS = "stopping"


class ServiceManager(Protocol):
    """What the heartbeat tells the service manager; every call returns at once, never raises,
    and returns whether the message went out."""

    def ready(self, status: str | None = None) -> bool:
        """Start-up is finished (with an optional status line)."""

    def watchdog(self) -> bool:
        """The service still makes progress."""

    def status(self, text: str) -> bool:
        """What the service is doing, in one line."""

    def send(self, *fields: str) -> bool:
        """Any newline-separated fields in one message."""


@dataclass(frozen=True, slots=True)
class Beat:
    """What one look at the agent sends: READY=1, WATCHDOG=1, a new STATUS= (each optional)."""

    ready: bool = False
    watchdog: bool = False
    status: str | None = None


@dataclass(slots=True)
class BeatState:
    ready_sent: bool = False
    last_ping: float | None = None
    last_status: str | None = None


def plan_beat(
    state: BeatState,
    now: float,
    report: TickReport | None,
    ready: bool,
    watchdog_s: float | None,
) -> Beat:
    """The messages due now. READY=1 once the agent takes part; STATUS= when the loop's sentence
    changed; WATCHDOG=1 every half interval, but only while the loop's last report is younger
    than the watchdog interval, so that a hung loop lets systemd's watchdog fire."""
    if not state.ready_sent and not ready:
        return Beat(status=JOINING_STATUS if state.last_status is None else None)
    summary = report.summary if report is not None else None
    status = summary if summary is not None and summary != state.last_status else None
    fresh = report is not None and now - report.at_monotonic < (watchdog_s or 0.0)
    due = state.last_ping is None or now - state.last_ping >= (watchdog_s or 0.0) / 2
    return Beat(
        ready=not state.ready_sent,
        watchdog=state.ready_sent and watchdog_s is not None and fresh and due,
        status=status,
    )


class Heartbeat:
    """Looks at the agent every `poll_s` and tells the service manager what is due."""

    def __init__(
        self,
        manager: ServiceManager,
        clock: Clock,
        *,
        report: Callable[[], TickReport | None],
        ready: Callable[[], bool],
        watchdog_s: float | None,
        poll_s: float = 0.5,
    ) -> None:
        self._manager = manager
        self._clock = clock
        self._report = report
        self._ready = ready
        self.watchdog_s = watchdog_s
        self.poll_s = poll_s if watchdog_s is None else min(poll_s, watchdog_s / 4)
        self.state = BeatState()
        self._stopped = False

    def beat(self) -> Beat:
        """Look once and send what is due; returns what that was."""
        if self._stopped:
            return Beat()
        now = self._clock.monotonic()
        beat = plan_beat(self.state, now, self._report(), self._ready(), self.watchdog_s)
        if beat.ready:
            self._manager.ready(beat.status)
            self.state.ready_sent = True
            self.state.last_ping = now  # systemd's watchdog starts counting at READY=1
        elif beat.status is not None:
            self._manager.status(beat.status)
        if beat.status is not None:
            self.state.last_status = beat.status
        if beat.watchdog:
            self._manager.watchdog()
            self.state.last_ping = now
        return beat

    def stopping(self) -> None:
        """STOPPING=1 (with a status line) once shutdown begins; no pings after it."""
        if not self._stopped:
            self._stopped = True
            self._manager.send("STOPPING=1", f"STATUS={STOPPING_STATUS}")

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set() and not self._stopped:
            self.beat()
            await self._clock.sleep(self.poll_s)
