"""Backups of one slot's database and uploaded files: `python -m app.backup create|verify|restore`.

    create  --data-dir D --dest DIR --slot NAME
    verify  --backup FILE
    restore --backup FILE --data-dir D [--slot NAME] [--dry-run]

The database is the SQLite file under the data directory, or the PostgreSQL database named by
$MOONWATCH_DATABASE_URL (the URL travels in the environment, never in argv); uploaded files are
under the data directory's ``files/<tenant_id>/<file_id>`` either way. A backup is
``<slot>-<UTC YYYYmmddTHHMMSSZ>.sqlite3`` (or ``.pgdump``), then ``<name>.files.tar``: a plain
tar of the files the backed-up database lists (members ``<tenant_id>/<file_id>``; a file deleted
between the snapshot and the copy is listed as missing instead), then its manifest
``<name>.json`` (slot, dialect, created_at, size, sha256, rows per table, and ``files``: archive,
count, bytes, size, sha256, missing), which makes it complete. Every new backup is checked at
once: the database by restoring it into a scratch database, the archive member by member
against the files that database lists; one that fails the check is removed. A restore checks
the backup first, saves the current data as ``<slot>-pre-restore-<stamp>`` next to the backup,
extracts the files beside the files directory, restores the database, then swaps the files in
by rename. A backup from before files were backed up (no ``files`` in its manifest) restores
the database only and leaves the files directory as it is.

Prints one JSON line per result (with a ``files`` object). Exit codes: 0 done, 1 a check failed
(or the backup could not be written or restored), 2 usage, 3 the slot's database cannot be
opened or read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Final

from app.backup_files import FileRow, check_archive, files_dir, write_archive
from app.backup_files_restore import discard, files_diff, stage_files, swap_in
from app.backup_manifest import (
    EXIT_OK,
    EXIT_USAGE,
    MANIFEST_FORMAT,
    PRE_RESTORE,
    BackupError,
    FilesSection,
    Kind,
    Manifest,
    archive_path,
    manifest_path,
    read_manifest,
    remove_backup,
    removed_on_error,
    write_manifest_of,
)
from app.backup_pg import create_pg, restore_pg, verify_pg
from app.backup_pg import current_counts as pg_counts
from app.backup_pg import live_file_ids as pg_live_file_ids
from app.backup_sqlite import create_sqlite, restore_sqlite, verify_sqlite
from app.backup_sqlite import current_counts as sqlite_counts
from app.backup_sqlite import live_file_ids as sqlite_live_file_ids
from app.clock import SystemClock
from app.db import sqlite_path

DATABASE_URL_ENV: Final = "MOONWATCH_DATABASE_URL"
FILES_NOT_IN_BACKUP: Final = (
    "this backup predates file backups (its manifest has no 'files'): "
    "the slot's files directory is left as it is"
)


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def _files_summary(manifest: Manifest, backup: Path) -> dict[str, Any]:
    if manifest.files is None:
        return {"included": False, "note": FILES_NOT_IN_BACKUP}
    files = manifest.files
    return {
        "included": True,
        "archive": str(archive_path(backup)),
        "count": files.count,
        "bytes": files.bytes,
        "size": files.size,
        "sha256": files.sha256,
        "missing": [asdict(m) for m in files.missing],
    }


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
        "files": _files_summary(manifest, backup),
    }


async def _verify_database(
    backup: Path, manifest: Manifest, dsn: str | None, scratch: Path
) -> tuple[Path, list[FileRow]]:
    """Restore the database into a scratch one and check it; the file a restore should read
    and the files the backed-up database lists."""
    if manifest.dialect == "postgres":
        if dsn is None:
            raise BackupError(
                f"{backup.name} is a PostgreSQL backup: set {DATABASE_URL_ENV} to the server "
                "to check it on",
                EXIT_USAGE,
            )
        return backup, await verify_pg(dsn, backup, manifest)
    return await asyncio.to_thread(verify_sqlite, backup, manifest, scratch)


async def _verify(
    backup: Path, dsn: str | None, scratch: Path
) -> tuple[Manifest, Path, list[FileRow]]:
    """Check ``backup`` against its manifest: the database by restoring it into a scratch
    database, then the files archive against the files that database lists. The manifest, the
    file a restore should read and the listed files."""
    manifest = read_manifest(backup)
    source, rows = await _verify_database(backup, manifest, dsn, scratch)
    if manifest.files is not None:
        await asyncio.to_thread(check_archive, archive_path(backup), manifest.files, rows)
    return manifest, source, rows


async def snapshot(
    data_dir: Path, dest: Path, slot: str, dsn: str | None, kind: Kind
) -> tuple[Manifest, list[FileRow]]:
    """The first step of ``create``: back the database up (the file is published, its manifest
    not yet written); its manifest so far and the files it lists."""
    at = SystemClock().wall_now()
    if dsn is not None:
        return await create_pg(dsn, dest, slot, at, kind)
    db = sqlite_path(data_dir)
    return await asyncio.to_thread(create_sqlite, db, dest, slot, at, kind)


async def _explain_missing(section: FilesSection, data_dir: Path, dsn: str | None) -> FilesSection:
    """A missing file whose row is gone from the live database by now was deleted after the
    snapshot (row, then bytes): say so. One still listed there is lost to the slot itself."""
    if not section.missing:
        return section
    ids = [m.file_id for m in section.missing]
    if dsn is not None:
        live = await pg_live_file_ids(dsn, ids)
    else:
        live = await asyncio.to_thread(sqlite_live_file_ids, sqlite_path(data_dir), ids)
    missing = [m if m.file_id in live else replace(m, reason="deleted") for m in section.missing]
    return replace(section, missing=tuple(missing))


async def add_files(
    data_dir: Path, backup: Path, manifest: Manifest, rows: list[FileRow], dsn: str | None
) -> Manifest:
    """The second step of ``create``: archive the files the snapshot lists beside it, then write
    the manifest that makes the backup complete; on failure nothing of the new backup is left."""
    with removed_on_error(backup):  # only the database file: the archive's name may be another's
        section = await asyncio.to_thread(write_archive, data_dir, rows, backup)
    try:
        section = await _explain_missing(section, data_dir, dsn)
        complete = replace(manifest, files=section, format=MANIFEST_FORMAT)
        write_manifest_of(backup, complete)
    except BaseException:
        remove_backup(backup)
        raise
    return complete


async def _create(data_dir: Path, dest: Path, slot: str, dsn: str | None, kind: Kind) -> Path:
    """Make a backup and check it; a backup that fails its check is removed."""
    manifest, rows = await snapshot(data_dir, dest, slot, dsn, kind)
    backup = dest / manifest.file
    manifest = await add_files(data_dir, backup, manifest, rows, dsn)
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
        manifest, _, _ = await _verify(backup, dsn, Path(scratch))
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


def _files_preview(manifest: Manifest, rows: list[FileRow], data_dir: Path) -> dict[str, Any]:
    if manifest.files is None:
        return {"included": False, "note": FILES_NOT_IN_BACKUP}
    return {"included": True, **files_diff(data_dir, manifest.files, rows)}


async def _restore_database(
    source: Path, manifest: Manifest, data_dir: Path, dsn: str | None
) -> dict[str, int]:
    if dsn is not None:
        return await restore_pg(dsn, source, manifest)
    return await asyncio.to_thread(restore_sqlite, source, sqlite_path(data_dir), manifest)


async def _swap_files(staged: Path, files: FilesSection, data_dir: Path) -> dict[str, Any]:
    """Swap the staged files in (after the database was restored); the files report."""
    try:
        leftover = await asyncio.to_thread(swap_in, staged, data_dir)
    except BackupError as exc:
        raise BackupError(f"the database was restored but the files were not: {exc}") from exc
    return {
        "included": True,
        "directory": str(files_dir(data_dir)),
        "count": files.count,
        "bytes": files.bytes,
        "missing": len(files.missing),
        "previous_left_at": None if leftover is None else str(leftover),
    }


async def _replace(
    backup: Path,
    source: Path,
    manifest: Manifest,
    rows: list[FileRow],
    dsn: str | None,
    data_dir: Path,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Extract the files beside the live ones, restore the database, swap the files in. A
    failure before the swap leaves the files as they were; the row counts and a files report."""
    files = manifest.files
    if files is None:
        counts = await _restore_database(source, manifest, data_dir, dsn)
        return counts, {"included": False, "note": FILES_NOT_IN_BACKUP}
    archive = archive_path(backup)
    staged = await asyncio.to_thread(stage_files, archive, files, rows, data_dir)
    try:
        counts = await _restore_database(source, manifest, data_dir, dsn)
    except BaseException:
        await asyncio.to_thread(discard, staged)
        raise
    return counts, await _swap_files(staged, files, data_dir)


