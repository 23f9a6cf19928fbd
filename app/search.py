"""Full-text search over a tenant's messages, one query per dialect (FTS5 or tsvector)."""

from __future__ import annotations

from typing import Any

from app.db_protocol import Database, Dialect
from app.ids import MAX_ID

_SEARCH_COLUMNS = (
    "SELECT m.id, m.space_id, m.thread_id, m.author_id, m.body, m.created_at, m.edited_at"
)
# Parameters, in order: match, tenant_id, before_id, public_spaces (1 or 0), user_id, limit.
_SEARCH_VISIBLE = """
  AND ((s.private = 0 AND ? = 1)
       OR EXISTS (SELECT 1 FROM space_members sm
                  WHERE sm.tenant_id = m.tenant_id AND sm.space_id = m.space_id
                    AND sm.user_id = ?))"""
SEARCH_SQL: dict[Dialect, str] = {
    # CROSS JOIN makes SQLite walk the full-text matches first, newest first, and stop at
    # LIMIT, instead of probing the index once for every message of the tenant.
    "sqlite": _SEARCH_COLUMNS
    + """
FROM messages_fts
CROSS JOIN messages m ON m.id = messages_fts.rowid
CROSS JOIN spaces s ON s.tenant_id = m.tenant_id AND s.id = m.space_id
WHERE messages_fts MATCH ? AND m.tenant_id = ? AND m.deleted_at IS NULL
  AND messages_fts.rowid < ?"""
    + _SEARCH_VISIBLE
    + """
ORDER BY messages_fts.rowid DESC
LIMIT ?""",
    "postgres": _SEARCH_COLUMNS
    + """
FROM messages m
JOIN spaces s ON s.tenant_id = m.tenant_id AND s.id = m.space_id
WHERE to_tsvector('simple', m.body) @@ plainto_tsquery('simple', ?)
  AND m.tenant_id = ? AND m.deleted_at IS NULL AND m.id < ?"""
    + _SEARCH_VISIBLE
    + """
ORDER BY m.id DESC
LIMIT ?""",
}


def search_sql(dialect: Dialect) -> str:
    """The message search query of a dialect; see ``search_messages`` for its parameters."""
    return SEARCH_SQL[dialect]


def search_match(dialect: Dialect, text: str) -> str | None:
    """User text to the match parameter: every word must occur (no operators, so no syntax
    errors); None when the text has no word. Both sides fold case and keep diacritics."""
    words = [word for word in text.split() if any(char.isalnum() for char in word)]
    if not words:
        return None
    if dialect == "postgres":
        return " ".join(words)  # plainto_tsquery ANDs the words
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


async def search_messages(
    db: Database,
    tenant_id: int,
    user_id: int,
    text: str,
    *,
    public_spaces: bool = True,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Live messages of one tenant matching every word of ``text``, newest first, from the
    spaces ``user_id`` is a member of and, with ``public_spaces`` (False for guests), every
    non-private space. Pass the last id of a page as ``before_id`` for the next page."""
    match = search_match(db.dialect, text)
    if match is None:
        return []
    cursor = MAX_ID if before_id is None else before_id
    public = 1 if public_spaces else 0
    return await db.fetch(search_sql(db.dialect), match, tenant_id, cursor, public, user_id, limit)
