"""People of a tenant: tenants, users and roles, invitations, sign-in, sessions and API tokens.

Every query names its tenant (``tenant_id = ?``), so nothing here reads or writes another
tenant's rows: a token, invitation or user id of one tenant is simply not found in another.
Secrets are stored only as hashes (``app.tokens``, ``app.passwords``); *_at are unix ms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from argon2 import PasswordHasher

from app import tokens
from app.clock import Clock, SystemClock
from app.db import Conflict, Database
from app.ids import new_id
from app.passwords import (
    PASSWORD_HASHER,
    PASSWORD_MAX_LENGTH,
    dummy_verify,
    hash_password,
    password_problem,
    verify_password,
)
from app.settings import TENANT_LABEL

Role = Literal["owner", "admin", "member", "guest"]
ROLES: tuple[Role, ...] = get_args(Role)
MANAGERS: frozenset[str] = frozenset({"owner", "admin"})
SETUP_INVITATION_TTL_S = 72 * 3600
LIST_LIMIT_MAX = 100
LAST_SEEN_STEP_MS = 60_000  # last_seen_at / last_used_at move at most once a minute
MAX_DISPLAY_NAME = 100
MAX_EMAIL = 254
MAX_TOKEN_NAME = 100
MAX_USER_AGENT = 512
MAX_IP = 64
_SCOPE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


# ---------------------------------------------------------------- errors


class AccountError(Exception):
    """An account operation refused; ``str(error)`` is safe to show to the user."""


class NotFound(AccountError):
    """No such user, invitation or token in this tenant."""


class Forbidden(AccountError):
    """The acting user may not do this (role, inactive, or the last owner)."""


class AlreadyExists(AccountError):
    """The tenant name, or an e-mail address inside this tenant, is taken."""


class InvitationExpired(AccountError):
    """The invitation's time ran out before it was accepted."""


class InvitationUsed(AccountError):
    """The invitation was accepted already; an invitation works once."""


class InvalidCredentials(AccountError):
    """Wrong e-mail or password, or an inactive account: deliberately one answer for all."""


class PolicyViolation(AccountError):
    """Input that breaks a rule: password policy, e-mail shape, role or scope names."""


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Tenant:
    """A workspace; ``name`` is its subdomain label."""

    id: int
    name: str
    display_name: str
    created_at: int


@dataclass(frozen=True)
class User:
    """A person in one tenant (never carries the password hash)."""

    id: int
    tenant_id: int
    email: str
    display_name: str
    role: Role
    active: bool
    password_set: bool
    created_at: int


@dataclass(frozen=True)
class UserPage:
    """One page of ``list_users``; pass ``next_after_id`` back for the next (None: last page)."""

    users: list[User]
    next_after_id: int | None


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


_USER_FIELDS = ("id", "tenant_id", "email", "display_name", "role", "active", "created_at")


def _user_columns(alias: str = "users") -> str:
    fields = ", ".join(f"{alias}.{field}" for field in _USER_FIELDS)
    return f"{fields}, ({alias}.password_hash IS NOT NULL) AS password_set"


def _user(row: dict[str, Any]) -> User:
    return User(
        id=int(row["id"]),
        tenant_id=int(row["tenant_id"]),
        email=str(row["email"]),
        display_name=str(row["display_name"]),
        role=cast(Role, row["role"]),
        active=bool(row["active"]),
        password_set=bool(row["password_set"]),
        created_at=int(row["created_at"]),
    )


def _tenant(row: dict[str, Any]) -> Tenant:
    return Tenant(
        int(row["id"]), str(row["name"]), str(row["display_name"]), int(row["created_at"])
    )


# ---------------------------------------------------------------- input rules


def _now_ms(clock: Clock | None) -> int:
    return int((clock or SystemClock()).wall_now() * 1000)


def _duration_ms(seconds: float, what: str) -> int:
    if not seconds > 0:
        raise ValueError(f"{what} must be positive, not {seconds!r}")
    return int(seconds * 1000)