async def restore(args: argparse.Namespace, dsn: str | None) -> int:
    backup, data_dir = Path(args.backup), Path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="mw-verify-") as scratch:
        manifest, source, rows = await _verify(backup, dsn, Path(scratch))
        _check_target(manifest, dsn, args.slot)
        current = await _current(data_dir, dsn)
        base = {"action": "restore", "file": str(backup), "slot": manifest.slot}
        if args.dry_run:
            changes = _changes(current, manifest.tables)
            changed = sorted(n for n, c in changes.items() if c["current"] != c["backup"])
            files = await asyncio.to_thread(_files_preview, manifest, rows, data_dir)
            dry = {"dry_run": True, "compare": changes, "changed": changed, "files": files}
            _emit({"ok": True, **base, **dry})
            return EXIT_OK
        safety = None
        if dsn is not None or sqlite_path(data_dir).is_file():
            safety = await _create(data_dir, backup.parent, manifest.slot, dsn, PRE_RESTORE)
        counts, files = await _replace(backup, source, manifest, rows, dsn, data_dir)
    _emit(
        {
            "ok": True,
            **base,
            "dry_run": False,
            "safety_backup": None if safety is None else str(safety),
            "tables": len(counts),
            "rows": sum(counts.values()),
            "verified": True,
            "files": files,
        }
    )
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.backup",
        description=f"Back up, check and restore a slot's database (${DATABASE_URL_ENV}: "
        "its PostgreSQL URL; unset: the SQLite file under --data-dir) and its uploaded files "
        "(under --data-dir).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("create", help="back up the slot's data and check the backup")
    made.add_argument("--data-dir", required=True, help="the slot's data directory")
    made.add_argument("--dest", required=True, help="an existing directory for the backup")
    made.add_argument("--slot", required=True, help="the slot's name (starts the file name)")
    check = sub.add_parser("verify", help="check an existing backup against its manifest")
    check.add_argument("--backup", required=True, help="the backup file (manifest beside it)")
    back = sub.add_parser("restore", help="check a backup, then make it the slot's data")
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
