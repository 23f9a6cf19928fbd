"""The app process and its slot database: opened and migrated at start, probed by /readyz,
closed at stop, and a clean exit with EXIT_DATABASE when it cannot be opened or migrated."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.driver import InstanceSpec
from app.__main__ import DATABASE_URL_ENV, EXIT_DATABASE, main, parse_settings
from app.accounts import create_tenant, tenant_by_name
from app.clock import SystemClock
from app.db import open_database, sqlite_path
from app.fence import GateStatus
from app.migrate import load_migrations, migrate
from app.service import build_app
from tests.component.test_app import (
    GOOD_ARGS,
    SETTINGS,
    app_argv,
    free_port,
    spawn,
    start,
    wait_healthy,
)
from tests.support_pg import running_postgres

__all__ = ["spawn"]  # a fixture, imported for the tests below

PROBE_TIMEOUT_S = 15.0


def get_json(port: int, path: str) -> tuple[int, dict[str, object]]:
    """GET a probe; return its status and JSON body (503 included)."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def wait_status(port: int, path: str, status: int) -> dict[str, object]:
    """Poll ``path`` every 50 ms until it answers ``status``; return that body."""
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    last: tuple[int, dict[str, object]] | None = None
    while time.monotonic() < deadline:
        last = get_json(port, path)
        if last[0] == status:
            return last[1]
        time.sleep(0.05)
    pytest.fail(f"{path} did not answer {status} within {PROBE_TIMEOUT_S} s (last: {last})")


def stop(child: subprocess.Popen[str], *, quiet: bool = True) -> list[dict[str, object]]:
    """SIGTERM the app, expect a clean exit (and, when ``quiet``, nothing on stderr), return
    its stdout events."""
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=15)
    assert child.returncode == 0, err
    assert err == "" or not quiet, err
    return [json.loads(line) for line in out.splitlines()]


def database_event(events: list[dict[str, object]]) -> dict[str, object]:
    return next(event for event in events if event["event"] == "app_database")


async def write_tenant(path: Path, name: str) -> None:
    db = await open_database(path)
    try:
        await create_tenant(db, name, name.title(), f"owner@{name}.test", SystemClock())
    finally:
        await db.close()


async def read_tenant_and_versions(path: Path, name: str) -> tuple[bool, list[int]]:
    db = await open_database(path)
    try:
        tenant = await tenant_by_name(db, name)
        rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
        return tenant is not None, [int(row["version"]) for row in rows]
    finally:
        await db.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------ SQLite, real process


