"""File routes of the JSON API: multipart uploads streamed to ``app.files`` under their own size
limit, lists, downloads with headers that keep browsers from running what they fetch, deletion.

An upload is ``multipart/form-data`` with an optional ``message`` field (an id, before the file)
and one ``file`` part; parts after the file are not read. Its body is read as a stream, never
whole, so the application's ``client_max_size`` (which only bounds whole-body reads) does not
apply; the file's size is checked by ``store_file`` as the bytes arrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import BodyPartReader, MultipartReader, hdrs, web

from app import audit, files
from app.client_address import client_ip
from app.clock import Clock
from app.files import TooLarge, UnsupportedType
from app.web_auth import ApiError
from app.web_input import Call, id_cursor, page_limit, parse_id, path_id
from app.web_output import answer, empty, file_json, listing

READ_BYTES = 64 * 1024
# Room for the multipart framing around the file: boundaries, part headers, a message id.
FRAMING_BYTES = 16 * 1024
MAX_FIELD_BYTES = 64
# A download is an attachment that is never sniffed, cached, or run as a page of our origin.
DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
    "Content-Security-Policy": "sandbox",
}
_IDENTITY_ENCODINGS = frozenset({"", "binary", "7bit", "8bit"})
_FORM = "send multipart/form-data with a file part named 'file'"

Endpoint = Callable[[Call], Awaitable[web.StreamResponse]]


class FileRoutes:
    """The file endpoints of one app: ``root`` is the slot's data directory (None: no file
    storage, every file route answers 503), ``max_upload_bytes`` the largest file."""

    def __init__(
        self, root: Path | None, max_upload_bytes: int, clock: Clock | None = None
    ) -> None:
        self._root = root
        self._max_bytes = max_upload_bytes
        self._clock = clock

    def routes(self, prefix: str) -> list[tuple[str, str, Endpoint]]:
        """(method, path, endpoint) of each route, for the API to register behind its auth."""
        space_files, file = f"{prefix}/spaces/{{id}}/files", f"{prefix}/files/{{id}}"
        return [
            ("POST", space_files, self.upload),
            ("GET", space_files, self.list_files),
            ("HEAD", space_files, self.list_files),
            ("GET", file, self.download),
            ("HEAD", file, self.download),
            ("DELETE", file, self.delete),
        ]

    def _storage(self) -> Path:
        if self._root is None:
            raise ApiError(503, "no file storage is configured", {"Retry-After": "1"})
        return self._root

    async def upload(self, call: Call) -> web.StreamResponse:
        """POST multipart ``[message,] file``: 201 and the file's record."""
        root = self._storage()
        space_id = path_id(call.request, "space")
        if (call.request.content_length or 0) > self._max_bytes + FRAMING_BYTES:
            raise ApiError(413, f"a file has at most {self._max_bytes} bytes")
        if call.request.content_type != "multipart/form-data":
            raise ApiError(415, _FORM)
        reader = await _multipart(call.request)
        message_id: int | None = None
        part = await _next_part(reader)
        if part is not None and part.name == "message":
            message_id = parse_id(await _small_field(part, "message"), "message", 400)
            part = await _next_part(reader)
        if part is None or part.name != "file":
            raise ApiError(400, _FORM)
        declared = part.headers.get(hdrs.CONTENT_TYPE, "")
        try:
            record = await files.store_file(
                call.db, call.tenant_id, call.caller.user, space_id, _part_bytes(part),
                part.filename or "", declared, root=root, max_bytes=self._max_bytes,
                message_id=message_id,
            )  # fmt: skip
        except TooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except UnsupportedType as exc:
            raise ApiError(415, str(exc)) from None
        return answer(file_json(record), 201)

    async def list_files(self, call: Call) -> web.StreamResponse:
        """Files of a space, newest first; the cursor is the id of the last one shown."""
        space_id = path_id(call.request, "space")
        found = await files.list_files(
            call.db, call.tenant_id, call.caller.user, space_id,
            limit=page_limit(call.request), before_id=id_cursor(call.request),
        )  # fmt: skip
        cursor = None if found.next_cursor is None else str(found.next_cursor)
        return answer(listing([file_json(record) for record in found.items], cursor))

    async def download(self, call: Call) -> web.StreamResponse:
        """The bytes, as the checked type, as an attachment under the cleaned name."""
        root = self._storage()
        file_id = path_id(call.request, "file")
        record, path = await files.open_file(
            call.db, call.tenant_id, call.caller.user, file_id, root=root
        )
        headers = {
            **DOWNLOAD_HEADERS,
            hdrs.CONTENT_TYPE: record.content_type,
            hdrs.CONTENT_DISPOSITION: files.content_disposition(record.original_name),
        }
        if call.request.method == "GET":
            user = call.caller.user
            await audit.record(
                call.db, call.tenant_id, "file_download", user_id=user.id, actor=user.email,
                target=f"file {record.id}", ip=client_ip(call.request),
                detail={"file_id": str(record.id), "name": record.original_name},
                clock=self._clock,
            )  # fmt: skip
        return web.FileResponse(path, chunk_size=READ_BYTES, headers=headers)

    async def delete(self, call: Call) -> web.StreamResponse:
        """The uploader or a workspace admin: 204."""
        root = self._storage()
        file_id = path_id(call.request, "file")
        await files.delete_file(call.db, call.tenant_id, call.caller.user, file_id, root=root)
        return empty()


async def _multipart(request: web.Request) -> MultipartReader:
    try:
        return await request.multipart()
    except (ValueError, AssertionError):
        raise ApiError(400, "the multipart body is malformed") from None


async def _next_part(reader: MultipartReader) -> BodyPartReader | None:
    """The next part, or None at the end; nested multiparts and encoded parts are refused."""
    try:
        part = await reader.next()
    except (ValueError, AssertionError):
        raise ApiError(400, "the multipart body is malformed") from None
    if part is None:
        return None
    if not isinstance(part, BodyPartReader):
        raise ApiError(400, "nested multipart bodies are not accepted")
    encoding = part.headers.get(hdrs.CONTENT_TRANSFER_ENCODING, "").strip().lower()
    if encoding not in _IDENTITY_ENCODINGS or hdrs.CONTENT_ENCODING in part.headers:
        raise ApiError(400, "send each part's bytes as they are, without an encoding")
    return part


async def _small_field(part: BodyPartReader, name: str) -> str:
    data = b""
    while chunk := await _read(part, MAX_FIELD_BYTES + 1 - len(data)):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError(400, f"{name} is too long")
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ApiError(400, f"{name} must be an id") from None


async def _read(part: BodyPartReader, size: int) -> bytes:
    try:
        return await part.read_chunk(size)
    except (ValueError, AssertionError):
        raise ApiError(400, "the multipart body is malformed") from None


async def _part_bytes(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await _read(part, READ_BYTES):
        yield chunk
