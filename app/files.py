"""File attachments of a space: uploads streamed to disk under server ids, their records."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from app.accounts import Forbidden, NotFound, PolicyViolation, User
from app.clock import Clock
from app.db import Database
from app.file_types import (
    FALLBACK_NAME,
    MAX_NAME,
    SNIFF_BYTES,
    UnsupportedType,
    clean_name,
    content_disposition,
    sniff_type,
)
from app.ids import MAX_ID, new_id
from app.spaces import (
    _VISIBLE,
    MANAGERS,
    _actor,
    _require_postable,
    _sees_public,
    _visible_message,
    _visible_space,
)
from app.work_records import LIMIT_DEFAULT, Page, _now_ms, _page, _window

# The names and type checks of ``app.file_types`` stay importable from here.
__all__ = [
    "CHUNK_BYTES",
    "FALLBACK_NAME",
    "FILES_DIR",
    "MAX_NAME",
    "SNIFF_BYTES",
    "FileRecord",
    "TooLarge",
    "UnsupportedType",
    "attach_file",
    "clean_name",
    "content_disposition",
    "delete_file",
    "discard_file",
    "files_for_messages",
    "list_files",
    "open_file",
    "sniff_type",
    "store_file",
    "tenant_files_dir",
]

FILES_DIR = "files"
CHUNK_BYTES = 1 << 20  # how bytes given whole are fed through, and the write batch size


# ---------------------------------------------------------------- errors and records


class TooLarge(PolicyViolation):
    """The upload is over the size limit; nothing of it was kept."""


@dataclass(frozen=True)
class FileRecord:
    """An uploaded file; ``content_type`` is the checked type to send, never the client's."""

    id: int
    space_id: int
    message_id: int | None
    uploader_id: int
    original_name: str
    content_type: str
    size: int
    sha256: str
    created_at: int


_FILE_COLUMNS = (
    "f.id, f.space_id, f.message_id, f.uploader_id, f.original_name, f.content_type, f.size,"
    " f.sha256, f.created_at"
)


def _file(row: dict[str, Any]) -> FileRecord:
    message_id = row["message_id"]
    return FileRecord(
        id=int(row["id"]),
        space_id=int(row["space_id"]),
        message_id=None if message_id is None else int(message_id),
        uploader_id=int(row["uploader_id"]),
        original_name=str(row["original_name"]),
        content_type=str(row["content_type"]),
        size=int(row["size"]),
        sha256=str(row["sha256"]),
        created_at=int(row["created_at"]),
    )


def tenant_files_dir(root: Path, tenant_id: int) -> Path:
    """The directory of a tenant's files under the slot's data directory ``root``: each file is
    ``<file_id>`` in it, never a name the client sent (that one is only shown and offered on
    download, cleaned by ``clean_name``). All file I/O runs in worker threads."""
    return root / FILES_DIR / str(int(tenant_id))


# ---------------------------------------------------------------- disk (in worker threads)


class _Spool:
    """One upload on its way to disk: a hidden temporary file, hashed as it is written, fsynced
    and renamed to the id; ``discard`` removes whatever exists of it."""

    def __init__(self, directory: Path, file_id: int) -> None:
        self.file_id = file_id
        self.directory = directory
        self.temporary = directory / f".{file_id}.part"
        self.final = directory / str(file_id)
        self.sha256 = hashlib.sha256()
        self._file: BinaryIO | None = None

    def open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._file = os.fdopen(os.open(self.temporary, flags, 0o600), "wb")

    def write(self, data: bytes | bytearray) -> None:
        assert self._file is not None, "open() first"
        self.sha256.update(data)
        self._file.write(data)

    def commit(self) -> None:
        assert self._file is not None, "open() first"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._close()
        os.rename(self.temporary, self.final)
        _fsync_directory(self.directory)

    def discard(self) -> None:
        self._close()
        self.temporary.unlink(missing_ok=True)
        self.final.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _chunks(data: AsyncIterable[bytes] | bytes) -> AsyncGenerator[bytes, None]:
    if isinstance(data, bytes):
        for start in range(0, len(data), CHUNK_BYTES):
            yield data[start : start + CHUNK_BYTES]
        return
    async for chunk in data:
        yield chunk


