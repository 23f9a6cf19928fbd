"""What the app's storage-backed tests share: a fake clock, a cheap password hasher, and a
migrated database on SQLite and on PostgreSQL (the `db` fixture runs each test on both)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from app.db import Database, open_database
from app.migrate import migrate
from tests.support_pg import pg_dsn, pg_server

__all__ = ["FAST", "FakeClock", "clock", "db", "db_url", "pg_dsn", "pg_server"]

START_S = 1_700_000_000.0
DAY_S = 86_400.0
# argon2id at its cheapest: real hashing, but thousands of sign-ins per test run stay fast.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


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
