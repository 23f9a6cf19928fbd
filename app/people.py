"""People of a tenant as records, with the errors, input rules and lookups that accounts,
sessions and API tokens share. Every query names its tenant; *_at are unix ms."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from app.clock import Clock, SystemClock
from app.db import Database
from app.passwords import password_problem

Role = Literal["owner", "admin", "member", "guest"]
ROLES: tuple[Role, ...] = get_args(Role)
MANAGERS: frozenset[str] = frozenset({"owner", "admin"})
LAST_SEEN_STEP_MS = 60_000  # last_seen_at / last_used_at move at most once a minute
MAX_DISPLAY_NAME = 100
# The most rows one page of a people list (users, invitations) holds.
LIST_LIMIT_MAX = 100
MAX_EMAIL = 254
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
    # When the password was last set (None: before such records), and whether an
    # administrator asked for a new one: with the tenant's policy, whether it has expired.
    password_changed_at: int | None = None
    must_change_password: bool = False


@dataclass(frozen=True)
class UserPage:
    """One page of ``list_users``; pass ``next_after_id`` back for the next (None: last page)."""

    users: list[User]
    next_after_id: int | None


_USER_FIELDS = (
    *("id", "tenant_id", "email", "display_name", "role", "active", "created_at"),
    *("password_changed_at", "must_change_password"),
)


def user_columns(alias: str = "users") -> str:
    """The SELECT list of a User from the users table called ``alias``."""
    fields = ", ".join(f"{alias}.{field}" for field in _USER_FIELDS)
    return f"{fields}, ({alias}.password_hash IS NOT NULL) AS password_set"


def user_from_row(row: dict[str, Any]) -> User:
    """A User from a row selected with ``user_columns``."""
    return User(
        id=int(row["id"]),
        tenant_id=int(row["tenant_id"]),
        email=str(row["email"]),
        display_name=str(row["display_name"]),
        role=cast(Role, row["role"]),
        active=bool(row["active"]),
        password_set=bool(row["password_set"]),
        created_at=int(row["created_at"]),
        password_changed_at=_optional_int(row.get("password_changed_at")),
        must_change_password=bool(row.get("must_change_password")),
    )


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def tenant_from_row(row: dict[str, Any]) -> Tenant:
    """A Tenant from a row of the tenants table."""
    return Tenant(
        int(row["id"]), str(row["name"]), str(row["display_name"]), int(row["created_at"])
    )


# ---------------------------------------------------------------- input rules


def now_ms(clock: Clock | None) -> int:
    """Wall-clock now in unix ms (the system clock when ``clock`` is None)."""
    return int((clock or SystemClock()).wall_now() * 1000)


def duration_ms(seconds: float, what: str) -> int:
    """A positive duration in ms; ValueError naming ``what`` otherwise."""
    if not seconds > 0:
        raise ValueError(f"{what} must be positive, not {seconds!r}")
    return int(seconds * 1000)


def normalize_email(email: str) -> str:
    """Trimmed and lower-cased (how it is stored and compared); PolicyViolation if malformed."""
    email = email.strip().lower()
    if len(email) > MAX_EMAIL or _EMAIL.match(email) is None:
        raise PolicyViolation("that is not a valid e-mail address")
    return email


def clean_display_name(name: str) -> str:
    """The trimmed display name; PolicyViolation when empty, too long or unprintable."""
    name = name.strip()
    if not 0 < len(name) <= MAX_DISPLAY_NAME or not name.isprintable():
        raise PolicyViolation(f"a name has 1 to {MAX_DISPLAY_NAME} printable characters")
    return name


def checked_role(role: str) -> Role:
    """``role`` as a Role; PolicyViolation when it names none."""
    if role not in ROLES:
        raise PolicyViolation(f"a role is one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> None:
    """PolicyViolation with the policy's message when ``password`` breaks it."""
    problem = password_problem(password)
    if problem is not None:
        raise PolicyViolation(problem)


# ---------------------------------------------------------------- shared queries


async def find_user(db: Database, tenant_id: int, user_id: int) -> User | None:
    """The user ``user_id`` of this tenant, or None."""
    row = await db.fetchrow(
        f"SELECT {user_columns()} FROM users WHERE tenant_id = ? AND id = ?", tenant_id, user_id
    )
    return None if row is None else user_from_row(row)


async def get_user(db: Database, tenant_id: int, user_id: int) -> User:
    """The user ``user_id`` of this tenant; NotFound otherwise."""
    user = await find_user(db, tenant_id, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


async def require_manager(db: Database, tenant_id: int, by: int) -> User:
    """The acting user, who must be an active owner or admin of this tenant."""
    actor = await find_user(db, tenant_id, by)
    if actor is None or not actor.active or actor.role not in MANAGERS:
        raise Forbidden("only an owner or admin of this workspace may do that")
    return actor