async def _receive(
    spool: _Spool, data: AsyncIterable[bytes] | bytes, max_bytes: int, name: str, declared: str
) -> tuple[int, str]:
    """Write ``data`` to the spool; return its size and checked type. Stops reading at the
    first byte over ``max_bytes`` (TooLarge) and once the first bytes prove a refused type."""
    size, head, pending = 0, bytearray(), bytearray()
    content_type: str | None = None
    async with contextlib.aclosing(_chunks(data)) as chunks:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"a file has at most {max_bytes} bytes")
            if content_type is None and len(head) + len(chunk) >= SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
                content_type = sniff_type(bytes(head), declared, name, complete=False)
            elif content_type is None:
                head += chunk
            pending += chunk
            if len(pending) >= CHUNK_BYTES:
                await asyncio.to_thread(spool.write, pending)
                pending = bytearray()
    if content_type is None:
        content_type = sniff_type(bytes(head), declared, name, complete=True)
    await asyncio.to_thread(spool.write, pending)
    return size, content_type


# ---------------------------------------------------------------- access


async def _check_target(
    db: Database, tenant_id: int, actor: User, space_id: int, message_id: int | None
) -> None:
    """The actor may post in the space, and the message (if any) is their own live one there."""
    _require_postable(await _visible_space(db, tenant_id, actor, space_id))
    if message_id is None:
        return
    message, _ = await _visible_message(db, tenant_id, actor, message_id)
    if message.space_id != space_id or message.deleted_at is not None:
        raise NotFound("no such message")
    if message.author_id != actor.id:
        raise Forbidden("only a message's author may attach files to it")


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


async def _visible_file(db: Database, tenant_id: int, actor: User, file_id: int) -> FileRecord:
    if not _whole(file_id, 1, MAX_ID):
        raise NotFound("no such file")
    row = await db.fetchrow(
        f"SELECT {_FILE_COLUMNS} FROM files f WHERE f.tenant_id = ? AND f.id = ?",
        *(tenant_id, file_id),
    )
    if row is None:
        raise NotFound("no such file")
    record = _file(row)
    try:
        await _visible_space(db, tenant_id, actor, record.space_id)
    except NotFound:
        raise NotFound("no such file") from None
    return record


# ---------------------------------------------------------------- operations


async def store_file(
    db: Database,
    tenant_id: int,
    actor: User,
    space_id: int,
    data: AsyncIterable[bytes] | bytes,
    original_name: str,
    content_type: str,
    *,
    root: Path,
    max_bytes: int,
    message_id: int | None = None,
    clock: Clock | None = None,
) -> FileRecord:
    """Store an upload to a live space the actor may post in (and to their own message there).

    ``root`` is the slot's data directory. The bytes go to a temporary file, are fsynced and
    renamed to the new id, and only then is the row written; on any failure (TooLarge,
    UnsupportedType, the permission re-checked with the row, cancellation) nothing is kept."""
    if not _whole(max_bytes, 0, MAX_ID):
        raise ValueError(f"max_bytes must be a whole number of bytes, not {max_bytes!r}")
    name = clean_name(original_name)
    actor = await _actor(db, tenant_id, actor)
    await _check_target(db, tenant_id, actor, space_id, message_id)
    spool = _Spool(tenant_files_dir(root, tenant_id), new_id())
    await asyncio.to_thread(spool.open)
    try:
        size, checked_type = await _receive(spool, data, max_bytes, name, content_type)
        await asyncio.to_thread(spool.commit)
        digest = spool.sha256.hexdigest()
        record = FileRecord(
            *(spool.file_id, space_id, message_id, actor.id, name, checked_type, size, digest),
            _now_ms(clock),
        )
        await _insert(db, tenant_id, actor, record)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(spool.discard))
        raise
    return record


async def _insert(db: Database, tenant_id: int, actor: User, record: FileRecord) -> None:
    async with db.transaction() as tx:
        actor = await _actor(tx, tenant_id, actor)
        await _check_target(tx, tenant_id, actor, record.space_id, record.message_id)
        await tx.execute(
            "INSERT INTO files (id, tenant_id, space_id, message_id, uploader_id, stored_name,"
            " original_name, content_type, size, sha256, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            *(record.id, tenant_id, record.space_id, record.message_id, actor.id),
            f"{FILES_DIR}/{tenant_id}/{record.id}",
            *(record.original_name, record.content_type, record.size, record.sha256),
            record.created_at,
        )


async def open_file(
    db: Database, tenant_id: int, actor: User, file_id: int, *, root: Path
) -> tuple[FileRecord, Path]:
    """A file of a space the actor may see and where its bytes are (``root``: the slot's data
    directory). NotFound for ids of other tenants, of spaces the actor may not see, and for
    files whose bytes are gone. Send it with ``content_disposition(record.original_name)``."""
    actor = await _actor(db, tenant_id, actor)
    record = await _visible_file(db, tenant_id, actor, file_id)
    path = tenant_files_dir(root, tenant_id) / str(record.id)
    if not await asyncio.to_thread(path.is_file):
        raise NotFound("no such file")
    return record, path


