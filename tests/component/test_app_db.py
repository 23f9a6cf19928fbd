"""The app's storage on real SQLite files and a real PostgreSQL server: migrations, portable SQL
with ``?`` placeholders, our own errors, transactions, full-text search."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.db import (
    Conflict,
    Database,
    Invalid,
    SqliteDatabase,
    TransactionMisuse,
    Unavailable,
    open_database,
    postgres_placeholders,
    redact_dsn,
    search_match,
    search_messages,
    split_sqlite_script,
)
from app.ids import new_id
from app.migrate import (
    MigrationError,
    load_migrations,
    migrate,
    parse_migration,
    split_dialects,
)
from tests.support_pg import PostgresServer, pg_dsn, pg_server, postgres_server

# Fixtures shared from tests.support_pg; pytest finds them as names of this module.
__all__ = ["pg_dsn", "pg_server"]

NOW_S = 1_700_000_000.0
NOW_MS = 1_700_000_000_000


class FixedClock:
    def wall_now(self) -> float:
        return NOW_S

    def boottime(self) -> float:
        return 0.0

    def monotonic(self) -> float:
        return 0.0


# Every migration of app/migrations, in order: what a fresh database gets.
ALL_MIGRATIONS = [m.name for m in load_migrations()]


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
        yield database
    finally:
        await database.close()


@pytest.fixture
async def mdb(db: Database) -> Database:
    """A migrated database."""
    assert await migrate(db, clock=FixedClock()) == ALL_MIGRATIONS
    return db


@dataclass
class Tenant:
    id: int
    owner: int
    member: int
    public_space: int
    private_space: int
    public_thread: int
    private_thread: int


async def add_user(db: Database, tenant_id: int, email: str, role: str = "member") -> int:
    user_id = new_id()
    await db.execute(
        "INSERT INTO users (id, tenant_id, email, display_name, role, active, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        user_id, tenant_id, email, email.partition("@")[0], role, True, NOW_MS,
    )  # fmt: skip
    return user_id


async def add_space(db: Database, tenant_id: int, owner: int, name: str, private: bool) -> int:
    space_id = new_id()
    await db.execute(
        "INSERT INTO spaces (id, tenant_id, name, private, created_by, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        space_id, tenant_id, name, int(private), owner, NOW_MS,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO space_members (tenant_id, space_id, user_id, role, joined_at) "
        "VALUES (?, ?, ?, 'admin', ?)",
        tenant_id, space_id, owner, NOW_MS,
    )  # fmt: skip
    return space_id


async def add_thread(db: Database, tenant_id: int, space_id: int, author: int) -> int:
    thread_id = new_id()
    await db.execute(
        "INSERT INTO threads (id, tenant_id, space_id, title, created_by, created_at, "
        "last_message_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        thread_id, tenant_id, space_id, "a thread", author, NOW_MS, NOW_MS,
    )  # fmt: skip
    return thread_id


async def add_message(db: Database, tenant: Tenant, body: str, *, private: bool = False) -> int:
    message_id = new_id()
    space = tenant.private_space if private else tenant.public_space
    thread = tenant.private_thread if private else tenant.public_thread
    await db.execute(
        "INSERT INTO messages (id, tenant_id, thread_id, space_id, author_id, body, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        message_id, tenant.id, thread, space, tenant.owner, body, NOW_MS,
    )  # fmt: skip
    return message_id


async def add_tenant(db: Database, name: str) -> Tenant:
    tenant_id = new_id()
    await db.execute(
        "INSERT INTO tenants (id, name, display_name, created_at) VALUES (?, ?, ?, ?)",
        tenant_id, name, name.title(), NOW_MS,
    )  # fmt: skip
    owner = await add_user(db, tenant_id, f"owner@{name}.test", "owner")
    member = await add_user(db, tenant_id, f"member@{name}.test")
    public_space = await add_space(db, tenant_id, owner, "general", private=False)
    private_space = await add_space(db, tenant_id, owner, "board", private=True)
    return Tenant(
        tenant_id,
        owner,
        member,
        public_space,
        private_space,
        await add_thread(db, tenant_id, public_space, owner),
        await add_thread(db, tenant_id, private_space, owner),
    )


async def count(db: Database, table: str, tenant_id: int | None = None) -> int:
    if tenant_id is None:
        value = await db.fetchval(f"SELECT count(*) FROM {table}")
    else:
        value = await db.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = ?", tenant_id)
    return int(value)


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ?", "SELECT $1"),
        ("UPDATE t SET a = ?, b = ? WHERE id=?", "UPDATE t SET a = $1, b = $2 WHERE id=$3"),
        ("SELECT 'what?' , ? FROM t", "SELECT 'what?' , $1 FROM t"),
        ("SELECT 'it''s ?', \"odd?col\", ?", "SELECT 'it''s ?', \"odd?col\", $1"),
        ("SELECT ? -- really?\n, ?", "SELECT $1 -- really?\n, $2"),
        ("SELECT /* ? */ ?", "SELECT /* ? */ $1"),
        ("SELECT $$a?b$$, $q$?$q$, ?::bigint", "SELECT $$a?b$$, $q$?$q$, $1::bigint"),
        ("SELECT 1", "SELECT 1"),
    ],
)
def test_postgres_placeholders(sql: str, expected: str) -> None:
    assert postgres_placeholders(sql) == expected


def test_split_dialects_by_marker_lines() -> None:
    text = "CREATE TABLE a (x INTEGER);\n-- sqlite:\nS;\n--postgres:\nP;\n  -- both:  \nB;\n"
    parts = split_dialects(text)
    assert parts["sqlite"] == "CREATE TABLE a (x INTEGER);\nS;\nB;\n"
    assert parts["postgres"] == "CREATE TABLE a (x INTEGER);\nP;\nB;\n"


def test_split_sqlite_script_keeps_trigger_bodies_whole() -> None:
    script = (
        "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT ';');\n"
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n-- done\n"
    )
    statements = split_sqlite_script(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


def test_migration_files_are_named_and_numbered() -> None:
    migrations = load_migrations()
    assert [m.name for m in migrations][:1] == ["0001_core"]
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    with pytest.raises(MigrationError, match="NNNN_name"):
        parse_migration("1_core.sql", "")


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("postgresql://db/x?password=s3cret&sslmode=require", "postgresql://db/x?password=***&sslmode=require"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
    ],
)  # fmt: skip
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("mysql://db/x", "unsupported database URL scheme 'mysql'"),
        ("sqlite://relative.db", "absolute path"),
        (":memory:", "needs a database file"),
    ],
)
async def test_open_database_refuses_unknown_targets(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await open_database(target)


def test_search_match_never_passes_operators() -> None:
    assert search_match("sqlite", ' budget  "q3 ') == '"budget" """q3"'
    assert search_match("postgres", " budget  q3 ") == "budget q3"
    assert search_match("sqlite", '" * ( -') is None


