"""Sign-in and sessions of a tenant's users: a session starts at sign-in, is found by its
cookie token and revoked one by one or all at once. Tokens are stored only as hashes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher

from app import tokens
from app.clock import Clock
from app.db import Database
from app.ids import new_id
from app.lockout import is_locked, note_failure, note_success
from app.password_policy import check_new_password, policy_problem, set_password_hash
from app.passwords import (
    PASSWORD_HASHER,
    PASSWORD_MAX_LENGTH,
    dummy_verify,
    hash_password,
    verify_password,
)
from app.people import (
    LAST_SEEN_STEP_MS,
    Forbidden,
    InvalidCredentials,
    NotFound,
    PolicyViolation,
    User,
    duration_ms,
    find_user,
    get_user,
    now_ms,
    require_manager,
    user_columns,
    user_from_row,
)
from app.tenant_settings import SecuritySettings, load_settings

MAX_USER_AGENT = 512
MAX_IP = 64
SIGN_IN_REFUSED = "wrong e-mail address or password"


@dataclass(frozen=True)
class SessionInfo:
    """A live session as its owner sees it in a list (never the token)."""

    id: int
    user_id: int
    created_at: int
    last_seen_at: int
    expires_at: int
    user_agent: str
    ip: str


# ---------------------------------------------------------------- sign-in


class SignInRefused(InvalidCredentials):
    """A refused sign-in: always the one message; ``reason`` (wrong_password, unknown_user,
    inactive, locked) and ``locked_now`` are for the audit log, never for the answer."""

    def __init__(self, reason: str, user_id: int | None = None, locked_now: bool = False):
        super().__init__(SIGN_IN_REFUSED)
        self.reason = reason
        self.user_id = user_id
        self.locked_now = locked_now


async def authenticate(
    db: Database,
    tenant_id: int,
    email: str,
    password: str,
    *,
    hasher: PasswordHasher = PASSWORD_HASHER,
    clock: Clock | None = None,
    settings: SecuritySettings | None = None,
) -> User:
    """The active, unlocked user with this e-mail (any case) and password, else SignInRefused.

    An unknown address, an inactive or locked user or one without a password costs one dummy
    verification, so neither the answer nor its time tells them apart from a wrong password.
    A wrong password counts towards the tenant's lockout (``settings``, else loaded); a right
    one resets the count. A hash made with older parameters is replaced on success.
    """
    if len(password) > PASSWORD_MAX_LENGTH:
        raise SignInRefused("wrong_password")  # never hashed: no account is looked at
    row = await db.fetchrow(
        f"SELECT {user_columns()}, password_hash, failed_sign_ins, locked_until, locked_by_admin"
        " FROM users WHERE tenant_id = ? AND lower(email) = ?",
        tenant_id,
        email.strip().lower(),
    )
    now = now_ms(clock)
    refusal = _refusal(row, now)
    if refusal is not None:
        await dummy_verify(password, hasher=hasher)
        raise refusal
    assert row is not None  # _refusal answers every other case
    user_id = int(row["id"])
    result = await verify_password(str(row["password_hash"]), password, hasher=hasher)
    if not result.ok:
        policy = settings or await load_settings(db, tenant_id)
        state = await note_failure(db, tenant_id, user_id, policy, now)
        raise SignInRefused("wrong_password", user_id, state.locked_now)
    await note_success(db, tenant_id, user_id)
    if result.new_hash is not None:
        await db.execute(
            "UPDATE users SET password_hash = ?"
            " WHERE tenant_id = ? AND id = ? AND password_hash = ?",
            *(result.new_hash, tenant_id, row["id"], row["password_hash"]),
        )
    return user_from_row(row)


def _refusal(row: dict[str, Any] | None, now: int) -> SignInRefused | None:
    """Why a user row may not sign in whatever the password, or None when it may try."""
    if row is None:
        return SignInRefused("unknown_user")
    if not row["active"] or row["password_hash"] is None:
        return SignInRefused("inactive", int(row["id"]))
    if is_locked(row, now):
        return SignInRefused("locked", int(row["id"]))
    return None


# ---------------------------------------------------------------- sessions


async def create_session(
    db: Database,
    tenant_id: int,
    user_id: int,
    user_agent: str,
    ip: str,
    lifetime_s: float,
    clock: Clock,
) -> str:
    """Start a session for an active user; return its plain token (for the cookie)."""
    lifetime_ms = duration_ms(lifetime_s, "lifetime_s")
    user = await find_user(db, tenant_id, user_id)
    if user is None or not user.active:
        raise NotFound("no such user")
    plain, digest = tokens.new_token()
    now = now_ms(clock)
    await db.execute(
        "INSERT INTO sessions (id, tenant_id, user_id, token_hash, created_at, last_seen_at,"
        " expires_at, user_agent, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, user_id, digest, now, now, now + lifetime_ms),
        *(user_agent[:MAX_USER_AGENT], ip[:MAX_IP]),
    )
    return plain


async def session_user(
    db: Database,
    tenant_id: int,
    token: str,
    idle_timeout_s: float,
    clock: Clock,
    *,
    lifetime_s: float | None = None,
) -> User | None:
    """The user a session token signs in, or None when the session is unknown here, expired,
    older than ``lifetime_s`` (when given: the tenant's lifetime now), revoked, idle for
    longer than ``idle_timeout_s`` or its user is inactive. Moves the session's last_seen_at
    (at most once a minute)."""
    if not tokens.plausible_token(token):
        return None
    row = await db.fetchrow(
        f"SELECT {user_columns('u')}, s.id AS session_id, s.last_seen_at AS last_seen_at,"
        " s.expires_at AS expires_at, s.revoked_at AS revoked_at, s.created_at AS started_at"
        " FROM sessions s JOIN users u ON u.tenant_id = s.tenant_id AND u.id = s.user_id"
        " WHERE s.tenant_id = ? AND s.token_hash = ?",
        tenant_id,
        tokens.token_hash(token),
    )
    now = now_ms(clock)
    if row is None or row["revoked_at"] is not None or not row["active"]:
        return None
    last_seen = int(row["last_seen_at"])
    if int(row["expires_at"]) <= now or now - last_seen > idle_timeout_s * 1000:
        return None
    if lifetime_s is not None and now - int(row["started_at"]) >= lifetime_s * 1000:
        return None
    if now - last_seen >= LAST_SEEN_STEP_MS:
        await db.execute(
            "UPDATE sessions SET last_seen_at = ?"
            " WHERE tenant_id = ? AND id = ? AND last_seen_at < ?",
            *(now, tenant_id, row["session_id"], now),
        )
    return user_from_row(row)


async def revoke_session(
    db: Database, tenant_id: int, token: str, *, clock: Clock | None = None
) -> bool:
    """Revoke the session of a token (sign-out); False when there was no live one."""
    if not tokens.plausible_token(token):
        return False
    changed = await db.execute(
        "UPDATE sessions SET revoked_at = ?"
        " WHERE tenant_id = ? AND token_hash = ? AND revoked_at IS NULL",
        *(now_ms(clock), tenant_id, tokens.token_hash(token)),
    )
    return changed == 1


async def revoke_session_by_id(
    db: Database, tenant_id: int, user_id: int, session_id: int, *, clock: Clock | None = None
) -> bool:
    """Revoke one of ``user_id``'s sessions by its listed id; False when it was not live."""
    changed = await db.execute(
        "UPDATE sessions SET revoked_at = ?"
        " WHERE tenant_id = ? AND user_id = ? AND id = ? AND revoked_at IS NULL",
        *(now_ms(clock), tenant_id, user_id, session_id),
    )
    return changed == 1


async def revoke_all_sessions(
    db: Database, tenant_id: int, user_id: int, *, clock: Clock | None = None
) -> int:
    """Revoke every session of a user ("sign out everywhere"); return how many were live."""
    return await db.execute(
        "UPDATE sessions SET revoked_at = ?"
        " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL",
        *(now_ms(clock), tenant_id, user_id),
    )


async def list_sessions(
    db: Database, tenant_id: int, user_id: int, *, clock: Clock | None = None
) -> list[SessionInfo]:
    """A user's unrevoked, unexpired sessions, newest first."""
    rows = await db.fetch(
        "SELECT id, user_id, created_at, last_seen_at, expires_at, user_agent, ip FROM sessions"
        " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL AND expires_at > ?"
        " ORDER BY id DESC",
        *(tenant_id, user_id, now_ms(clock)),
    )
    return [SessionInfo(**row) for row in rows]


async def current_session_id(db: Database, tenant_id: int, token: str) -> int | None:
    """The id of a token's session (as ``list_sessions`` shows it), or None when unknown here."""
    if not tokens.plausible_token(token):
        return None
    found = await db.fetchval(
        "SELECT id FROM sessions WHERE tenant_id = ? AND token_hash = ?",
        tenant_id,
        tokens.token_hash(token),
    )
    return None if found is None else int(found)


def _kept_hash(keep_token: str | None) -> str:
    """The hash of the session to keep; a value no stored hash equals when there is none."""
    if keep_token is None or not tokens.plausible_token(keep_token):
        return ""
    return tokens.token_hash(keep_token)


async def _revoke_others(db: Database, tenant_id: int, user_id: int, keep: str, now: int) -> int:
    return await db.execute(
        "UPDATE sessions SET revoked_at = ?"
        " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL AND token_hash <> ?",
        *(now, tenant_id, user_id, keep),
    )


async def revoke_other_sessions(
    db: Database, tenant_id: int, user_id: int, keep_token: str, *, clock: Clock | None = None
) -> int:
    """Revoke every session of a user but the one of ``keep_token`` ("sign out everywhere
    else"); return how many were live."""
    return await _revoke_others(db, tenant_id, user_id, _kept_hash(keep_token), now_ms(clock))


async def change_password(
    db: Database,
    tenant_id: int,
    user_id: int,
    current: str,
    new: str,
    *,
    keep_token: str | None = None,
    clock: Clock | None = None,
    hasher: PasswordHasher = PASSWORD_HASHER,
) -> int:
    """Give an active user the password ``new`` once ``current`` checks out, and revoke their
    other sessions (all but ``keep_token``'s); return how many were revoked.

    PolicyViolation when ``new`` breaks the tenant's policy (or is a recent password),
    InvalidCredentials when ``current`` is wrong (or the user is inactive, or the password
    changed meanwhile); nothing changes then. Hashing and verifying run off the event loop.
    """
    settings = await load_settings(db, tenant_id)
    problem = policy_problem(new, settings)
    if problem is not None:
        raise PolicyViolation(problem)
    refused = InvalidCredentials("the current password is wrong")
    if len(current) > PASSWORD_MAX_LENGTH:
        raise refused
    row = await db.fetchrow(
        "SELECT password_hash, active FROM users WHERE tenant_id = ? AND id = ?",
        tenant_id,
        user_id,
    )
    if row is None or not row["active"] or row["password_hash"] is None:
        await dummy_verify(current, hasher=hasher)
        raise refused
    if not (await verify_password(str(row["password_hash"]), current, hasher=hasher)).ok:
        raise refused
    await check_new_password(db, tenant_id, user_id, new, settings, hasher=hasher)
    digest = await hash_password(new, hasher=hasher)
    now = now_ms(clock)
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE users SET password_hash = ?"
            " WHERE tenant_id = ? AND id = ? AND password_hash = ? AND active = 1",
            *(digest, tenant_id, user_id, row["password_hash"]),
        )
        if changed != 1:
            raise refused
        await set_password_hash(tx, tenant_id, user_id, digest, settings.password_history, now)
        return await _revoke_others(tx, tenant_id, user_id, _kept_hash(keep_token), now)


async def sign_out_everywhere(
    db: Database,
    tenant_id: int,
    user_id: int,
    by: int,
    *,
    revoke_tokens: bool = False,
    clock: Clock | None = None,
) -> tuple[int, int]:
    """An administrator ends every session of a user, and with ``revoke_tokens`` their API
    tokens too; return how many sessions and tokens were live. Owners and admins may; only an
    owner may do it to an owner."""
    actor = await require_manager(db, tenant_id, by)
    target = await get_user(db, tenant_id, user_id)
    if target.role == "owner" and actor.role != "owner" and by != user_id:
        raise Forbidden("only an owner may sign out an owner")
    now = now_ms(clock)
    async with db.transaction() as tx:
        sessions = await tx.execute(
            "UPDATE sessions SET revoked_at = ?"
            " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL",
            *(now, tenant_id, user_id),
        )
        revoked = 0
        if revoke_tokens:
            revoked = await tx.execute(
                "UPDATE api_tokens SET revoked_at = ?"
                " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL",
                *(now, tenant_id, user_id),
            )
    return sessions, revoked
