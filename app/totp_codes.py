"""What a second factor is made of: TOTP codes and their steps, recovery codes, the errors."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

import pyotp

from app.clock import Clock
from app.people import InvalidCredentials, User

ISSUER = "moonwatch"
STEP_S = 30
DIGITS = 6
# Codes of the step before and after now are accepted too: phones' clocks drift.
WINDOW_STEPS = 1
RECOVERY_CODES = 10
# Crockford's base32 (no i, l, o, u): 16 characters are 80 random bits, beyond guessing even
# offline, so the fast hash of app.tokens is enough to store them.
RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_CHARS = 16
_LOOKALIKES = str.maketrans("ilo", "110")

RefusalReason = Literal["wrong_second_factor", "second_factor_replayed", "locked"]


class SecondFactorNeeded(InvalidCredentials):
    """The password was right, but the user has a second factor: ask for a code first.

    A subclass of InvalidCredentials, so a caller that does not ask for codes refuses."""

    def __init__(self, user: User) -> None:
        super().__init__("a second factor is required")
        self.user = user


class SecondFactorRefused(InvalidCredentials):
    """A wrong code, or one whose time step was accepted before (``reason`` tells which)."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__("that code is wrong or was used already")
        self.reason: RefusalReason = reason


@dataclass(frozen=True)
class Proof:
    """What a user offers as their second factor: a TOTP code or a recovery code."""

    totp_code: str = ""
    recovery_code: str = ""

    @classmethod
    def typed(cls, text: str) -> Proof:
        """One form field: six digits are a TOTP code, anything else a recovery code."""
        compact = "".join(text.split())
        if len(compact) == DIGITS and compact.isascii() and compact.isdecimal():
            return cls(totp_code=compact)
        return cls(recovery_code=compact)

    @classmethod
    def offered(cls, totp_code: str, recovery_code: str) -> Proof | None:
        """The proof of two optional fields (a TOTP code first), or None when both are empty."""
        if totp_code.strip():
            return cls(totp_code=totp_code.strip())
        if recovery_code.strip():
            return cls(recovery_code=recovery_code.strip())
        return None

    @property
    def method(self) -> str:
        return "totp" if self.totp_code else "recovery_code"


@dataclass(frozen=True)
class FactorStatus:
    """Whether a user's second factor is on, since when, and how many recovery codes are left."""

    enabled: bool
    enabled_at: int | None
    recovery_codes_left: int


# ---------------------------------------------------------------- pure parts


def time_step(clock: Clock) -> int:
    """The TOTP time step of now (30-second steps since the epoch)."""
    return int(clock.wall_now() // STEP_S)


def matching_steps(secret: str, code: str, now_step: int) -> list[int]:
    """The steps within the window around ``now_step`` whose code is ``code``, oldest first."""
    code = "".join(code.split())
    if len(code) != DIGITS or not code.isascii() or not code.isdecimal():
        return []
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    window = range(now_step - WINDOW_STEPS, now_step + WINDOW_STEPS + 1)
    return [step for step in window if hmac.compare_digest(totp.generate_otp(step), code)]


def provisioning_uri(secret: str, email: str, tenant: str) -> str:
    """The otpauth:// address an authenticator app reads from the QR code."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    return totp.provisioning_uri(name=email, issuer_name=f"{ISSUER} {tenant}")


def new_recovery_code() -> str:
    """A fresh recovery code as shown: four groups of four, e.g. ``7k2m-q9xz-0h4c-w3tp``."""
    plain = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CHARS))
    return "-".join(plain[i : i + 4] for i in range(0, RECOVERY_CHARS, 4))


def normal_recovery_code(text: str) -> str | None:
    """A typed recovery code in its stored form (no dashes or spaces, lower case, look-alike
    letters read as digits); None when it cannot be one."""
    compact = "".join(text.replace("-", " ").split()).lower().translate(_LOOKALIKES)
    if len(compact) != RECOVERY_CHARS or any(c not in RECOVERY_ALPHABET for c in compact):
        return None
    return compact