def test_sqlite_is_created_migrated_and_reused(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    data_dir = tmp_path / "slots" / "s1"
    database = sqlite_path(data_dir)

    port = free_port()
    first = start(spawn, app_argv(port, data_dir))
    wait_healthy(first, port)
    assert database.is_file()
    assert wait_status(port, "/readyz", 200) == {"status": "ready", "database": "sqlite"}
    applied = database_event(stop(first))
    assert applied["dialect"] == "sqlite"
    assert applied["migrations_applied"] == [m.name for m in load_migrations()]

    # Written by the library itself while no app runs, into the very same file.
    asyncio.run(write_tenant(database, "acme"))

    port = free_port()
    second = start(spawn, app_argv(port, data_dir))
    wait_healthy(second, port)
    assert wait_status(port, "/readyz", 200)["database"] == "sqlite"
    assert database_event(stop(second))["migrations_applied"] == []  # the schema was current

    versions = [int(m.name[:4]) for m in load_migrations()]
    assert asyncio.run(read_tenant_and_versions(database, "acme")) == (True, versions)


@pytest.mark.parametrize("kind", ["directory", "garbage"])
def test_unopenable_sqlite_exits_with_the_database_code(
    spawn: list[subprocess.Popen[str]], tmp_path: Path, kind: str
) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    database = sqlite_path(data_dir)
    if kind == "directory":
        database.mkdir()
    else:
        database.write_bytes(b"this is not a SQLite database, not even close\n" * 100)
    child = start(spawn, app_argv(free_port(), data_dir))
    out, err = child.communicate(timeout=15)
    assert child.returncode == EXIT_DATABASE == 4
    assert out == ""
    assert err.startswith(f"app: database {database} cannot be opened: ")
    assert err.count("\n") == 1 and err.endswith("\n")


def test_a_database_from_newer_code_exits_with_the_database_code(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    database = sqlite_path(data_dir)

    async def migrated_by_newer_code() -> None:
        db = await open_database(database)
        try:
            await migrate(db)
            await db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                *(9999, "9999_future", 0),
            )
        finally:
            await db.close()

    asyncio.run(migrated_by_newer_code())
    child = start(spawn, app_argv(free_port(), data_dir))
    out, err = child.communicate(timeout=15)
    assert child.returncode == EXIT_DATABASE
    assert out == ""
    assert err.startswith(f"app: database {database} cannot be migrated: ")
    assert "9999 (9999_future)" in err
    assert err.count("\n") == 1


# ------------------------------------------------------------------ PostgreSQL, real process


def test_postgres_readyz_follows_the_server(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with running_postgres(tmp_path) as server:
        dsn = server.create_database("moonwatch")
        port = free_port()
        child = start(spawn, [*app_argv(port, tmp_path / "d"), "--database-url", dsn])
        wait_healthy(child, port)
        assert wait_status(port, "/readyz", 200) == {"status": "ready", "database": "postgres"}
        assert not sqlite_path(tmp_path / "d").exists()

        server.stop()
        body = wait_status(port, "/readyz", 503)
        assert body["status"] == "unavailable"
        assert "unavailable" in str(body["reason"])
        status, health = get_json(port, "/healthz")  # the process is still up
        assert status == 200 and health["slot"] == "s1" and health["epoch"] == 3

        # asyncpg's pool logs (to stderr) each failed attempt to reconnect the server it lost.
        events = stop(child, quiet=False)
    assert database_event(events) == {
        "event": "app_database",
        "dialect": "postgres",
        "migrations_applied": [m.name for m in load_migrations()],
    }


def test_unreachable_postgres_exits_with_the_database_code_and_no_password(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    dsn = f"postgresql://app:s3cret@127.0.0.1:{closed_port()}/app"
    child = start(spawn, [*app_argv(free_port(), tmp_path / "d"), "--database-url", dsn])
    out, err = child.communicate(timeout=30)
    assert child.returncode == EXIT_DATABASE
    assert out == ""
    assert err.startswith("app: database postgresql://app:***@127.0.0.1:")
    assert "cannot be opened" in err
    assert "s3cret" not in err
    assert err.count("\n") == 1


# ------------------------------------------------------------------ in process


def test_database_url_is_parsed() -> None:
    dsn = "postgresql://app@db.example:5432/slot1"
    assert parse_settings([*GOOD_ARGS, "--database-url", dsn]).database_url == dsn
    assert parse_settings(GOOD_ARGS).database_url is None


def test_database_url_comes_from_the_environment_the_agent_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = "postgresql://app:pw@db.example:5432/slot1"
    monkeypatch.setenv(DATABASE_URL_ENV, dsn)
    assert parse_settings(GOOD_ARGS).database_url == dsn
    other = "postgresql://app@elsewhere/slot1"
    assert parse_settings([*GOOD_ARGS, "--database-url", other]).database_url == other
    spec = InstanceSpec("s1", 1, "m1", "127.0.0.1", 1, "localhost", ("t",), Path("d"), None, dsn)
    assert "pw@" not in repr(spec)


def test_a_bad_database_url_in_the_environment_exits_2_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "mysql://a:s3cret@h/d")
    assert main(GOOD_ARGS) == 2
    err = capsys.readouterr().err
    assert "invalid database URL" in err and "s3cret" not in err


@pytest.mark.parametrize("url", ["sqlite:///tmp/x.db", "mysql://a:s3cret@h/d", "postgres://"])
def test_other_database_urls_exit_2(
    url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*GOOD_ARGS, "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "argument --database-url: invalid database URL" in err
    assert "s3cret" not in err
    assert not (tmp_path / "d").exists()


async def test_readyz_without_a_database_is_503() -> None:
    async with TestClient(TestServer(build_app(SETTINGS))) as client:
        response = await client.get("/readyz")
        assert response.status == 503
        assert await response.json() == {
            "status": "unavailable",
            "reason": "no database is configured",
        }


async def test_readyz_is_answered_while_not_serving(tmp_path: Path) -> None:
    class Closed:
        def admit(self) -> bool:
            return False

        def status(self) -> GateStatus:
            return GateStatus(serving=False, lease_remaining_s=None)

    db = await open_database(tmp_path / "app.sqlite3")
    app: web.Application = build_app(SETTINGS, gate=Closed(), db=db)
    try:
        async with TestClient(TestServer(app)) as client:
            ready = await client.get("/readyz")
            assert ready.status == 200
            assert await ready.json() == {"status": "ready", "database": "sqlite"}
            home = await client.get("/", headers={"Host": "acme.localhost"})
            assert home.status == 503  # tenant requests are still fenced
            await db.close()
            closed = await client.get("/readyz")
            assert closed.status == 503
            assert "closed" in (await closed.json())["reason"]
    finally:
        await db.close()
