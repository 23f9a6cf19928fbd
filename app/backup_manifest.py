"""Backup files, their files archives and manifests: names, checksums, durable writes, checks."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from app.db_protocol import Dialect

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # a check failed, or the backup could not be written or restored
EXIT_USAGE: Final = 2
EXIT_DATABASE: Final = 3  # the slot's database cannot be opened or read

# Format 1: the database only. Format 2: the database and its ``files`` section (the archive of
# uploaded files beside it). Both are read; every new backup is format 2.
MANIFEST_FORMAT: Final = 2
DATABASE_ONLY_FORMAT: Final = 1
_FORMATS: Final = (DATABASE_ONLY_FORMAT, MANIFEST_FORMAT)
ARCHIVE_SUFFIX: Final = ".files.tar"
# Why a file the backed-up database lists is not in the archive: deleted after the snapshot (row,
# then bytes), or, with its row still live, bytes absent, not what the row records, or unreadable.
MISSING_REASONS: Final = ("deleted", "absent", "damaged", "unreadable")
SUFFIXES: Final[dict[Dialect, str]] = {"sqlite": ".sqlite3", "postgres": ".pgdump"}
PRE_RESTORE: Final = "pre-restore"
Kind = Literal["backup", "pre-restore"]
# <slot>-[pre-restore-]<UTC YYYYmmddTHHMMSSZ>.<sqlite3|pgdump>; the agent rotates by this name.
BACKUP_NAME: Final = re.compile(
    r"^(?P<slot>[a-z][a-z0-9-]*?)-(?:(?P<kind>pre-restore)-)?"
    r"(?P<stamp>\d{8}T\d{6}Z)\.(?P<ext>sqlite3|pgdump)$"
)
_CHUNK = 1024 * 1024


class BackupError(Exception):
    """Why a backup, a check or a restore did not succeed; ``exit_code`` says which kind."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def unusable(message: str) -> BackupError:
    """The slot's database itself cannot be opened or read."""
    return BackupError(message, EXIT_DATABASE)


def os_reason(exc: OSError) -> str:
    """An OSError in words people act on (a full disk says so)."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)


def stamp(at: float) -> str:
    """``at`` (epoch seconds) as the UTC time stamp in backup names: 20240131T030000Z."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def iso_utc(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def backup_name(slot: str, dialect: Dialect, at: float, kind: Kind = "backup") -> str:
    middle = f"{PRE_RESTORE}-" if kind == PRE_RESTORE else ""
    return f"{slot}-{middle}{stamp(at)}{SUFFIXES[dialect]}"


def manifest_path(backup: Path) -> Path:
    return backup.with_name(backup.name + ".json")


def archive_path(backup: Path) -> Path:
    """The archive of uploaded files that belongs to ``backup``."""
    return backup.with_name(backup.name + ARCHIVE_SUFFIX)


def dialect_of(backup: Path) -> Dialect:
    """The dialect a backup file holds, from its name; BackupError for a name not ours."""
    match = BACKUP_NAME.match(backup.name)
    if match is None:
        raise BackupError(
            f"{backup.name} is not a backup name (<slot>-<YYYYmmddTHHMMSSZ>.sqlite3 or .pgdump)"
        )
    return "sqlite" if match.group("ext") == "sqlite3" else "postgres"


@dataclass(frozen=True)
class MissingFile:
    """A file the backed-up database lists whose bytes are not in the archive, and why."""

    tenant_id: int
    file_id: int
    reason: str


@dataclass(frozen=True)
class FilesSection:
    """The ``files`` section of a manifest: the archive (name, size, sha256), the files in it
    (count and bytes of their contents) and the listed files left out of it."""

    archive: str
    count: int
    bytes: int
    size: int
    sha256: str
    missing: tuple[MissingFile, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """What a backup holds, written next to it as ``<backup>.json``."""

    slot: str
    dialect: Dialect
    file: str
    created_at: str
    size: int
    sha256: str
    tables: dict[str, int]
    kind: Kind = "backup"
    format: int = field(default=DATABASE_ONLY_FORMAT)
    files: FilesSection | None = None

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        if self.files is None:
            del doc["files"]  # a format-1 manifest, as it was written
        return doc


def _field(data: Mapping[str, Any], key: str, kind: type, where: Path) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BackupError(f"manifest {where.name} has no valid {key!r}: it was edited or damaged")
    return value


def _missing(entry: object, where: Path) -> MissingFile:
    if not isinstance(entry, dict):
        raise BackupError(f"manifest {where.name} has an invalid files.missing entry")
    tenant_id, file_id = entry.get("tenant_id"), entry.get("file_id")
    reason = entry.get("reason")
    if type(tenant_id) is not int or type(file_id) is not int or reason not in MISSING_REASONS:
        raise BackupError(f"manifest {where.name} has an invalid files.missing entry: {entry!r}")
    return MissingFile(tenant_id, file_id, str(reason))


def parse_files(data: object, where: Path) -> FilesSection:
    """The ``files`` section; BackupError naming the first field that is wrong."""
    if not isinstance(data, dict):
        raise BackupError(f"manifest {where.name} has no valid 'files' section")
    counts = [_field(data, key, int, where) for key in ("count", "bytes", "size")]
    missing = data.get("missing", [])
    if not isinstance(missing, list) or any(n < 0 for n in counts):
        raise BackupError(
            f"manifest {where.name} has an invalid 'files' section: edited or damaged"
        )
    return FilesSection(
        archive=_field(data, "archive", str, where),
        count=counts[0],
        bytes=counts[1],
        size=counts[2],
        sha256=_field(data, "sha256", str, where),
        missing=tuple(_missing(entry, where) for entry in missing),
    )


def parse_manifest(data: object, where: Path) -> Manifest:
    """A manifest from its JSON; BackupError naming the first field that is wrong."""
    if not isinstance(data, dict):
        raise BackupError(f"manifest {where.name} is not a JSON object")
    tables = _field(data, "tables", dict, where)
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in tables.items()):
        raise BackupError(f"manifest {where.name} has invalid row counts: edited or damaged")
    dialect = _field(data, "dialect", str, where)
    kind = data.get("kind", "backup")
    if dialect not in SUFFIXES or kind not in ("backup", PRE_RESTORE):
        raise BackupError(f"manifest {where.name} has an unknown dialect or kind")
    return Manifest(
        slot=_field(data, "slot", str, where),
        dialect=dialect,
        file=_field(data, "file", str, where),
        created_at=_field(data, "created_at", str, where),
        size=_field(data, "size", int, where),
        sha256=_field(data, "sha256", str, where),
        tables=dict(tables),
        kind=kind,
        format=_field(data, "format", int, where),
        files=None if data.get("files") is None else parse_files(data["files"], where),
    )