def normalize_email(email: str) -> str:
    """Trimmed and lower-cased (how it is stored and compared); PolicyViolation if malformed."""
    email = email.strip().lower()
    if len(email) > MAX_EMAIL or _EMAIL.match(email) is None:
        raise PolicyViolation("that is not a valid e-mail address")
    return email


def _display_name(name: str) -> str:
    name = name.strip()
    if not 0 < len(name) <= MAX_DISPLAY_NAME or not name.isprintable():
        raise PolicyViolation(f"a name has 1 to {MAX_DISPLAY_NAME} printable characters")
    return name


def _role(role: str) -> Role:
    if role not in ROLES:
        raise PolicyViolation(f"a role is one of {', '.join(ROLES)}")
    return role


def _check_password(password: str) -> None:
    problem = password_problem(password)
    if problem is not None:
        raise PolicyViolation(problem)


def _scopes(scopes: list[str] | tuple[str, ...] | frozenset[str]) -> str:
    for scope in scopes:
        if _SCOPE.match(scope) is None:
            raise PolicyViolation("a scope is a lower-case word like 'read' or 'spaces:write'")
    return " ".join(sorted(set(scopes)))


# ---------------------------------------------------------------- shared queries


async def _user_row(db: Database, tenant_id: int, user_id: int) -> User | None:
    row = await db.fetchrow(
        f"SELECT {_user_columns()} FROM users WHERE tenant_id = ? AND id = ?", tenant_id, user_id
    )
    return None if row is None else _user(row)


async def get_user(db: Database, tenant_id: int, user_id: int) -> User:
    """The user ``user_id`` of this tenant; NotFound otherwise."""
    user = await _user_row(db, tenant_id, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


async def _email_taken(db: Database, tenant_id: int, email: str) -> bool:
    found = await db.fetchval(
        "SELECT 1 FROM users WHERE tenant_id = ? AND lower(email) = ?", tenant_id, email
    )
    return found is not None


async def _manager(db: Database, tenant_id: int, by: int) -> User:
    """The acting user, who must be an active owner or admin of this tenant."""
    actor = await _user_row(db, tenant_id, by)
    if actor is None or not actor.active or actor.role not in MANAGERS:
        raise Forbidden("only an owner or admin of this workspace may do that")
    return actor


async def _lock_tenant(tx: Database, tenant_id: int) -> None:
    """Serialize owner-changing transactions of one tenant (SQLite: the writer lock does)."""
    if tx.dialect == "postgres":
        await tx.fetchval("SELECT id FROM tenants WHERE id = ? FOR UPDATE", tenant_id)


async def _other_active_owners(tx: Database, tenant_id: int, user_id: int) -> int:
    count = await tx.fetchval(
        "SELECT count(*) FROM users"
        " WHERE tenant_id = ? AND role = 'owner' AND active = 1 AND id <> ?",
        tenant_id,
        user_id,
    )
    return int(count)


async def _insert_invitation(
    db: Database, tenant_id: int, email: str, role: Role, by: int | None, now: int, ttl_ms: int
) -> str:
    plain, digest = tokens.new_token()
    await db.execute(
        "INSERT INTO invitations (id, tenant_id, token_hash, email, role, created_by,"
        " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, digest, email, role, by, now, now + ttl_ms),
    )
    return plain


# ---------------------------------------------------------------- tenants


async def create_tenant(
    db: Database, name: str, display_name: str, admin_email: str, clock: Clock
) -> tuple[Tenant, str]:
    """Create a tenant and its owner (no password yet); return it and the plain token of a
    one-time setup invitation (72 h) through which the owner sets a password."""
    if TENANT_LABEL.match(name) is None:
        raise PolicyViolation("a workspace name is a lower-case DNS label (a-z, 0-9, '-')")
    display = _display_name(display_name)
    email = normalize_email(admin_email)
    now = _now_ms(clock)
    tenant = Tenant(new_id(), name, display, now)
    try:
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO tenants (id, name, display_name, created_at) VALUES (?, ?, ?, ?)",
                *(tenant.id, name, display, now),
            )
            await tx.execute(
                "INSERT INTO users (id, tenant_id, email, display_name, role, created_at)"
                " VALUES (?, ?, ?, ?, 'owner', ?)",
                *(new_id(), tenant.id, email, email.partition("@")[0], now),
            )
            ttl_ms = SETUP_INVITATION_TTL_S * 1000
            token = await _insert_invitation(tx, tenant.id, email, "owner", None, now, ttl_ms)
    except Conflict:
        raise AlreadyExists("that workspace name is taken") from None
    return tenant, token


