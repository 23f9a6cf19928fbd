"""A user's TOTP second factor (RFC 6238) and single-use recovery codes, checked without replay."""

from __future__ import annotations

from typing import Any

import pyotp
from argon2 import PasswordHasher

from app import audit, lockout, tokens
from app.clock import Clock
from app.db import Conflict, Database
from app.ids import new_id
from app.passwords import PASSWORD_HASHER, PASSWORD_MAX_LENGTH, dummy_verify, verify_password
from app.people import (
    AlreadyExists,
    Forbidden,
    InvalidCredentials,
    PolicyViolation,
    User,
    get_user,
    now_ms,
    require_manager,
)
from app.tenant_settings import load_settings
from app.totp_codes import (
    RECOVERY_CODES,
    FactorStatus,
    Proof,
    RefusalReason,
    SecondFactorNeeded,
    SecondFactorRefused,
    matching_steps,
    new_recovery_code,
    normal_recovery_code,
    provisioning_uri,
    time_step,
)

# Re-exported: callers use the errors and records of app.totp_codes through this module.
__all__ = [
    "FactorStatus",
    "Proof",
    "SecondFactorNeeded",
    "SecondFactorRefused",
    "check_sign_in",
    "confirm",
    "disable",
    "enrol",
    "enrolment_required",
    "is_enabled",
    "prove",
    "provisioning_uri",
    "regenerate_recovery_codes",
    "reset",
    "status",
]

_FACTOR = (
    "SELECT secret, enabled_at, last_step FROM totp_factors WHERE tenant_id = ? AND user_id = ?"
)


# ---------------------------------------------------------------- reading


async def _factor(db: Database, tenant_id: int, user_id: int) -> dict[str, Any] | None:
    return await db.fetchrow(_FACTOR, tenant_id, user_id)


async def is_enabled(db: Database, tenant_id: int, user_id: int) -> bool:
    """Whether the user has a confirmed second factor."""
    found = await db.fetchval(
        "SELECT 1 FROM totp_factors WHERE tenant_id = ? AND user_id = ? AND enabled_at IS NOT NULL",
        tenant_id,
        user_id,
    )
    return found is not None


async def enrolment_required(db: Database, tenant_id: int, user_id: int) -> bool:
    """Whether the workspace requires a second factor and this user has none enabled yet."""
    settings = await load_settings(db, tenant_id)
    return settings.require_totp and not await is_enabled(db, tenant_id, user_id)


async def status(db: Database, tenant_id: int, user_id: int) -> FactorStatus:
    """The user's second factor as their settings page shows it."""
    row = await _factor(db, tenant_id, user_id)
    if row is None or row["enabled_at"] is None:
        return FactorStatus(False, None, 0)
    left = await db.fetchval(
        "SELECT count(*) FROM recovery_codes"
        " WHERE tenant_id = ? AND user_id = ? AND used_at IS NULL",
        tenant_id,
        user_id,
    )
    return FactorStatus(True, int(row["enabled_at"]), int(left or 0))


# ---------------------------------------------------------------- enrolment


async def enrol(db: Database, tenant_id: int, user_id: int, clock: Clock) -> str:
    """The secret of the user's pending factor, made now when there is none (the same one on
    every call until it is confirmed); AlreadyExists when a factor is enabled."""
    row = await _factor(db, tenant_id, user_id)
    if row is None:
        secret = pyotp.random_base32()
        try:
            await db.execute(
                "INSERT INTO totp_factors (tenant_id, user_id, secret, created_at)"
                " VALUES (?, ?, ?, ?)",
                *(tenant_id, user_id, secret, now_ms(clock)),
            )
            return secret
        except Conflict:  # a concurrent request made one first: use that
            row = await _factor(db, tenant_id, user_id)
    if row is None:
        raise Conflict("the second factor changed meanwhile: try again")
    if row["enabled_at"] is not None:
        raise AlreadyExists("a second factor is enabled already: disable it first")
    return str(row["secret"])


async def _replace_recovery_codes(
    tx: Database, tenant_id: int, user_id: int, now: int
) -> list[str]:
    await tx.execute(
        "DELETE FROM recovery_codes WHERE tenant_id = ? AND user_id = ?", tenant_id, user_id
    )
    codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
    for code in codes:
        digest = tokens.token_hash(normal_recovery_code(code) or "")
        await tx.execute(
            "INSERT INTO recovery_codes (id, tenant_id, user_id, code_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            *(new_id(), tenant_id, user_id, digest, now),
        )
    return codes


