"""Sign-ins that passed the password and wait for a second factor: short-lived, single-use."""

from __future__ import annotations

from dataclasses import dataclass

from app import tokens
from app.clock import Clock
from app.db import Database
from app.ids import new_id
from app.people import now_ms

PENDING_TTL_S = 300
MAX_TRIES = 5


@dataclass(frozen=True)
class PendingSignIn:
    """A sign-in waiting for its code: whose it is and how many more codes it may try."""

    id: int
    user_id: int
    tries_left: int


async def start(db: Database, tenant_id: int, user_id: int, clock: Clock) -> str:
    """Remember that ``user_id`` gave the right password; return the plain token for the
    second step's form (only its hash is stored, with the user and the expiry)."""
    now = now_ms(clock)
    await db.execute(
        "DELETE FROM pending_sign_ins WHERE tenant_id = ? AND expires_at <= ?", tenant_id, now
    )
    plain, digest = tokens.new_token()
    await db.execute(
        "INSERT INTO pending_sign_ins (id, tenant_id, user_id, token_hash, created_at,"
        " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, user_id, digest, now, now + PENDING_TTL_S * 1000),
    )
    return plain


async def claim_try(db: Database, tenant_id: int, token: str, clock: Clock) -> PendingSignIn | None:
    """Count one code tried with ``token`` and return its sign-in; None when the token is
    unknown here, expired, used or out of tries (then the sign-in starts over)."""
    if not tokens.plausible_token(token):
        return None
    digest = tokens.token_hash(token)
    # Counted before the code is checked, in one statement: parallel tries cannot exceed it.
    changed = await db.execute(
        "UPDATE pending_sign_ins SET tries = tries + 1"
        " WHERE tenant_id = ? AND token_hash = ? AND used_at IS NULL AND expires_at > ?"
        " AND tries < ?",
        *(tenant_id, digest, now_ms(clock), MAX_TRIES),
    )
    if changed != 1:
        return None
    row = await db.fetchrow(
        "SELECT id, user_id, tries FROM pending_sign_ins WHERE tenant_id = ? AND token_hash = ?",
        tenant_id,
        digest,
    )
    if row is None:
        return None
    return PendingSignIn(int(row["id"]), int(row["user_id"]), MAX_TRIES - int(row["tries"]))


async def finish(db: Database, tenant_id: int, pending_id: int, clock: Clock) -> bool:
    """Use the pending sign-in up; False when another request finished it first."""
    changed = await db.execute(
        "UPDATE pending_sign_ins SET used_at = ?"
        " WHERE tenant_id = ? AND id = ? AND used_at IS NULL",
        *(now_ms(clock), tenant_id, pending_id),
    )
    return changed == 1
