"""Invitations of a tenant: invite by e-mail with a role, list and withdraw open ones, and
accept one (an expiring, single-use random link) to become a user with a password."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher

from app import tokens
from app.clock import Clock
from app.db import Conflict, Database
from app.ids import new_id
from app.password_policy import policy_problem, set_password_hash
from app.passwords import PASSWORD_HASHER, hash_password
from app.people import (
    LIST_LIMIT_MAX,
    AlreadyExists,
    Forbidden,
    InvitationExpired,
    InvitationUsed,
    NotFound,
    PolicyViolation,
    Role,
    User,
    checked_role,
    clean_display_name,
    duration_ms,
    get_user,
    normalize_email,
    now_ms,
    require_manager,
)
from app.tenant_settings import load_settings


@dataclass(frozen=True)
class InvitationInfo:
    """An invitation as a manager or its invitee sees it (never the token)."""

    id: int
    email: str
    role: Role
    expires_at: int


async def _email_taken(db: Database, tenant_id: int, email: str) -> bool:
    found = await db.fetchval(
        "SELECT 1 FROM users WHERE tenant_id = ? AND lower(email) = ?", tenant_id, email
    )
    return found is not None


async def insert_invitation(
    db: Database, tenant_id: int, email: str, role: Role, by: int | None, now: int, ttl_ms: int
) -> str:
    """Store a new invitation; return its plain token (only its hash is kept)."""
    plain, digest = tokens.new_token()
    await db.execute(
        "INSERT INTO invitations (id, tenant_id, token_hash, email, role, created_by,"
        " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, digest, email, role, by, now, now + ttl_ms),
    )
    return plain


async def invite(
    db: Database,
    tenant_id: int,
    email: str,
    role: str,
    by_user: int,
    ttl_s: float,
    *,
    clock: Clock | None = None,
) -> str:
    """Invite ``email`` as ``role``; return the plain token (single-use, expires after
    ``ttl_s``). Owners and admins may invite; only an owner may invite an owner."""
    address, wanted = normalize_email(email), checked_role(role)
    ttl_ms = duration_ms(ttl_s, "ttl_s")
    actor = await require_manager(db, tenant_id, by_user)
    if wanted == "owner" and actor.role != "owner":
        raise Forbidden("only an owner may invite an owner")
    if await _email_taken(db, tenant_id, address):
        raise AlreadyExists("someone in this workspace has that e-mail address already")
    return await insert_invitation(db, tenant_id, address, wanted, actor.id, now_ms(clock), ttl_ms)


async def _open_invitation(db: Database, tenant_id: int, token: str, now: int) -> dict[str, Any]:
    row: dict[str, Any] | None = None
    if tokens.plausible_token(token):
        row = await db.fetchrow(
            "SELECT id, email, role, expires_at, used_at FROM invitations"
            " WHERE tenant_id = ? AND token_hash = ?",
            tenant_id,
            tokens.token_hash(token),
        )
    if row is None:
        raise NotFound("this invitation link is not valid")
    if row["used_at"] is not None:
        raise InvitationUsed("this invitation has been used already")
    if int(row["expires_at"]) <= now:
        raise InvitationExpired("this invitation has expired: ask for a new one")
    return row


async def open_invitation(
    db: Database, tenant_id: int, token: str, *, clock: Clock | None = None
) -> InvitationInfo:
    """The invitation a token opens, if it may still be accepted: NotFound (unknown token),
    InvitationUsed or InvitationExpired otherwise. Changes nothing."""
    row = await _open_invitation(db, tenant_id, token, now_ms(clock))
    return InvitationInfo(
        int(row["id"]), str(row["email"]), checked_role(str(row["role"])), int(row["expires_at"])
    )


async def list_invitations(
    db: Database, tenant_id: int, by: int, *, clock: Clock | None = None
) -> list[InvitationInfo]:
    """The tenant's pending invitations (neither used nor expired), newest first, at most
    LIST_LIMIT_MAX of them: for owners and admins (Forbidden otherwise)."""
    await require_manager(db, tenant_id, by)
    rows = await db.fetch(
        "SELECT id, email, role, expires_at FROM invitations"
        " WHERE tenant_id = ? AND used_at IS NULL AND expires_at > ? ORDER BY id DESC LIMIT ?",
        *(tenant_id, now_ms(clock), LIST_LIMIT_MAX),
    )
    return [
        InvitationInfo(
            int(r["id"]), str(r["email"]), checked_role(str(r["role"])), int(r["expires_at"])
        )
        for r in rows
    ]


async def withdraw_invitation(db: Database, tenant_id: int, invitation_id: int, by: int) -> None:
    """Withdraw an unused invitation: its link stops working (as an unknown one). Owners and
    admins may; only an owner may withdraw an owner's invitation. NotFound when this tenant
    has no unused invitation of that id."""
    actor = await require_manager(db, tenant_id, by)
    role = await db.fetchval(
        "SELECT role FROM invitations WHERE tenant_id = ? AND id = ? AND used_at IS NULL",
        tenant_id,
        invitation_id,
    )
    if role is None:
        raise NotFound("no such invitation")
    if role == "owner" and actor.role != "owner":
        raise Forbidden("only an owner may withdraw an owner's invitation")
    await db.execute(
        "DELETE FROM invitations WHERE tenant_id = ? AND id = ? AND used_at IS NULL",
        tenant_id,
        invitation_id,
    )


async def _claim_invitation(tx: Database, tenant_id: int, invitation_id: int, now: int) -> None:
    claimed = await tx.execute(
        "UPDATE invitations SET used_at = ?"
        " WHERE tenant_id = ? AND id = ? AND used_at IS NULL AND expires_at > ?",
        *(now, tenant_id, invitation_id, now),
    )
    if claimed != 1:  # accepted by a concurrent request since we looked
        raise InvitationUsed("this invitation has been used already")


async def _join(
    tx: Database, tenant_id: int, invitation: dict[str, Any], name: str, digest: str, now: int
) -> int:
    """Give the invited address an account: complete a passwordless one (the owner's setup),
    or create it. Returns the user id."""
    email = str(invitation["email"])
    row = await tx.fetchrow(
        "SELECT id, active, password_hash FROM users WHERE tenant_id = ? AND lower(email) = ?",
        tenant_id,
        email,
    )
    if row is None:
        user_id = new_id()
        await tx.execute(
            "INSERT INTO users (id, tenant_id, email, display_name, role, password_hash,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            *(user_id, tenant_id, email, name, invitation["role"], digest, now),
        )
        return user_id
    if row["password_hash"] is not None or not row["active"]:
        raise AlreadyExists("this workspace has an account with that e-mail address already")
    await tx.execute(
        "UPDATE users SET display_name = ?, password_hash = ? WHERE tenant_id = ? AND id = ?",
        *(name, digest, tenant_id, row["id"]),
    )
    return int(row["id"])


async def accept_invitation(
    db: Database,
    tenant_id: int,
    token: str,
    display_name: str,
    password: str,
    *,
    clock: Clock | None = None,
    hasher: PasswordHasher = PASSWORD_HASHER,
) -> User:
    """Accept an invitation: the user gets ``display_name`` and ``password`` and is returned.

    Raises NotFound (unknown token), InvitationUsed, InvitationExpired, PolicyViolation or
    AlreadyExists, each without changing anything; an invitation is accepted at most once.
    """
    name = clean_display_name(display_name)
    settings = await load_settings(db, tenant_id)
    problem = policy_problem(password, settings)
    if problem is not None:
        raise PolicyViolation(problem)
    invitation = await _open_invitation(db, tenant_id, token, now_ms(clock))
    digest = await hash_password(password, hasher=hasher)  # slow: outside the transaction
    now = now_ms(clock)
    async with db.transaction() as tx:
        await _claim_invitation(tx, tenant_id, int(invitation["id"]), now)
        try:
            user_id = await _join(tx, tenant_id, invitation, name, digest, now)
            keep = settings.password_history
            await set_password_hash(tx, tenant_id, user_id, digest, keep, now)
        except Conflict:  # the address joined through another invitation meanwhile
            raise AlreadyExists("this workspace has an account with that e-mail already") from None
    return await get_user(db, tenant_id, user_id)