async def tenant_by_name(db: Database, name: str) -> Tenant | None:
    """The tenant called ``name`` (its subdomain label), or None."""
    row = await db.fetchrow(
        "SELECT id, name, display_name, created_at FROM tenants WHERE name = ?", name
    )
    return None if row is None else _tenant(row)


# ---------------------------------------------------------------- invitations


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
    address, wanted, ttl_ms = normalize_email(email), _role(role), _duration_ms(ttl_s, "ttl_s")
    actor = await _manager(db, tenant_id, by_user)
    if wanted == "owner" and actor.role != "owner":
        raise Forbidden("only an owner may invite an owner")
    if await _email_taken(db, tenant_id, address):
        raise AlreadyExists("someone in this workspace has that e-mail address already")
    return await _insert_invitation(
        db, tenant_id, address, wanted, actor.id, _now_ms(clock), ttl_ms
    )


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
    name = _display_name(display_name)
    _check_password(password)
    invitation = await _open_invitation(db, tenant_id, token, _now_ms(clock))
    digest = await hash_password(password, hasher=hasher)  # slow: outside the transaction
    now = _now_ms(clock)
    async with db.transaction() as tx:
        await _claim_invitation(tx, tenant_id, int(invitation["id"]), now)
        try:
            user_id = await _join(tx, tenant_id, invitation, name, digest, now)
        except Conflict:  # the address joined through another invitation meanwhile
            raise AlreadyExists("this workspace has an account with that e-mail already") from None
    return await get_user(db, tenant_id, user_id)


# ---------------------------------------------------------------- sign-in


async def authenticate(
    db: Database,
    tenant_id: int,
    email: str,
    password: str,
    *,
    hasher: PasswordHasher = PASSWORD_HASHER,
) -> User:
    """The active user with this e-mail (any case) and password, else InvalidCredentials.

    An unknown address, an inactive user or one without a password costs one dummy
    verification, so the time taken does not tell them apart from a wrong password. A hash
    made with older parameters is replaced on success.
    """
    refused = InvalidCredentials("wrong e-mail address or password")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise refused  # never hashed: no account is looked at, so nothing leaks
    row = await db.fetchrow(
        f"SELECT {_user_columns()}, password_hash FROM users"
        " WHERE tenant_id = ? AND lower(email) = ?",
        tenant_id,
        email.strip().lower(),
    )
    if row is None or not row["active"] or row["password_hash"] is None:
        await dummy_verify(password, hasher=hasher)
        raise refused
    result = await verify_password(str(row["password_hash"]), password, hasher=hasher)
    if not result.ok:
        raise refused
    if result.new_hash is not None:
        await db.execute(
            "UPDATE users SET password_hash = ?"
            " WHERE tenant_id = ? AND id = ? AND password_hash = ?",
            *(result.new_hash, tenant_id, row["id"], row["password_hash"]),
        )
    return _user(row)


# ---------------------------------------------------------------- managing users


async def deactivate(
    db: Database, tenant_id: int, user_id: int, by: int, *, clock: Clock | None = None
) -> User:
    """Deactivate a user and revoke their sessions and API tokens (idempotent).

    Only an owner or admin may; only an owner may deactivate an owner; the tenant's last
    active owner cannot be deactivated (Forbidden).
    """
    now = _now_ms(clock)
    async with db.transaction() as tx:
        await _lock_tenant(tx, tenant_id)
        actor = await _manager(tx, tenant_id, by)
        target = await get_user(tx, tenant_id, user_id)
        if target.role == "owner":
            if actor.role != "owner":
                raise Forbidden("only an owner may deactivate an owner")
            if target.active and await _other_active_owners(tx, tenant_id, user_id) == 0:
                raise Forbidden("the last owner of a workspace cannot be deactivated")
        await tx.execute(
            "UPDATE users SET active = 0 WHERE tenant_id = ? AND id = ?", tenant_id, user_id
        )
        for table in ("sessions", "api_tokens"):
            await tx.execute(
                f"UPDATE {table} SET revoked_at = ?"
                " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL",
                *(now, tenant_id, user_id),
            )
    return await get_user(db, tenant_id, user_id)