# ---------------------------------------------------------------- migrations


async def test_migrate_fresh_then_again_applies_nothing(db: Database) -> None:
    assert await migrate(db, clock=FixedClock()) == ALL_MIGRATIONS
    assert await migrate(db, clock=FixedClock()) == []
    rows = await db.fetch("SELECT version, name, applied_at FROM schema_migrations")
    assert rows == [
        {"version": int(name[:4]), "name": name, "applied_at": NOW_MS} for name in ALL_MIGRATIONS
    ]


async def test_migrate_refuses_a_database_from_newer_code(mdb: Database) -> None:
    await mdb.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        9999, "9999_future", NOW_MS,
    )  # fmt: skip
    with pytest.raises(MigrationError, match=r"9999 \(9999_future\).*newer version"):
        await migrate(mdb)


async def test_migrate_refuses_a_renamed_migration(mdb: Database) -> None:
    renamed = parse_migration("0001_other.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="recorded as '0001_core'"):
        await migrate(mdb, migrations=[renamed, *load_migrations()[1:]])


async def test_migration_sections_run_on_their_dialect_only(mdb: Database) -> None:
    extra = parse_migration(
        "0099_extra.sql",
        "CREATE TABLE extra (\n    id BIGINT PRIMARY KEY,\n"
        "-- sqlite:\n    flavor TEXT NOT NULL DEFAULT 'sqlite'\n"
        "-- postgres:\n    flavor TEXT NOT NULL DEFAULT 'postgres'\n"
        "-- both:\n);\n",
    )
    assert await migrate(mdb, migrations=[*load_migrations(), extra]) == ["0099_extra"]
    await mdb.execute("INSERT INTO extra (id) VALUES (?)", 1)
    assert await mdb.fetchval("SELECT flavor FROM extra") == mdb.dialect


async def test_a_failing_migration_leaves_nothing_behind(mdb: Database) -> None:
    broken = parse_migration(
        "0099_broken.sql", "CREATE TABLE half (id BIGINT);\nSELECT * FROM no_such_table;\n"
    )
    with pytest.raises((sqlite3.Error, asyncpg.PostgresError)):
        await migrate(mdb, migrations=[*load_migrations(), broken])
    assert await mdb.fetchval("SELECT max(version) FROM schema_migrations") == int(
        ALL_MIGRATIONS[-1][:4]
    )
    with pytest.raises((sqlite3.Error, asyncpg.PostgresError)):
        await mdb.fetch("SELECT * FROM half")


# ---------------------------------------------------------------- statements and errors


async def test_crud_round_trip_with_placeholders(mdb: Database) -> None:
    tenant_id = new_id()
    inserted = await mdb.execute(
        "INSERT INTO tenants (id, name, display_name, created_at, settings) "
        "VALUES (?, ?, 'Who? What?', ?, ?)",
        tenant_id, "acme", NOW_MS, '{"lockout": 5}',
    )  # fmt: skip
    assert inserted == 1
    row = await mdb.fetchrow(
        "SELECT * FROM tenants WHERE display_name = 'Who? What?' AND id = ?", tenant_id
    )
    assert row == {
        "id": tenant_id,
        "name": "acme",
        "display_name": "Who? What?",
        "created_at": NOW_MS,
        "settings": '{"lockout": 5}',
    }
    user = await add_user(mdb, tenant_id, "ann@acme.test")
    await add_user(mdb, tenant_id, "bob@acme.test")
    changed = await mdb.execute("UPDATE users SET active = ? WHERE tenant_id = ?", False, tenant_id)
    assert changed == 2
    emails = await mdb.fetch(
        "SELECT email, active FROM users WHERE tenant_id = ? ORDER BY id", tenant_id
    )
    assert emails == [
        {"email": "ann@acme.test", "active": 0},
        {"email": "bob@acme.test", "active": 0},
    ]
    assert await mdb.execute("DELETE FROM users WHERE id = ?", user) == 1
    assert await mdb.execute("DELETE FROM users WHERE id = ?", user) == 0
    assert await mdb.fetchrow("SELECT * FROM users WHERE id = ?", user) is None
    assert await mdb.fetchval("SELECT email FROM users WHERE id = ?", user) is None
    assert await count(mdb, "users", tenant_id) == 1
    assert await mdb.execute("CREATE TABLE scratch (id BIGINT)") == 0


async def test_duplicate_email_in_a_tenant_is_a_conflict_whatever_its_case(mdb: Database) -> None:
    acme = await add_tenant(mdb, "acme")
    globex = await add_tenant(mdb, "globex")
    await add_user(mdb, acme.id, "Ann@Acme.test")
    with pytest.raises(Conflict):
        await add_user(mdb, acme.id, "ann@acme.TEST")
    await add_user(mdb, globex.id, "ann@acme.test")  # another tenant: fine
    with pytest.raises(Conflict):
        await mdb.execute(
            "INSERT INTO tenants (id, name, display_name, created_at) VALUES (?, ?, ?, ?)",
            new_id(), "acme", "Acme again", NOW_MS,
        )  # fmt: skip


async def test_broken_references_and_checks_are_invalid(mdb: Database) -> None:
    acme = await add_tenant(mdb, "acme")
    globex = await add_tenant(mdb, "globex")
    with pytest.raises(Invalid):
        await add_user(mdb, new_id(), "nobody@nowhere.test")  # no such tenant
    with pytest.raises(Invalid):  # a globex user cannot join an acme space
        await mdb.execute(
            "INSERT INTO space_members (tenant_id, space_id, user_id, joined_at) "
            "VALUES (?, ?, ?, ?)",
            acme.id, acme.public_space, globex.member, NOW_MS,
        )  # fmt: skip
    with pytest.raises(Invalid):  # a message must name its thread's own space
        await mdb.execute(
            "INSERT INTO messages (id, tenant_id, thread_id, space_id, author_id, body, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            new_id(), acme.id, acme.public_thread, acme.private_space, acme.owner, "x", NOW_MS,
        )  # fmt: skip
    with pytest.raises(Invalid):
        await add_user(mdb, acme.id, "root@acme.test", role="superuser")


async def test_deleting_a_tenant_deletes_its_rows_only(mdb: Database) -> None:
    acme = await add_tenant(mdb, "acme")
    globex = await add_tenant(mdb, "globex")
    for tenant in (acme, globex):
        await add_message(mdb, tenant, "hello there")
    assert await mdb.execute("DELETE FROM tenants WHERE id = ?", acme.id) == 1
    for table in ("users", "spaces", "space_members", "threads", "messages"):
        assert await count(mdb, table, acme.id) == 0
        assert await count(mdb, table, globex.id) > 0
    assert await search_messages(mdb, globex.id, globex.owner, "hello")


# ---------------------------------------------------------------- transactions


async def test_a_transaction_commits_or_rolls_back_as_a_whole(mdb: Database) -> None:
    acme = await add_tenant(mdb, "acme")
    async with mdb.transaction() as tx:
        await add_user(tx, acme.id, "kept@acme.test")
    with pytest.raises(RuntimeError, match="boom"):
        async with mdb.transaction() as tx:
            await add_user(tx, acme.id, "gone@acme.test")
            assert await count(tx, "users", acme.id) == 4
            raise RuntimeError("boom")
    with pytest.raises(Conflict):
        async with mdb.transaction() as tx:
            await add_user(tx, acme.id, "also-gone@acme.test")
            await add_user(tx, acme.id, "kept@acme.test")
    emails = {row["email"] for row in await mdb.fetch("SELECT email FROM users")}
    assert emails == {"owner@acme.test", "member@acme.test", "kept@acme.test"}


async def test_transactions_do_not_nest_and_end_for_good(mdb: Database) -> None:
    async with mdb.transaction() as tx:
        with pytest.raises(TransactionMisuse, match="nested"):
            tx.transaction()
        with pytest.raises(TransactionMisuse, match="inside a transaction"):
            async with mdb.transaction():
                pass
        with pytest.raises(TransactionMisuse, match="inside a transaction"):
            await mdb.fetchval("SELECT 1")
        assert await tx.fetchval("SELECT 1") == 1
    with pytest.raises(TransactionMisuse, match="ended"):
        await tx.fetchval("SELECT 1")
    assert await mdb.fetchval("SELECT 1") == 1


async def test_a_cancelled_transaction_rolls_back(mdb: Database) -> None:
    acme = await add_tenant(mdb, "acme")
    inside = asyncio.Event()

    async def slow() -> None:
        async with mdb.transaction() as tx:
            await add_user(tx, acme.id, "cancelled@acme.test")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await count(mdb, "users", acme.id) == 2
    await add_user(mdb, acme.id, "after@acme.test")  # the writer is free again


# ---------------------------------------------------------------- search


async def search(db: Database, tenant: Tenant, text: str, **kw: Any) -> list[str]:
    return [row["body"] for row in await search_messages(db, tenant.id, tenant.member, text, **kw)]


async def test_search_finds_only_the_tenants_visible_messages(mdb: Database) -> None:
    acme = await add_tenant(mdb, "acme")
    globex = await add_tenant(mdb, "globex")
    await add_message(mdb, acme, "Quarterly budget review on Friday")
    await add_message(mdb, acme, "lunch plans")
    await add_message(mdb, acme, "budget secrets of the board", private=True)
    await add_message(mdb, globex, "the globex budget")
    assert await search(mdb, acme, "BUDGET") == ["Quarterly budget review on Friday"]
    assert await search(mdb, globex, "budget") == ["the globex budget"]
    assert await search(mdb, acme, "budget friday") == ["Quarterly budget review on Friday"]
    assert await search(mdb, acme, "budget nothing") == []
    assert await search(mdb, acme, '"budget') == ["Quarterly budget review on Friday"]
    assert await search(mdb, acme, "( * -") == []
    # a member of the private space sees it; with public_spaces=False only member spaces count
    await mdb.execute(
        "INSERT INTO space_members (tenant_id, space_id, user_id, joined_at) VALUES (?, ?, ?, ?)",
        acme.id, acme.private_space, acme.member, NOW_MS,
    )  # fmt: skip
    assert await search(mdb, acme, "budget") == [
        "budget secrets of the board",
        "Quarterly budget review on Friday",
    ]
    assert await search(mdb, acme, "budget", public_spaces=False) == ["budget secrets of the board"]


async def test_search_index_follows_updates_and_deletes(mdb: Database) -> None:
    acme = await add_tenant(mdb, "acme")
    first = await add_message(mdb, acme, "budget draft one")
    second = await add_message(mdb, acme, "budget draft two")
    third = await add_message(mdb, acme, "budget draft three")
    assert await search(mdb, acme, "budget", limit=2) == ["budget draft three", "budget draft two"]
    assert await search(mdb, acme, "budget", before_id=second) == ["budget draft one"]
    await mdb.execute(
        "UPDATE messages SET body = ?, edited_at = ? WHERE id = ?", "forecast", 1, first
    )
    assert await search(mdb, acme, "one") == []
    assert await search(mdb, acme, "forecast") == ["forecast"]
    await mdb.execute("DELETE FROM messages WHERE id = ?", second)
    await mdb.execute("UPDATE messages SET deleted_at = ? WHERE id = ?", NOW_MS, third)
    assert await search(mdb, acme, "budget") == []
    assert await search(mdb, acme, "draft") == []
    if mdb.dialect == "sqlite":  # the external-content index agrees with its table
        await mdb.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


# ---------------------------------------------------------------- availability


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_unreachable_databases_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot open SQLite database"):
        await open_database(tmp_path / "missing" / "app.sqlite3")
    dsn = f"postgresql://app:s3cret@127.0.0.1:{_closed_port()}/app"
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1") as caught:
        await open_database(dsn)
    assert "s3cret" not in str(caught.value)


async def test_a_missing_postgres_database_is_unavailable(pg_server: PostgresServer) -> None:
    with pytest.raises(Unavailable, match="does_not_exist"):
        await open_database(pg_server.dsn("does_not_exist"))


async def test_a_closed_database_is_unavailable(db: Database) -> None:
    await db.close()
    with pytest.raises(Unavailable, match="closed"):
        await db.fetchval("SELECT 1")
    await db.close()  # idempotent


async def test_a_stopped_postgres_server_is_unavailable(tmp_path: Path) -> None:
    db: Database | None = None
    try:
        async with postgres_server(tmp_path) as dsn:
            db = await open_database(dsn)
            assert await db.fetchval("SELECT 1") == 1
        # leaving the block stopped the server
        with pytest.raises(Unavailable):
            await db.fetchval("SELECT 1")
    finally:
        if db is not None:
            await db.close()


# ---------------------------------------------------------------- SQLite writers


async def test_sqlite_concurrent_writers_never_see_database_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite3"
    # Two Databases on one file: like two processes, they meet at SQLite's file lock.
    first = await SqliteDatabase.open(path)
    second = await SqliteDatabase.open(path)
    try:
        await migrate(first)
        acme = await add_tenant(first, "acme")
        await first.execute("UPDATE tenants SET settings = '0' WHERE id = ?", acme.id)

        async def bump(db: Database, n: int) -> None:
            async with db.transaction() as tx:
                value = int(await tx.fetchval("SELECT settings FROM tenants WHERE id = ?", acme.id))
                await add_user(tx, acme.id, f"user{n}@acme.test")
                await tx.execute(
                    "UPDATE tenants SET settings = ? WHERE id = ?", str(value + 1), acme.id
                )
            await db.execute("UPDATE users SET active = 0 WHERE email = ?", f"user{n}@acme.test")
            await db.fetchval("SELECT count(*) FROM users")

        await asyncio.gather(*(bump(first if n % 2 else second, n) for n in range(60)))
        assert await second.fetchval("SELECT settings FROM tenants WHERE id = ?", acme.id) == "60"
        assert await count(first, "users", acme.id) == 62
    finally:
        await first.close()
        await second.close()
