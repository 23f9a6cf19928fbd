"""The uploaded files of a backup: a plain tar of ``<tenant_id>/<file_id>`` blobs, made from the
rows of the backed-up database and checked member by member against those rows."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, Final

from app.backup_manifest import (
    BackupError,
    FilesSection,
    MissingFile,
    archive_path,
    check_bytes,
    os_reason,
    publish,
    sha256_of,
    temp_path,
)
from app.files import FILES_DIR, tenant_files_dir

# Every file the database lists, in the order the archive holds them.
FILE_ROWS_SQL: Final = "SELECT tenant_id, id, size, sha256 FROM files ORDER BY tenant_id, id"
FILES_TABLE: Final = "files"
# What a member may be called: the blob's place under the files directory, nothing else.
MEMBER_NAME: Final = re.compile(r"^[1-9][0-9]{0,18}/[1-9][0-9]{0,18}$")
_REGULAR: Final = (tarfile.REGTYPE, tarfile.AREGTYPE)
_CHUNK = 1024 * 1024

# Reads one member's bytes and returns their sha256 (hex): hashes them, or writes them too.
Consume = Callable[["FileRow", IO[bytes]], str]


@dataclass(frozen=True)
class FileRow:
    """A file as the backed-up database records it."""

    tenant_id: int
    file_id: int
    size: int
    sha256: str

    @property
    def member(self) -> str:
        """Its name in the archive, which is its place under the files directory."""
        return f"{self.tenant_id}/{self.file_id}"


def file_row(values: Sequence[Any]) -> FileRow:
    """A FileRow from a row of FILE_ROWS_SQL."""
    tenant_id, file_id, size, digest = values
    return FileRow(int(tenant_id), int(file_id), int(size), str(digest))


def files_dir(data_dir: Path) -> Path:
    """The slot's files directory (where it really is, when it is a symbolic link)."""
    live = data_dir / FILES_DIR
    return live.resolve() if live.is_symlink() else live


# ---------------------------------------------------------------- create


class _Unusable(Exception):
    """A blob that cannot go into the archive; ``reason`` is one of MISSING_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_digest(stream: IO[bytes], out: IO[bytes] | None = None) -> str:
    """The sha256 (hex) of what is left in ``stream``, copied to ``out`` as it is read."""
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
    return digest.hexdigest()


def _open_blob(path: Path, row: FileRow) -> tuple[BinaryIO, float]:
    """The blob, open at its start, once it proved to be what its row records; and its mtime.
    Never follows a link, never blocks on a pipe."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        gone = exc.errno in (errno.ENOENT, errno.ENOTDIR)
        why = "absent" if gone else "damaged" if exc.errno == errno.ELOOP else "unreadable"
        raise _Unusable(why) from None
    blob = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != row.size:
            raise _Unusable("damaged")
        if read_digest(blob) != row.sha256:
            raise _Unusable("damaged")
        blob.seek(0)
    except OSError:
        blob.close()
        raise _Unusable("unreadable") from None
    except BaseException:
        blob.close()
        raise
    return blob, info.st_mtime


def _fill(archive: tarfile.TarFile, data_dir: Path, rows: Iterable[FileRow]) -> list[MissingFile]:
    """Add every listed blob that is what its row records; the others, and why."""
    missing = []
    for row in rows:
        path = tenant_files_dir(data_dir, row.tenant_id) / str(row.file_id)
        try:
            blob, mtime = _open_blob(path, row)
        except _Unusable as exc:
            missing.append(MissingFile(row.tenant_id, row.file_id, exc.reason))
            continue
        with blob:
            info = tarfile.TarInfo(row.member)
            info.size, info.mode, info.mtime = row.size, 0o600, int(mtime)
            archive.addfile(info, blob)
    return missing


def write_archive(data_dir: Path, rows: Sequence[FileRow], backup: Path) -> FilesSection:
    """Archive the blobs ``rows`` list (from the backed-up database) as ``<backup>.files.tar``:
    written privately under a temporary name, fsynced, then renamed. A blob that is gone or is
    not what its row records is left out and listed as missing (``absent``, ``damaged`` or
    ``unreadable``; the caller tells a concurrent deletion apart)."""
    final = archive_path(backup)
    temp = temp_path(final.parent, final.name)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with (
            os.fdopen(fd, "wb") as out,
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive,
        ):
            missing = _fill(archive, data_dir, rows)
        size, digest = temp.stat().st_size, sha256_of(temp)
        publish(temp, final)
    except OSError as exc:
        raise BackupError(
            f"cannot write the files archive in {final.parent}: {os_reason(exc)}"
        ) from exc
    finally:
        temp.unlink(missing_ok=True)
    left_out = {m.file_id for m in missing}
    kept = [row for row in rows if row.file_id not in left_out]
    return FilesSection(
        final.name, len(kept), sum(r.size for r in kept), size, digest, tuple(missing)
    )


