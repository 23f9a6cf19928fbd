"""File attachments of a space: uploads checked by their content and streamed to disk, downloads.

Files live under the slot's data directory as ``files/<tenant_id>/<file_id>``: the name on disk
is always the server's id, never anything the client sent. The client's name is kept only to
show and to offer on download (cleaned by ``clean_name``); its declared type is only a hint that
must agree with what the first bytes say (``sniff_type``). All file I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import os
import re
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from app.accounts import Forbidden, NotFound, PolicyViolation, User
from app.clock import Clock
from app.db import Database
from app.ids import MAX_ID, new_id
from app.spaces import MANAGERS, _actor, _require_postable, _visible_message, _visible_space
from app.work_records import LIMIT_DEFAULT, Page, _now_ms, _page, _window

FILES_DIR = "files"
MAX_NAME = 255
SNIFF_BYTES = 4096
CHUNK_BYTES = 1 << 20  # how bytes given whole are fed through, and the write batch size
FALLBACK_NAME = "file"


# ---------------------------------------------------------------- errors and records


class TooLarge(PolicyViolation):
    """The upload is over the size limit; nothing of it was kept."""


class UnsupportedType(PolicyViolation):
    """The content is not an allowed type, or not the type its name or header says."""


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
    """The directory of a tenant's files under the slot's data directory ``root``."""
    return root / FILES_DIR / str(int(tenant_id))


# ---------------------------------------------------------------- names


_SEPARATORS = re.compile(r"[/\\\uff0f\uff3c\u2215\u2044\u29f8\u29f9]")
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def _safe_char(char: str) -> bool:
    return char not in _BIDI and unicodedata.category(char) not in _UNSAFE_CATEGORIES


def clean_name(name: str) -> str:
    """A client's file name fit to show and offer on download: the last path component (``/``
    and ``\\`` both split), without control, line-break or bidi-override characters, without
    leading or trailing dots and blanks, at most MAX_NAME characters (keeping the extension);
    FALLBACK_NAME when nothing is left. Anything else, markup included, is kept verbatim."""
    name = "".join(filter(_safe_char, unicodedata.normalize("NFC", name)))
    name = _SEPARATORS.split(name)[-1].strip(". \u00a0")
    if len(name) > MAX_NAME:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) <= 16:
            name = stem[: MAX_NAME - len(extension) - 1] + "." + extension
        else:
            name = name[:MAX_NAME]
    return name or FALLBACK_NAME


def _extension(name: str) -> str:
    stem, dot, extension = name.rpartition(".")
    return extension.lower() if dot and stem else ""


def _ascii_fallback(name: str) -> str:
    return "".join(c if " " <= c <= "~" and c not in '"\\%;' else "_" for c in name)


def content_disposition(original_name: str) -> str:
    """``Content-Disposition`` for downloading a file called ``original_name`` (RFC 6266): an
    ASCII ``filename`` fallback with quotes, backslashes and ``%`` replaced, and the full name
    percent-encoded as UTF-8 in ``filename*`` (RFC 5987). The name is cleaned first, so the
    value never holds CR, LF or other control characters."""
    name = clean_name(original_name)
    encoded = quote(name, safe="", encoding="utf-8")
    return f"attachment; filename=\"{_ascii_fallback(name)}\"; filename*=UTF-8''{encoded}"


# ---------------------------------------------------------------- content types


@dataclass(frozen=True)
class _Kind:
    """What the first bytes prove; ``types`` a client may declare for it, the first the default."""

    types: tuple[str, ...]
    extensions: frozenset[str]
    has_default: bool = True
    tolerated_claims: frozenset[str] = frozenset()


_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
_ODT = "application/vnd.oasis.opendocument.text"
_ODS = "application/vnd.oasis.opendocument.spreadsheet"
_ODP = "application/vnd.oasis.opendocument.presentation"
_OLE_TYPES = ("application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint")

_PNG = _Kind(("image/png",), frozenset({"png"}))
_JPEG = _Kind(("image/jpeg",), frozenset({"jpg", "jpeg", "jpe", "jfif"}))
_GIF = _Kind(("image/gif",), frozenset({"gif"}))
_WEBP = _Kind(("image/webp",), frozenset({"webp"}))
_PDF = _Kind(("application/pdf",), frozenset({"pdf"}))
_ZIP = _Kind(
    ("application/zip", _DOCX, _XLSX, _PPTX, _ODT, _ODS, _ODP),
    frozenset({"zip", "docx", "xlsx", "pptx", "odt", "ods", "odp"}),
)
# Legacy Office files are OLE2 containers, as are .msi installers: the name must say which.
_OLE = _Kind(_OLE_TYPES, frozenset({"doc", "xls", "ppt"}), has_default=False)
# Windows browsers declare .csv files as Excel sheets when Excel is installed.
_TEXT = _Kind(
    ("text/plain", "text/csv"),
    frozenset({"txt", "text", "log", "md", "csv", "tsv"}),
    tolerated_claims=frozenset({"application/vnd.ms-excel"}),
)
_MAGIC: tuple[tuple[bytes, _Kind], ...] = (
    (b"\x89PNG\r\n\x1a\n", _PNG),
    (b"\xff\xd8\xff", _JPEG),
    (b"GIF87a", _GIF),
    (b"GIF89a", _GIF),
    (b"%PDF-", _PDF),
    (b"PK\x03\x04", _ZIP),
    (b"PK\x05\x06", _ZIP),  # an empty archive
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", _OLE),
)
_GENERIC_CLAIMS = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-zip-compressed": "application/zip",
    "application/x-pdf": "application/pdf",
    "application/csv": "text/csv",
    "text/x-csv": "text/csv",
    "text/comma-separated-values": "text/csv",
}
_BY_EXTENSION = {
    "csv": "text/csv",
    "docx": _DOCX,
    "xlsx": _XLSX,
    "pptx": _PPTX,
    "odt": _ODT,
    "ods": _ODS,
    "odp": _ODP,
    "doc": _OLE_TYPES[0],
    "xls": _OLE_TYPES[1],
    "ppt": _OLE_TYPES[2],
}
_STORED = {"text/plain": "text/plain; charset=utf-8", "text/csv": "text/csv; charset=utf-8"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_MARKUP = re.compile(r"\s*<[A-Za-z!?/]")  # what a browser might take for HTML, SVG or XML
_REFUSED = (
    "only PNG, JPEG, GIF and WebP images, PDF, UTF-8 text, CSV, ZIP and office documents "
    "may be uploaded"
)


def _is_text(head: bytes, complete: bool) -> bool:
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError:
        return False
    text = text.removeprefix("\ufeff")
    return _CONTROL.search(text) is None and _MARKUP.match(text) is None


def _sniff(head: bytes, complete: bool) -> _Kind | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _WEBP
    return _TEXT if _is_text(head, complete) else None


def sniff_type(head: bytes, declared: str, name: str, *, complete: bool) -> str:
    """The content type to store for a file starting with ``head`` (its first SNIFF_BYTES, or
    all of it when ``complete``), declared as ``declared`` and named ``name`` (cleaned).

    UnsupportedType unless the bytes are of an allowed kind, the name's extension (if any)
    fits that kind and the declared type is one of that kind's or says nothing."""
    kind = _sniff(head, complete)
    if kind is None:
        raise UnsupportedType(_REFUSED)
    extension = _extension(name)
    if extension and extension not in kind.extensions:
        raise UnsupportedType(f"the content of this file is not what .{extension} promises")
    claim = declared.partition(";")[0].strip().lower()
    claim = _ALIASES.get(claim, claim)
    if claim not in kind.types:
        if claim not in _GENERIC_CLAIMS and claim not in kind.tolerated_claims:
            raise UnsupportedType(f"the content of this file is not {claim}")
        claim = _BY_EXTENSION.get(extension, "")
        if claim not in kind.types:
            if not kind.has_default:
                raise UnsupportedType("name the office document .doc, .xls or .ppt")
            claim = kind.types[0]
    return _STORED.get(claim, claim)


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
