"""The asyncio shell on fake time: probing, reports, rejected datagrams, loop lag, shutdown."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from agent.swim.detector import Detector, DetectorConfig, ProbeReport
from agent.swim.memory_transport import MemoryNetwork
from agent.swim.messages import Codec, Ping, derive_probe_key
from agent.swim.runner import SwimRunner

KEY = derive_probe_key("runner-test")
NAMES = ["a", "b", "c"]


class FakeClock:
    """Time moves only when the test says so; sleepers wake when their deadline has passed."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self.now + 1e-9]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.now + 1e-9]
        for _, future in due:
            if not future.done():
                future.set_result(None)


class Cluster:
    def __init__(self, sink: Callable[[str, ProbeReport], None] | None = None) -> None:
        self.clock = FakeClock()
        self.network = MemoryNetwork(random.Random(1), delay_s=(0.001, 0.002))
        self.reports: list[tuple[str, ProbeReport]] = []
        self.stopping = {name: asyncio.Event() for name in NAMES}
        self.runners: dict[str, SwimRunner] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        for i, name in enumerate(NAMES):

            async def report(r: ProbeReport, name: str = name) -> None:
                if sink is not None:
                    sink(name, r)
                self.reports.append((name, r))

            self.runners[name] = SwimRunner(
                name,
                Detector(name, DetectorConfig(), random.Random(i)),
                Codec(KEY, frozenset(NAMES)),
                self.network.transport(name),
                self.clock,
                report,
                lambda: NAMES,
                tick_s=0.01,
            )

    async def start(self) -> None:
        for name, runner in self.runners.items():
            self.tasks[name] = asyncio.create_task(runner.run(self.stopping[name]))
        await settle()

    async def advance(self, seconds: float, step_s: float = 0.01) -> None:
        for _ in range(round(seconds / step_s)):
            self.clock.advance(step_s)
            self.network.deliver_due(self.clock.now)
            await settle()

    async def stop(self, name: str) -> None:
        self.stopping[name].set()
        self.clock.advance(0.01)
        await asyncio.wait_for(self.tasks[name], 1.0)

    async def stop_all(self) -> None:
        for name in NAMES:
            if not self.tasks[name].done():
                await self.stop(name)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_healthy_runners_probe_each_other_without_reports() -> None:
    cluster = Cluster()
    await cluster.start()
    await cluster.advance(2.0)
    await cluster.stop_all()
    assert cluster.reports == []
    stats = cluster.runners["a"].stats()
    assert stats["probes_sent"] >= 9
    assert stats["acks"] >= stats["probes_sent"] - 1  # the last may be in flight at the stop
    assert stats["datagrams_sent"] > 0 and stats["lag_penalties"] == 0


async def test_a_stopped_runner_is_reported_and_a_failing_sink_is_survived() -> None:
    def sink(observer: str, report: ProbeReport) -> None:
        if observer == "b":
            raise RuntimeError("consensus unavailable")

    cluster = Cluster(sink)
    await cluster.start()
    await cluster.advance(0.5)
    await cluster.stop("c")  # closes its transport: c is gone
    with capture_logs() as logs:
        await cluster.advance(3.0)
    await cluster.stop_all()
    assert {(observer, r.target, r.reachable) for observer, r in cluster.reports} == {
        ("a", "c", False)
    }
    assert cluster.runners["b"].stats()["report_errors"] >= 1
    assert any(e["event"] == "swim_report_failed" and e["target"] == "c" for e in logs)


async def test_confirm_goes_through_the_runner() -> None:
    cluster = Cluster()
    await cluster.start()
    cluster.runners["a"].confirm("b")
    await cluster.advance(0.1)
    await cluster.stop_all()
    [(observer, report)] = cluster.reports
    assert (observer, report.target, report.reachable) == ("a", "b", True)
    assert report.evidence["kind"] == "confirm"


async def test_rejected_datagrams_are_counted_and_dropped() -> None:
    cluster = Cluster()
    await cluster.start()
    a = cluster.runners["a"]
    intruder = Codec(derive_probe_key("not-the-cluster"), frozenset(NAMES))
    forged = intruder.encode(Ping(1, "b", "a", 0), cluster.clock.wall(), b"n" * 12)
    genuine = Codec(KEY, frozenset(NAMES)).encode(
        Ping(1, "b", "a", 0), cluster.clock.wall(), b"m" * 12
    )
    stranger = Codec(KEY, frozenset({"z"})).encode(
        Ping(1, "z", "a", 0), cluster.clock.wall(), b"o" * 12
    )
    for data in (b"\x00" * 5000, b"junk", forged, genuine, genuine, stranger):
        cluster.network.transport("b").send("a", data)
    await cluster.advance(0.05)
    await cluster.stop_all()
    assert dict(a.rejected) == {
        "oversized": 1,
        "malformed": 1,
        "bad_signature": 1,
        "replayed": 1,
        "unknown_sender": 1,
    }
    stats = a.stats()
    assert stats["rejected_replayed"] == 1 and stats["pings_answered"] >= 1


async def test_a_stalled_loop_raises_awareness() -> None:
    cluster = Cluster()
    await cluster.start()
    await cluster.advance(0.2)
    cluster.clock.advance(0.5)  # every runner wakes half a second late
    await settle()
    await cluster.advance(0.05)
    await cluster.stop_all()
    assert all(r.stats()["lag_penalties"] == 1 for r in cluster.runners.values())


async def test_run_closes_the_transport_when_stopped() -> None:
    cluster = Cluster()
    await cluster.start()
    await cluster.stop("a")
    before = cluster.runners["a"].stats()
    ping = Codec(KEY, frozenset(NAMES)).encode(
        Ping(1, "b", "a", 0), cluster.clock.wall(), b"p" * 12
    )
    cluster.network.transport("b").send("a", ping)
    cluster.network.deliver_due(1.0)
    assert cluster.runners["a"].stats() == before
    assert cluster.network.stats["dropped_down"] >= 1
    await cluster.stop_all()


def test_tick_must_be_positive() -> None:
    cluster_codec = Codec(KEY, frozenset(NAMES))

    async def sink(_: ProbeReport) -> None:
        return None

    with pytest.raises(ValueError):
        SwimRunner(
            "a",
            Detector("a", DetectorConfig(), random.Random(1)),
            cluster_codec,
            MemoryNetwork(random.Random(1)).transport("a"),
            FakeClock(),
            sink,
            lambda: NAMES,
            tick_s=0.0,
        )
