"""CLI of the hosted app: parse argv into AppSettings, open and migrate the slot's database,
serve until SIGTERM/SIGINT (or stdin EOF, or orphaned), close the database, exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from app.access_log import PathOnlyAccessLogger
from app.client_address import parse_networks
from app.clock import Clock, SystemClock, pause
from app.control import ControlProtocol, read_stdin
from app.db import Database, DatabaseError, open_database, redact_dsn, sqlite_path
from app.fence import Identity, LeaseFence, OpenFence, watch_lease
from app.migrate import migrate
from app.overlap_log import OverlapLog
from app.passwords import prepare_dummy
from app.service import build_app
from app.settings import (
    CONTROLS,
    DEFAULT_MAX_UPLOAD_BYTES,
    INSTANCE_NAME,
    TENANT_LABEL,
    AppSettings,
)

__all__ = ["AppSettings", "main", "parse_settings"]

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_USAGE = 2
EXIT_BIND_FAILED = 3
# The slot's database cannot be opened or migrated at start; stderr says why in one line
# ("app: database ..."). Nothing was served. Distinct from 1, since a retry on this server
# fails the same way until the database (or its file) is repaired.
EXIT_DATABASE = 4
DATABASE_SCHEMES = ("postgresql://", "postgres://")
MIB = 1024 * 1024
# Where the supervising agent puts the slot's database URL (argv is readable by every user).
DATABASE_URL_ENV = "MOONWATCH_DATABASE_URL"
MAX_UPLOAD_MB = 4096

# Bound on graceful shutdown: in-flight requests get this long before connections are dropped.
SHUTDOWN_TIMEOUT_S = 5.0
PARENT_CHECK_S = 0.5
SIGNALS = (signal.SIGTERM, signal.SIGINT)

Fence = LeaseFence | OpenFence


def _instance_name(text: str) -> str:
    if not INSTANCE_NAME.match(text):
        raise argparse.ArgumentTypeError(f"invalid name {text!r} (letters, digits, '.', '_', '-')")
    return text


def _epoch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid epoch {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"epoch must be >= 0, got {value}")
    return value


def _pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid process id {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"process id must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value}")
    return value


def _tenant(text: str) -> str:
    if not TENANT_LABEL.match(text):
        raise argparse.ArgumentTypeError(f"invalid tenant label {text!r} (lower-case DNS label)")
    return text


def _domain(text: str) -> str:
    if not all(TENANT_LABEL.match(label) for label in text.split(".")):
        raise argparse.ArgumentTypeError(f"invalid base domain {text!r} (lower-case DNS name)")
    return text


def _directory(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("data dir must not be empty")
    return Path(text)


def _file(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("file path must not be empty")
    return Path(text)


def _database_url(text: str) -> str:
    if not text.startswith(DATABASE_SCHEMES) or len(text) <= len("postgres://"):
        shown = redact_dsn(text)
        raise argparse.ArgumentTypeError(
            f"invalid database URL {shown!r} (postgresql://user@host:port/database)"
        )
    return text


def _trusted_proxy(text: str) -> str:
    try:
        return str(parse_networks([text])[0])
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid proxy range {text!r} (CIDR)") from None


def _upload_mb(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (whole MiB)") from None
    if not 1 <= value <= MAX_UPLOAD_MB:
        raise argparse.ArgumentTypeError(f"upload size must be in 1..{MAX_UPLOAD_MB} MiB")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app", description="Serve one slot's tenants over HTTP."
    )
    arg = parser.add_argument
    arg("--slot", required=True, type=_instance_name, help="slot this instance fills")
    arg("--server", required=True, type=_instance_name, help="server hosting this instance")
    arg("--epoch", required=True, type=_epoch, help="assignment epoch of the slot")
    arg("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    arg("--port", required=True, type=_port, help="TCP port to listen on")
    arg("--base-domain", default="localhost", type=_domain, help="tenants are <tenant>.<this>")
    arg("--tenant", required=True, action="append", type=_tenant, help="repeat for each tenant")
    arg("--data-dir", required=True, type=_directory, help="slot directory, created 0o700")
    arg("--parent-pid", type=_pid, help="stop serving when this supervising process is gone")
    arg(
        "--control",
        choices=CONTROLS,
        default="none",
        help="stdin: serve only under leases the agent writes to stdin, exit at its EOF; "
        "none: always serve (default: %(default)s)",
    )
    arg("--overlap-log", type=_file, help="append start/renew/stop records to this file")
    arg(
        "--database-url",
        type=_database_url,
        default=os.environ.get(DATABASE_URL_ENV) or None,
        help="keep the slot's data in PostgreSQL (postgresql://...) instead of the SQLite file "
        f"app.sqlite3 under --data-dir (default: ${DATABASE_URL_ENV}, which keeps it out of "
        "the process list)",
    )
    arg(
        "--max-upload-mb",
        type=_upload_mb,
        default=DEFAULT_MAX_UPLOAD_BYTES // MIB,
        help="largest uploaded file in MiB (default: %(default)s)",
    )
    arg(
        "--trusted-proxy",
        action="append",
        default=[],
        type=_trusted_proxy,
        help="believe X-Forwarded-For from peers in this CIDR range (repeat for each)",
    )
    return parser


def parse_settings(argv: Sequence[str]) -> AppSettings:
    """Parse argv into settings; on bad arguments argparse prints usage and raises SystemExit(2)."""
    parser = _parser()
    ns = parser.parse_args(argv)
    tenants: list[str] = ns.tenant
    duplicates = sorted({t for t in tenants if tenants.count(t) > 1})
    if duplicates:
        parser.error(f"argument --tenant: duplicate tenant(s): {', '.join(duplicates)}")
    return AppSettings(
        slot=ns.slot,
        server=ns.server,
        epoch=ns.epoch,
        host=ns.host,
        port=ns.port,
        base_domain=ns.base_domain,
        tenants=tuple(tenants),
        data_dir=ns.data_dir,
        parent_pid=ns.parent_pid,
        control=ns.control,
        overlap_log=ns.overlap_log,
        database_url=ns.database_url,
        max_upload_bytes=ns.max_upload_mb * MIB,
        trusted_proxies=tuple(dict.fromkeys(ns.trusted_proxy)),
    )


def _log(event: str, /, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _fail(message: str) -> None:
    print(f"app: {message}", file=sys.stderr, flush=True)


class _Shutdown:
    """The first reason to stop wins: serving stops at once, then ``serve`` wakes to shut down.

    Signal handlers call this too: stopping the fence is part of the flag in a fenced app.
    """

    def __init__(self, fence: Fence) -> None:
        self.event = asyncio.Event()
        self.reason: str | None = None
        self._fence = fence

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._fence.shutdown(reason)
            _log("app_stopping", reason=reason)
        self.event.set()


async def _watch_parent(parent_pid: int, shutdown: _Shutdown) -> None:
    """Stop serving when the agent that started us is gone (we were re-parented): an orphaned
    instance must never keep serving a slot the cluster may already have given to another."""
    while not shutdown.event.is_set():
        if os.getppid() != parent_pid:
            _log("app_orphaned", parent_pid=parent_pid)
            shutdown.request("orphaned")
            return
        await pause(PARENT_CHECK_S)


def _fence(settings: AppSettings, clock: Clock, sink: OverlapLog | None) -> Fence:
    identity = Identity(settings.slot, settings.server, settings.epoch, os.getpid())
    if settings.control == "stdin":
        return LeaseFence(identity, clock, sink, _log)
    return OpenFence(identity, clock, sink)


async def _listen(runner: web.AppRunner, settings: AppSettings, fence: Fence) -> int:
    """Bind the listening socket, then record the start of an unfenced instance."""
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        _fail(f"cannot listen on {settings.host}:{settings.port}: {reason}")
        return EXIT_BIND_FAILED
    if isinstance(fence, OpenFence) and not fence.begin():
        _fail(f"cannot write to the overlap log {settings.overlap_log}")
        return EXIT_STARTUP_FAILED
    return EXIT_OK


async def _serve(
    settings: AppSettings, sink: OverlapLog | None, db: Database, applied: list[str]
) -> int:
    clock = SystemClock()
    fence = _fence(settings, clock, sink)
    shutdown = _Shutdown(fence)
    loop = asyncio.get_running_loop()
    for signum in SIGNALS:
        loop.add_signal_handler(signum, shutdown.request, f"signal {signum.name}")
    app = build_app(settings, clock, fence, db)
    runner = web.AppRunner(
        app, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log_class=PathOnlyAccessLogger
    )
    control: ControlProtocol | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        await runner.setup()
        if isinstance(fence, LeaseFence):
            control = ControlProtocol(fence, _log, lambda: shutdown.request("control_closed"))
            try:
                await read_stdin(control)
            except (OSError, ValueError) as exc:
                _fail(f"--control stdin: cannot read stdin: {exc}")
                return EXIT_STARTUP_FAILED
            tasks.append(asyncio.create_task(watch_lease(fence)))
        code = await _listen(runner, settings, fence)
        if code != EXIT_OK:
            return code
        _log("app_started", slot=settings.slot, port=settings.port, pid=os.getpid())
        _log("app_database", dialect=db.dialect, migrations_applied=applied)
        parent_pid = settings.parent_pid if settings.parent_pid is not None else os.getppid()
        tasks.append(asyncio.create_task(_watch_parent(parent_pid, shutdown)))
        await shutdown.event.wait()
        return EXIT_OK
    finally:
        fence.shutdown(shutdown.reason or "stopped")
        for task in tasks:
            task.cancel()
        if control is not None:
            control.close()
        await runner.cleanup()
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _database_name(settings: AppSettings) -> str:
    if settings.database_url is not None:
        return redact_dsn(settings.database_url)
    return str(sqlite_path(settings.data_dir))


async def _open_database(settings: AppSettings) -> tuple[Database, list[str]] | None:
    """Open and migrate the slot's database: ``--database-url``, else the SQLite file in the
    data dir. Returns it and the migrations applied, or None after saying why on stderr."""
    name = _database_name(settings)
    try:
        db = await open_database(settings.database_url or sqlite_path(settings.data_dir))
    except (DatabaseError, ValueError, OSError) as exc:
        _fail(f"database {name} cannot be opened: {_one_line(exc)}")
        return None
    try:
        applied = await migrate(db)
    # Whatever stops the schema from being current (MigrationError, an outage, a driver error
    # such as a read-only file or missing privileges) is fatal at start: say it in one line.
    except Exception as exc:  # noqa: BLE001 - reported and turned into EXIT_DATABASE
        await db.close()
        _fail(f"database {name} cannot be migrated: {_one_line(exc)}")
        return None
    return db, applied


async def _serve_with_database(settings: AppSettings, sink: OverlapLog | None) -> int:
    # The dummy password hash takes ~0.1 s of the hash pool: make it while the database opens,
    # and never hold up serving for it.
    warm_up = asyncio.create_task(prepare_dummy())
    try:
        opened = await _open_database(settings)
        if opened is None:
            return EXIT_DATABASE
        db, applied = opened
        try:
            return await _serve(settings, sink, db, applied)
        finally:
            await db.close()
    finally:
        warm_up.cancel()


async def serve(settings: AppSettings) -> int:
    """Startup (open and migrate the database) -> serve until SIGTERM/SIGINT (or stdin EOF, or
    orphaned) -> bounded graceful shutdown -> close the database.

    Returns the exit code.
    """
    sink: OverlapLog | None = None
    if settings.overlap_log is not None:
        try:
            sink = OverlapLog(settings.overlap_log)
        except OSError as exc:
            _fail(f"cannot open overlap log {settings.overlap_log}: {exc.strerror or exc}")
            return EXIT_STARTUP_FAILED
    try:
        return await _serve_with_database(settings, sink)
    finally:
        if sink is not None:
            sink.close()


def main(argv: list[str] | None = None) -> int:
    """Run the app; 0 after a signal or stdin EOF, 1 startup failure, 2 bad arguments, 3 bind,
    4 database (EXIT_DATABASE)."""
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits: 2 on bad arguments, 0 for --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create data dir {settings.data_dir}: {exc.strerror or exc}")
        return EXIT_STARTUP_FAILED
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
