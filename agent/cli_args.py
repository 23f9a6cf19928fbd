"""The arguments of every `moonwatch` command (agent/cli.py runs them)."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_CONFIG = "cluster.yml"


def command_parser() -> argparse.ArgumentParser:
    """Every command of `moonwatch` and its arguments."""
    parser = argparse.ArgumentParser(
        prog="moonwatch", description="Self-healing cluster agent for a multi-tenant service."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = sub.add_parser("agent", help="run one agent in the foreground (what systemd runs)")
    agent.add_argument("--config", default=DEFAULT_CONFIG, help="cluster config (cluster.yml)")
    agent.add_argument("--server", required=True, help="this server's name in the config")
    agent.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    up = sub.add_parser("up", help="run every server of the config locally until Ctrl-C")
    up.add_argument("--config", default=DEFAULT_CONFIG)

    status = sub.add_parser("status", help="show servers, slots and the leader")
    status.add_argument("--url", action="append", help="an agent's URL (repeatable)")
    status.add_argument("--config", default=DEFAULT_CONFIG, help="find agents from this config")
    status.add_argument("--json", action="store_true", help="print the raw /v1/status JSON")

    _operator_parsers(sub)

    explain = sub.add_parser("explain", help="a decision in words, with its incident timeline")
    explain.add_argument("id", help="decision id, e.g. d000012 (see GET /v1/decisions)")
    explain.add_argument("--config", default=DEFAULT_CONFIG, help="find agents from this config")
    explain.add_argument("--url", action="append", help="an agent's URL (repeatable)")

    _stops_parsers(sub)
    _events_parsers(sub)
    _image_parsers(sub)

    tenant = sub.add_parser("tenant", help="provision tenants of the collaboration service")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    create = tenant_sub.add_parser("create", help="create a tenant and its owner's setup link")
    create.add_argument("name", help="the tenant's subdomain (listed in a slot of the config)")
    create.add_argument("--admin-email", required=True, help="the owner's e-mail address")
    create.add_argument("--display-name", help="the organisation's name as people read it")
    create.add_argument("--config", default=DEFAULT_CONFIG)

    _backup_parsers(sub)

    check = sub.add_parser("check-config", help="validate a cluster config file")
    check.add_argument("file")
    return parser


def _operator_parsers(sub: Any) -> None:
    back = sub.add_parser("return", help="put a failed or quarantined server back as a spare")
    back.add_argument("server")
    back.add_argument("--config", default=DEFAULT_CONFIG, help="agents and the operator token")
    back.add_argument("--url", action="append", help="an agent's URL (repeatable)")
    back.add_argument("--reason", default="returned by an operator")

    drain = sub.add_parser("drain", help="move a server's slots to spares for maintenance")
    drain.add_argument("server")
    drain.add_argument("--config", default=DEFAULT_CONFIG, help="agents and the operator token")
    drain.add_argument("--url", action="append", help="an agent's URL (repeatable)")
    drain.add_argument("--reason", default="maintenance")

    resume = sub.add_parser("resume", help="leave cascade mode now and resume replacement")
    resume.add_argument("--config", default=DEFAULT_CONFIG, help="agents and the operator token")
    resume.add_argument("--url", action="append", help="an agent's URL (repeatable)")
    resume.add_argument("--reason", default="resumed by an operator")


def _backup_parsers(sub: Any) -> None:
    backup = sub.add_parser("backup", help="back up slots whose data is on this machine, now")
    backup.add_argument("--slot", action="append", help="only this slot (repeatable)")
    backup.add_argument("--config", default=DEFAULT_CONFIG)

    backups = sub.add_parser("backups", help="list the backups and their manifests")
    backups.add_argument("--slot", help="only this slot's backups")
    backups.add_argument("--config", default=DEFAULT_CONFIG)

    back = sub.add_parser("restore", help="check a backup and make it a slot's data")
    back.add_argument("slot")
    back.add_argument("backup_file", help="a backup file (or its name in the backup directory)")
    back.add_argument("--dry-run", action="store_true", help="show what would change, only")
    back.add_argument("--yes", action="store_true", help="replace the slot's data (not --dry-run)")
    back.add_argument("--config", default=DEFAULT_CONFIG)


def _image_parsers(sub: Any) -> None:
    image = sub.add_parser("image", help="the app's container image for the docker driver")
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    build = image_sub.add_parser("build", help="build it here from this installation (no pulls)")
    build.add_argument("--config", default=DEFAULT_CONFIG, help="app.docker: image name, docker")
    build.add_argument("--docker-url", help="instead of app.docker.url, e.g. unix:///run/d.sock")


def _events_parsers(sub: Any) -> None:
    events = sub.add_parser("events", help="the servers' states, or events as they happen (MQTT)")
    events.add_argument("--follow", action="store_true", help="print events until Ctrl-C")
    events.add_argument("--kind", help="only events of this kind, e.g. server_failed")
    events.add_argument("--json", action="store_true", help="print the raw JSON, one per line")
    events.add_argument("--config", default=DEFAULT_CONFIG, help="broker and credentials")


def _stops_parsers(sub: Any) -> None:
    stops = sub.add_parser("stops", help="tenant subdomains stopped for flooding, and why")
    stops.add_argument("--config", default=DEFAULT_CONFIG, help="find agents from this config")
    stops.add_argument("--url", action="append", help="an agent's URL (repeatable)")
    stops.add_argument("--json", action="store_true", help="print the raw /v1/stops JSON")

    lift = sub.add_parser("lift", help="let a stopped tenant subdomain in again now")
    lift.add_argument("subdomain")
    lift.add_argument("--config", default=DEFAULT_CONFIG, help="agents and the operator token")
    lift.add_argument("--url", action="append", help="an agent's URL (repeatable)")
    lift.add_argument("--reason", default="lifted by an operator")

    pin = sub.add_parser("pin", help="stop a tenant subdomain for a while, whatever its traffic")
    pin.add_argument("subdomain")
    pin.add_argument("--for", dest="duration", required=True, help="e.g. 90s, 15m, 1h, 2d")
    pin.add_argument("--config", default=DEFAULT_CONFIG, help="agents and the operator token")
    pin.add_argument("--url", action="append", help="an agent's URL (repeatable)")
    pin.add_argument("--reason", default="pinned by an operator")
