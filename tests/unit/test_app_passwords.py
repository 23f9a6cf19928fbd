"""Password hashing (argon2id off the event loop, rehash, dummy verification), the password
policy hook and bearer tokens."""

from __future__ import annotations

import hashlib
import threading
from typing import Literal

import argon2
import pytest
from argon2 import PasswordHasher

from app import passwords, tokens
from app.passwords import (
    PASSWORD_HASHER,
    dummy_verify,
    hash_password,
    password_problem,
    verify_password,
)

# Cheap parameters keep the tests fast; the production ones are checked once below.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
FASTER_CHANGED = PasswordHasher(time_cost=2, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery staple"


class RecordingHasher(PasswordHasher):
    """A real hasher that remembers which threads hashed and verified."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.hashes: list[int] = []
        self.verifications: list[int] = []

    @property
    def threads(self) -> set[int]:
        return {*self.hashes, *self.verifications}

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashes.append(threading.get_ident())
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications.append(threading.get_ident())
        return super().verify(hash, password)


async def test_production_parameters_are_argon2id_rfc9106() -> None:
    stored = await hash_password(PASSWORD)
    params = argon2.extract_parameters(stored)
    assert stored.startswith("$argon2id$")
    assert (params.time_cost, params.memory_cost, params.parallelism) == (3, 65536, 4)
    assert (params.hash_len, params.salt_len) == (32, 16)
    assert PASSWORD_HASHER.type is argon2.Type.ID
    assert await verify_password(stored, PASSWORD) == passwords.Verification(ok=True)


async def test_hash_never_contains_the_password_and_is_salted() -> None:
    first = await hash_password(PASSWORD, hasher=FAST)
    second = await hash_password(PASSWORD, hasher=FAST)
    assert PASSWORD not in first
    assert first != second


@pytest.mark.parametrize(
    ("attempt", "ok"),
    [
        (PASSWORD, True),
        (PASSWORD.upper(), False),
        (PASSWORD + " ", False),
        ("", False),
    ],
)
async def test_verify(attempt: str, ok: bool) -> None:
    stored = await hash_password(PASSWORD, hasher=FAST)
    result = await verify_password(stored, attempt, hasher=FAST)
    assert result == passwords.Verification(ok=ok, new_hash=None)


@pytest.mark.parametrize("stored", ["", "not a hash", "$argon2id$v=19$m=8,t=1,p=1$broken"])
async def test_malformed_stored_hash_is_a_mismatch(stored: str) -> None:
    assert await verify_password(stored, PASSWORD, hasher=FAST) == passwords.Verification(False)


async def test_changed_parameters_return_a_new_hash_to_store() -> None:
    old = await hash_password(PASSWORD, hasher=FAST)
    result = await verify_password(old, PASSWORD, hasher=FASTER_CHANGED)
    assert result.ok
    assert result.new_hash is not None
    assert argon2.extract_parameters(result.new_hash).time_cost == 2
    again = await verify_password(result.new_hash, PASSWORD, hasher=FASTER_CHANGED)
    assert again == passwords.Verification(ok=True, new_hash=None)


async def test_wrong_password_never_rehashes() -> None:
    old = await hash_password(PASSWORD, hasher=FAST)
    result = await verify_password(old, "something else entirely", hasher=FASTER_CHANGED)
    assert result == passwords.Verification(ok=False, new_hash=None)


async def test_dummy_verify_does_one_real_verification_and_fails() -> None:
    hasher = RecordingHasher()
    await passwords.prepare_dummy(hasher=hasher)
    await passwords.prepare_dummy(hasher=hasher)
    assert (len(hasher.hashes), len(hasher.verifications)) == (1, 0)
    for _ in range(3):
        assert await dummy_verify(PASSWORD, hasher=hasher) is False
    assert (len(hasher.hashes), len(hasher.verifications)) == (1, 3)


async def test_dummy_verify_prepares_itself_when_needed() -> None:
    hasher = RecordingHasher()
    assert await dummy_verify(PASSWORD, hasher=hasher) is False
    assert (len(hasher.hashes), len(hasher.verifications)) == (1, 1)


async def test_hashing_runs_off_the_event_loop_thread() -> None:
    hasher = RecordingHasher()
    stored = await hash_password(PASSWORD, hasher=hasher)
    await verify_password(stored, PASSWORD, hasher=hasher)
    await dummy_verify(PASSWORD, hasher=hasher)
    assert hasher.threads
    assert threading.get_ident() not in hasher.threads


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("", "at least 12"),
        ("x" * 11, "at least 12"),
        ("x" * 12, None),
        ("é" * 12, None),
        ("x" * 1024, None),
        ("x" * 1025, "at most 1024"),
        (" " * 12, "only spaces"),
    ],
)
def test_password_policy(password: str, problem: str | None) -> None:
    message = password_problem(password)
    if problem is None:
        assert message is None
    else:
        assert message is not None
        assert problem in message
        assert not password.strip() or password not in message


def test_password_policy_takes_other_bounds() -> None:
    assert password_problem("abcd", min_length=4, max_length=4) is None
    assert password_problem("abcde", min_length=4, max_length=4) is not None


def test_new_token_is_random_urlsafe_and_stored_as_sha256() -> None:
    plain, digest = tokens.new_token()
    assert len(plain) == 43  # 32 bytes of base64url without padding
    assert tokens.plausible_token(plain)
    assert digest == hashlib.sha256(plain.encode()).hexdigest()
    assert plain not in digest
    assert len({tokens.new_token()[0] for _ in range(100)}) == 100


def test_token_hash_known_vector() -> None:
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert tokens.token_hash("abc") == expected


def test_matches_compares_hashes() -> None:
    plain, digest = tokens.new_token()
    assert tokens.matches(plain, digest)
    assert not tokens.matches(plain + "x", digest)
    assert not tokens.matches(plain, digest.upper())


@pytest.mark.parametrize(
    ("text", "plausible"),
    [
        ("", False),
        ("a" * 128, True),
        ("a" * 129, False),
        ("abc-DEF_123", True),
        ("abc=", False),
        ("abc def", False),
        ("../../etc", False),
        ("ünïcode", False),
    ],
)
def test_plausible_token(text: str, plausible: bool) -> None:
    assert tokens.plausible_token(text) is plausible
