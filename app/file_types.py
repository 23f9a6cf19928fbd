"""What an uploaded file may be: the allowed kinds proved by the first bytes, and clean names."""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from app.accounts import PolicyViolation

MAX_NAME = 255
SNIFF_BYTES = 4096
FALLBACK_NAME = "file"


class UnsupportedType(PolicyViolation):
    """The content is not an allowed type, or not the type its name or header says."""


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
