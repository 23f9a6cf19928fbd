"""A tenant's security settings (password policy, lockout, allowed networks, second factor,
sessions, audit retention): one validated, immutable record kept as JSON in tenants.settings.

An administrator changes them in the admin console; every path (pages, API, file downloads)
reads them through ``load_settings``. Values outside the ranges below are refused with a
PolicyViolation naming the setting, never clamped. Unknown keys in stored JSON are ignored (a
newer release may have written them); a stored value that no longer validates falls back to
its default, so one bad value cannot lock a tenant out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from app.db import Database
from app.people import PolicyViolation

CharacterClass = Literal["lower", "upper", "digit", "symbol"]
CHARACTER_CLASSES: tuple[CharacterClass, ...] = get_args(CharacterClass)
OutsideNetworks = Literal["refuse", "basic"]
# The seed's choices: a lock of 3, 15, 30 or 60 minutes, or 0: until an administrator unlocks.
LOCKOUT_MINUTES = (0, 3, 15, 30, 60)
MAX_NETWORKS = 100


def _between(name: str, value: int, low: int, high: int, *, off: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyViolation(f"{name} must be a whole number")
    if value == off:
        return
    if not low <= value <= high:
        allowed = f"{low} to {high}" + ("" if off is None else f", or {off} for off")
        raise PolicyViolation(f"{name} must be {allowed}, got {value}")


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR range (a bare address is a /32 or /128); PolicyViolation when it is none."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise PolicyViolation(f"{text.strip()[:60]!r} is not an IP range (CIDR)") from None


@dataclass(frozen=True)
class SecuritySettings:
    """Every security setting of one tenant, with its default."""

    password_min_length: int = 12  # 3..128
    password_classes: frozenset[CharacterClass] = frozenset()  # each must appear
    password_history: int = 0  # 1..15 earlier passwords may not be reused; 0: off
    password_max_age_days: int = 0  # 30..3650; 0: passwords never expire
    lockout_attempts: int = 5  # failed sign-ins in a row that lock; 3..10, 0: off
    lockout_minutes: int = 15  # one of LOCKOUT_MINUTES; 0: until an administrator unlocks
    allowed_networks: tuple[str, ...] = ()  # CIDR ranges; empty: from anywhere
    outside_networks: OutsideNetworks = "refuse"  # or a Basic-authentication gate first
    gate_user: str = ""  # the gate's credentials (its password only as an argon2 hash)
    gate_password_hash: str = field(default="", repr=False)
    require_totp: bool = False  # every user must have a second factor to sign in
    session_lifetime_hours: int = 720  # 1..2160
    session_idle_minutes: int = 10_080  # 5..43200
    audit_retention_days: int = 365  # 30..3650

    def __post_init__(self) -> None:
        _between("password_min_length", self.password_min_length, 3, 128)
        unknown = set(self.password_classes) - set(CHARACTER_CLASSES)
        if unknown:
            raise PolicyViolation(
                f"password_classes are among {', '.join(CHARACTER_CLASSES)}, "
                f"not {', '.join(sorted(unknown))}"
            )
        _between("password_history", self.password_history, 1, 15, off=0)
        _between("password_max_age_days", self.password_max_age_days, 30, 3650, off=0)
        _between("lockout_attempts", self.lockout_attempts, 3, 10, off=0)
        if self.lockout_minutes not in LOCKOUT_MINUTES:
            raise PolicyViolation(
                "lockout_minutes must be one of 3, 15, 30, 60, or 0 (until unlocked)"
            )
        self._check_networks()
        _between("session_lifetime_hours", self.session_lifetime_hours, 1, 2160)
        _between("session_idle_minutes", self.session_idle_minutes, 5, 43_200)
        _between("audit_retention_days", self.audit_retention_days, 30, 3650)

    def _check_networks(self) -> None:
        if len(self.allowed_networks) > MAX_NETWORKS:
            raise PolicyViolation(f"allowed_networks holds at most {MAX_NETWORKS} ranges")
        for text in self.allowed_networks:
            parse_network(text)
        if self.outside_networks not in get_args(OutsideNetworks):
            raise PolicyViolation("outside_networks is 'refuse' or 'basic'")
        if self.outside_networks == "basic" and not (self.gate_user and self.gate_password_hash):
            raise PolicyViolation("the Basic-authentication gate needs a user and a password")

    @property
    def session_lifetime_s(self) -> int:
        return self.session_lifetime_hours * 3600

    @property
    def session_idle_s(self) -> int:
        return self.session_idle_minutes * 60

    def to_json(self) -> dict[str, Any]:
        """The stored form (JSON types only)."""
        data = dataclasses.asdict(self)
        data["password_classes"] = sorted(self.password_classes)
        data["allowed_networks"] = list(self.allowed_networks)
        return data

    @classmethod
    def from_json(cls, data: object) -> SecuritySettings:
        """Stored settings: known keys that validate, defaults for the rest."""
        if not isinstance(data, dict):
            return cls()
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name in data:
                value = data[item.name]
                if isinstance(value, list):
                    value = frozenset(value) if item.name == "password_classes" else tuple(value)
                values[item.name] = value
        try:
            return cls(**values)
        except (PolicyViolation, TypeError):
            pass
        settings = cls()  # one bad value: keep the others, one at a time (the gate last)
        for name in sorted(values, key=lambda n: n == "outside_networks"):
            try:
                settings = dataclasses.replace(settings, **{name: values[name]})
            except (PolicyViolation, TypeError):
                continue
        return settings

    def changed(self, **values: Any) -> SecuritySettings:
        """A copy with ``values`` changed; PolicyViolation naming the first bad one."""
        unknown = set(values) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise PolicyViolation(f"unknown setting {sorted(unknown)[0]!r}")
        return dataclasses.replace(self, **values)

    def differences(self, other: SecuritySettings) -> dict[str, tuple[Any, Any]]:
        """Setting name -> (this value, the other's), for what differs (gate hash hidden)."""
        mine, theirs = self.to_json(), other.to_json()
        diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
        if "gate_password_hash" in diff:
            diff["gate_password_hash"] = ("(hidden)", "(changed)")
        return diff


async def load_settings(db: Database, tenant_id: int) -> SecuritySettings:
    """The tenant's settings (defaults for a tenant that never changed any)."""
    raw = await db.fetchval("SELECT settings FROM tenants WHERE id = ?", tenant_id)
    if raw is None:
        return SecuritySettings()
    try:
        stored = json.loads(raw)
    except ValueError:
        return SecuritySettings()
    return SecuritySettings.from_json(stored.get("security") if isinstance(stored, dict) else {})


async def save_settings(db: Database, tenant_id: int, settings: SecuritySettings) -> None:
    """Store ``settings`` (already validated by construction), keeping other keys of the
    tenant's settings JSON."""
    async with db.transaction() as tx:
        raw = await tx.fetchval("SELECT settings FROM tenants WHERE id = ?", tenant_id)
        try:
            stored = json.loads(raw) if raw else {}
        except ValueError:
            stored = {}
        if not isinstance(stored, dict):
            stored = {}
        stored["security"] = settings.to_json()
        await tx.execute(
            "UPDATE tenants SET settings = ? WHERE id = ?", json.dumps(stored), tenant_id
        )
