"""The `moonwatch` command line: a thin layer over `main(argv) -> int`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent.backupcmd import backup_now, list_backups, restore
from agent.cli_args import command_parser
from agent.clock import SystemClock
from agent.config import ClusterConfig, ConfigError, load_config
from agent.configcheck import check_config_main
from agent.daemon import EXIT_USAGE, Agent, install_signal_handlers
from agent.eventscmd import events_command
from agent.imagecmd import image_build
from agent.launcher import LocalCluster, ports_in_use
from agent.logs import configure_logging
from agent.statusview import (
    StatusUnavailable,
    fetch_json,
    fetch_status,
    operator_call,
    render_explanation,
    render_status,
    render_stops,
)
from agent.stops_api import parse_duration
from agent.tenantcmd import tenant_create
from agent.wiring import build_agent


def main(argv: list[str] | None = None) -> int:
    args = command_parser().parse_args(argv)
    remote = _REMOTE.get(args.command)
    if remote is not None:
        return remote(args)
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    return _LOCAL[args.command](config, args)


# Commands that only talk to running agents (or read a file): they need no valid config.
_REMOTE: dict[str, Callable[[argparse.Namespace], int]] = {
    "check-config": lambda a: check_config_main(a.file, sys.stdout, sys.stderr),
    "status": lambda a: _status(a.url, a.config, a.json),
    "return": lambda a: _operator(a.config, a.url, f"/v1/servers/{a.server}/return", a.reason),
    "explain": lambda a: _explain(a.id, a.config, a.url),
    "drain": lambda a: _operator(a.config, a.url, f"/v1/servers/{a.server}/drain", a.reason),
    "resume": lambda a: _operator(a.config, a.url, "/v1/mode/resume", a.reason),
    "stops": lambda a: _stops(a.config, a.url, a.json),
    "lift": lambda a: _operator(a.config, a.url, f"/v1/stops/{a.subdomain}/lift", a.reason),
    "pin": lambda a: _pin(a),
}


# Commands that act on this machine from a valid config.
_LOCAL: dict[str, Callable[[ClusterConfig, argparse.Namespace], int]] = {
    "agent": lambda c, a: _agent(c, a.server, a.log_level),
    "up": lambda c, a: _up(Path(a.config), c),
    "tenant": lambda c, a: tenant_create(c, a.name, a.admin_email, a.display_name),
    "backup": lambda c, a: backup_now(c, a.slot),
    "backups": lambda c, a: list_backups(c, a.slot),
    "restore": lambda c, a: restore(c, a.slot, a.backup_file, a.dry_run, a.yes),
    "image": lambda c, a: image_build(c, a.docker_url),
    "events": lambda c, a: events_command(
        c, follow=a.follow, kind=a.kind, as_json=a.json, out=sys.stdout
    ),
}


def _agent_urls(urls: list[str] | None, config_path: str) -> list[str] | None:
    """The agents to ask: those given with --url, else every agent of the config (None when
    the config is not valid; its errors are printed)."""
    if urls:
        return urls
    config = _load(config_path)
    return None if config is None else [s.agent_url for s in config.servers]


def _load(path: str) -> ClusterConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{path}: {line}", file=sys.stderr)
        return None


def _agent(config: ClusterConfig, server: str, log_level: str) -> int:
    if server not in {s.name for s in config.servers}:
        names = ", ".join(s.name for s in config.servers)
        print(
            f"moonwatch agent: no server {server!r} in the config (have {names})", file=sys.stderr
        )
        return EXIT_USAGE
    configure_logging(server, log_level)

    async def run() -> int:
        stopping = asyncio.Event()
        install_signal_handlers(stopping)
        return await Agent(build_agent(config, server, SystemClock())).serve(stopping)

    return asyncio.run(run())


def _status(urls: list[str] | None, config_path: str, as_json: bool) -> int:
    urls = _agent_urls(urls, config_path)
    if urls is None:
        print("moonwatch status: give --url or a valid --config", file=sys.stderr)
        return EXIT_USAGE
    try:
        source, doc = fetch_status(urls)
    except StatusUnavailable as exc:
        print(f"moonwatch status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if as_json else render_status(source, doc))
    return 0


def _explain(decision_id: str, config_path: str, urls: list[str] | None) -> int:
    urls = _agent_urls(urls, config_path)
    if urls is None:
        return EXIT_USAGE
    try:
        status, doc = fetch_json(urls, f"/v1/decisions/{decision_id}")
    except StatusUnavailable as exc:
        print(f"moonwatch explain: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"moonwatch explain: {doc.get('error', doc)}", file=sys.stderr)
        return 1
    print(render_explanation(doc))
    return 0


def _stops(config_path: str, urls: list[str] | None, as_json: bool) -> int:
    urls = _agent_urls(urls, config_path)
    if urls is None:
        return EXIT_USAGE
    try:
        status, doc = fetch_json(urls, "/v1/stops")
    except StatusUnavailable as exc:
        print(f"moonwatch stops: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"moonwatch stops: {doc.get('error', doc)}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if as_json else render_stops(doc))
    return 0


def _pin(args: argparse.Namespace) -> int:
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        print(f"moonwatch pin: --for: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = f"/v1/stops/{args.subdomain}/pin"
    return _operator(args.config, args.url, path, args.reason, {"for_s": seconds})


def _operator(
    config_path: str,
    urls: list[str] | None,
    path: str,
    reason: str,
    extra: dict[str, object] | None = None,
) -> int:
    """An authenticated operator call (return a server, resume from cascade mode, ...)."""
    config = _load(config_path)
    if config is None:
        return EXIT_USAGE
    token = config.secrets.api_token.get_secret_value()
    targets = urls or [s.agent_url for s in config.servers]
    try:
        status, body = operator_call(targets, path, token, reason, extra=extra)
    except StatusUnavailable as exc:
        print(f"moonwatch: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"moonwatch: {body.get('error', body)} (HTTP {status})", file=sys.stderr)
        return 1
    print(f"done: {path} ({reason})")
    return 0


def _up(config_path: Path, config: ClusterConfig) -> int:
    taken = ports_in_use(config)
    if taken:
        for line in taken:
            print(f"moonwatch up: {line}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_run_up(config_path.resolve(), config))


async def _run_up(config_path: Path, config: ClusterConfig) -> int:
    clock = SystemClock()
    stopping = asyncio.Event()
    install_signal_handlers(stopping)
    cluster = LocalCluster(config_path, config, clock)
    try:
        await cluster.start()
        manifest = config.data_dir / "up.json"
        cluster.write_manifest(manifest)
        _print_banner(cluster, manifest)
        await _unless_stopping(_wait_started(cluster), stopping)  # Ctrl-C ends the wait
        await _watch(cluster, stopping)
    finally:
        print("\nstopping every server ...", flush=True)
        await cluster.stop(timeout_s=config.timing.shutdown_timeout_s + 2)
        print("stopped.", flush=True)
    return 0


async def _wait_started(cluster: LocalCluster) -> None:
    """Up to a minute: every agent ready, then every slot serving; then show the status."""
    pending = await cluster.wait_ready(timeout_s=30.0)
    if pending:
        print(f"not ready after 30 s: {', '.join(pending)} (see {cluster.log_dir})")
    elif not await cluster.wait_serving(timeout_s=30.0):
        print(f"some slots are not serving after 30 s (see {cluster.log_dir})")
    _show_status(cluster.config)


async def _unless_stopping(work: Coroutine[Any, Any, None], stopping: asyncio.Event) -> None:
    """Await `work`, cancelling it as soon as `stopping` is set; re-raise what it raised."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        stop.cancel()
        await asyncio.gather(task, stop, return_exceptions=True)
    if not task.cancelled():
        task.result()


