"""Safe formatting of message bodies: escaping, links, mentions, and properties over any input."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.markup import LINK_REL, mention_handles, render

REL = f'rel="{LINK_REL}"'
# The only tags render may emit.
_OWN_TAG = re.compile(
    r'<a href="https?://[^"<>]*" rel="nofollow noopener noreferrer">|</a>'
    r'|<span class="mention">|</span>',
    re.IGNORECASE,
)
_HREF = re.compile(r'href="([^"]*)"')


@pytest.mark.parametrize(
    ("body", "html"),
    [
        ("plain", "plain"),
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("a & b \"c\" 'd'", "a &amp; b &quot;c&quot; &#x27;d&#x27;"),
        (
            "see https://example.com/a?b=1&c=2.",
            f'see <a href="https://example.com/a?b=1&amp;c=2" {REL}>'
            "https://example.com/a?b=1&amp;c=2</a>.",
        ),
        ("(http://x.org/y)", f'(<a href="http://x.org/y" {REL}>http://x.org/y</a>)'),
        (
            "http://en.wikipedia.org/wiki/A_(b)",
            f'<a href="http://en.wikipedia.org/wiki/A_(b)" {REL}>'
            "http://en.wikipedia.org/wiki/A_(b)</a>",
        ),
        ("javascript:alert(1)", "javascript:alert(1)"),
        (
            'https://x.org/"onmouseover="alert(1)',
            f'<a href="https://x.org/" {REL}>https://x.org/</a>&quot;onmouseover=&quot;alert(1)',
        ),
        ("https://", "https://"),
        ("ftp://x.org data:text/html,x", "ftp://x.org data:text/html,x"),
        ("hi @bob.", 'hi <span class="mention">@bob</span>.'),
        ("hi @Bob and @nobody", 'hi <span class="mention">@Bob</span> and @nobody'),
        ("mail bob@example.com", "mail bob@example.com"),
        ("https://x.org/@bob", f'<a href="https://x.org/@bob" {REL}>https://x.org/@bob</a>'),
        ("@<b>bob</b>", "@&lt;b&gt;bob&lt;/b&gt;"),
    ],
)
def test_render(body: str, html: str) -> None:
    assert render(body, {"bob"}) == html


def test_mention_handles_fold_case_skip_emails_and_links() -> None:
    body = "@Alice, @jean-luc. @The_Boss x@y.org https://h.org/@carol @@dave @ "
    assert mention_handles(body) == {"alice", "jean-luc", "the_boss"}


def test_mention_handles_are_bounded() -> None:
    assert len(mention_handles(" ".join(f"@u{i}" for i in range(500)))) == 50


_hostile = st.text(
    alphabet=st.sampled_from(list("<>&\"'`=/:;() @.javascriptJSHTPhtps\n\t\x00x")), max_size=200
) | st.text(max_size=200)
_with_url = st.builds(lambda a, b: f"{a}https://{b}", _hostile, _hostile)


@given(st.one_of(_hostile, _with_url), st.sets(st.text(min_size=1, max_size=5)))
def test_render_emits_no_markup_of_its_input(body: str, handles: set[str]) -> None:
    out = render(body, {h.casefold() for h in handles})
    assert "<script" not in out.lower()
    assert "<" not in _OWN_TAG.sub("", out), out
    assert ">" not in _OWN_TAG.sub("", out), out
    for href in _HREF.findall(out):
        assert href.lower().startswith(("http://", "https://")), href
        assert not re.search(r"[\s<>\"'`]", href), href


@given(st.text(max_size=200))
def test_render_keeps_the_text(body: str) -> None:

    without_tags = re.sub(r"<[^>]*>", "", render(body, {"bob"}))
    assert html.unescape(without_tags) == body