async def confirm(
    db: Database, tenant_id: int, user_id: int, code: str, *, ip: str = "", clock: Clock
) -> list[str]:
    """Enable the pending factor with a first valid code; return its recovery codes, which
    are shown once and stored only as hashes. PolicyViolation for a wrong code."""
    row = await _factor(db, tenant_id, user_id)
    if row is None or row["enabled_at"] is not None:
        raise PolicyViolation("no second factor is waiting for confirmation: start again")
    steps = matching_steps(str(row["secret"]), code, time_step(clock))
    if not steps:
        raise PolicyViolation("that code is not right: enter the one your app shows now")
    now = now_ms(clock)
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE totp_factors SET enabled_at = ?, last_step = ?"
            " WHERE tenant_id = ? AND user_id = ? AND enabled_at IS NULL AND secret = ?",
            *(now, steps[-1], tenant_id, user_id, row["secret"]),
        )
        if changed != 1:
            raise PolicyViolation("the second factor changed meanwhile: start again")
        codes = await _replace_recovery_codes(tx, tenant_id, user_id, now)
        await _event(tx, tenant_id, user_id, "enrolled", ip, clock)
    return codes


# ---------------------------------------------------------------- checking codes


async def _check_totp(db: Database, tenant_id: int, user_id: int, code: str, clock: Clock) -> None:
    row = await _factor(db, tenant_id, user_id)
    if row is None or row["enabled_at"] is None:
        raise SecondFactorRefused("wrong_second_factor")
    steps = matching_steps(str(row["secret"]), code, time_step(clock))
    fresh = [step for step in steps if step > int(row["last_step"])]
    if not fresh:
        raise SecondFactorRefused("second_factor_replayed" if steps else "wrong_second_factor")
    # The step moves forward only: of two requests with the same code, one wins.
    changed = await db.execute(
        "UPDATE totp_factors SET last_step = ?"
        " WHERE tenant_id = ? AND user_id = ? AND enabled_at IS NOT NULL AND last_step < ?",
        *(fresh[0], tenant_id, user_id, fresh[0]),
    )
    if changed != 1:
        raise SecondFactorRefused("second_factor_replayed")


async def _use_recovery_code(
    db: Database, tenant_id: int, user_id: int, code: str, clock: Clock
) -> None:
    normal = normal_recovery_code(code)
    if normal is None or not await is_enabled(db, tenant_id, user_id):
        raise SecondFactorRefused("wrong_second_factor")
    digest = tokens.token_hash(normal)
    changed = await db.execute(
        "UPDATE recovery_codes SET used_at = ?"
        " WHERE tenant_id = ? AND user_id = ? AND code_hash = ? AND used_at IS NULL",
        *(now_ms(clock), tenant_id, user_id, digest),
    )
    if changed == 1:
        return
    used = await db.fetchval(
        "SELECT 1 FROM recovery_codes WHERE tenant_id = ? AND user_id = ? AND code_hash = ?",
        *(tenant_id, user_id, digest),
    )
    raise SecondFactorRefused("wrong_second_factor" if used is None else "second_factor_replayed")


async def prove(db: Database, tenant_id: int, user_id: int, proof: Proof, clock: Clock) -> None:
    """Accept ``proof`` once (a TOTP code's step, or a recovery code, is used up by it);
    SecondFactorRefused when it is wrong, replayed or the user has no enabled factor."""
    if proof.totp_code:
        await _check_totp(db, tenant_id, user_id, proof.totp_code, clock)
    elif proof.recovery_code:
        await _use_recovery_code(db, tenant_id, user_id, proof.recovery_code, clock)
    else:
        raise SecondFactorRefused("wrong_second_factor")


async def _locked(db: Database, tenant_id: int, user_id: int, clock: Clock) -> bool:
    row = await db.fetchrow(
        "SELECT locked_until, locked_by_admin FROM users WHERE tenant_id = ? AND id = ?",
        tenant_id,
        user_id,
    )
    return row is None or lockout.is_locked(row, now_ms(clock))


async def check_sign_in(
    db: Database, tenant_id: int, user: User, proof: Proof, *, ip: str, clock: Clock
) -> None:
    """The second step of a sign-in: ``prove`` (refused while the user is locked out), and
    record a refusal as a failed sign-in."""
    try:
        if await _locked(db, tenant_id, user.id, clock):
            raise SecondFactorRefused("locked")
        await prove(db, tenant_id, user.id, proof, clock)
    except SecondFactorRefused as refused:
        await failed_sign_in(db, tenant_id, user, refused.reason, ip=ip, clock=clock)
        raise
    await db.execute(
        "UPDATE totp_factors SET failed_codes = 0"
        " WHERE tenant_id = ? AND user_id = ? AND failed_codes <> 0",
        tenant_id,
        user.id,
    )
    if proof.recovery_code:
        await _event(db, tenant_id, user.id, "recovery_code_used", ip, clock)


