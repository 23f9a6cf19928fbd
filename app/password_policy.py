"""A tenant's password policy: length, character classes, no reuse of recent ones, and expiry."""

from __future__ import annotations

import string

from argon2 import PasswordHasher

from app.db import Database
from app.ids import new_id
from app.passwords import PASSWORD_HASHER, PASSWORD_MAX_LENGTH, verify_password
from app.people import PolicyViolation, User
from app.tenant_settings import CHARACTER_CLASSES, CharacterClass, SecuritySettings

DAY_MS = 86_400_000
EXPIRED = "your password has expired: change it"
_CLASS_NAMES: dict[CharacterClass, str] = {
    "lower": "a lower-case letter",
    "upper": "an upper-case letter",
    "digit": "a digit",
    "symbol": "a symbol",
}


def _has(password: str, wanted: CharacterClass) -> bool:
    if wanted == "lower":
        return any(char.islower() for char in password)
    if wanted == "upper":
        return any(char.isupper() for char in password)
    if wanted == "digit":
        return any(char in string.digits for char in password)
    return any(not (char.isalnum() or char.isspace()) for char in password)


def policy_problem(password: str, settings: SecuritySettings) -> str | None:
    """A message safe to show when ``password`` breaks the length or character-class rules,
    else None. Never echoes the password."""
    if len(password) < settings.password_min_length:
        return f"the password must have at least {settings.password_min_length} characters"
    if len(password) > PASSWORD_MAX_LENGTH:
        return f"the password must have at most {PASSWORD_MAX_LENGTH} characters"
    if not password.strip():
        return "the password must not be only spaces"
    wanted = [c for c in CHARACTER_CLASSES if c in settings.password_classes]
    missing = [_CLASS_NAMES[c] for c in wanted if not _has(password, c)]
    if missing:
        return "the password must contain " + ", ".join(missing)
    return None


def password_expired(user: User, settings: SecuritySettings, now_ms: int) -> bool:
    """Whether ``user`` must choose a new password before doing anything else: an
    administrator asked for it, or it is older than the tenant's maximum age."""
    if user.must_change_password:
        return True
    if settings.password_max_age_days == 0 or not user.password_set:
        return False
    changed = user.created_at if user.password_changed_at is None else user.password_changed_at
    return now_ms - changed >= settings.password_max_age_days * DAY_MS


async def _recent_hashes(db: Database, tenant_id: int, user_id: int, count: int) -> list[str]:
    rows = await db.fetch(
        "SELECT password_hash FROM password_history WHERE tenant_id = ? AND user_id = ?"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        *(tenant_id, user_id, count),
    )
    current = await db.fetchval(
        "SELECT password_hash FROM users WHERE tenant_id = ? AND id = ?", tenant_id, user_id
    )
    hashes = [str(row["password_hash"]) for row in rows]
    if current is not None and str(current) not in hashes:
        hashes.insert(0, str(current))
    return hashes[:count]


async def check_new_password(
    db: Database,
    tenant_id: int,
    user_id: int | None,
    password: str,
    settings: SecuritySettings,
    *,
    hasher: PasswordHasher = PASSWORD_HASHER,
) -> None:
    """PolicyViolation when ``password`` breaks the policy or is one of the user's last
    ``password_history`` passwords (their current one included); verification runs off the
    event loop. ``user_id`` None: a new user, who has no history."""
    problem = policy_problem(password, settings)
    if problem is not None:
        raise PolicyViolation(problem)
    if user_id is None or settings.password_history == 0:
        return
    for stored in await _recent_hashes(db, tenant_id, user_id, settings.password_history):
        if (await verify_password(stored, password, hasher=hasher)).ok:
            raise PolicyViolation(
                f"choose a password you have not used recently (the last "
                f"{settings.password_history} may not be used again)"
            )


async def remember_password(
    tx: Database, tenant_id: int, user_id: int, digest: str, keep: int, now: int
) -> None:
    """Add a newly set password's hash to the user's history and keep only the ``keep``
    newest (none when the history rule is off)."""
    await tx.execute(
        "INSERT INTO password_history (id, tenant_id, user_id, password_hash, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, user_id, digest, now),
    )
    rows = await tx.fetch(
        "SELECT id FROM password_history WHERE tenant_id = ? AND user_id = ?"
        " ORDER BY created_at DESC, id DESC",
        tenant_id,
        user_id,
    )
    for row in rows[keep:]:
        await tx.execute(
            "DELETE FROM password_history WHERE tenant_id = ? AND id = ?", tenant_id, row["id"]
        )


async def set_password_hash(
    tx: Database, tenant_id: int, user_id: int, digest: str, keep: int, now: int
) -> None:
    """Store ``digest`` as the user's password (set now, no change asked for) and remember it;
    the caller has checked the policy and runs this in its transaction."""
    await tx.execute(
        "UPDATE users SET password_hash = ?, password_changed_at = ?, must_change_password = 0"
        " WHERE tenant_id = ? AND id = ?",
        *(digest, now, tenant_id, user_id),
    )
    await remember_password(tx, tenant_id, user_id, digest, keep, now)
