"""The app fences itself by its agent's lease: in process with a fake clock, then as processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app import lease
from app.__main__ import main, parse_settings
from app.control import ControlProtocol, Grant, LineSplitter, Rejected, Release, parse_command
from app.fence import Identity, LeaseFence, OpenFence
from app.overlap_log import OverlapLog
from app.service import build_app
from app.settings import AppSettings
from scripts import check_overlap
from tests.support import free_port_block

REPO = Path(__file__).resolve().parents[2]
SETTINGS = AppSettings(
    slot="s1", server="m1", epoch=3, host="127.0.0.1", port=7410, base_domain="localhost",
    tenants=("acme",), data_dir=Path("unused"),
)  # fmt: skip
IDENTITY = Identity("s1", "m1", 3, 4242)
T0 = 1000.0
NOT_LONGER = "lease does not extend the current one"


class FakeClock:
    """Boot time moved by hand; monotonic trails it by 500 s (as if the machine had slept)."""

    def __init__(self) -> None:
        self.boot = T0

    def wall_now(self) -> float:
        return 1_700_000_000.0

    def boottime(self) -> float:
        return self.boot

    def monotonic(self) -> float:
        return self.boot - 500.0


@dataclass
class MemorySink:
    records: list[dict[str, object]] = field(default_factory=list)
    writable: bool = True

    def append(self, record: Mapping[str, object]) -> bool:
        if self.writable:
            self.records.append(dict(record))
        return self.writable

    def events(self) -> list[tuple[object, ...]]:
        return [(r["event"], r["boot"], r["until"], r["reason"]) for r in self.records]


@dataclass
class Events:
    items: list[dict[str, object]] = field(default_factory=list)

    def __call__(self, event: str, /, **fields: object) -> None:
        self.items.append({"event": event, **fields})

    def names(self) -> list[object]:
        return [e["event"] for e in self.items]


@dataclass
class World:
    clock: FakeClock = field(default_factory=FakeClock)
    sink: MemorySink = field(default_factory=MemorySink)
    events: Events = field(default_factory=Events)

    def __post_init__(self) -> None:
        self.fence = LeaseFence(IDENTITY, self.clock, self.sink, self.events)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(SETTINGS, world.clock, world.fence)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


Client = TestClient[web.Request, web.Application]


async def home(client: Client) -> int:
    return (await client.get("/", headers={"Host": "acme.localhost"})).status


# ------------------------------------------------------------------ lease arithmetic


@pytest.mark.parametrize(
    ("until", "new", "now", "expected"),
    [
        (None, 1010.0, T0, lease.Transition("start", T0, 1010.0, "lease")),
        (1010.0, 1020.0, T0, lease.Transition("renew", T0, 1020.0, "lease")),
        (1010.0, 1010.0, T0, lease.Ignored(f"{NOT_LONGER} (0.000 s shorter)")),
        (1010.0, 1005.0, T0, lease.Ignored(f"{NOT_LONGER} (5.000 s shorter)")),
        (None, T0, T0, lease.Ignored("lease ended 0.000 s ago")),
        (None, 990.0, T0, lease.Ignored("lease ended 10.000 s ago")),
    ],
)  # fmt: skip
def test_grant(
    until: float | None, new: float, now: float, expected: lease.Transition | lease.Ignored
) -> None:
    assert lease.grant(until, new, now) == expected


@pytest.mark.parametrize(
    ("until", "now", "stop", "remaining", "next_check"),
    [
        (None, T0, None, None, 0.05),
        (1010.0, T0, None, 10.0, 0.05),
        (1010.0, 1009.99, None, pytest.approx(0.01), pytest.approx(0.01)),
        (1010.0, 1010.0, lease.Transition("stop", 1010.0, 1010.0, "expired"), 0.0, 0.001),
        (1010.0, 1030.0, lease.Transition("stop", 1030.0, 1010.0, "expired"), 0.0, 0.001),
    ],
)
def test_expiry_arithmetic(
    until: float | None, now: float, stop: lease.Transition | None, remaining: Any, next_check: Any
) -> None:
    assert lease.expire(until, now) == stop
    assert lease.remaining_s(until, now) == remaining
    assert lease.next_check_s(until, now) == next_check


# ------------------------------------------------------------------ fence over HTTP (fake clock)


@pytest.mark.parametrize(
    ("method", "path", "host"),
    [("GET", "/", "acme.localhost"), ("GET", "/nope", "nobody.localhost"), ("POST", "/", "x")],
)
async def test_every_tenant_request_is_503_without_a_lease(
    client: Client, method: str, path: str, host: str
) -> None:
    response = await client.request(method, path, headers={"Host": host})
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-Moonwatch-Serving"] == "no"
    assert response.headers["X-Moonwatch-Slot"] == "s1"
    assert response.content_type == "text/html"
    assert "Temporarily unavailable" in await response.text()


async def test_healthz_answers_and_reports_the_lease(client: Client, world: World) -> None:
    health = await (await client.get("/healthz")).json()
    assert (health["status"], health["serving"], health["lease_remaining_s"]) == ("ok", False, None)
    world.fence.grant(1012.5)
    world.clock.boot = 1002.0
    health = await (await client.get("/healthz")).json()
    assert (health["serving"], health["lease_remaining_s"]) == (True, 10.5)


async def test_serves_exactly_while_boottime_is_before_until(client: Client, world: World) -> None:
    world.fence.grant(1010.0)
    assert await home(client) == 200
    world.clock.boot = 1009.999
    assert await home(client) == 200
    world.clock.boot = 1010.0
    assert await home(client) == 503  # the request itself noticed: no timer ran
    assert world.sink.events() == [
        ("start", T0, 1010.0, "lease"),
        ("stop", 1010.0, 1010.0, "expired"),
    ]
    assert world.events.names() == ["serving_started", "serving_stopped"]


async def test_release_stops_at_once_and_a_later_lease_starts_again(
    client: Client, world: World
) -> None:
    world.fence.grant(1060.0)
    world.clock.boot = 1001.0
    world.fence.release()
    assert await home(client) == 503
    world.fence.release()  # idempotent
    world.clock.boot = 1002.0
    world.fence.grant(1030.0)  # shorter than the released lease: there is no current one
    assert await home(client) == 200
    assert world.sink.events() == [
        ("start", T0, 1060.0, "lease"),
        ("stop", 1001.0, 1060.0, "release"),
        ("start", 1002.0, 1030.0, "lease"),
    ]


def test_only_an_extending_lease_renews(world: World) -> None:
    world.fence.grant(1010.0)
    world.fence.grant(1005.0)
    world.fence.grant(1010.0)
    world.fence.grant(990.0)
    world.clock.boot = 1003.0
    world.fence.grant(1020.0)
    assert world.sink.events() == [
        ("start", T0, 1010.0, "lease"),
        ("renew", 1003.0, 1020.0, "lease"),
    ]
    assert world.events.names() == ["serving_started", *["lease_ignored"] * 3]
    assert world.fence.status().lease_remaining_s == 17.0


def test_timer_check_notices_expiry_without_requests(world: World) -> None:
    assert world.fence.check() == 0.05
    world.fence.grant(1000.02)
    assert world.fence.check() == pytest.approx(0.02)
    world.clock.boot = 1000.07  # noticed 50 ms late
    assert world.fence.check() == 0.05
    assert world.sink.events()[-1] == ("stop", 1000.07, 1000.02, "expired")
    assert not world.fence.admit()


def test_a_lease_granted_after_an_unnoticed_expiry_records_the_gap(world: World) -> None:
    world.fence.grant(1010.0)
    world.clock.boot = 1015.0
    world.fence.grant(1020.0)
    assert world.sink.events() == [
        ("start", T0, 1010.0, "lease"),
        ("stop", 1015.0, 1010.0, "expired"),
        ("start", 1015.0, 1020.0, "lease"),
    ]


def test_record_format(world: World) -> None:
    world.fence.grant(1010.0)
    assert world.sink.records == [
        {"slot": "s1", "server": "m1", "epoch": 3, "pid": 4242, "event": "start",
         "boot": T0, "mono": T0 - 500.0, "until": 1010.0, "reason": "lease"},
    ]  # fmt: skip


def test_shutdown_stops_and_refuses_later_leases(world: World) -> None:
    world.fence.grant(1010.0)
    world.fence.shutdown("control_closed")
    world.fence.shutdown("stopped")
    world.fence.grant(1020.0)
    assert world.sink.events()[1:] == [("stop", T0, 1010.0, "control_closed")]
    assert not world.fence.admit()


def test_serving_that_cannot_be_recorded_does_not_happen(world: World) -> None:
    world.sink.writable = False
    world.fence.grant(1010.0)
    assert not world.fence.admit()
    world.sink.writable = True
    world.fence.grant(1010.0)
    world.sink.writable = False
    world.fence.grant(1030.0)  # the renew cannot be recorded, so the lease stays at 1010
    world.clock.boot = 1010.0
    assert not world.fence.admit()  # stops even though the stop record is lost
    reasons = [e.get("reason") for e in world.events.items if e["event"] == "lease_ignored"]
    assert reasons == ["cannot write the overlap log"] * 2
    assert "overlap_log_failed" in world.events.names()


def test_open_fence_records_start_and_stop_without_until() -> None:
    clock, sink = FakeClock(), MemorySink()
    fence = OpenFence(IDENTITY, clock, sink)
    assert fence.admit() and fence.begin()
    clock.boot = 1005.0
    fence.shutdown("signal SIGTERM")
    fence.shutdown("stopped")
    assert not fence.admit()
    assert sink.events() == [
        ("start", T0, None, "uncontrolled"),
        ("stop", 1005.0, None, "signal SIGTERM"),
    ]
    assert not OpenFence(IDENTITY, clock, MemorySink(writable=False)).begin()


# ------------------------------------------------------------------ control channel


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"lease 1234.5", Grant(1234.5)),
        (b"  lease   77 \r", Grant(77.0)),
        (b"lease 1.5e3", Grant(1500.0)),
        (b"release", Release()),
        (b"release now", Rejected("wrong number of arguments to release")),
        (b"lease", Rejected("wrong number of arguments to lease")),
        (b"lease 1 2", Rejected("wrong number of arguments to lease")),
        (b"lease -5", Rejected("lease instant is not a non-negative decimal number")),
        (b"lease nan", Rejected("lease instant is not a non-negative decimal number")),
        (b"lease 1_000", Rejected("lease instant is not a non-negative decimal number")),
        (b"lease 1e999", Rejected("lease instant is not finite")),
        (b"LEASE 5", Rejected("unknown command")),
        (b"", Rejected("empty line")),
        (b"\xff\xfe", Rejected("not ASCII")),
    ],
)
def test_parse_command(line: bytes, command: object) -> None:
    assert parse_command(line) == command


def test_line_splitter_joins_chunks_and_rejects_long_lines_once() -> None:
    splitter = LineSplitter(limit=10)
    assert splitter.feed(b"lea") == []
    assert splitter.feed(b"se 5\nrel") == [b"lease 5"]
    too_long = Rejected("line longer than 10 bytes")
    assert splitter.feed(b"ease\n" + b"x" * 11 + b"\nok\n") == [b"release", too_long, b"ok"]
    assert splitter.feed(b"y" * 8) == []
    assert splitter.feed(b"y" * 8) == [too_long]  # rejected as soon as it is too long ...
    assert splitter.feed(b"y" * 5000) == []  # ... and never buffered
    assert splitter.feed(b"yy\nrelease\npart") == [b"release"]
    assert splitter.leftover() == b"part"


@dataclass
class Target:
    calls: list[object] = field(default_factory=list)

    def grant(self, until: float) -> None:
        self.calls.append(until)

    def release(self) -> None:
        self.calls.append("release")


def test_control_protocol_applies_commands_and_ends_once() -> None:
    target, events, ended = Target(), Events(), []
    protocol = ControlProtocol(target, events, lambda: ended.append(True))
    protocol.data_received(b"lease 5\nbogus\n" + b"z" * 2000 + b"\nrelease\nlease 9")
    assert target.calls == [5.0, "release"]
    protocol.eof_received()
    protocol.connection_lost(None)
    assert ended == [True]
    assert [(e["event"], e.get("reason")) for e in events.items] == [
        ("control_rejected", "unknown command"),
        ("control_rejected", "line longer than 1024 bytes"),
        ("control_rejected", "unterminated last line"),
        ("control_closed", None),
    ]


def test_closing_the_control_protocol_is_no_eof() -> None:
    ended: list[bool] = []
    protocol = ControlProtocol(Target(), Events(), lambda: ended.append(True))
    protocol.close()
    protocol.connection_lost(None)
    assert ended == []


# ------------------------------------------------------------------ overlap log file


def test_overlap_log_appends_whole_lines(tmp_path: Path) -> None:
    log = OverlapLog(tmp_path / "o.log")
    assert log.append({"a": 1}) and log.append({"b": 2.5})
    assert not log.append({"nan": float("nan")})  # never writes what the checker cannot read
    log.close()
    log.close()
    assert not log.append({"c": 3})
    assert (tmp_path / "o.log").read_text() == '{"a":1}\n{"b":2.5}\n'


WRITER = """
import sys
from pathlib import Path
from app.overlap_log import OverlapLog
log = OverlapLog(Path(sys.argv[1]))
for n in range(400):
    assert log.append({"writer": sys.argv[2], "n": n, "pad": "x" * 150})
