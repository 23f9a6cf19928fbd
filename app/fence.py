"""Fencing: whether this instance may serve a tenant request now, and the record of when it did.

``LeaseFence`` serves only while the lease its agent granted holds (``boottime() < until``);
``OpenFence`` serves from start to shutdown (no control channel). Both append start/renew/stop
records to a RecordSink. A start or renew is recorded *before* it takes effect and is refused
when it cannot be recorded, so the record never shows less serving than really happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app import lease
from app.clock import Clock, pause
from app.lease import Ignored, Transition
from app.overlap_log import RecordSink


class EventLog(Protocol):
    """Structured log of the app: one event name and its fields per call."""

    def __call__(self, event: str, /, **fields: object) -> None: ...


@dataclass(frozen=True)
class GateStatus:
    """What /healthz reports about serving."""

    serving: bool
    lease_remaining_s: float | None


class RequestGate(Protocol):
    """Decides, at the start of each tenant request, whether this instance may serve it."""

    def admit(self) -> bool:
        """True when serving now. Reads the clock, never blocks, may append a stop record."""
        ...

    def status(self) -> GateStatus:
        """Serving state and lease left, as of now."""
        ...


@dataclass(frozen=True)
class Identity:
    """Who writes the records: the instance's slot, server, epoch and process id."""

    slot: str
    server: str
    epoch: int
    pid: int


class _Recorder:
    """Turns transitions into records on the sink (no sink: every record counts as written)."""

    def __init__(self, identity: Identity, clock: Clock, sink: RecordSink | None) -> None:
        self._identity = identity
        self._clock = clock
        self._sink = sink

    def write(self, t: Transition) -> bool:
        if self._sink is None:
            return True
        i = self._identity
        record = {
            "slot": i.slot,
            "server": i.server,
            "epoch": i.epoch,
            "pid": i.pid,
            "event": t.event,
            "boot": t.boot,
            "mono": self._clock.monotonic(),
            "until": t.until,
            "reason": t.reason,
        }
        return self._sink.append(record)


class LeaseFence:
    """Serves while ``boottime() < until`` for the latest lease granted; starts not serving."""

    def __init__(
        self, identity: Identity, clock: Clock, sink: RecordSink | None, log: EventLog
    ) -> None:
        self._clock = clock
        self._recorder = _Recorder(identity, clock, sink)
        self._log = log
        self._until: float | None = None
        self._closed = False

    def admit(self) -> bool:
        now = self._clock.boottime()
        self._notice_expiry(now)
        return self._until is not None

    def status(self) -> GateStatus:
        now = self._clock.boottime()
        self._notice_expiry(now)
        return GateStatus(self._until is not None, lease.remaining_s(self._until, now))

    def grant(self, until: float) -> None:
        """Serve until the CLOCK_BOOTTIME instant ``until``, unless that extends nothing."""
        now = self._clock.boottime()
        self._notice_expiry(now)
        if self._closed:
            self._log("lease_ignored", until=until, reason="shutting down")
            return
        decision = lease.grant(self._until, until, now)
        if isinstance(decision, Ignored):
            self._log("lease_ignored", until=until, reason=decision.reason)
            return
        if not self._recorder.write(decision):
            # Serving that could not be recorded must not happen: the checker would miss it.
            self._log("lease_ignored", until=until, reason="cannot write the overlap log")
            return
        self._until = decision.until
        if decision.event == "start":
            self._log("serving_started", until=until)

    def release(self) -> None:
        """Stop serving at once (a later grant may start again)."""
        self._stop(self._clock.boottime(), lease.REASON_RELEASE)

    def shutdown(self, reason: str) -> None:
        """Stop serving for good; later grants are ignored. Idempotent."""
        self._stop(self._clock.boottime(), reason)
        self._closed = True

    def check(self) -> float:
        """Notice an expiry no request noticed; return the seconds until the next check."""
        now = self._clock.boottime()
        self._notice_expiry(now)
        return lease.next_check_s(self._until, now)

    def _notice_expiry(self, now: float) -> None:
        self._apply_stop(lease.expire(self._until, now))

    def _stop(self, now: float, reason: str) -> None:
        self._notice_expiry(now)
        self._apply_stop(lease.stop(self._until, now, reason))

    def _apply_stop(self, transition: Transition | None) -> None:
        if transition is None:
            return
        self._until = None  # stopping takes effect whether or not the record is written
        if not self._recorder.write(transition):
            self._log("overlap_log_failed", record="stop")
        self._log("serving_stopped", reason=transition.reason, until=transition.until)


class OpenFence:
    """Serves from construction until shutdown: the app without a control channel."""

    def __init__(self, identity: Identity, clock: Clock, sink: RecordSink | None) -> None:
        self._clock = clock
        self._recorder = _Recorder(identity, clock, sink)
        self._open = True
        self._recorded = False

    def admit(self) -> bool:
        return self._open

    def status(self) -> GateStatus:
        return GateStatus(self._open, None)

    def begin(self) -> bool:
        """Record the start of serving (until null: no lease bounds it); False if unwritable."""
        start = Transition("start", self._clock.boottime(), None, "uncontrolled")
        self._recorded = self._recorder.write(start)
        return self._recorded

    def shutdown(self, reason: str) -> None:
        """Stop serving for good and record it (when the start was). Idempotent."""
        if self._open and self._recorded:
            self._recorder.write(Transition("stop", self._clock.boottime(), None, reason))
        self._open = False


async def watch_lease(fence: LeaseFence) -> None:
    """Notice expiry even when no request comes: check at least every 50 ms, until cancelled."""
    while True:
        await pause(fence.check())
