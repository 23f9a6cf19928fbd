"""Changing a tenant's security settings: the groups of the admin form, a form's or a JSON
patch's values as settings, and applying them (the gate password hashed, never kept in clear)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from app.db import Database
from app.passwords import PASSWORD_MAX_LENGTH, hash_password
from app.people import PolicyViolation
from app.tenant_settings import SecuritySettings, load_settings, save_settings

# The settings each form of the admin page changes, by the form's name.
GROUPS: dict[str, tuple[str, ...]] = {
    "password": (
        "password_min_length", "password_classes", "password_history", "password_max_age_days",
    ),
    "lockout": ("lockout_attempts", "lockout_minutes"),
    "sessions": ("session_lifetime_hours", "session_idle_minutes"),
    "second_factor": ("require_totp",),
    "networks": ("allowed_networks", "outside_networks", "gate_user", "gate_password"),
    "audit": ("audit_retention_days",),
}  # fmt: skip
_NUMBERS = frozenset(f.name for f in dataclasses.fields(SecuritySettings) if f.type in ("int", int))
_TEXTS = frozenset({"outside_networks", "gate_user", "gate_password"})
HIDDEN = "gate_password_hash"  # never shown, never set directly
MAX_GATE_USER = 100


def public_json(settings: SecuritySettings) -> dict[str, Any]:
    """The settings as the API shows them (without the gate's password hash)."""
    shown = settings.to_json()
    shown.pop(HIDDEN, None)
    return shown


def _number(name: str, text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdecimal() and len(text) <= 6):
        raise PolicyViolation(f"{name} must be a whole number")
    return int(text)


def form_values(group: str, fields: Mapping[str, str], classes: Sequence[str]) -> dict[str, Any]:
    """The settings a submitted form of ``group`` sets (``classes``: the ticked character
    classes); PolicyViolation naming the first field that is not even of the right kind."""
    names = GROUPS.get(group)
    if names is None:
        raise PolicyViolation("no such group of settings")
    values: dict[str, Any] = {}
    for name in names:
        if name in _NUMBERS:
            values[name] = _number(name, fields.get(name, ""))
        elif name == "password_classes":
            values[name] = list(classes)
        elif name == "require_totp":
            values[name] = name in fields
        elif name == "allowed_networks":
            lines = fields.get(name, "").replace(",", "\n").splitlines()
            values[name] = [line.strip() for line in lines if line.strip()]
        else:
            values[name] = fields.get(name, "")
    return values


def _checked(name: str, value: object) -> Any:
    """One value of a JSON patch, checked for its kind (ranges are the settings' own)."""
    if name in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyViolation(f"{name} must be a whole number")
        return value
    if name == "require_totp":
        if not isinstance(value, bool):
            raise PolicyViolation(f"{name} must be true or false")
        return value
    if name in ("password_classes", "allowed_networks"):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise PolicyViolation(f"{name} must be a list of strings")
        return value
    if name in _TEXTS and isinstance(value, str):
        return value
    if name in _TEXTS:
        raise PolicyViolation(f"{name} must be a string")
    raise PolicyViolation(f"unknown setting {name!r}")


def patch_values(body: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a JSON patch sets; PolicyViolation naming a wrong or unknown one."""
    if HIDDEN in body:
        raise PolicyViolation(f"set gate_password (in clear, it is hashed), not {HIDDEN}")
    return {name: _checked(name, value) for name, value in body.items()}


async def _as_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as SecuritySettings fields: lists as sets and tuples, the gate password hashed
    (left unchanged when blank), the gate user trimmed."""
    fields = dict(values)
    if "password_classes" in fields:
        fields["password_classes"] = frozenset(fields["password_classes"])
    if "allowed_networks" in fields:
        fields["allowed_networks"] = tuple(fields["allowed_networks"])
    if "gate_user" in fields:
        fields["gate_user"] = str(fields["gate_user"]).strip()
        if len(fields["gate_user"]) > MAX_GATE_USER or ":" in fields["gate_user"]:
            raise PolicyViolation(f"gate_user has at most {MAX_GATE_USER} characters, no ':'")
    password = fields.pop("gate_password", "")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise PolicyViolation(f"gate_password has at most {PASSWORD_MAX_LENGTH} characters")
    if password:
        fields[HIDDEN] = await hash_password(password)
    return fields


async def apply_changes(
    db: Database, tenant_id: int, values: Mapping[str, Any]
) -> tuple[SecuritySettings, dict[str, tuple[Any, Any]]]:
    """Validate and store ``values`` (PolicyViolation naming the first bad one, and nothing
    changes); return the new settings and what differs from the old (the gate hash hidden)."""
    current = await load_settings(db, tenant_id)
    wanted = current.changed(**await _as_settings(values))
    differences = current.differences(wanted)
    if differences:
        await save_settings(db, tenant_id, wanted)
    return wanted, differences
