"""One-time password-reset links: an administrator makes one for a user (valid 24 h, shown
once); through it the user sets a new password under the policy, which signs out their sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher

from app import tokens
from app.clock import Clock
from app.db import Database
from app.ids import new_id
from app.password_policy import check_new_password, set_password_hash
from app.passwords import PASSWORD_HASHER, hash_password
from app.people import (
    Forbidden,
    InvitationExpired,
    InvitationUsed,
    NotFound,
    User,
    get_user,
    now_ms,
    require_manager,
)
from app.tenant_settings import load_settings

RESET_TTL_S = 24 * 3600


@dataclass(frozen=True)
class ResetInfo:
    """An open reset link as its user sees it (never the token)."""

    user_id: int
    email: str
    expires_at: int


async def create_reset(
    db: Database, tenant_id: int, user_id: int, by: int, *, clock: Clock | None = None
) -> str:
    """A new reset link's plain token for an active user (their older open links stop
    working). Owners and admins may; only an owner may reset an owner's password."""
    actor = await require_manager(db, tenant_id, by)
    target = await get_user(db, tenant_id, user_id)
    if target.role == "owner" and actor.role != "owner":
        raise Forbidden("only an owner may reset an owner's password")
    if not target.active:
        raise Forbidden("reactivate the user before resetting their password")
    plain, digest = tokens.new_token()
    now = now_ms(clock)
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE password_resets SET used_at = ?"
            " WHERE tenant_id = ? AND user_id = ? AND used_at IS NULL",
            *(now, tenant_id, user_id),
        )
        await tx.execute(
            "INSERT INTO password_resets (id, tenant_id, user_id, token_hash, created_by,"
            " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            *(new_id(), tenant_id, user_id, digest, actor.id, now, now + RESET_TTL_S * 1000),
        )
    return plain


async def _open(db: Database, tenant_id: int, token: str, now: int) -> dict[str, Any]:
    row: dict[str, Any] | None = None
    if tokens.plausible_token(token):
        row = await db.fetchrow(
            "SELECT r.id, r.user_id, r.expires_at, r.used_at, u.email, u.active"
            " FROM password_resets r JOIN users u ON u.tenant_id = r.tenant_id AND u.id = r.user_id"
            " WHERE r.tenant_id = ? AND r.token_hash = ?",
            tenant_id,
            tokens.token_hash(token),
        )
    if row is None or not row["active"]:
        raise NotFound("this password-reset link is not valid")
    if row["used_at"] is not None:
        raise InvitationUsed("this password-reset link has been used already")
    if int(row["expires_at"]) <= now:
        raise InvitationExpired("this password-reset link has expired: ask for a new one")
    return row


async def open_reset(
    db: Database, tenant_id: int, token: str, *, clock: Clock | None = None
) -> ResetInfo:
    """The reset a token opens, if it may still be used: NotFound (unknown token or inactive
    user), InvitationUsed or InvitationExpired otherwise. Changes nothing."""
    row = await _open(db, tenant_id, token, now_ms(clock))
    return ResetInfo(int(row["user_id"]), str(row["email"]), int(row["expires_at"]))


async def complete_reset(
    db: Database,
    tenant_id: int,
    token: str,
    password: str,
    *,
    clock: Clock | None = None,
    hasher: PasswordHasher = PASSWORD_HASHER,
) -> User:
    """Set the user's password through a reset link (PolicyViolation when it breaks the
    policy or is a recent one) and sign out all their sessions; the link then stops working."""
    row = await _open(db, tenant_id, token, now_ms(clock))
    user_id = int(row["user_id"])
    settings = await load_settings(db, tenant_id)
    await check_new_password(db, tenant_id, user_id, password, settings, hasher=hasher)
    digest = await hash_password(password, hasher=hasher)
    now = now_ms(clock)
    async with db.transaction() as tx:
        claimed = await tx.execute(
            "UPDATE password_resets SET used_at = ?"
            " WHERE tenant_id = ? AND id = ? AND used_at IS NULL AND expires_at > ?",
            *(now, tenant_id, row["id"], now),
        )
        if claimed != 1:
            raise InvitationUsed("this password-reset link has been used already")
        await set_password_hash(tx, tenant_id, user_id, digest, settings.password_history, now)
        await tx.execute(
            "UPDATE sessions SET revoked_at = ?"
            " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL",
            *(now, tenant_id, user_id),
        )
    return await get_user(db, tenant_id, user_id)
