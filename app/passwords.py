"""Password hashing with argon2id, off the event loop, plus the minimal password policy.

Parameters (``PASSWORD_HASHER``): argon2id, 3 passes over 64 MiB with 4 lanes, a 16-byte salt
and a 32-byte tag: RFC 9106's second recommended option ("memory-constrained environments"),
roughly 0.1-0.2 s of one core per hash. Raising them later is safe: a stored hash made
with older parameters still verifies, and ``verify_password`` returns a fresh hash to store.

Hashing runs on a small dedicated thread pool (``HASH_WORKERS`` threads), so a burst of sign-ins
neither blocks the event loop for other tenants nor takes more than ``HASH_WORKERS`` x 64 MiB.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

_T = TypeVar("_T")

HASH_TIME_COST = 3  # passes over memory
HASH_MEMORY_KIB = 64 * 1024  # 64 MiB per hash in flight
HASH_PARALLELISM = 4  # lanes
HASH_LENGTH = 32  # bytes of tag
SALT_LENGTH = 16  # bytes of random salt per hash
HASH_WORKERS = 2  # argon2 computations at once in this process

PASSWORD_MIN_LENGTH = 12
# An upper bound keeps a multi-megabyte "password" from being hashed at all.
PASSWORD_MAX_LENGTH = 1024

PASSWORD_HASHER = PasswordHasher(
    time_cost=HASH_TIME_COST,
    memory_cost=HASH_MEMORY_KIB,
    parallelism=HASH_PARALLELISM,
    hash_len=HASH_LENGTH,
    salt_len=SALT_LENGTH,
    type=Type.ID,
)

# One pool per process, like the id generator: the bound on memory only holds if every caller
# shares it. Its threads start on first use and the interpreter joins them at exit.
_HASH_POOL = ThreadPoolExecutor(max_workers=HASH_WORKERS, thread_name_prefix="argon2")


class Verification(NamedTuple):
    """The outcome of checking a password: ``ok``, and a hash to store instead of the old one
    when the stored hash was made with other parameters (only ever set when ``ok``)."""

    ok: bool
    new_hash: str | None = None


def password_problem(
    password: str,
    min_length: int = PASSWORD_MIN_LENGTH,
    max_length: int = PASSWORD_MAX_LENGTH,
) -> str | None:
    """The policy hook: a message safe to show the user when ``password`` is not acceptable,
    else None. Lengths count characters (code points). Never echoes the password."""
    if len(password) < min_length:
        return f"the password must have at least {min_length} characters"
    if len(password) > max_length:
        return f"the password must have at most {max_length} characters"
    if not password.strip():
        return "the password must not be only spaces"
    return None


async def _in_pool(func: functools.partial[_T]) -> _T:
    return await asyncio.get_running_loop().run_in_executor(_HASH_POOL, func)


async def hash_password(password: str, *, hasher: PasswordHasher = PASSWORD_HASHER) -> str:
    """Return the argon2id hash (PHC string, salt included) of ``password``."""
    return await _in_pool(functools.partial(hasher.hash, password))


def _verify_sync(hasher: PasswordHasher, stored_hash: str, password: str) -> Verification:
    try:
        hasher.verify(stored_hash, password)  # constant-time comparison of the tags
    except (VerificationError, InvalidHashError):
        return Verification(ok=False)
    if hasher.check_needs_rehash(stored_hash):
        return Verification(ok=True, new_hash=hasher.hash(password))
    return Verification(ok=True)


async def verify_password(
    stored_hash: str, password: str, *, hasher: PasswordHasher = PASSWORD_HASHER
) -> Verification:
    """Check ``password`` against ``stored_hash``; a malformed hash is a mismatch, not an error.

    When it matches but the hash was made with parameters other than ``hasher``'s, the result
    carries a new hash for the caller to store.
    """
    return await _in_pool(functools.partial(_verify_sync, hasher, stored_hash, password))


@functools.lru_cache(maxsize=4)
def _dummy_hash(hasher: PasswordHasher) -> str:
    # A hash of a random password nobody knows, made with the hasher's own parameters so that
    # verifying against it costs what verifying a real account costs.
    return hasher.hash(secrets.token_urlsafe(32))


def _dummy_verify_sync(hasher: PasswordHasher, password: str) -> None:
    _verify_sync(hasher, _dummy_hash(hasher), password)


async def prepare_dummy(*, hasher: PasswordHasher = PASSWORD_HASHER) -> None:
    """Make the dummy hash now rather than on the first unknown sign-in (which would then take
    twice as long as the others): call once at start-up. Idempotent."""
    await _in_pool(functools.partial(_dummy_hash, hasher))


async def dummy_verify(password: str, *, hasher: PasswordHasher = PASSWORD_HASHER) -> bool:
    """Spend the time of one verification and return False: for an unknown or inactive account,
    so that the answer's timing does not tell whether the account exists."""
    await _in_pool(functools.partial(_dummy_verify_sync, hasher, password))
    return False
