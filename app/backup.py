"""Backups of one slot's database: `python -m app.backup create|verify|restore ...`.

    create  --data-dir D --dest DIR --slot NAME
    verify  --backup FILE
    restore --backup FILE --data-dir D [--slot NAME] [--dry-run]

The database is the SQLite file under the data directory, or the PostgreSQL database named by
$MOONWATCH_DATABASE_URL (the URL travels in the environment, never in argv). A backup is
``<slot>-<UTC YYYYmmddTHHMMSSZ>.sqlite3`` (or ``.pgdump``) with its manifest ``<name>.json``
beside it (slot, dialect, created_at, size, sha256, rows per table, read from the backup
itself). Every new backup is checked at once by restoring it into a scratch database; one
that fails the check is removed. A restore checks the backup first and saves the current
database as ``<slot>-pre-restore-<stamp>`` next to the backup before replacing it.

Prints one JSON line per result. Exit codes: 0 done, 1 a check failed (or the backup could not
be written or restored), 2 usage, 3 the slot's database cannot be opened or read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from app.backup_manifest import (
    EXIT_OK,
    EXIT_USAGE,
    PRE_RESTORE,
    BackupError,
    Kind,
    Manifest,
    manifest_path,
    read_manifest,
    remove_backup,
)
from app.backup_pg import create_pg, restore_pg, verify_pg
from app.backup_pg import current_counts as pg_counts
from app.backup_sqlite import create_sqlite, restore_sqlite, verify_sqlite
from app.backup_sqlite import current_counts as sqlite_counts
from app.clock import SystemClock
from app.db import sqlite_path

DATABASE_URL_ENV: Final = "MOONWATCH_DATABASE_URL"


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def _summary(manifest: Manifest, backup: Path) -> dict[str, Any]:
    return {
        "slot": manifest.slot,
        "file": str(backup),
        "manifest": str(manifest_path(backup)),
        "dialect": manifest.dialect,
        "kind": manifest.kind,
        "created_at": manifest.created_at,
        "size": manifest.size,
        "sha256": manifest.sha256,
        "tables": len(manifest.tables),
        "rows": manifest.rows,
        "row_counts": manifest.tables,
    }


async def _verify(backup: Path, dsn: str | None, scratch: Path) -> tuple[Manifest, Path]:
    """Check ``backup`` against its manifest by restoring it into a scratch database; the
    manifest and the file a restore should read."""
    manifest = read_manifest(backup)
    if manifest.dialect == "postgres":
        if dsn is None:
            raise BackupError(
                f"{backup.name} is a PostgreSQL backup: set {DATABASE_URL_ENV} to the server "
                "to check it on",
                EXIT_USAGE,
            )
        await verify_pg(dsn, backup, manifest)
        return manifest, backup
    return manifest, await asyncio.to_thread(verify_sqlite, backup, manifest, scratch)


async def _create(data_dir: Path, dest: Path, slot: str, dsn: str | None, kind: Kind) -> Path:
    """Make a backup and check it; a backup that fails its check is removed."""
    at = SystemClock().wall_now()
    if dsn is not None:
        manifest = await create_pg(dsn, dest, slot, at, kind)
    else:
        db = sqlite_path(data_dir)
        manifest = await asyncio.to_thread(create_sqlite, db, dest, slot, at, kind)
    backup = dest / manifest.file
    try:
        with tempfile.TemporaryDirectory(prefix="mw-verify-") as scratch:
            await _verify(backup, dsn, Path(scratch))
    except BackupError as exc:
        remove_backup(backup)
        raise BackupError(f"the new backup failed its check and was removed: {exc}") from exc
    _emit({"ok": True, "action": "create", **_summary(manifest, backup), "verified": True})
    return backup


async def create(args: argparse.Namespace, dsn: str | None) -> int:
    await _create(Path(args.data_dir), Path(args.dest), args.slot, dsn, "backup")
    return EXIT_OK


async def verify(args: argparse.Namespace, dsn: str | None) -> int:
    backup = Path(args.backup)
    with tempfile.TemporaryDirectory(prefix="mw-verify-") as scratch:
        manifest, _ = await _verify(backup, dsn, Path(scratch))
    _emit({"ok": True, "action": "verify", **_summary(manifest, backup), "verified": True})
    return EXIT_OK


def _check_target(manifest: Manifest, dsn: str | None, slot: str | None) -> None:
    if slot is not None and slot != manifest.slot:
        raise BackupError(f"the backup is of slot {manifest.slot!r}, not {slot!r}", EXIT_USAGE)
    if (manifest.dialect == "postgres") != (dsn is not None):
        keeps = "PostgreSQL" if dsn is not None else "SQLite"
        raise BackupError(
            f"the slot keeps its data in {keeps} but the backup is {manifest.dialect}", EXIT_USAGE
        )


async def _current(data_dir: Path, dsn: str | None) -> dict[str, int]:
    if dsn is not None:
        return await pg_counts(dsn)
    return await asyncio.to_thread(sqlite_counts, sqlite_path(data_dir))


def _changes(current: dict[str, int], backup: dict[str, int]) -> dict[str, dict[str, int | None]]:
    return {
        name: {"current": current.get(name), "backup": backup.get(name)}
        for name in sorted(set(current) | set(backup))
    }


async def restore(args: argparse.Namespace, dsn: str | None) -> int:
    backup, data_dir = Path(args.backup), Path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="mw-verify-") as scratch:
        manifest, source = await _verify(backup, dsn, Path(scratch))
        _check_target(manifest, dsn, args.slot)
        current = await _current(data_dir, dsn)
        base = {"action": "restore", "file": str(backup), "slot": manifest.slot}
        if args.dry_run:
            changes = _changes(current, manifest.tables)
            changed = sorted(n for n, c in changes.items() if c["current"] != c["backup"])
            _emit({"ok": True, **base, "dry_run": True, "compare": changes, "changed": changed})
            return EXIT_OK
        safety = None
        if dsn is not None or sqlite_path(data_dir).is_file():
            safety = await _create(data_dir, backup.parent, manifest.slot, dsn, PRE_RESTORE)
        if dsn is not None:
            counts = await restore_pg(dsn, source, manifest)
        else:
            db = sqlite_path(data_dir)
            counts = await asyncio.to_thread(restore_sqlite, source, db, manifest)
    _emit(
        {
            "ok": True,
            **base,
            "dry_run": False,
            "safety_backup": None if safety is None else str(safety),
            "tables": len(counts),
            "rows": sum(counts.values()),
            "verified": True,
        }
    )
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.backup",
        description=f"Back up, check and restore a slot's database (${DATABASE_URL_ENV}: "
        "its PostgreSQL URL; unset: the SQLite file under --data-dir).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("create", help="back up the slot's database and check the backup")
    made.add_argument("--data-dir", required=True, help="the slot's data directory")
    made.add_argument("--dest", required=True, help="an existing directory for the backup")
    made.add_argument("--slot", required=True, help="the slot's name (starts the file name)")
    check = sub.add_parser("verify", help="check an existing backup against its manifest")
    check.add_argument("--backup", required=True, help="the backup file (manifest beside it)")
    back = sub.add_parser("restore", help="check a backup, then make it the slot's database")
    back.add_argument("--backup", required=True, help="the backup file (manifest beside it)")
    back.add_argument("--data-dir", required=True, help="the slot's data directory")
    back.add_argument("--slot", help="refuse a backup of another slot")
    back.add_argument("--dry-run", action="store_true", help="show what would change, only")
    return parser


_COMMANDS = {"create": create, "verify": verify, "restore": restore}


async def run(args: argparse.Namespace) -> int:
    """Run one command; every outcome is one JSON line, errors included."""
    dsn = os.environ.get(DATABASE_URL_ENV) or None
    try:
        return await _COMMANDS[args.command](args, dsn)
    except BackupError as exc:
        _emit({"ok": False, "action": args.command, "error": str(exc)})
        return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad arguments, 0 for --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
