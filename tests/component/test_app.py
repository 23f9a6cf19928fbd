"""Component tests of the hosted app: in-process over TestServer, and as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app import pages
from app.__main__ import main, parse_settings
from app.service import build_app, tenant_for_host
from app.settings import AppSettings

REPO = Path(__file__).resolve().parents[2]
STARTED_AT = 1_700_000_000.25
SETTINGS = AppSettings(
    slot="s1",
    server="m1",
    epoch=3,
    host="127.0.0.1",
    port=7410,
    base_domain="localhost",
    tenants=("acme", "globex"),
    data_dir=Path("unused"),
)
INSTANCE_HEADERS = {"X-Moonwatch-Slot": "s1", "X-Moonwatch-Server": "m1", "X-Moonwatch-Epoch": "3"}
GOOD_ARGS = [
    "--slot", "s1", "--server", "m1", "--epoch", "3", "--host", "127.0.0.1", "--port", "7410",
    "--base-domain", "localhost", "--tenant", "acme", "--tenant", "globex", "--data-dir", "d",
]  # fmt: skip


class FixedClock:
    """A clock that always reads STARTED_AT (and a fixed boot and monotonic time)."""

    def wall_now(self) -> float:
        return STARTED_AT

    def boottime(self) -> float:
        return 100.0

    def monotonic(self) -> float:
        return 90.0


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_app(SETTINGS, FixedClock()))) as test_client:
        yield test_client


def assert_instance_headers(headers: Mapping[str, str]) -> None:
    for name, value in INSTANCE_HEADERS.items():
        assert headers.get(name) == value, name


async def raw_request(client: TestClient[web.Request, web.Application], head: bytes) -> bytes:
    """Send a hand-written request (for headers aiohttp's client will not send) and read it all."""
    assert client.server.host is not None and client.server.port is not None
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        try:
            writer.write(head + b"Connection: close\r\n\r\n")
            return await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()


# ------------------------------------------------------------------ in process


async def test_healthz_reports_this_instance(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ok",
        "slot": "s1",
        "server": "m1",
        "epoch": 3,
        "pid": os.getpid(),
        "tenants": ["acme", "globex"],
        "started_at": STARTED_AT,
        "serving": True,
        "lease_remaining_s": None,
    }


@pytest.mark.parametrize("host", ["acme.localhost", "nobody.localhost", "example.com", "127.0.0.1"])
async def test_healthz_ignores_host(
    client: TestClient[web.Request, web.Application], host: str
) -> None:
    response = await client.get("/healthz", headers={"Host": host})
    assert response.status == 200
    assert (await response.json())["slot"] == "s1"


@pytest.mark.parametrize("tenant", ["acme", "globex"])
async def test_tenant_home_page(
    client: TestClient[web.Request, web.Application], tenant: str
) -> None:
    response = await client.get("/", headers={"Host": f"{tenant}.localhost:1234"})
    assert response.status == 200
    assert response.content_type == "text/html"
    body = await response.text()
    assert f"{tenant} — hosted on slot s1 by server m1 (epoch 3)" in body
    assert body.startswith("<!doctype html>")


async def test_head_on_home(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.head("/", headers={"Host": "acme.localhost"})
    assert response.status == 200
    assert await response.read() == b""


@pytest.mark.parametrize(
    ("method", "path", "host", "status"),
    [
        ("GET", "/healthz", "anything", 200),
        ("GET", "/", "acme.localhost", 200),
        ("GET", "/", "nobody.localhost", 404),
        ("GET", "/missing", "acme.localhost", 404),
        ("GET", "/missing", "example.com", 404),
        ("POST", "/", "acme.localhost", 405),
        ("POST", "/healthz", "acme.localhost", 405),
    ],
)
async def test_every_response_names_the_instance(
    client: TestClient[web.Request, web.Application],
    method: str,
    path: str,
    host: str,
    status: int,
) -> None:
    response = await client.request(method, path, headers={"Host": host})
    assert response.status == status
    assert_instance_headers(response.headers)


@pytest.mark.parametrize(
    "host", ["nobody.localhost", "nobody.localhost:80", "acme.example.com", "acme.localhost.evil"]
)
async def test_unknown_workspace_is_404(
    client: TestClient[web.Request, web.Application], host: str
) -> None:
    response = await client.get("/", headers={"Host": host})
    assert response.status == 404
    assert response.content_type == "text/html"
    body = await response.text()
    assert "does not exist here" in body
    assert f"“{host.rsplit(':80', 1)[0]}”" in body


async def test_unknown_path_in_known_workspace_is_404(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/nope/deeper", headers={"Host": "acme.localhost"})
    assert response.status == 404
    body = await response.text()
    assert "Page not found" in body
    assert "“acme”" in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("host", ["acme.localhost", "nobody.localhost"])
async def test_other_methods_on_home_are_405(
    client: TestClient[web.Request, web.Application], method: str, host: str
) -> None:
    response = await client.request(method, "/", headers={"Host": host})
    assert response.status == 405
    assert response.headers["Allow"] == "GET,HEAD"


async def test_hostile_host_is_escaped(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/", headers={"Host": "<script>alert(1)</script>.localhost"})
    assert response.status == 404
    body = await response.text()
    assert "<script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.localhost" in body
    assert_instance_headers(response.headers)


async def test_very_long_host_is_404_and_clipped(
    client: TestClient[web.Request, web.Application],
) -> None:
    host = "a" * 5000 + ".localhost"
    response = await client.get("/", headers={"Host": host})
    assert response.status == 404
    body = await response.text()
    assert "a" * pages.MAX_SHOWN_HOST + "…" in body
    assert "a" * (pages.MAX_SHOWN_HOST + 1) not in body


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET / HTTP/1.0\r\n", id="missing-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: \xff\xfe<b>.localhost\r\n", id="non-utf8-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: \xe2\x84\xaacme.localhost\r\n", id="kelvin-sign"),
    ],
)
async def test_malformed_host_is_404_never_500(
    client: TestClient[web.Request, web.Application], head: bytes
) -> None:
    response = await raw_request(client, head)
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split(b" ", 1)[1] == b"404 Not Found"
    assert b"X-Moonwatch-Slot: s1\r\n" in rest
    assert b"does not exist here" in rest
    assert b"<b>" not in rest


async def test_http11_without_host_is_rejected_by_the_parser(
    client: TestClient[web.Request, web.Application],
) -> None:
    # aiohttp answers 400 before routing (so without our headers); HTTP/1.0 reaches us (above).
    response = await raw_request(client, b"GET / HTTP/1.1\r\n")
    status_line = response.partition(b"\r\n")[0]
    assert status_line.split(b" ", 1)[1] == b"400 Bad Request"


@pytest.mark.parametrize(
    ("host", "tenant"),
    [
        ("acme.localhost", "acme"),
        ("acme.localhost:1234", "acme"),
        ("ACME.LocalHost", "acme"),
        ("acme.localhost.", "acme"),
        ("globex.localhost:8080", "globex"),
        ("nobody.localhost", None),
        ("localhost", None),
        (".localhost", None),
        ("acme.", None),
        ("acme.evil.localhost", None),
        ("acme.localhost.evil", None),
        ("acmelocalhost", None),
        ("acme.localhost:http", None),
        ("\u212acme.localhost", None),  # KELVIN SIGN lower-cases to "k": ASCII hosts only
        ("", None),
    ],
)
def test_tenant_for_host(host: str, tenant: str | None) -> None:
    assert tenant_for_host(host, "localhost", ("acme", "globex", "kcme")) == tenant


def test_pages_escape_every_value() -> None:
    page = pages.render(title="<t>", heading="\"h\" & 'h'", detail="<img src=x>")
    assert "<t>" not in page and "<img" not in page
    assert "&lt;t&gt;" in page
    assert "&quot;h&quot; &amp; &#x27;h&#x27;" in page


# ------------------------------------------------------------------ CLI


def test_parse_settings() -> None:
    assert parse_settings(GOOD_ARGS) == AppSettings(
        slot="s1",
        server="m1",
        epoch=3,
        host="127.0.0.1",
        port=7410,
        base_domain="localhost",
        tenants=("acme", "globex"),
        data_dir=Path("d"),
    )


def without(flag: str) -> list[str]:
    """GOOD_ARGS minus every occurrence of ``flag`` and its value."""
    pairs = zip(GOOD_ARGS[::2], GOOD_ARGS[1::2], strict=True)
    return [item for pair in pairs if pair[0] != flag for item in pair]


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        pytest.param(without("--slot"), "--slot", id="missing-slot"),
        pytest.param(without("--tenant"), "--tenant", id="no-tenant"),
        pytest.param(without("--data-dir"), "--data-dir", id="missing-data-dir"),
        pytest.param([*GOOD_ARGS, "--port", "0"], "port must be in 1..65535", id="port-0"),
        pytest.param([*GOOD_ARGS, "--port", "65536"], "port must be in", id="port-65536"),
        pytest.param([*GOOD_ARGS, "--port", "http"], "invalid port", id="port-text"),
        pytest.param([*GOOD_ARGS, "--epoch", "-1"], "epoch must be >= 0", id="epoch-negative"),
        pytest.param([*GOOD_ARGS, "--tenant", "Acme"], "invalid tenant", id="tenant-upper"),
        pytest.param([*GOOD_ARGS, "--tenant=-acme"], "invalid tenant", id="tenant-dash"),
        pytest.param([*GOOD_ARGS, "--tenant", "a_b"], "invalid tenant", id="tenant-underscore"),
        pytest.param([*GOOD_ARGS, "--tenant", "a" * 64], "invalid tenant", id="tenant-64"),
        pytest.param([*GOOD_ARGS, "--tenant", "acme"], "duplicate tenant", id="tenant-twice"),
        pytest.param([*GOOD_ARGS, "--slot", "s 1"], "invalid name", id="slot-space"),
        pytest.param([*GOOD_ARGS, "--base-domain", "Ex..com"], "invalid base domain", id="domain"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str],
    complaint: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # GOOD_ARGS names the relative data dir "d"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m app")
    assert "error:" in err and complaint in err
    assert not (tmp_path / "d").exists()


def test_longest_tenant_label_is_accepted() -> None:
    assert parse_settings([*without("--tenant"), "--tenant", "a" * 63]).tenants == ("a" * 63,)


# ------------------------------------------------------------------ real process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def app_argv(port: int, data_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "app", "--slot", "s1", "--server", "m1", "--epoch", "3",
        "--host", "127.0.0.1", "--port", str(port), "--base-domain", "localhost",
        "--tenant", "acme", "--tenant", "globex", "--data-dir", str(data_dir),
    ]  # fmt: skip


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    """Collects started children; any still running at teardown is killed and reaped."""
    children: list[subprocess.Popen[str]] = []
    try:
        yield children
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate()


def start(spawn: list[subprocess.Popen[str]], argv: list[str]) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    spawn.append(child)
    return child


def wait_healthy(
    child: subprocess.Popen[str], port: int, timeout_s: float = 10.0
) -> dict[str, object]:
    """Poll /healthz every 50 ms until it answers; fail if the child exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert child.poll() is None, f"app exited early with {child.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
                health: dict[str, object] = json.load(reply)
                return health
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    pytest.fail(f"app not healthy within {timeout_s} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_process_serves_then_stops_cleanly(
    spawn: list[subprocess.Popen[str]], tmp_path: Path, signum: signal.Signals
) -> None:
    port = free_port()
    data_dir = tmp_path / "slots" / "s1"
    child = start(spawn, app_argv(port, data_dir))

    health = wait_healthy(child, port)
    assert health["pid"] == child.pid
    assert health["tenants"] == ["acme", "globex"]
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    # The only thing the app keeps in its data dir is its SQLite database (with WAL files).
    assert {p.name for p in data_dir.iterdir()} <= {
        "app.sqlite3",
        "app.sqlite3-wal",
        "app.sqlite3-shm",
    }

    child.send_signal(signum)
    out, err = child.communicate(timeout=5)
    assert child.returncode == 0, err
    first = json.loads(out.splitlines()[0])
    assert first == {"event": "app_started", "slot": "s1", "port": port, "pid": child.pid}
    assert err == ""


def test_process_exits_3_when_port_is_taken(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        child = start(spawn, app_argv(port, tmp_path / "d"))
        out, err = child.communicate(timeout=10)
    assert child.returncode == 3
    assert out == ""
    assert err == f"app: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_process_exits_2_on_bad_arguments(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    child = start(spawn, app_argv(0, tmp_path / "d"))
    out, err = child.communicate(timeout=10)
    assert child.returncode == 2
    assert out == ""
    assert "error: argument --port: port must be in 1..65535, got 0" in err
    assert not (tmp_path / "d").exists()
