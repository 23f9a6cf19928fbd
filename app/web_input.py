"""What the JSON API reads from a request: bounded JSON bodies, text fields, ids, limits and
cursors; every bad input is an ApiError (4xx) naming what was wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from app import work
from app.db import Database
from app.ids import MAX_ID
from app.web_auth import ApiError, Caller

MAX_BODY_BYTES = 64 * 1024
LIMIT_MAX = work.LIMIT_MAX
MAX_CURSOR = 64
_ID_DIGITS = len(str(MAX_ID))


@dataclass(frozen=True)
class Call:
    """One authenticated API request: the database, the caller and the request."""

    db: Database
    caller: Caller
    request: web.Request

    @property
    def tenant_id(self) -> int:
        return self.caller.tenant_id


def text_value(value: object, name: str) -> str:
    """A JSON string that the databases can store: UTF-8 encodable and without NUL."""
    if not isinstance(value, str) or "\x00" in value:
        raise ApiError(400, f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{name} must be valid Unicode text") from None
    return value


def parse_id(text: object, what: str, status: int = 404, *, lowest: int = 1) -> int:
    """An id written as decimal digits (or a JSON integer) that can exist; else ``status``."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if isinstance(text, str) and text.isascii() and text.isdecimal() and len(text) <= _ID_DIGITS:
        value = int(text)
        if lowest <= value <= MAX_ID:
            return value
    raise ApiError(status, f"no such {what}" if status == 404 else f"{what} must be an id")


def path_id(request: web.Request, what: str) -> int:
    """The ``{id}`` of the route; a 404 naming ``what`` when it cannot be an id."""
    return parse_id(request.match_info["id"], what)


def page_limit(request: web.Request) -> int:
    """The ``limit`` query parameter: 1 to LIMIT_MAX, LIMIT_DEFAULT when absent."""
    text = request.query.get("limit")
    if text is None:
        return work.LIMIT_DEFAULT
    if text.isascii() and text.isdecimal() and 0 < len(text) <= 3 and 1 <= int(text) <= LIMIT_MAX:
        return int(text)
    raise ApiError(400, f"limit must be a whole number from 1 to {LIMIT_MAX}")


def page_cursor(request: web.Request) -> str | None:
    """The ``cursor`` query parameter as given (opaque), of a sane length."""
    text = request.query.get("cursor")
    if text is not None and not 0 < len(text) <= MAX_CURSOR:
        raise ApiError(400, "cursor must be the next cursor of a previous page")
    return text


def id_cursor(request: web.Request) -> int | None:
    """A ``cursor`` that is an id (the last one of the previous page)."""
    text = page_cursor(request)
    return None if text is None else parse_id(text, "cursor", 400)


def messages_window(request: web.Request) -> tuple[int | None, int | None]:
    """(after_id, before_id) of a message list: ``cursor`` ("a<id>" forwards, "b<id>"
    backwards), else ``after`` (a message id, 0: from the first), else the newest."""
    text = page_cursor(request)
    if text is None:
        after = request.query.get("after")
        return (None if after is None else parse_id(after, "after", 400, lowest=0)), None
    direction, position = text[:1], parse_id(text[1:], "cursor", 400)
    if direction == "a":
        return position, None
    if direction == "b":
        return None, position
    raise ApiError(400, "cursor must be the next cursor of a previous page")


async def read_body(request: web.Request) -> bytes:
    """The whole request body, at most MAX_BODY_BYTES (413 as soon as it is more)."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY_BYTES + 1 - size):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (``{}`` for an empty body when ``optional``)."""
    data = await read_body(request)
    if optional and not data.strip():
        return {}
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return value


def field(body: dict[str, Any], name: str, default: str | None = None) -> str:
    """A required text field of a JSON body (or ``default`` when given and absent)."""
    value = body.get(name, default)
    if value is None:
        raise ApiError(400, f"{name} is required")
    return text_value(value, name)


def flag(body: dict[str, Any], name: str) -> bool:
    """A boolean field of a JSON body, false when absent."""
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false")
    return value
