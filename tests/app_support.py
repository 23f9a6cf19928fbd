"""What the app's storage-backed tests share: a fake clock, a cheap password hasher, and a
migrated database on SQLite and on PostgreSQL (the `db` fixture runs each test on both)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from app import accounts
from app.accounts import User
from app.db import Database, open_database
from app.migrate import migrate
from tests.support_pg import pg_dsn, pg_server

__all__ = [
    "FAST",
    "PASSWORD",
    "FakeClock",
    "People",
    "clock",
    "db",
    "db_url",
    "new_people",
    "pg_dsn",
    "pg_server",
]

START_S = 1_700_000_000.0
DAY_S = 86_400.0
# argon2id at its cheapest: real hashing, but thousands of sign-ins per test run stay fast.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "a long password 1"


class FakeClock:
    """Wall time that moves only when the test says so."""

    def __init__(self, now: float = START_S) -> None:
        self.now = now

    def wall_now(self) -> float:
        return self.now

    def boottime(self) -> float:
        return self.now - START_S

    def monotonic(self) -> float:
        return self.now - START_S

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'app.sqlite3'}"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url)
    try:
        await migrate(database)
        yield database
    finally:
        await database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class People:
    """A tenant with an owner, an admin, two members and a guest."""

    tenant_id: int
    owner: User
    admin: User
    alice: User
    bob: User
    guest: User


async def add_user(db: Database, tenant_id: int, owner: User, email: str, role: str) -> User:
    token = await accounts.invite(db, tenant_id, email, role, owner.id, DAY_S)
    name = email.partition("@")[0].title()
    return await accounts.accept_invitation(db, tenant_id, token, name, PASSWORD, hasher=FAST)


async def new_people(db: Database, clock: FakeClock, name: str) -> People:
    """Tenant `name` and its five people, each with PASSWORD."""
    tenant, setup = await accounts.create_tenant(db, name, name.title(), "boss@example.com", clock)
    owner = await accounts.accept_invitation(
        db, tenant.id, setup, "The Boss", PASSWORD, clock=clock, hasher=FAST
    )
    admin = await add_user(db, tenant.id, owner, "admin@example.com", "admin")
    alice = await add_user(db, tenant.id, owner, "alice@example.com", "member")
    bob = await add_user(db, tenant.id, owner, "bob@example.com", "member")
    guest = await add_user(db, tenant.id, owner, "gus@example.com", "guest")
    return People(tenant.id, owner, admin, alice, bob, guest)
