"""Safe message formatting: escaped text, http(s) links and @mentions, and nothing else.

``render`` escapes every character of the input that HTML could interpret; the only markup it
emits is its own ``<a href="http(s)://..." rel=...>`` and ``<span class="mention">`` tags.
``mention_handles`` finds the ``@handle`` words of a body (the same words ``render`` marks).
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection

LINK_REL = "nofollow noopener noreferrer"
MAX_MENTIONS = 50
# A link is http:// or https:// and runs to the next space, quote, angle bracket or control
# character; the scheme is matched case-insensitively but only these two are links.
_LINK = re.compile(r"https?://[^\s<>\"'`\x00-\x1f\x7f]+", re.IGNORECASE)
# "@" not preceded by a word character, "@" or "." (so e-mail addresses are not mentions).
_MENTION = re.compile(r"(?<![\w@.])@(\w[\w.+-]*)")
_LINK_TRAILER = ".,;:!?"
_HANDLE_TRAILER = ".-+"


def _trim_link(url: str) -> str:
    """Drop sentence punctuation after a link, and a ``)`` that closes text around it."""
    while url and (
        url[-1] in _LINK_TRAILER or (url[-1] == ")" and url.count(")") > url.count("("))
    ):
        url = url[:-1]
    return url


def _handle(word: str) -> str:
    return word.rstrip(_HANDLE_TRAILER).casefold()


def mention_handles(body: str) -> set[str]:
    """The case-folded handles written as ``@handle`` in ``body`` (outside links), at most
    MAX_MENTIONS of them."""
    handles: set[str] = set()
    for text, is_link in _pieces(body):
        if is_link:
            continue
        for match in _MENTION.finditer(text):
            handle = _handle(match.group(1))
            if handle:
                handles.add(handle)
            if len(handles) >= MAX_MENTIONS:
                return handles
    return handles


def _pieces(body: str) -> list[tuple[str, bool]]:
    """Split ``body`` into (text, is_link) pieces, in order."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in _LINK.finditer(body):
        url = _trim_link(match.group(0))
        if url.lower() in ("http://", "https://"):
            continue
        pieces.append((body[position : match.start()], False))
        pieces.append((url, True))
        position = match.start() + len(url)
    pieces.append((body[position:], False))
    return [piece for piece in pieces if piece[0]]


def _render_link(url: str) -> str:
    escaped = html.escape(url, quote=True)
    return f'<a href="{escaped}" rel="{LINK_REL}">{escaped}</a>'


def _render_text(text: str, handles: Collection[str]) -> str:
    out: list[str] = []
    position = 0
    for match in _MENTION.finditer(text):
        word = match.group(1).rstrip(_HANDLE_TRAILER)
        if not word or word.casefold() not in handles:
            continue
        end = match.start() + 1 + len(word)
        out.append(html.escape(text[position : match.start()], quote=True))
        out.append(f'<span class="mention">@{html.escape(word, quote=True)}</span>')
        position = end
    out.append(html.escape(text[position:], quote=True))
    return "".join(out)


def render(body: str, handles: Collection[str] = frozenset()) -> str:
    """``body`` as HTML: all text escaped, http(s) URLs as nofollow links, and ``@handle`` for
    each case-folded handle in ``handles`` (the tenant's users) in a mention span."""
    return "".join(
        _render_link(text) if is_link else _render_text(text, handles)
        for text, is_link in _pieces(body)
    )
