"""A throwaway PostgreSQL server for tests: initdb into a temp dir, postgres on a free loopback
port, a fresh database per test, and exactly that server stopped at the end.

Use ``postgres_server(tmp_path)`` as an async context manager yielding a DSN, or import the
fixtures ``pg_server`` (one server per test session) and ``pg_dsn`` (a fresh database per test)
into a test module. Skips when the server binaries are missing. PostgreSQL refuses to run as
root, so under root the server runs as ``nobody`` through ``setpriv`` (which, unlike
``runuser``, execs: the process we start is the postmaster itself, so we can reap it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_databases = itertools.count(1)


def pg_bin_dir() -> Path | None:
    """The directory of initdb, pg_ctl and postgres (newest major version first), or None."""
    candidates = sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), key=_major, reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return directory
    return None


def _major(bin_dir: Path) -> int:
    version = bin_dir.parent.name
    return int(version) if version.isdigit() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _skip_reason() -> str | None:
    if pg_bin_dir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "running as root and setpriv (util-linux) is missing to run postgres as nobody"
    return None


class PostgresServer:
    """One postgres process with trust auth on 127.0.0.1; ``start`` and ``stop`` block."""

    def __init__(self, log_dir: Path) -> None:
        bin_dir = pg_bin_dir()
        assert bin_dir is not None, "call _skip_reason() first"
        self.bin_dir = bin_dir
        self.log_path = log_dir / "postgres.log"
        # Short and outside pytest's 0700 tree: nobody must reach it, and a unix socket path
        # must stay under 108 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="mw-pg-"))
        self.data_dir = self.base / "data"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._as_nobody: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.base, nobody.pw_uid, nobody.pw_gid)
            self._as_nobody = [
                "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                "--clear-groups", "--",
            ]  # fmt: skip

    def _tool(self, name: str, *args: str) -> list[str]:
        return [*self._as_nobody, str(self.bin_dir / name), *args]

    def start(self) -> None:
        """initdb, start postgres, wait until it accepts connections (stops it on failure)."""
        try:
            self._initdb()
            self._launch()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        command = self._tool(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _launch(self) -> None:
        self.port = _free_port()
        command = self._tool(
            "postgres", "-D", str(self.data_dir), "-p", str(self.port),
            "-k", str(self.base), "-c", "listen_addresses=127.0.0.1",
            # A test server: speed over durability.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        )  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        probe = [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                break
            if subprocess.run(probe, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not accept connections:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def dsn(self, database: str) -> str:
        """A DSN for ``database`` as the superuser ``postgres`` (trust: no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _psql(self, sql: str) -> None:
        command = [
            str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-d", self.dsn("postgres"), "-c", sql,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed:\n{done.stdout}{done.stderr}")

    def create_database(self, name: str | None = None) -> str:
        """Create a new empty database; return its DSN."""
        name = name or f"test_{os.getpid()}_{next(_databases)}"
        self._psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database even if a connection was left open."""
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop exactly this server (pg_ctl stop -m immediate, then SIGKILL), reap it and remove
        its directory. Safe to call more than once."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            command = self._tool("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate")
            subprocess.run(command, capture_output=True, timeout=STOP_TIMEOUT_S, check=False)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(log_dir: Path) -> Iterator[PostgresServer]:
    """A started PostgresServer, stopped on exit; skips the test when it cannot run here."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer(log_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def postgres_server(tmp_path: Path) -> AsyncIterator[str]:
    """A PostgreSQL server of its own with one database; yields its postgresql:// DSN."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer(tmp_path)
    try:
        await asyncio.to_thread(server.start)
        yield await asyncio.to_thread(server.create_database, "moonwatch")
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test session."""
    with running_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's server, dropped after the test."""
    dsn = pg_server.create_database()
    yield dsn
    pg_server.drop_database(dsn.rpartition("/")[2])
