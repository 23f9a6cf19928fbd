"""People of a tenant: tenants, users and roles, invitations, sign-in, sessions and API tokens.

Every query names its tenant (``tenant_id = ?``), so nothing here reads or writes another
tenant's rows: a token, invitation or user id of one tenant is simply not found in another.
Secrets are stored only as hashes (``app.tokens``, ``app.passwords``); *_at are unix ms.

Sign-in and sessions live in ``app.sessions``, API tokens in ``app.api_tokens``, invitations in
``app.invitations``, and the records,
errors and input rules all three share in ``app.people``; every public name is re-exported here.
"""

from __future__ import annotations

from app.api_tokens import (
    MAX_TOKEN_NAME,
    ApiTokenInfo,
    create_api_token,
    list_api_tokens,
    revoke_api_token,
    token_user,
)
from app.clock import Clock
from app.db import Conflict, Database
from app.ids import new_id
from app.invitations import (
    InvitationInfo,
    accept_invitation,
    insert_invitation,
    invite,
    list_invitations,
    open_invitation,
    withdraw_invitation,
)
from app.people import (
    LAST_SEEN_STEP_MS,
    LIST_LIMIT_MAX,
    MANAGERS,
    MAX_DISPLAY_NAME,
    MAX_EMAIL,
    ROLES,
    AccountError,
    AlreadyExists,
    Forbidden,
    InvalidCredentials,
    InvitationExpired,
    InvitationUsed,
    NotFound,
    PolicyViolation,
    Role,
    Tenant,
    User,
    UserPage,
    checked_role,
    clean_display_name,
    get_user,
    normalize_email,
    now_ms,
    require_manager,
    tenant_from_row,
    user_columns,
    user_from_row,
)
from app.sessions import (
    MAX_IP,
    MAX_USER_AGENT,
    SessionInfo,
    authenticate,
    change_password,
    create_session,
    current_session_id,
    list_sessions,
    revoke_all_sessions,
    revoke_other_sessions,
    revoke_session,
    revoke_session_by_id,
    session_user,
    sign_out_everywhere,
)
from app.settings import TENANT_LABEL

__all__ = [
    "LAST_SEEN_STEP_MS",
    "LIST_LIMIT_MAX",
    "MANAGERS",
    "MAX_DISPLAY_NAME",
    "MAX_EMAIL",
    "MAX_IP",
    "MAX_TOKEN_NAME",
    "MAX_USER_AGENT",
    "ROLES",
    "SETUP_INVITATION_TTL_S",
    "AccountError",
    "AlreadyExists",
    "ApiTokenInfo",
    "Forbidden",
    "InvalidCredentials",
    "InvitationExpired",
    "InvitationInfo",
    "InvitationUsed",
    "NotFound",
    "PolicyViolation",
    "Role",
    "SessionInfo",
    "Tenant",
    "User",
    "UserPage",
    "accept_invitation",
    "authenticate",
    "change_password",
    "create_api_token",
    "create_session",
    "create_tenant",
    "current_session_id",
    "deactivate",
    "get_user",
    "invite",
    "list_api_tokens",
    "list_invitations",
    "list_sessions",
    "list_users",
    "normalize_email",
    "open_invitation",
    "reactivate",
    "revoke_all_sessions",
    "revoke_api_token",
    "revoke_other_sessions",
    "revoke_session",
    "revoke_session_by_id",
    "session_user",
    "set_role",
    "sign_out_everywhere",
    "tenant_by_name",
    "token_user",
    "update_profile",
    "withdraw_invitation",
]

SETUP_INVITATION_TTL_S = 72 * 3600


# ---------------------------------------------------------------- shared queries


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


# ---------------------------------------------------------------- tenants


async def create_tenant(
    db: Database, name: str, display_name: str, admin_email: str, clock: Clock
) -> tuple[Tenant, str]:
    """Create a tenant and its owner (no password yet); return it and the plain token of a
    one-time setup invitation (72 h) through which the owner sets a password."""
    if TENANT_LABEL.match(name) is None:
        raise PolicyViolation("a workspace name is a lower-case DNS label (a-z, 0-9, '-')")
    display = clean_display_name(display_name)
    email = normalize_email(admin_email)
    now = now_ms(clock)
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
            token = await insert_invitation(tx, tenant.id, email, "owner", None, now, ttl_ms)
    except Conflict:
        raise AlreadyExists("that workspace name is taken") from None
    return tenant, token


async def tenant_by_name(db: Database, name: str) -> Tenant | None:
    """The tenant called ``name`` (its subdomain label), or None."""
    row = await db.fetchrow(
        "SELECT id, name, display_name, created_at FROM tenants WHERE name = ?", name
    )
    return None if row is None else tenant_from_row(row)


# ---------------------------------------------------------------- managing users


async def deactivate(
    db: Database, tenant_id: int, user_id: int, by: int, *, clock: Clock | None = None
) -> User:
    """Deactivate a user and revoke their sessions and API tokens (idempotent).

    Only an owner or admin may; only an owner may deactivate an owner; the tenant's last
    active owner cannot be deactivated (Forbidden).
    """
    now = now_ms(clock)
    async with db.transaction() as tx:
        await _lock_tenant(tx, tenant_id)
        actor = await require_manager(tx, tenant_id, by)
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


async def reactivate(db: Database, tenant_id: int, user_id: int, by: int) -> User:
    """Let a deactivated user sign in again (idempotent); their old sessions and API tokens
    stay revoked. Only an owner or admin may; only an owner may reactivate an owner."""
    async with db.transaction() as tx:
        actor = await require_manager(tx, tenant_id, by)
        target = await get_user(tx, tenant_id, user_id)
        if target.role == "owner" and actor.role != "owner":
            raise Forbidden("only an owner may reactivate an owner")
        await tx.execute(
            "UPDATE users SET active = 1 WHERE tenant_id = ? AND id = ?", tenant_id, user_id
        )
    return await get_user(db, tenant_id, user_id)


async def set_role(db: Database, tenant_id: int, user_id: int, role: str, by: int) -> User:
    """Give a user another role. Owners and admins may; only an owner may make or unmake an
    owner; the tenant's last active owner keeps the role (Forbidden)."""
    wanted = checked_role(role)
    async with db.transaction() as tx:
        await _lock_tenant(tx, tenant_id)
        actor = await require_manager(tx, tenant_id, by)
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
    name = clean_display_name(display_name)
    if by != user_id:
        await require_manager(db, tenant_id, by)
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
        f"SELECT {user_columns()} FROM users WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?",
        *(tenant_id, after_id or 0, limit + 1),
    )
    users = [user_from_row(row) for row in rows[:limit]]
    return UserPage(users, users[-1].id if len(rows) > limit else None)