"""


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)], cwd=REPO)
        for w in range(4)
    ]
    assert [w.wait(timeout=30) for w in writers] == [0] * 4
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 1600
    assert {w: [r["n"] for r in rows if r["writer"] == str(w)] for w in range(4)} == {
        w: list(range(400)) for w in range(4)
    }


# ------------------------------------------------------------------ CLI


def test_parse_control_flags() -> None:
    argv = ["--slot", "s1", "--server", "m1", "--epoch", "3", "--port", "7410", "--tenant", "acme",
            "--data-dir", "d"]  # fmt: skip
    assert (parse_settings(argv).control, parse_settings(argv).overlap_log) == ("none", None)
    settings = parse_settings([*argv, "--control", "stdin", "--overlap-log", "o.log"])
    assert (settings.control, settings.overlap_log) == ("stdin", Path("o.log"))
    assert main([*argv, "--control", "tcp"]) == 2


def test_unopenable_overlap_log_fails_startup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir" / "o.log"
    argv = ["--slot", "s1", "--server", "m1", "--epoch", "3", "--port", str(free_port_block(1)),
            "--tenant", "acme", "--data-dir", str(tmp_path / "d"),
            "--overlap-log", str(missing)]  # fmt: skip
    assert main(argv) == 1
    assert f"cannot open overlap log {missing}" in capsys.readouterr().err


# ------------------------------------------------------------------ real processes


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def wait_for(predicate: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    """Poll every 20 ms until ``predicate()`` is truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"condition not met within {timeout_s} s (last value: {value!r})")


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class AppProcess:
    """``python -m app --control stdin``: commands in on stdin, stdout logged to a file."""

    def __init__(self, tmp_path: Path, name: str, overlap_log: Path, **popen: Any) -> None:
        self.port = free_port_block(1)
        self.out = tmp_path / f"{name}.out"
        self.overlap_log = overlap_log
        argv = [sys.executable, "-m", "app", "--slot", "s1", "--server", name, "--epoch", "1",
                "--port", str(self.port), "--tenant", "acme", "--data-dir", str(tmp_path / name),
                "--control", "stdin", "--overlap-log", str(overlap_log)]  # fmt: skip
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                **{"stdin": subprocess.PIPE, **popen},
            )

    def send(self, *lines: bytes | str) -> None:
        assert self.proc.stdin is not None
        for line in lines:
            self.proc.stdin.write(line if isinstance(line, bytes) else line.encode() + b"\n")
        self.proc.stdin.flush()

    def get(self, path: str = "/") -> tuple[int, Mapping[str, str], bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Host": "acme.localhost"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                return reply.status, reply.headers, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def health(self) -> dict[str, Any]:
        def answer() -> dict[str, Any] | None:
            assert self.proc.poll() is None, self.out.read_text()
            try:
                status, _, body = self.get("/healthz")
            except (urllib.error.URLError, ConnectionError):
                return None
            health: dict[str, Any] = json.loads(body)
            return health if status == 200 else None

        health: dict[str, Any] = wait_for(answer, timeout_s=10.0)
        return health

    def status(self) -> int:
        return self.get()[0]

    def records(self) -> list[dict[str, Any]]:
        return [r for r in json_lines(self.overlap_log) if r["pid"] == self.proc.pid]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in json_lines(self.out) if e.get("event") == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


@pytest.fixture
def apps() -> Iterator[list[AppProcess]]:
    started: list[AppProcess] = []
    try:
        yield started
    finally:
        for app in started:
            app.stop()


def test_process_serves_only_under_its_lease(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = AppProcess(tmp_path, "m1", tmp_path / "overlap.log")
    apps.append(app)
    assert app.health()["serving"] is False
    status, headers, _ = app.get()
    assert (status, headers["Retry-After"], headers["X-Moonwatch-Serving"]) == (503, "1", "no")

    until = boottime() + 2.0
    app.send(f"lease {until!r}")
    wait_for(lambda: app.status() == 200)
    assert [(r["event"], r["until"], r["reason"]) for r in app.records()] == [
        ("start", until, "lease")
    ]
    app.send(f"lease {until - 1.0!r}")  # shorter: ignored
    wait_for(lambda: app.events("lease_ignored"))
    assert len(app.records()) == 1 and app.status() == 200

    # Expiry with no request in flight: the timer notices it and writes the stop.
    stop = wait_for(lambda: app.records()[1:], timeout_s=5.0)[0]
    assert (stop["event"], stop["until"], stop["reason"]) == ("stop", until, "expired")
    assert 0.0 <= stop["boot"] - until < 1.0
    assert app.status() == 503

    app.send(f"lease {boottime() + 60.0!r}")
    wait_for(lambda: app.status() == 200)
    app.send("release")
    wait_for(lambda: app.status() == 503, timeout_s=1.0)
    assert [r["reason"] for r in app.records()] == ["lease", "expired", "lease", "release"]

    garbage = [b"bogus\n", b"lease\n", b"lease abc\n", b"lease nan\n", b"lease -5\n",
               b"x" * 5000 + b"\n", b"\xff\xfe\x00\n", b"lease 1e999\n", b"\n"]  # fmt: skip
    app.send(*garbage)
    wait_for(lambda: len(app.events("control_rejected")) == len(garbage))
    assert app.health()["serving"] is False

    app.send(f"lease {boottime() + 60.0!r}")
    wait_for(lambda: app.status() == 200)
    assert app.proc.stdin is not None
    app.proc.stdin.close()  # the agent is gone
    assert app.proc.wait(timeout=3) == 0
    assert app.records()[-1]["reason"] == "control_closed"
    assert app.events("control_closed")
    assert check_overlap.main([str(app.overlap_log)]) == 0


def test_sigterm_writes_a_stop(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = AppProcess(tmp_path, "m1", tmp_path / "overlap.log")
    apps.append(app)
    app.health()
    app.send(f"lease {boottime() + 60.0!r}")
    wait_for(lambda: app.status() == 200)
    app.proc.send_signal(signal.SIGTERM)
    assert app.proc.wait(timeout=10) == 0
    assert [r["reason"] for r in app.records()] == ["lease", "signal SIGTERM"]


def test_agent_gone_before_start_means_no_serving(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = AppProcess(tmp_path, "m1", tmp_path / "o.log")
    apps.append(app)
    app.send("lease 99999999")
    assert app.proc.stdin is not None
    app.proc.stdin.close()
    assert app.proc.wait(timeout=10) == 0
    assert app.events("control_closed")
    assert [r["event"] for r in app.records()] in ([], ["start", "stop"])


@pytest.mark.parametrize("stdin", ["devnull", "regular-file"])
def test_control_stdin_must_be_a_pipe(tmp_path: Path, apps: list[AppProcess], stdin: str) -> None:
    commands = tmp_path / "commands.txt"
    commands.write_text("lease 99999999\n")
    with commands.open("rb") as regular_file:
        source = subprocess.DEVNULL if stdin == "devnull" else regular_file
        app = AppProcess(tmp_path, "m1", tmp_path / "o.log", stdin=source)
        apps.append(app)
        assert app.proc.wait(timeout=10) == 1
    assert "--control stdin: cannot read stdin: stdin is not a pipe" in app.out.read_text()
    assert app.records() == []


def test_checker_tells_a_handover_from_an_overlap(tmp_path: Path, apps: list[AppProcess]) -> None:
    log = tmp_path / "shared.log"
    first, second = AppProcess(tmp_path, "m1", log), AppProcess(tmp_path, "m2", log)
    apps += [first, second]
    first.health()
    second.health()
    until = boottime() + 0.5
    first.send(f"lease {until!r}")
    wait_for(first.records)  # serving (the start record is written before serving starts)
    first.proc.kill()  # SIGKILL: no stop record; its last until bounds it
    first.proc.wait()
    wait_for(lambda: boottime() > until)
    second.send(f"lease {boottime() + 2.0!r}")
    wait_for(second.records)
    assert check_overlap.main([str(log)]) == 0

    third = AppProcess(tmp_path, "m3", log)
    apps.append(third)
    third.health()
    second.send(f"lease {boottime() + 30.0!r}")
    third.send(f"lease {boottime() + 30.0!r}")  # a broken agent: two leases at once
    wait_for(lambda: third.status() == 200 and second.status() == 200)
    assert check_overlap.main([str(log), "--json"]) == 1
