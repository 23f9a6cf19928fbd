"""The asyncio shell around the detector: ticks, datagrams in and out, reports handed upward."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping

import structlog

from agent.clock import Clock
from agent.swim.detector import Detector
from agent.swim.messages import Codec, MessageRejected, Outgoing
from agent.swim.probe import ProbeReport
from agent.swim.transport import PeerTransport

ReportSink = Callable[[ProbeReport], Awaitable[None]]
_MIN_SLEEP_S = 0.002


def _random_nonce() -> bytes:
    return os.urandom(12)


class SwimRunner:
    """Drives one Detector on the event loop: every `tick_s` it refreshes members, measures loop
    lag, ticks the detector and sends what it says; inbound datagrams are decoded and answered at
    once. Reports go to `report` from a separate task, so a slow sink never delays probing;
    a failing sink is logged and the report dropped. Bad datagrams are counted in `rejected`.
    Each tick hands the round trips of acknowledged direct probes to `round_trip`.
    """

    def __init__(
        self,
        me: str,
        detector: Detector,
        codec: Codec,
        transport: PeerTransport,
        clock: Clock,
        report: ReportSink,
        members: Callable[[], Iterable[str] | Mapping[str, int]],
        tick_s: float = 0.01,
        nonce: Callable[[], bytes] = _random_nonce,
        max_pending_reports: int = 1024,
        round_trip: Callable[[str, float], None] | None = None,
    ) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self._me = me
        self._detector = detector
        self._codec = codec
        self._transport = transport
        self._clock = clock
        self._report = report
        self._members = members
        self._tick_s = tick_s
        self._nonce = nonce
        self._round_trip = round_trip
        self._reports: asyncio.Queue[ProbeReport] = asyncio.Queue(max_pending_reports)
        self.rejected: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        transport.on_receive(self._on_datagram)

    def stats(self) -> dict[str, int]:
        """Detector counters, `rejected_<reason>` counts and this shell's own counters."""
        merged = self._detector.stats
        merged.update({f"rejected_{reason}": n for reason, n in self.rejected.items()})
        merged.update(self._counts)
        merged.update({f"transport_{reason}": n for reason, n in self._transport.errors.items()})
        return merged

    def confirm(self, target: str) -> None:
        """Probe `target` now for a committed suspicion; its report arrives through `report`."""
        self._send(self._detector.confirm(target, self._clock.monotonic()))

    async def run(self, stopping: asyncio.Event) -> None:
        """Start the transport and probe until `stopping` is set; then close it (bounded)."""
        await self._transport.start()
        sink = asyncio.create_task(self._drain_reports(), name=f"swim-reports-{self._me}")
        try:
            while not stopping.is_set():
                self.step(self._clock.monotonic())
                # Sleep until the detector has something to do, at most tick_s: idle agents
                # wake a few times per probe period instead of every few milliseconds.
                now = self._clock.monotonic()
                delay = min(self._tick_s, max(_MIN_SLEEP_S, self._detector.next_deadline() - now))
                expected = now + delay
                await self._clock.sleep(delay)
                now = self._clock.monotonic()
                self._detector.note_loop_lag(max(0.0, now - expected), now)
        finally:
            sink.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sink
            await self._transport.close()

    def step(self, now: float) -> None:
        """One tick: membership, deadlines, sends, and queueing of new reports."""
        members = self._members()
        if isinstance(members, Mapping):  # name -> committed incarnation
            self._detector.set_members(members.keys(), members)
        else:
            self._detector.set_members(members)
        self._send(self._detector.tick(now))
        for report in self._detector.take_reports():
            try:
                self._reports.put_nowait(report)
            except asyncio.QueueFull:
                self._counts["reports_dropped"] += 1
        round_trips = self._detector.take_round_trips()
        if self._round_trip is not None:
            for peer, rtt_s in round_trips:
                self._round_trip(peer, rtt_s)

    def _on_datagram(self, data: bytes) -> None:
        try:
            message = self._codec.decode(data, self._clock.wall())
        except MessageRejected as rejected:
            self.rejected[rejected.reason] += 1
            return
        self._send(self._detector.receive(message, self._clock.monotonic()))

    def _send(self, outgoing: list[Outgoing]) -> None:
        if not outgoing:
            return
        wall = self._clock.wall()
        for item in outgoing:
            try:
                data = self._codec.encode(item.message, wall, self._nonce())
            except MessageRejected:
                self._counts["encode_errors"] += 1
                continue
            self._transport.send(item.to, data)
            self._counts["datagrams_sent"] += 1

    async def _drain_reports(self) -> None:
        while True:
            report = await self._reports.get()
            try:
                await self._report(report)
            except Exception:  # noqa: BLE001  # a failing sink must not stop failure detection
                self._counts["report_errors"] += 1
                structlog.get_logger("moonwatch.swim").exception(
                    "swim_report_failed", target=report.target, reachable=report.reachable
                )
            else:
                self._counts["reports_delivered"] += 1
