"""The sd_notify client (against sockets the test binds) and the heartbeat's pure timing."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.heartbeat import JOINING_STATUS, Beat, BeatState, Heartbeat, plan_beat
from agent.loop import TickReport
from agent.sdnotify import Notifier, socket_address, watchdog_interval_s

# ---------------------------------------------------------------- the client


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a short path (unix socket paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mw-") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2.0)
        try:
            yield sock, path
        finally:
            sock.close()


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@abstract/name", b"\0abstract/name"),
        ("", None),
        ("@", None),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_socket_address(value: str, address: str | bytes | None) -> None:
    assert socket_address(value) == address


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "2000000"}, 2.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(environ, pid=4242) == expected


def test_messages_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.ready("joined; serving s1")
    assert notifier.watchdog()
    assert notifier.status("two\nlines")
    assert notifier.stopping()
    assert notifier.send("EXTEND_TIMEOUT_USEC=5000000", "STATUS=slow")
    received = [sock.recv(4096) for _ in range(5)]
    notifier.close()
    assert received == [
        b"READY=1\nSTATUS=joined; serving s1",
        b"WATCHDOG=1",
        b"STATUS=two lines",
        b"STOPPING=1",
        b"EXTEND_TIMEOUT_USEC=5000000\nSTATUS=slow",
    ]
    assert notifier.failures == 0


def test_abstract_socket_from_the_environment() -> None:
    name = f"moonwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        environ = {
            "NOTIFY_SOCKET": f"@{name}",
            "WATCHDOG_USEC": "3000000",
            "WATCHDOG_PID": str(os.getpid()),
            "PATH": "/usr/bin",
        }
        notifier, watchdog_s = Notifier.from_environ(environ)
        assert notifier.enabled and watchdog_s == 3.0
        assert environ == {"PATH": "/usr/bin"}  # children do not inherit systemd's variables
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()


def test_without_a_socket_nothing_is_sent() -> None:
    notifier, watchdog_s = Notifier.from_environ({})
    assert not notifier.enabled and watchdog_s is None
    assert not notifier.ready("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert notifier.failures == 0


def test_send_errors_are_logged_once_and_never_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with capture_logs() as logs:
        results = [notifier.watchdog() for _ in range(3)]
    assert results == [False, False, False]
    assert notifier.failures == 3
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    notifier.close()


# ---------------------------------------------------------------- the heartbeat's timing


def report(at: float, summary: str = "serving s1") -> TickReport:
    return TickReport(summary, at)


@pytest.mark.parametrize(
    ("state", "now", "tick", "ready", "expected"),
    [
        # Not joined yet: say so once, nothing else.
        (BeatState(), 0.0, None, False, Beat(status=JOINING_STATUS)),
        (BeatState(last_status=JOINING_STATUS), 1.0, report(1.0), False, Beat()),
        # Joined: READY=1 with the loop's sentence.
        (
            BeatState(last_status=JOINING_STATUS),
            1.0,
            report(1.0),
            True,
            Beat(True, False, "serving s1"),
        ),
        # Ready: a ping at half the interval while the loop's report is fresh ...
        (BeatState(True, 0.0, "serving s1"), 5.0, report(4.9), True, Beat(watchdog=True)),
        (BeatState(True, 0.0, "serving s1"), 4.0, report(3.9), True, Beat()),
        # ... none once it is as old as the interval, whatever readiness says now ...
        (BeatState(True, 0.0, "serving s1"), 15.0, report(5.0), True, Beat()),
        (BeatState(True, 0.0, "serving s1"), 6.0, report(5.9), False, Beat(watchdog=True)),
        # ... and a new sentence becomes the status.
        (
            BeatState(True, 0.0, "serving s1"),
            5.0,
            report(5.0, "idle"),
            True,
            Beat(False, True, "idle"),
        ),
    ],
)
def test_plan_beat(
    state: BeatState, now: float, tick: TickReport | None, ready: bool, expected: Beat
) -> None:
    assert plan_beat(state, now, tick, ready, watchdog_s=10.0) == expected


def test_no_watchdog_interval_means_no_pings() -> None:
    state = BeatState(True, 0.0, "serving s1")
    assert plan_beat(state, 100.0, report(100.0), True, watchdog_s=None) == Beat()


class FakeClock:
    """Time moves only when the heartbeat sleeps; it stops the run at `until`."""

    def __init__(self, until: float, stopping: asyncio.Event) -> None:
        self.now = 0.0
        self.until = until
        self.stopping = stopping

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.now >= self.until:
            self.stopping.set()
        await asyncio.sleep(0)


class Recorder:
    """A service manager that writes down what it was told, and when."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str]] = []

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def send(self, *fields: str) -> bool:
        self.sent.append((self.clock.now, "\n".join(fields)))
        return True

    def pings(self) -> list[float]:
        return [at for at, message in self.sent if message == "WATCHDOG=1"]


async def test_a_hung_loop_stops_the_pings() -> None:
    """The loop reports every 0.1 s until t=20 s and then hangs: pings go on every half
    interval until its last report is a whole interval old, and then stop for good."""
    stopping = asyncio.Event()
    clock = FakeClock(until=60.0, stopping=stopping)
    manager = Recorder(clock)

    def last_report() -> TickReport:
        return report(min(clock.now, 20.0))

    heartbeat = Heartbeat(
        manager, clock, report=last_report, ready=lambda: clock.now >= 3.0, watchdog_s=2.0
    )
    await heartbeat.run(stopping)

    assert manager.sent[0] == (0.0, f"STATUS={JOINING_STATUS}")
    assert manager.sent[1] == (3.0, "READY=1\nSTATUS=serving s1")
    pings = manager.pings()
    assert pings[0] == pytest.approx(4.0)
    gaps = [b - a for a, b in zip([3.0, *pings], pings, strict=False)]
    assert all(gap <= 1.0 + 1e-9 for gap in gaps)  # every half interval, never later
    assert 21.0 <= pings[-1] < 22.0  # up to the last report being 2 s old, not after
    assert len(pings) == 18


async def test_stopping_is_sent_once_and_ends_the_pings() -> None:
    stopping = asyncio.Event()
    clock = FakeClock(until=10.0, stopping=stopping)
    manager = Recorder(clock)
    heartbeat = Heartbeat(
        manager, clock, report=lambda: report(clock.now), ready=lambda: True, watchdog_s=2.0
    )
    heartbeat.beat()
    heartbeat.stopping()
    heartbeat.stopping()
    await heartbeat.run(stopping)  # returns at once: nothing more after STOPPING=1
    assert [m for _, m in manager.sent] == [
        "READY=1\nSTATUS=serving s1",
        "STOPPING=1\nSTATUS=stopping",
    ]
