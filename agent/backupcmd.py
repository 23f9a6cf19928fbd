"""`moonwatch backup`, `moonwatch backups` and `moonwatch restore`: a slot's backups by hand.

Like the daily task, these run the app's own backup module as a process against the slots'
data on this machine (the SQLite file under <data_dir>/slots/<slot>, or the slot's
PostgreSQL database, whose URL is handed over in the environment; the uploaded files under
<data_dir>/slots/<slot>/files either way).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.backups import (
    MANIFEST_SUFFIX,
    BackupOutcome,
    SubprocessBackups,
    parse_backup_name,
    run_module,
    slot_data_dir,
    slot_environment,
)
from agent.clock import SystemClock
from agent.config import ClusterConfig
from agent.statusview import table

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# A restore checks the backup, saves the current data, then restores and checks again.
RESTORE_STEPS = 3


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _local(config: ClusterConfig, slot: str) -> bool:
    """The slot's data can be reached from here: a PostgreSQL URL, or its data directory."""
    return config.slot(slot).database_url is not None or slot_data_dir(config, slot).is_dir()


def _unknown(config: ClusterConfig, slots: list[str], command: str) -> bool:
    known = {s.name for s in config.slots}
    unknown = [s for s in slots if s not in known]
    if unknown:
        names = ", ".join(sorted(known))
        print(f"moonwatch {command}: no slot {', '.join(unknown)} (have {names})", file=sys.stderr)
    return bool(unknown)


async def _back_up(config: ClusterConfig, slots: list[str]) -> list[BackupOutcome]:
    runner = SubprocessBackups(config, SystemClock())
    outcomes = []
    for slot in slots:
        if not _local(config, slot):
            where = slot_data_dir(config, slot)
            outcomes.append(BackupOutcome(slot, False, f"no data on this machine ({where})"))
            continue
        outcomes.append(await runner.create(slot))
    return outcomes


def backup_now(config: ClusterConfig, slots: list[str] | None) -> int:
    """Back up the given slots (default: every slot with its data here) now; print a table."""
    if slots and _unknown(config, slots, "backup"):
        return EXIT_USAGE
    chosen = slots or [s.name for s in config.slots if _local(config, s.name)]
    if not chosen:
        print(f"moonwatch backup: no slot has its data under {config.data_dir / 'slots'}")
        return EXIT_FAILED
    outcomes = asyncio.run(_back_up(config, chosen))
    rows = [
        [
            o.slot,
            Path(o.file).name if o.file else "-",
            _size(o.size) if o.ok else "-",
            str(o.tables) if o.ok else "-",
            str(o.rows) if o.ok else "-",
            str(o.files) if o.ok else "-",
            _size(o.file_bytes) if o.ok else "-",
            "yes" if o.verified else "FAILED",
        ]
        for o in outcomes
    ]
    headers = ["SLOT", "FILE", "SIZE", "TABLES", "ROWS", "UPLOADS", "UPLOAD_SIZE", "VERIFIED"]
    print("\n".join(table(headers, rows)))
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"backup of {outcome.slot} failed: {outcome.error}", file=sys.stderr)
    for outcome in outcomes:
        if outcome.files_lost:
            print(
                f"backup of {outcome.slot}: {outcome.files_lost} uploaded file(s) listed in its "
                "database are absent or damaged on disk (see files.missing in the manifest)",
                file=sys.stderr,
            )
    if not failed:
        print(f"in {config.backup_dir}")
    return EXIT_FAILED if failed else EXIT_OK


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _uploads(doc: dict[str, Any]) -> list[str]:
    """The UPLOADS and UPLOAD_SIZE cells: "-" for a backup made before files were kept."""
    files = doc.get("files")
    if not isinstance(files, dict):
        return ["-", "-"]
    missing = files.get("missing")
    count = str(files.get("count", "?"))
    if isinstance(missing, list) and missing:
        count += f" ({len(missing)} missing)"
    return [count, _size(int(files.get("bytes", 0)))]


def _listing_row(directory: Path, name: str, slot: str) -> list[str]:
    doc = _manifest(directory / (name + MANIFEST_SUFFIX))
    tables = doc.get("tables") if doc is not None else None
    if doc is None or not isinstance(tables, dict):
        return [slot, name, "-", "-", "-", "-", "-", "-", "no manifest (cannot be checked)"]
    return [
        slot,
        name,
        str(doc.get("created_at", "-")),
        _size(int(doc.get("size", 0))),
        str(len(tables)),
        str(sum(v for v in tables.values() if isinstance(v, int))),
        *_uploads(doc),
        str(doc.get("kind", "backup")),
    ]


def list_backups(config: ClusterConfig, slot: str | None) -> int:
    """List the backups in the backup directory with their manifests' summary."""
    if slot is not None and _unknown(config, [slot], "backups"):
        return EXIT_USAGE
    directory = config.backup_dir
    try:
        names = sorted(directory.iterdir())
    except FileNotFoundError:
        names = []
    except OSError as exc:
        print(f"moonwatch backups: cannot read {directory}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    rows = []
    for path in names:
        parsed = parse_backup_name(path.name)
        if parsed is not None and (slot is None or parsed.slot == slot):
            rows.append(_listing_row(directory, path.name, parsed.slot))
    if not rows:
        print(f"no backups in {directory}")
        return EXIT_OK
    headers = [
        "SLOT",
        "FILE",
        "CREATED",
        "SIZE",
        "TABLES",
        "ROWS",
        "UPLOADS",
        "UPLOAD_SIZE",
        "KIND",
    ]
    print("\n".join(table(headers, rows)))
    return EXIT_OK


def _backup_path(config: ClusterConfig, given: str) -> Path:
    path = Path(given)
    if not path.exists() and (config.backup_dir / given).exists():
        return config.backup_dir / given
    return path.absolute()


def _files_line(files: Any, dry_run: bool) -> str:
    """What a restore does (or would do) to the slot's uploaded files, in words."""
    if not isinstance(files, dict):
        return "files: not reported"
    if files.get("included") is not True:
        return f"files: {files.get('note')}"
    if dry_run:
        return (
            f"files: {files.get('added')} would be added, {files.get('removed')} removed, "
            f"{files.get('changed')} changed, {files.get('unchanged')} unchanged"
        )
    line = (
        f"files: {files.get('count')} restored ({_size(int(files.get('bytes', 0)))}) "
        f"in {files.get('directory')}"
    )
    if files.get("missing"):
        line += f"; {files.get('missing')} listed as missing in the backup"
    if files.get("previous_left_at"):
        line += f"; remove what is left of the previous files at {files['previous_left_at']}"
    return line


def _render_restore(docs: list[dict[str, Any]], dry_run: bool) -> None:
    for doc in docs:
        if doc.get("action") == "create":
            print(f"saved the current data first: {doc.get('file')}")
        elif dry_run and isinstance(doc.get("compare"), dict):
            compare: dict[str, dict[str, Any]] = doc["compare"]
            rows = [
                [name, str(c.get("current")), str(c.get("backup")), _change(c)]
                for name, c in compare.items()
            ]
            print("\n".join(table(["TABLE", "CURRENT", "BACKUP", "CHANGE"], rows)))
            print(_files_line(doc.get("files"), dry_run=True))
            print(f"dry run: nothing changed ({len(doc.get('changed', []))} tables would change)")
        elif doc.get("action") == "restore":
            print(
                f"restored slot {doc.get('slot')} from {doc.get('file')}: {doc.get('tables')} "
                f"tables, {doc.get('rows')} rows, checked"
            )
            print(_files_line(doc.get("files"), dry_run=False))


def _change(counts: dict[str, Any]) -> str:
    current, backup = counts.get("current"), counts.get("backup")
    if current == backup:
        return ""
    if isinstance(current, int) and isinstance(backup, int):
        return f"{backup - current:+d}"
    return "table added" if current is None else "table dropped"


def restore(config: ClusterConfig, slot: str, backup: str, dry_run: bool, yes: bool) -> int:
    """Check a backup and make it the slot's data (a safety backup is made first)."""
    if _unknown(config, [slot], "restore"):
        return EXIT_USAGE
    if not dry_run and not yes:
        print(
            f"moonwatch restore: this replaces the data of slot {slot}; look first with "
            "--dry-run, then run again with --yes",
            file=sys.stderr,
        )
        return EXIT_USAGE
    args = [
        "app.backup", "restore", "--backup", str(_backup_path(config, backup)),
        "--data-dir", str(slot_data_dir(config, slot)), "--slot", slot,
    ]  # fmt: skip
    if dry_run:
        args.append("--dry-run")
    timeout_s = RESTORE_STEPS * config.backups.timeout_s
    code, out, err = asyncio.run(run_module(args, slot_environment(config, slot), timeout_s))
    docs = [d for d in (_json_line(line) for line in out.splitlines()) if d is not None]
    _render_restore([d for d in docs if d.get("ok") is True], dry_run)
    if code == 0:
        return EXIT_OK
    errors = [str(d.get("error")) for d in docs if d.get("ok") is False]
    why = "; ".join(errors) or err.strip() or f"exit code {code}"
    if code is None:
        why = f"timed out after {timeout_s:g} s (killed)"
    print(f"moonwatch restore: {why}", file=sys.stderr)
    return EXIT_USAGE if code == EXIT_USAGE else EXIT_FAILED


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
