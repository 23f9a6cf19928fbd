"""CLI of the hosted app: parse argv into AppSettings, serve until SIGTERM/SIGINT, exit code."""

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

from app.clock import pause
from app.service import build_app
from app.settings import INSTANCE_NAME, TENANT_LABEL, AppSettings

__all__ = ["AppSettings", "main", "parse_settings"]

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_USAGE = 2
EXIT_BIND_FAILED = 3

# Bound on graceful shutdown: in-flight requests get this long before connections are dropped.
SHUTDOWN_TIMEOUT_S = 5.0
PARENT_CHECK_S = 0.5


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
    )


def _log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _fail(message: str) -> None:
    print(f"app: {message}", file=sys.stderr, flush=True)


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop serving when the agent that started us is gone (we were re-parented): an orphaned
    instance must never keep serving a slot the cluster may already have given to another."""
    while not stop.is_set():
        if os.getppid() != parent_pid:
            _log("app_orphaned", parent_pid=parent_pid)
            stop.set()
            return
        await pause(PARENT_CHECK_S)


async def serve(settings: AppSettings) -> int:
    """Startup -> serve until SIGTERM/SIGINT -> bounded graceful shutdown; return the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(build_app(settings), shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            _fail(f"cannot listen on {settings.host}:{settings.port}: {reason}")
            return EXIT_BIND_FAILED
        _log("app_started", slot=settings.slot, port=settings.port, pid=os.getpid())
        parent_pid = settings.parent_pid if settings.parent_pid is not None else os.getppid()
        watcher = asyncio.create_task(_watch_parent(parent_pid, stop))
        await stop.wait()
        watcher.cancel()
        return EXIT_OK
    finally:
        await runner.cleanup()
        for signum in signals:
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the app; 0 after a signalled shutdown, 1 startup failure, 2 bad arguments, 3 bind."""
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
