"""Restoring a backup's uploaded files: extract the checked archive beside the slot's files
directory, then swap the two by rename, so that a failure midway leaves the old files in place."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

from app.backup_files import FileRow, check_archive, expected_members, files_dir, read_digest
from app.backup_manifest import BackupError, FilesSection, fsync_dir, os_reason, sha256_of

# Beside the files directory: `.files-restore-<hex>` while extracting, `.files-previous-<hex>`
# for the old files between the two renames (a restore killed there leaves it to rename back).
STAGE_INFIX: Final = "-restore-"
PREVIOUS_INFIX: Final = "-previous-"


def _beside(live: Path, infix: str) -> Path:
    return live.with_name(f".{live.name}{infix}{secrets.token_hex(4)}")


class _Stage:
    """Writes the checked members of an archive into a new private directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._tenants: set[Path] = set()

    def consume(self, row: FileRow, stream: IO[bytes]) -> str:
        """Write one member (private, fsynced) and return the sha256 of what was written."""
        tenant = self.directory / str(row.tenant_id)
        try:
            if tenant not in self._tenants:
                tenant.mkdir(mode=0o700)
                self._tenants.add(tenant)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            with os.fdopen(os.open(tenant / str(row.file_id), flags, 0o600), "wb") as out:
                digest = read_digest(stream, out)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise self._failed(exc) from exc
        return digest

    def sync(self) -> None:
        try:
            for tenant in self._tenants:
                fsync_dir(tenant)
            fsync_dir(self.directory)
        except OSError as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: OSError) -> BackupError:
        return BackupError(f"cannot write the restored files in {self.directory}: {os_reason(exc)}")


def discard(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)


def stage_files(
    archive: Path, section: FilesSection, rows: Sequence[FileRow], data_dir: Path
) -> Path:
    """Extract the archive into a new directory beside the slot's files directory (the same file
    system, so it can be renamed into place), checking every member as ``verify`` does; the new
    directory. On any failure nothing is left of it."""
    live = files_dir(data_dir)
    stage = _beside(live, STAGE_INFIX)
    try:
        live.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        stage.mkdir(mode=0o700)
    except OSError as exc:
        raise BackupError(
            f"cannot make a directory for the restored files beside {live}: {os_reason(exc)}"
        ) from exc
    try:
        writer = _Stage(stage)
        check_archive(archive, section, rows, writer.consume)
        writer.sync()
    except BaseException:
        discard(stage)
        raise
    return stage


def _put_back(previous: Path, live: Path) -> str:
    try:
        os.rename(previous, live)
    except OSError as exc:
        return f"; the previous files are at {previous} ({os_reason(exc)}): rename them back"
    return "; the previous files are unchanged"


def swap_in(stage: Path, data_dir: Path) -> Path | None:
    """Make ``stage`` the slot's files directory: the current one is renamed aside, the staged
    one renamed into its place (on failure the current one is renamed back), then the previous
    files are removed. Returns where previous files remain if they could not all be removed."""
    live = files_dir(data_dir)
    previous = _beside(live, PREVIOUS_INFIX)
    try:
        os.rename(live, previous)
        had_files = True
    except FileNotFoundError:
        had_files = False
    except OSError as exc:
        discard(stage)
        raise BackupError(
            f"cannot move the current files aside ({live}): {os_reason(exc)}; they are unchanged"
        ) from exc
    try:
        os.rename(stage, live)
    except OSError as exc:
        after = _put_back(previous, live) if had_files else ""
        discard(stage)
        raise BackupError(
            f"cannot put the restored files at {live}: {os_reason(exc)}{after}"
        ) from exc
    fsync_dir(live.parent)
    if not had_files:
        return None
    discard(previous)
    return previous if previous.exists() else None


# ---------------------------------------------------------------- what a restore would change


def _present(live: Path) -> dict[str, Path]:
    """Everything under the files directory that is not a directory (a restore removes what is
    not in the backup), by its name relative to it."""
    found: dict[str, Path] = {}
    for top, dirs, names in os.walk(live):
        base = Path(top)
        links = [d for d in dirs if (base / d).is_symlink()]
        for name in (*names, *links):
            found[(base / name).relative_to(live).as_posix()] = base / name
    return found


def _same(path: Path, row: FileRow) -> bool:
    try:
        info = path.lstat()
        return (
            stat.S_ISREG(info.st_mode)
            and info.st_size == row.size
            and sha256_of(path) == row.sha256
        )
    except OSError:
        return False


def files_diff(data_dir: Path, section: FilesSection, rows: Sequence[FileRow]) -> dict[str, int]:
    """How many files a restore of this archive would add, remove, change and leave as they are
    (compared by size, then sha256)."""
    wanted = expected_members(section, rows, f"files archive {section.archive}")
    current = _present(files_dir(data_dir))
    both = wanted.keys() & current.keys()
    unchanged = sum(1 for name in both if _same(current[name], wanted[name]))
    return {
        "added": len(wanted.keys() - current.keys()),
        "removed": len(current.keys() - wanted.keys()),
        "changed": len(both) - unchanged,
        "unchanged": unchanged,
    }