async def list_files(
    db: Database,
    tenant_id: int,
    actor: User,
    space_id: int,
    *,
    limit: int = LIMIT_DEFAULT,
    before_id: int | None = None,
) -> Page[FileRecord]:
    """Files of a space the actor may see, newest first; limits above LIMIT_MAX are clamped."""
    window = _window(limit, None, before_id, ascending_default=False)
    actor = await _actor(db, tenant_id, actor)
    await _visible_space(db, tenant_id, actor, space_id)
    rows = await db.fetch(
        f"SELECT {_FILE_COLUMNS} FROM files f WHERE f.tenant_id = ? AND f.space_id = ?"
        + window.sql("f.id"),
        *(tenant_id, space_id, *window.args()),
    )
    return _page(rows, window.limit, _file)


async def delete_file(
    db: Database, tenant_id: int, actor: User, file_id: int, *, root: Path
) -> None:
    """Delete a file, row then bytes: its uploader or a workspace admin. NotFound as for
    ``open_file``; a second delete is NotFound too."""
    async with db.transaction() as tx:
        actor = await _actor(tx, tenant_id, actor)
        record = await _visible_file(tx, tenant_id, actor, file_id)
        if record.uploader_id != actor.id and actor.role not in MANAGERS:
            raise Forbidden("only the uploader or a workspace admin may delete a file")
        await tx.execute("DELETE FROM files WHERE tenant_id = ? AND id = ?", tenant_id, record.id)
    path = tenant_files_dir(root, tenant_id) / str(record.id)
    await asyncio.to_thread(path.unlink, missing_ok=True)


async def files_for_messages(
    db: Database, tenant_id: int, actor: User, message_ids: Iterable[int]
) -> dict[int, list[FileRecord]]:
    """The files attached to each of ``message_ids``, oldest first, from the spaces the actor
    may see: one query for all of them (a page of messages). Messages without such files, and
    ids that are not ids, are left out."""
    wanted = sorted({m for m in message_ids if _whole(m, 1, MAX_ID)})
    if not wanted:
        return {}
    actor = await _actor(db, tenant_id, actor)
    marks = ", ".join("?" * len(wanted))
    rows = await db.fetch(
        f"SELECT {_FILE_COLUMNS} FROM files f"
        " JOIN spaces s ON s.tenant_id = f.tenant_id AND s.id = f.space_id"
        " LEFT JOIN space_members sm"
        " ON sm.tenant_id = s.tenant_id AND sm.space_id = s.id AND sm.user_id = ?"
        f" WHERE f.tenant_id = ? AND f.message_id IN ({marks})" + _VISIBLE + " ORDER BY f.id",
        *(actor.id, tenant_id, *wanted, _sees_public(actor)),
    )
    found: dict[int, list[FileRecord]] = {}
    for row in rows:
        found.setdefault(int(row["message_id"]), []).append(_file(row))
    return found


async def attach_file(tx: Database, tenant_id: int, file_id: int, message_id: int) -> None:
    """Attach an unattached file to a live message of its space written by its uploader. For
    the transaction that posts (and so checks the author may post) the message; NotFound, and
    nothing changed, for any other file or message."""
    if not (_whole(file_id, 1, MAX_ID) and _whole(message_id, 1, MAX_ID)):
        raise NotFound("no such file to attach")
    touched = await tx.execute(
        "UPDATE files SET message_id = ? WHERE tenant_id = ? AND id = ? AND message_id IS NULL"
        " AND EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = files.tenant_id"
        " AND m.id = ? AND m.space_id = files.space_id AND m.author_id = files.uploader_id"
        " AND m.deleted_at IS NULL)",
        *(message_id, tenant_id, file_id, message_id),
    )
    if touched != 1:
        raise NotFound("no such file to attach")


async def discard_file(db: Database, tenant_id: int, file_id: int, *, root: Path) -> None:
    """Remove a stored file that is attached to no message, row then bytes, without asking who
    may: to undo a ``store_file`` whose message could not be posted. Idempotent; a file that
    was attached after all is kept."""
    removed = await db.execute(
        "DELETE FROM files WHERE tenant_id = ? AND id = ? AND message_id IS NULL",
        *(tenant_id, file_id),
    )
    if not removed and await db.fetchval(
        "SELECT 1 FROM files WHERE tenant_id = ? AND id = ?", *(tenant_id, file_id)
    ):
        return
    path = tenant_files_dir(root, tenant_id) / str(int(file_id))
    await asyncio.to_thread(path.unlink, missing_ok=True)
