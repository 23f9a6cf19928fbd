"""API tokens of a tenant's users: named, scoped, optionally expiring, revocable by their
user or a manager. Tokens are stored only as hashes (``app.tokens``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app import tokens
from app.clock import Clock
from app.db import Database
from app.ids import new_id
from app.people import (
    LAST_SEEN_STEP_MS,
    NotFound,
    PolicyViolation,
    User,
    duration_ms,
    find_user,
    now_ms,
    require_manager,
    user_columns,
    user_from_row,
)

MAX_TOKEN_NAME = 100
_SCOPE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")


@dataclass(frozen=True)
class ApiTokenInfo:
    """An API token as listed (never the token); ``expires_at`` None: until revoked."""

    id: int
    user_id: int
    name: str
    scopes: frozenset[str]
    created_at: int
    expires_at: int | None
    last_used_at: int | None


def _scopes(scopes: list[str] | tuple[str, ...] | frozenset[str]) -> str:
    for scope in scopes:
        if _SCOPE.match(scope) is None:
            raise PolicyViolation("a scope is a lower-case word like 'read' or 'spaces:write'")
    return " ".join(sorted(set(scopes)))


async def create_api_token(
    db: Database,
    tenant_id: int,
    user_id: int,
    name: str,
    scopes: list[str] | tuple[str, ...] | frozenset[str],
    ttl_s: float | None,
    *,
    clock: Clock | None = None,
) -> str:
    """Make an API token for an active user; return the plain token (shown once). ``ttl_s``
    None: valid until revoked."""
    label = name.strip()
    if not 0 < len(label) <= MAX_TOKEN_NAME or not label.isprintable():
        raise PolicyViolation(f"a token name has 1 to {MAX_TOKEN_NAME} printable characters")
    scope_text = _scopes(scopes)
    user = await find_user(db, tenant_id, user_id)
    if user is None or not user.active:
        raise NotFound("no such user")
    now = now_ms(clock)
    expires_at = None if ttl_s is None else now + duration_ms(ttl_s, "ttl_s")
    plain, digest = tokens.new_token()
    await db.execute(
        "INSERT INTO api_tokens (id, tenant_id, user_id, name, token_hash, scopes, created_at,"
        " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, user_id, label, digest, scope_text, now, expires_at),
    )
    return plain


async def token_user(
    db: Database, tenant_id: int, token: str, clock: Clock
) -> tuple[User, frozenset[str]] | None:
    """The user and scopes of an API token, or None when it is unknown here, expired, revoked
    or its user is inactive. Moves last_used_at (at most once a minute)."""
    if not tokens.plausible_token(token):
        return None
    row = await db.fetchrow(
        f"SELECT {user_columns('u')}, t.id AS token_id, t.scopes AS scopes,"
        " t.expires_at AS expires_at, t.revoked_at AS revoked_at, t.last_used_at AS last_used_at"
        " FROM api_tokens t JOIN users u ON u.tenant_id = t.tenant_id AND u.id = t.user_id"
        " WHERE t.tenant_id = ? AND t.token_hash = ?",
        tenant_id,
        tokens.token_hash(token),
    )
    now = now_ms(clock)
    if row is None or row["revoked_at"] is not None or not row["active"]:
        return None
    if row["expires_at"] is not None and int(row["expires_at"]) <= now:
        return None
    if row["last_used_at"] is None or now - int(row["last_used_at"]) >= LAST_SEEN_STEP_MS:
        await db.execute(
            "UPDATE api_tokens SET last_used_at = ? WHERE tenant_id = ? AND id = ?",
            *(now, tenant_id, row["token_id"]),
        )
    return user_from_row(row), frozenset(str(row["scopes"]).split())


async def revoke_api_token(
    db: Database, tenant_id: int, token_id: int, by: int, *, clock: Clock | None = None
) -> bool:
    """Revoke an API token: its own user, or an owner or admin, may. False when it was
    revoked already; NotFound when this tenant has no such token."""
    holder = await db.fetchval(
        "SELECT user_id FROM api_tokens WHERE tenant_id = ? AND id = ?", tenant_id, token_id
    )
    if holder is None:
        raise NotFound("no such API token")
    if int(holder) != by:
        await require_manager(db, tenant_id, by)
    changed = await db.execute(
        "UPDATE api_tokens SET revoked_at = ?"
        " WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
        *(now_ms(clock), tenant_id, token_id),
    )
    return changed == 1


async def list_api_tokens(db: Database, tenant_id: int, user_id: int) -> list[ApiTokenInfo]:
    """A user's unrevoked API tokens (expired ones too, with their expires_at), newest first."""
    rows = await db.fetch(
        "SELECT id, user_id, name, scopes, created_at, expires_at, last_used_at FROM api_tokens"
        " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL ORDER BY id DESC",
        tenant_id,
        user_id,
    )
    return [
        ApiTokenInfo(**{**row, "scopes": frozenset(str(row["scopes"]).split())}) for row in rows
    ]