# ---------------------------------------------------------------- check


def expected_members(
    section: FilesSection, rows: Sequence[FileRow], label: str
) -> dict[str, FileRow]:
    """Member name -> row for every row the manifest does not list as missing; BackupError for
    a missing entry that names no row of the backed-up database, or names one twice."""
    by_id = {row.file_id: row for row in rows}
    listed: set[int] = set()
    for entry in section.missing:
        row = by_id.get(entry.file_id)
        if row is None or row.tenant_id != entry.tenant_id or entry.file_id in listed:
            raise BackupError(
                f"{label}: the manifest lists file {entry.tenant_id}/{entry.file_id} as missing, "
                "but the backed-up database has no such file (or it is listed twice)"
            )
        listed.add(entry.file_id)
    return {row.member: row for row in rows if row.file_id not in listed}


def refusal(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be read from an archive of ours, or None."""
    name = member.name
    if name.startswith("/"):
        return "an absolute name"
    if ".." in PurePosixPath(name).parts:
        return "a name that leads out of the files directory"
    if member.issym() or member.islnk():
        return "a link"
    if member.ischr() or member.isblk() or member.isfifo():
        return "a device or a pipe"
    if member.type not in _REGULAR or member.issparse():
        return "not a regular file"
    if MEMBER_NAME.match(name) is None:
        return "not named <tenant_id>/<file_id>"
    return None


def _hash_only(row: FileRow, stream: IO[bytes]) -> str:
    return read_digest(stream)


def _check_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, row: FileRow, label: str, consume: Consume
) -> None:
    if member.size != row.size:
        raise BackupError(
            f"{label}: member {member.name} is {member.size} bytes but the database records "
            f"{row.size}"
        )
    stream = archive.extractfile(member)
    if stream is None:  # only for links and directories, refused already
        raise BackupError(f"{label}: member {member.name} has no contents")
    with stream:
        if consume(row, stream) != row.sha256:
            raise BackupError(
                f"{label}: member {member.name} does not match the sha256 its database records"
            )


def _walk(
    archive: tarfile.TarFile, expected: dict[str, FileRow], label: str, consume: Consume
) -> tuple[int, int]:
    """Check every member against ``expected``; how many files and bytes the archive holds."""
    seen: set[str] = set()
    for member in archive:
        why = refusal(member)
        if why is not None:
            raise BackupError(f"{label}: refused member {member.name!r}: {why}")
        row = expected.get(member.name)
        if row is None or member.name in seen:
            twice = " (a second time)" if member.name in seen else ""
            raise BackupError(f"{label}: unexpected member {member.name}{twice}")
        seen.add(member.name)
        _check_member(archive, member, row, label, consume)
    lacking = sorted(set(expected) - seen)
    if lacking:
        raise BackupError(
            f"{label} lacks {len(lacking)} file(s) its database lists, the first {lacking[0]}"
        )
    return len(seen), sum(expected[name].size for name in seen)


def check_archive(
    archive: Path, section: FilesSection, rows: Sequence[FileRow], consume: Consume = _hash_only
) -> None:
    """The archive is the one the manifest describes (size, sha256), and holds exactly the files
    of ``rows`` (the backed-up database's) that the manifest does not list as missing, each a
    regular file of the recorded size and sha256. ``consume`` may keep what it reads."""
    label = f"files archive {archive.name}"
    check_bytes(archive, section.size, section.sha256, label)
    expected = expected_members(section, rows, label)
    try:
        with tarfile.open(archive, mode="r:") as tar:
            count, total = _walk(tar, expected, label, consume)
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(f"{label} cannot be read as a tar archive: {exc}") from exc
    if (count, total) != (section.count, section.bytes):
        raise BackupError(
            f"{label} holds {count} files of {total} bytes but its manifest says "
            f"{section.count} files of {section.bytes} bytes"
        )
