"""What the HTML pages read from a request: bounded form fields, CSRF tokens, ids, cursors and
safe redirect targets; bad input is a PolicyViolation (a 400 page) or NotFound (a 404 page)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import BodyPartReader, MultipartReader, web
from multidict import MultiDict, MultiDictProxy

from app import tokens
from app.accounts import NotFound, PolicyViolation
from app.ids import MAX_ID
from app.web_auth import forwarded_https

CSRF_FIELD = "csrf"
# The double-submit cookie of the forms shown before there is a session (sign-in, join).
CSRF_COOKIE = "mw_csrf"
_CSRF_LABEL = b"moonwatch html form v1"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
READ_BYTES = 64 * 1024
DEFAULT_NEXT = "/spaces"
# Fields never sent back into a re-rendered form.
_SECRET_FIELDS = frozenset({CSRF_FIELD, "password", "current_password", "new_password", "confirm"})
_ID_DIGITS = len(str(MAX_ID))
_MALFORMED = "the form data is malformed: send it again from the page"


# ---------------------------------------------------------------- CSRF


def session_csrf(session_token: str) -> str:
    """The CSRF token of a session's forms: HMAC-SHA256 keyed by the session token, hex."""
    return hmac.new(session_token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def tokens_match(expected: str, given: str) -> bool:
    """Whether a form's CSRF field ``given`` is ``expected`` (constant time; never empty)."""
    return bool(expected) and hmac.compare_digest(expected.encode(), given.encode())


def cookie_csrf(request: web.Request) -> str:
    """The double-submit token of a signed-out form: the request's cookie, or a fresh one."""
    value = request.cookies.get(CSRF_COOKIE, "")
    return value if tokens.plausible_token(value) else tokens.new_token()[0]


def set_csrf_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    """Host-only, HttpOnly, SameSite=Strict; Secure when the client came over HTTPS."""
    response.set_cookie(
        CSRF_COOKIE, value, path="/", httponly=True, samesite="Strict",
        secure=forwarded_https(request),
    )  # fmt: skip


# ---------------------------------------------------------------- forms


@dataclass(frozen=True)
class Form:
    """A submitted form: its text fields, and the file part that ended a multipart one (read
    it with ``upload_chunks``; None when no file was chosen)."""

    fields: MultiDictProxy[str]
    upload: BodyPartReader | None = None

    def text(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    def all(self, name: str) -> list[str]:
        return self.fields.getall(name, [])

    def checked(self, name: str) -> bool:
        return name in self.fields

    def kept(self) -> dict[str, str]:
        """The fields to put back into the form when it is shown again (never secrets)."""
        return {key: value for key, value in self.fields.items() if key not in _SECRET_FIELDS}


def _clean(value: str) -> str:
    if "\x00" in value:
        raise PolicyViolation("text must not contain NUL characters")
    return value.replace("\r\n", "\n")


async def read_form(request: web.Request) -> Form:
    """The request's form, urlencoded or multipart (text fields first, a file part last)."""
    if request.content_type == "multipart/form-data":
        return await _read_multipart(request)
    if request.content_type not in ("", "application/x-www-form-urlencoded"):
        raise PolicyViolation("send the form from its page")
    posted = await request.post()  # bounded by the application's client_max_size
    fields: MultiDict[str] = MultiDict()
    for key, value in posted.items():
        if isinstance(value, str):
            fields.add(key, _clean(value))
    return Form(MultiDictProxy(fields))


async def _read_multipart(request: web.Request) -> Form:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError):
        raise PolicyViolation(_MALFORMED) from None
    fields: MultiDict[str] = MultiDict()
    while len(fields) < MAX_FIELDS:
        part = await _next_part(reader)
        if part is None:
            return Form(MultiDictProxy(fields))
        if part.filename is not None:
            return Form(MultiDictProxy(fields), part if part.filename else None)
        fields.add(part.name or "", _clean(await _small_text(part)))
    raise PolicyViolation("the form has too many fields")


async def _next_part(reader: MultipartReader) -> BodyPartReader | None:
    try:
        part = await reader.next()
    except (ValueError, AssertionError):
        raise PolicyViolation(_MALFORMED) from None
    if part is not None and not isinstance(part, BodyPartReader):
        raise PolicyViolation(_MALFORMED)
    return part


async def _read(part: BodyPartReader, size: int) -> bytes:
    try:
        return await part.read_chunk(size)
    except (ValueError, AssertionError):
        raise PolicyViolation(_MALFORMED) from None


async def _small_text(part: BodyPartReader) -> str:
    data = b""
    while chunk := await _read(part, MAX_FIELD_BYTES + 1 - len(data)):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise PolicyViolation(f"a form field has at most {MAX_FIELD_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyViolation("the form's text must be UTF-8") from None


async def upload_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    """The bytes of a file part, as they arrive."""
    while chunk := await _read(part, READ_BYTES):
        yield chunk


# ---------------------------------------------------------------- ids, cursors, redirects


def _id(text: str) -> int | None:
    if text.isascii() and text.isdecimal() and len(text) <= _ID_DIGITS and 0 < int(text) <= MAX_ID:
        return int(text)
    return None


def route_id(request: web.Request, what: str) -> int:
    """The ``{id}`` of the route; NotFound naming ``what`` when it cannot be an id."""
    found = _id(request.match_info["id"])
    if found is None:
        raise NotFound(f"no such {what}")
    return found


def query_id(request: web.Request, name: str) -> int | None:
    """An id in the query (a cursor of a "more" link), None when absent or empty."""
    text = request.query.get(name, "")
    if not text:
        return None
    found = _id(text)
    if found is None:
        raise PolicyViolation(f"{name} must come from a link of a previous page")
    return found


def query_text(request: web.Request, name: str, max_length: int = 500) -> str:
    """A text query parameter (empty when absent), without NUL, of a sane length."""
    text = request.query.get(name, "")
    if "\x00" in text or len(text) > max_length:
        raise PolicyViolation(f"{name} has at most {max_length} characters")
    return text


def form_id(form: Form, name: str) -> int:
    """An id given in a form field; NotFound when it cannot be one."""
    found = _id(form.text(name))
    if found is None:
        raise NotFound(f"no such {name}")
    return found


def safe_next(target: str | None) -> str:
    """Where to go after signing in: ``target`` when it is a path of this site (one leading
    "/", no scheme, host or backslash, nothing unprintable), else DEFAULT_NEXT."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return DEFAULT_NEXT
    if any(char.isspace() or not char.isprintable() for char in target):
        return DEFAULT_NEXT
    try:
        parts = urlsplit(target)
    except ValueError:
        return DEFAULT_NEXT
    return DEFAULT_NEXT if parts.scheme or parts.netloc else target