def read_manifest(backup: Path) -> Manifest:
    """The manifest of ``backup``, checked against the backup's own name."""
    path = manifest_path(backup)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackupError(
            f"manifest {path.name} is missing: this backup cannot be checked"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"cannot read manifest {path.name}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise BackupError(f"manifest {path.name} is not valid JSON: edited or damaged") from None
    manifest = parse_manifest(data, path)
    match = BACKUP_NAME.match(backup.name)
    if manifest.file != backup.name or match is None or match.group("slot") != manifest.slot:
        raise BackupError(f"manifest {path.name} describes {manifest.file!r}, not {backup.name!r}")
    if manifest.dialect != dialect_of(backup) or manifest.format not in _FORMATS:
        raise BackupError(f"manifest {path.name} does not match the backup's kind or format")
    if (manifest.files is not None) != (manifest.format == MANIFEST_FORMAT):
        raise BackupError(
            f"manifest {path.name} is format {manifest.format} but "
            f"{'has' if manifest.files is not None else 'lacks'} a 'files' section: edited"
        )
    if manifest.files is not None and manifest.files.archive != archive_path(backup).name:
        raise BackupError(
            f"manifest {path.name} names archive {manifest.files.archive!r}, "
            f"not {archive_path(backup).name!r}"
        )
    return manifest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path, manifest: Manifest, label: str | None = None) -> None:
    """The file is exactly the one the manifest describes (size, then sha256)."""
    check_bytes(path, manifest.size, manifest.sha256, f"backup {label or path.name}")


def check_bytes(path: Path, size: int, sha256: str, label: str) -> None:
    """``path`` has ``size`` bytes and that sha256; ``label`` names it in the error."""
    try:
        found = path.stat().st_size
    except FileNotFoundError:
        raise BackupError(f"{label} does not exist ({path})") from None
    if found != size:
        raise BackupError(
            f"{label} is {found} bytes but its manifest says {size}: truncated or damaged"
        )
    if sha256_of(path) != sha256:
        raise BackupError(
            f"{label} does not match its manifest's sha256: damaged since it was made"
        )


def check_counts(found: Mapping[str, int], expected: Mapping[str, int], what: str) -> None:
    """Row counts per table must be equal; BackupError listing the tables that differ."""
    if dict(found) == dict(expected):
        return
    names = sorted(set(found) | set(expected))
    diffs = [f"{n}: {found.get(n, 'absent')} vs {expected.get(n, 'absent')}" for n in names]
    differing = [d for d, n in zip(diffs, names, strict=True) if found.get(n) != expected.get(n)]
    raise BackupError(f"{what}: row counts differ from the manifest ({'; '.join(differing)})")


def check_destination(dest: Path) -> None:
    """The backup directory exists and takes new files."""
    if not dest.exists():
        raise BackupError(f"backup directory {dest} does not exist")
    if not dest.is_dir():
        raise BackupError(f"backup directory {dest} is not a directory")
    if not os.access(dest, os.W_OK | os.X_OK):
        raise BackupError(f"cannot write in backup directory {dest}: read-only or no permission")


def temp_path(dest: Path, name: str) -> Path:
    """A fresh hidden name in ``dest`` that the rotation never touches."""
    return dest / f".{name}.{secrets.token_hex(4)}.tmp"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, final: Path) -> None:
    """Make ``temp`` private, fsync it, rename it to ``final`` (never over an existing file),
    fsync the directory."""
    os.chmod(temp, 0o600)  # a backup holds every tenant's data
    fsync_file(temp)
    if final.exists():
        raise BackupError(f"{final} already exists: one backup per slot and second")
    temp.rename(final)
    fsync_dir(final.parent)


def write_manifest(backup: Path, manifest: Manifest) -> Path:
    path = manifest_path(backup)
    temp = temp_path(path.parent, path.name)
    try:
        temp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
        publish(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def write_manifest_of(backup: Path, manifest: Manifest) -> None:
    """Write the manifest that makes ``backup`` complete; BackupError when it cannot be."""
    try:
        write_manifest(backup, manifest)
    except OSError as exc:
        raise BackupError(
            f"cannot write the manifest in {backup.parent}: {os_reason(exc)}"
        ) from exc


def remove_backup(backup: Path) -> None:
    """Remove a backup, its manifest and its files archive (a failed one must not look like a
    good one)."""
    for path in (manifest_path(backup), backup, archive_path(backup)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise
