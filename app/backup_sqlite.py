"""SQLite backups of a slot: the online backup API out of the live file and back into it, and
the files table as the backed-up copy holds it."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Collection, Iterator
from pathlib import Path

from app.backup_files import FILE_ROWS_SQL, FILES_TABLE, FileRow, file_row
from app.backup_manifest import (
    BackupError,
    Kind,
    Manifest,
    backup_name,
    check_counts,
    check_destination,
    check_file,
    iso_utc,
    os_reason,
    publish,
    sha256_of,
    temp_path,
    unusable,
)

BUSY_TIMEOUT_S = 30.0
# How many ids one `IN (...)` asks about (well under SQLite's limit on parameters).
IDS_PER_QUERY = 500
_UNUSABLE = ("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CANTOPEN")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _open(path: Path, *, read_only: bool) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    else:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return conn


@contextlib.contextmanager
def _connection(path: Path, *, read_only: bool) -> Iterator[sqlite3.Connection]:
    conn = _open(path, read_only=read_only)
    try:
        yield conn
    finally:
        conn.close()


def row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows of every ordinary table (not SQLite's own, not virtual or shadow tables)."""
    names = [
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        )
    ]
    return {n: int(conn.execute(f"SELECT count(*) FROM {_quoted(n)}").fetchone()[0]) for n in names}


def file_rows(conn: sqlite3.Connection, tables: Collection[str]) -> list[FileRow]:
    """The files a database lists (none when it has no files table)."""
    if FILES_TABLE not in tables:
        return []
    return [file_row(row) for row in conn.execute(FILE_ROWS_SQL)]


def live_file_ids(db: Path, ids: Collection[int]) -> set[int]:
    """Which of ``ids`` the live database still lists as files."""
    wanted, found = sorted(ids), set[int]()
    try:
        with _connection(db, read_only=True) as conn:
            for start in range(0, len(wanted), IDS_PER_QUERY):
                part = wanted[start : start + IDS_PER_QUERY]
                marks = ", ".join("?" * len(part))
                query = f"SELECT id FROM {FILES_TABLE} WHERE id IN ({marks})"
                found.update(int(row[0]) for row in conn.execute(query, part))
    except sqlite3.Error as exc:
        raise _failure(f"cannot read the files table of {db}", exc) from exc
    return found


def current_counts(db: Path) -> dict[str, int]:
    """Row counts of the live database; empty when it does not exist yet."""
    if not db.is_file():
        return {}
    try:
        with _connection(db, read_only=True) as conn:
            return row_counts(conn)
    except sqlite3.Error as exc:
        raise unusable(f"cannot read SQLite database {db}: {exc}") from exc


def _failure(what: str, exc: sqlite3.Error) -> BackupError:
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return BackupError(f"{what}: no space left on device")
    if name.startswith(_UNUSABLE):
        return unusable(f"{what}: {exc}")
    return BackupError(f"{what}: {exc}")


def _copy_out(db: Path, temp: Path) -> tuple[dict[str, int], list[FileRow]]:
    """Copy the live database into ``temp`` (a self-contained rollback-journal file) and
    return the row counts and the files read back from ``temp`` itself."""
    try:
        source = _open(db, read_only=True)
    except sqlite3.Error as exc:
        raise unusable(f"cannot open SQLite database {db}: {exc}") from exc
    try:
        with _connection(temp, read_only=False) as target:
            source.backup(target)
            # The copy carries the live file's WAL flag; a backup is one file on its own.
            target.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise _failure(f"backup of {db} failed", exc) from exc
    finally:
        source.close()
    try:
        with _connection(temp, read_only=True) as copy:
            counts = row_counts(copy)
            return counts, file_rows(copy, counts)
    except sqlite3.Error as exc:
        raise _failure("cannot read the new backup back", exc) from exc


def create_sqlite(
    db: Path, dest: Path, slot: str, at: float, kind: Kind
) -> tuple[Manifest, list[FileRow]]:
    """Back up the slot's SQLite file into ``dest``; the new backup's manifest (for the caller
    to complete with the files and write) and the files the backup lists."""
    check_destination(dest)
    if not db.is_file():
        raise unusable(f"no SQLite database at {db}")
    name = backup_name(slot, "sqlite", at, kind)
    final = dest / name
    temp = temp_path(dest, name)
    try:
        tables, files = _copy_out(db, temp)
        size, digest = temp.stat().st_size, sha256_of(temp)
        publish(temp, final)
    except OSError as exc:
        raise BackupError(f"cannot write the backup in {dest}: {os_reason(exc)}") from exc
    finally:
        temp.unlink(missing_ok=True)
    return Manifest(slot, "sqlite", name, iso_utc(at), size, digest, tables, kind), files


def verify_sqlite(backup: Path, manifest: Manifest, scratch: Path) -> tuple[Path, list[FileRow]]:
    """Check a copy of ``backup`` in ``scratch``: checksum, integrity, foreign keys and row
    counts against the manifest. Returns the checked copy (a restore reads that one) and the
    files it lists."""
    copy = scratch / backup.name
    try:
        shutil.copyfile(backup, copy)
    except FileNotFoundError:
        raise BackupError(f"backup {backup} does not exist") from None
    except OSError as exc:
        raise BackupError(f"cannot copy {backup.name} to check it: {os_reason(exc)}") from exc
    check_file(copy, manifest, backup.name)
    try:
        with _connection(copy, read_only=False) as conn:
            integrity = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            counts = row_counts(conn)
            files = file_rows(conn, counts)
    except sqlite3.Error as exc:
        raise BackupError(f"backup {backup.name} cannot be read as SQLite: {exc}") from exc
    if integrity != ["ok"]:
        raise BackupError(f"backup {backup.name} fails integrity_check: {'; '.join(integrity[:3])}")
    if broken:
        raise BackupError(
            f"backup {backup.name} has {len(broken)} broken foreign key(s), "
            f"the first in table {broken[0][0]}"
        )
    check_counts(counts, manifest.tables, f"backup {backup.name}")
    return copy, files


def restore_sqlite(copy: Path, db: Path, manifest: Manifest) -> dict[str, int]:
    """Copy a checked backup into the live file with the online backup API (safe while the app
    holds connections: it takes the write lock and they see the new content), then check
    the live row counts. Returns them."""
    try:
        with (
            _connection(copy, read_only=True) as source,
            _connection(db, read_only=False) as target,
        ):
            source.backup(target)
            counts = row_counts(target)
    except sqlite3.Error as exc:
        raise _failure(f"restore into {db} failed", exc) from exc
    check_counts(counts, manifest.tables, f"restored database {db}")
    return counts