async def set_role(db: Database, tenant_id: int, user_id: int, role: str, by: int) -> User:
    """Give a user another role. Owners and admins may; only an owner may make or unmake an
    owner; the tenant's last active owner keeps the role (Forbidden)."""
    wanted = _role(role)
    async with db.transaction() as tx:
        await _lock_tenant(tx, tenant_id)
        actor = await _manager(tx, tenant_id, by)
        target = await get_user(tx, tenant_id, user_id)
        if "owner" in (wanted, target.role) and actor.role != "owner":
            raise Forbidden("only an owner may grant or take away the owner role")
        demoting = target.role == "owner" and wanted != "owner" and target.active
        if demoting and await _other_active_owners(tx, tenant_id, user_id) == 0:
            raise Forbidden("a workspace needs an owner: make someone else owner first")
        await tx.execute(
            "UPDATE users SET role = ? WHERE tenant_id = ? AND id = ?", wanted, tenant_id, user_id
        )
    return await get_user(db, tenant_id, user_id)


async def update_profile(
    db: Database, tenant_id: int, user_id: int, by: int, *, display_name: str
) -> User:
    """Change a user's display name: the user themself, or an owner or admin."""
    name = _display_name(display_name)
    if by != user_id:
        await _manager(db, tenant_id, by)
    changed = await db.execute(
        "UPDATE users SET display_name = ? WHERE tenant_id = ? AND id = ? AND active = 1",
        *(name, tenant_id, user_id),
    )
    if changed != 1:
        raise NotFound("no such user")
    return await get_user(db, tenant_id, user_id)


async def list_users(
    db: Database, tenant_id: int, limit: int = 50, after_id: int | None = None
) -> UserPage:
    """Users of the tenant (inactive ones too) in creation order, at most ``limit`` (capped at
    100) after the cursor ``after_id``."""
    limit = max(1, min(limit, LIST_LIMIT_MAX))
    rows = await db.fetch(
        f"SELECT {_user_columns()} FROM users WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?",
        *(tenant_id, after_id or 0, limit + 1),
    )
    users = [_user(row) for row in rows[:limit]]
    return UserPage(users, users[-1].id if len(rows) > limit else None)


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
    lifetime_ms = _duration_ms(lifetime_s, "lifetime_s")
    user = await _user_row(db, tenant_id, user_id)
    if user is None or not user.active:
        raise NotFound("no such user")
    plain, digest = tokens.new_token()
    now = _now_ms(clock)
    await db.execute(
        "INSERT INTO sessions (id, tenant_id, user_id, token_hash, created_at, last_seen_at,"
        " expires_at, user_agent, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, user_id, digest, now, now, now + lifetime_ms),
        *(user_agent[:MAX_USER_AGENT], ip[:MAX_IP]),
    )
    return plain


async def session_user(
    db: Database, tenant_id: int, token: str, idle_timeout_s: float, clock: Clock
) -> User | None:
    """The user a session token signs in, or None when the session is unknown here, expired,
    revoked, idle for longer than ``idle_timeout_s`` or its user is inactive. Moves the
    session's last_seen_at (at most once a minute)."""
    if not tokens.plausible_token(token):
        return None
    row = await db.fetchrow(
        f"SELECT {_user_columns('u')}, s.id AS session_id, s.last_seen_at AS last_seen_at,"
        " s.expires_at AS expires_at, s.revoked_at AS revoked_at"
        " FROM sessions s JOIN users u ON u.tenant_id = s.tenant_id AND u.id = s.user_id"
        " WHERE s.tenant_id = ? AND s.token_hash = ?",
        tenant_id,
        tokens.token_hash(token),
    )
    now = _now_ms(clock)
    if row is None or row["revoked_at"] is not None or not row["active"]:
        return None
    last_seen = int(row["last_seen_at"])
    if int(row["expires_at"]) <= now or now - last_seen > idle_timeout_s * 1000:
        return None
    if now - last_seen >= LAST_SEEN_STEP_MS:
        await db.execute(
            "UPDATE sessions SET last_seen_at = ?"
            " WHERE tenant_id = ? AND id = ? AND last_seen_at < ?",
            *(now, tenant_id, row["session_id"], now),
        )
    return _user(row)