def _print_banner(cluster: LocalCluster, manifest: Path) -> None:
    print(f"moonwatch cluster {cluster.config.cluster!r}: {len(cluster.servers)} servers")
    for server in cluster.config.servers:
        local = cluster.servers[server.name]
        voter = "voter" if cluster.config.is_voter(server.name) else "     "
        print(
            f"  {server.name}  {server.role:6}  {voter}  pgid {local.pgid:<7}  "
            f"status {server.agent_url}/v1/status   edge {server.edge_url}"
        )
    tenant = cluster.config.slots[0].tenants[0]
    edge = cluster.config.servers[0]
    print(f"logs: {cluster.log_dir}   manifest: {manifest}")
    print(f"try:  curl -H 'Host: {tenant}.{cluster.config.base_domain}' {edge.edge_url}/")
    print("      moonwatch status        kill -9 -<pgid>   (a server failure)")
    print("Ctrl-C stops everything.\n", flush=True)


def _show_status(config: ClusterConfig) -> None:
    try:
        source, doc = fetch_status([s.agent_url for s in config.servers])
    except StatusUnavailable as exc:
        print(str(exc))
        return
    print(render_status(source, doc) + "\n", flush=True)


async def _watch(cluster: LocalCluster, stopping: asyncio.Event) -> None:
    """Until Ctrl-C: report servers that exit, and each change of Raft leader."""
    reported: set[str] = set()
    leader: object = None
    while not stopping.is_set():
        for name, server in cluster.servers.items():
            code = server.process.returncode
            if code is not None and name not in reported:
                reported.add(name)
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                print(f"{name} (pgid {server.pgid}) stopped: {how}", flush=True)
        leader = await _report_leader(cluster, leader)
        try:
            await asyncio.wait_for(stopping.wait(), 1.0)
        except TimeoutError:
            continue


async def _report_leader(cluster: LocalCluster, previous: object) -> object:
    for name in cluster.alive():
        answer = await cluster.get_json(name, "/v1/status")
        if answer is not None:
            leader = answer[1].get("leader")
            if leader != previous and leader is not None:
                print(f"leader is now {leader} (term {answer[1].get('term')})", flush=True)
            return leader if leader is not None else previous
    return previous