async def failed_sign_in(
    db: Database, tenant_id: int, user: User, reason: RefusalReason, *, ip: str, clock: Clock
) -> None:
    """The one place a refused second factor is counted: a failed sign-in in the audit log,
    and one more wrong code towards the workspace's lockout (counted apart from passwords,
    whose count a right password resets)."""
    target = f"user {user.id}"
    await audit.record(
        db, tenant_id, "sign_in", reason, user_id=user.id, actor=user.email, target=target,
        ip=ip, clock=clock,
    )  # fmt: skip
    if reason == "locked":
        return
    await db.execute(
        "UPDATE totp_factors SET failed_codes = failed_codes + 1"
        " WHERE tenant_id = ? AND user_id = ?",
        tenant_id,
        user.id,
    )
    failed = await db.fetchval(
        "SELECT failed_codes FROM totp_factors WHERE tenant_id = ? AND user_id = ?",
        tenant_id,
        user.id,
    )
    settings = await load_settings(db, tenant_id)
    state = lockout.after_failure(int(failed or 1) - 1, settings, now_ms(clock))
    if not state.locked_now:
        return
    await db.execute(
        "UPDATE users SET locked_until = ?, locked_by_admin = ? WHERE tenant_id = ? AND id = ?",
        *(state.locked_until, int(state.locked_by_admin), tenant_id, user.id),
    )
    await db.execute(
        "UPDATE totp_factors SET failed_codes = 0 WHERE tenant_id = ? AND user_id = ?",
        tenant_id,
        user.id,
    )
    detail = {"attempts": settings.lockout_attempts, "minutes": settings.lockout_minutes}
    await audit.record(
        db, tenant_id, "lockout", user_id=user.id, actor=user.email, target=target, ip=ip,
        detail=detail, clock=clock,
    )  # fmt: skip


# ---------------------------------------------------------------- changing it


async def regenerate_recovery_codes(
    db: Database, tenant_id: int, user_id: int, proof: Proof, *, ip: str = "", clock: Clock
) -> list[str]:
    """New recovery codes for a current code (the old ones stop working); shown once."""
    await prove(db, tenant_id, user_id, proof, clock)
    async with db.transaction() as tx:
        codes = await _replace_recovery_codes(tx, tenant_id, user_id, now_ms(clock))
        await _event(tx, tenant_id, user_id, "recovery_codes_regenerated", ip, clock)
    return codes


async def _check_password(
    db: Database, tenant_id: int, user_id: int, password: str, hasher: PasswordHasher
) -> None:
    refused = InvalidCredentials("the password is wrong")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise refused
    stored = await db.fetchval(
        "SELECT password_hash FROM users WHERE tenant_id = ? AND id = ? AND active = 1",
        tenant_id,
        user_id,
    )
    if stored is None:
        await dummy_verify(password, hasher=hasher)
        raise refused
    if not (await verify_password(str(stored), password, hasher=hasher)).ok:
        raise refused


async def _delete_factor(tx: Database, tenant_id: int, user_id: int) -> int:
    await tx.execute(
        "DELETE FROM recovery_codes WHERE tenant_id = ? AND user_id = ?", tenant_id, user_id
    )
    return await tx.execute(
        "DELETE FROM totp_factors WHERE tenant_id = ? AND user_id = ?", tenant_id, user_id
    )


async def disable(
    db: Database,
    tenant_id: int,
    user_id: int,
    password: str,
    proof: Proof,
    *,
    ip: str = "",
    clock: Clock,
    hasher: PasswordHasher = PASSWORD_HASHER,
) -> None:
    """Turn the user's second factor off, for their current password and a valid code
    (InvalidCredentials naming which is wrong; nothing changes then)."""
    await _check_password(db, tenant_id, user_id, password, hasher)
    await prove(db, tenant_id, user_id, proof, clock)
    async with db.transaction() as tx:
        await _delete_factor(tx, tenant_id, user_id)
        await _event(tx, tenant_id, user_id, "disabled", ip, clock)


async def reset(
    db: Database, tenant_id: int, user_id: int, by: int, *, ip: str = "", clock: Clock
) -> bool:
    """An owner or admin turns a user's second factor off (a lost phone), so that the user
    signs in with the password alone and enrols again; only an owner may reset an owner's.
    Whether there was one to reset."""
    actor = await require_manager(db, tenant_id, by)
    target = await get_user(db, tenant_id, user_id)
    if target.role == "owner" and actor.role != "owner":
        raise Forbidden("only an owner may reset an owner's second factor")
    async with db.transaction() as tx:
        removed = await _delete_factor(tx, tenant_id, user_id)
        if removed:
            await audit.record(
                tx, tenant_id, "second_factor", user_id=actor.id, actor=actor.email,
                target=f"user {target.id}", ip=ip, detail={"event": "reset_by_admin"},
                clock=clock,
            )  # fmt: skip
    return removed > 0


async def _event(
    db: Database, tenant_id: int, user_id: int, event: str, ip: str, clock: Clock
) -> None:
    """Audit a change a user made to their own second factor."""
    user = await get_user(db, tenant_id, user_id)
    await audit.record(
        db, tenant_id, "second_factor", user_id=user_id, actor=user.email,
        target=f"user {user_id}", ip=ip, detail={"event": event}, clock=clock,
    )  # fmt: skip