async def revoke_session(
    db: Database, tenant_id: int, token: str, *, clock: Clock | None = None
) -> bool:
    """Revoke the session of a token (sign-out); False when there was no live one."""
    if not tokens.plausible_token(token):
        return False
    changed = await db.execute(
        "UPDATE sessions SET revoked_at = ?"
        " WHERE tenant_id = ? AND token_hash = ? AND revoked_at IS NULL",
        *(_now_ms(clock), tenant_id, tokens.token_hash(token)),
    )
    return changed == 1


async def revoke_session_by_id(
    db: Database, tenant_id: int, user_id: int, session_id: int, *, clock: Clock | None = None
) -> bool:
    """Revoke one of ``user_id``'s sessions by its listed id; False when it was not live."""
    changed = await db.execute(
        "UPDATE sessions SET revoked_at = ?"
        " WHERE tenant_id = ? AND user_id = ? AND id = ? AND revoked_at IS NULL",
        *(_now_ms(clock), tenant_id, user_id, session_id),
    )
    return changed == 1


async def revoke_all_sessions(
    db: Database, tenant_id: int, user_id: int, *, clock: Clock | None = None
) -> int:
    """Revoke every session of a user ("sign out everywhere"); return how many were live."""
    return await db.execute(
        "UPDATE sessions SET revoked_at = ?"
        " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL",
        *(_now_ms(clock), tenant_id, user_id),
    )


async def list_sessions(
    db: Database, tenant_id: int, user_id: int, *, clock: Clock | None = None
) -> list[SessionInfo]:
    """A user's unrevoked, unexpired sessions, newest first."""
    rows = await db.fetch(
        "SELECT id, user_id, created_at, last_seen_at, expires_at, user_agent, ip FROM sessions"
        " WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL AND expires_at > ?"
        " ORDER BY id DESC",
        *(tenant_id, user_id, _now_ms(clock)),
    )
    return [SessionInfo(**row) for row in rows]


# ---------------------------------------------------------------- API tokens


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
    user = await _user_row(db, tenant_id, user_id)
    if user is None or not user.active:
        raise NotFound("no such user")
    now = _now_ms(clock)
    expires_at = None if ttl_s is None else now + _duration_ms(ttl_s, "ttl_s")
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
        f"SELECT {_user_columns('u')}, t.id AS token_id, t.scopes AS scopes,"
        " t.expires_at AS expires_at, t.revoked_at AS revoked_at, t.last_used_at AS last_used_at"
        " FROM api_tokens t JOIN users u ON u.tenant_id = t.tenant_id AND u.id = t.user_id"
        " WHERE t.tenant_id = ? AND t.token_hash = ?",
        tenant_id,
        tokens.token_hash(token),
    )
    now = _now_ms(clock)
    if row is None or row["revoked_at"] is not None or not row["active"]:
        return None
    if row["expires_at"] is not None and int(row["expires_at"]) <= now:
        return None
    if row["last_used_at"] is None or now - int(row["last_used_at"]) >= LAST_SEEN_STEP_MS:
        await db.execute(
            "UPDATE api_tokens SET last_used_at = ? WHERE tenant_id = ? AND id = ?",
            *(now, tenant_id, row["token_id"]),
        )
    return _user(row), frozenset(str(row["scopes"]).split())


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
        await _manager(db, tenant_id, by)
    changed = await db.execute(
        "UPDATE api_tokens SET revoked_at = ?"
        " WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
        *(_now_ms(clock), tenant_id, token_id),
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
