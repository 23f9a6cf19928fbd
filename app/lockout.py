"""Account lockout: failed sign-ins in a row lock an account for a while (or until an
administrator unlocks it); a success resets the count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.clock import Clock
from app.db import Database
from app.people import Forbidden, User, get_user, now_ms, require_manager
from app.tenant_settings import SecuritySettings

MINUTE_MS = 60_000


@dataclass(frozen=True)
class LockState:
    """A user's lockout columns after a failed sign-in; ``locked_now``: this failure locked."""

    failed_sign_ins: int
    locked_until: int | None
    locked_by_admin: bool
    locked_now: bool


def is_locked(row: dict[str, Any], now: int) -> bool:
    """Whether a users row (with its lockout columns) is locked at ``now``."""
    if row.get("locked_by_admin"):
        return True
    until = row.get("locked_until")
    return until is not None and int(until) > now


def after_failure(failed: int, settings: SecuritySettings, now: int) -> LockState:
    """The lockout state after one more failure following ``failed`` in a row."""
    count = failed + 1
    if settings.lockout_attempts == 0 or count < settings.lockout_attempts:
        return LockState(count, None, False, False)
    if settings.lockout_minutes == 0:
        return LockState(0, None, True, True)
    return LockState(0, now + settings.lockout_minutes * MINUTE_MS, False, True)


async def note_failure(
    db: Database, tenant_id: int, user_id: int, settings: SecuritySettings, now: int
) -> LockState:
    """Count a wrong password of an unlocked user; lock when it is one too many."""
    await db.execute(
        "UPDATE users SET failed_sign_ins = failed_sign_ins + 1 WHERE tenant_id = ? AND id = ?",
        tenant_id,
        user_id,
    )
    count = await db.fetchval(
        "SELECT failed_sign_ins FROM users WHERE tenant_id = ? AND id = ?", tenant_id, user_id
    )
    state = after_failure(int(count or 1) - 1, settings, now)
    if state.locked_now:
        await db.execute(
            "UPDATE users SET failed_sign_ins = 0, locked_until = ?, locked_by_admin = ?"
            " WHERE tenant_id = ? AND id = ?",
            *(state.locked_until, int(state.locked_by_admin), tenant_id, user_id),
        )
    return state


async def note_success(db: Database, tenant_id: int, user_id: int) -> None:
    """A right password of an unlocked user: the count starts again."""
    await db.execute(
        "UPDATE users SET failed_sign_ins = 0, locked_until = NULL"
        " WHERE tenant_id = ? AND id = ? AND (failed_sign_ins <> 0 OR locked_until IS NOT NULL)",
        tenant_id,
        user_id,
    )


async def locked_user_ids(
    db: Database, tenant_id: int, *, clock: Clock | None = None
) -> frozenset[int]:
    """The ids of the tenant's users that are locked now."""
    rows = await db.fetch(
        "SELECT id FROM users WHERE tenant_id = ? AND (locked_by_admin = 1 OR locked_until > ?)",
        tenant_id,
        now_ms(clock),
    )
    return frozenset(int(row["id"]) for row in rows)


async def unlock(db: Database, tenant_id: int, user_id: int, by: int) -> User:
    """Lift a user's lock and reset their count (idempotent). Owners and admins may; only an
    owner may unlock an owner."""
    actor = await require_manager(db, tenant_id, by)
    target = await get_user(db, tenant_id, user_id)
    if target.role == "owner" and actor.role != "owner":
        raise Forbidden("only an owner may unlock an owner")
    await db.execute(
        "UPDATE users SET failed_sign_ins = 0, locked_until = NULL, locked_by_admin = 0"
        " WHERE tenant_id = ? AND id = ?",
        tenant_id,
        user_id,
    )
    return target
