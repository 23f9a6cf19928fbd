"""Numbered SQL migrations, applied in order at start, each in its own transaction.

Files are ``app/migrations/NNNN_name.sql`` (four digits, then lower-case words): version NNNN,
name ``NNNN_name``. A file is SQL shared by both backends, except where a marker line switches
the dialect the following lines belong to, until the next marker:

    -- sqlite:      lines for SQLite only
    -- postgres:    lines for PostgreSQL only
    -- both:        shared lines again (the default at the top of the file)

A marker is a line of its own (surrounding blanks allowed) and may sit inside a statement, so a
single column can differ. Statements end with ``;``; on PostgreSQL a file runs as one script,
on SQLite it is split into statements (semicolons inside trigger bodies are fine).

Each applied version is recorded in ``schema_migrations(version, name, applied_at)``. Running
again applies only what is missing. A database that has a version this code does not know was
migrated by newer code: ``migrate`` refuses to touch it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.clock import Clock, SystemClock
from app.db import Database, Dialect

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9]+(?:_[a-z0-9]+)*)\.sql$")
_MARKER = re.compile(r"^--\s*(sqlite|postgres|both):\s*$")
_DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgres")
# Serializes migrating processes on PostgreSQL (SQLite's BEGIN IMMEDIATE does that already).
_PG_LOCK_KEY = 0x6D6F6F6E  # "moon"

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)"""


class MigrationError(Exception):
    """The migrations or the database's record of them are not what this code expects."""


@dataclass(frozen=True)
class Migration:
    """One numbered migration: its SQL for each dialect."""

    version: int
    name: str
    sqlite: str
    postgres: str

    def sql(self, dialect: Dialect) -> str:
        """The statements to run on ``dialect``."""
        return self.sqlite if dialect == "sqlite" else self.postgres


def split_dialects(text: str) -> dict[Dialect, str]:
    """Split a migration's text at its ``-- sqlite:`` / ``-- postgres:`` / ``-- both:`` marker
    lines into the text each dialect runs."""
    lines: dict[Dialect, list[str]] = {dialect: [] for dialect in _DIALECTS}
    targets = _DIALECTS
    for line in text.splitlines():
        marker = _MARKER.match(line.strip())
        if marker is not None:
            word = marker.group(1)
            targets = tuple(d for d in _DIALECTS if word in (d, "both"))
            continue
        for dialect in targets:
            lines[dialect].append(line)
    return {dialect: "\n".join(lines[dialect]) + "\n" for dialect in _DIALECTS}


def parse_migration(file_name: str, text: str) -> Migration:
    """Build a migration from its file name and contents; MigrationError on a bad name."""
    match = _FILE_NAME.match(file_name)
    if match is None:
        raise MigrationError(f"migration file {file_name!r} is not named NNNN_name.sql")
    parts = split_dialects(text)
    name = file_name.removesuffix(".sql")
    return Migration(int(match.group(1)), name, parts["sqlite"], parts["postgres"])


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``*.sql`` file of ``directory``, by version; MigrationError on a bad or repeated
    version (a misnamed file is an error, never silently skipped)."""
    paths = directory.glob("*.sql")
    migrations = [parse_migration(p.name, p.read_text(encoding="utf-8")) for p in paths]
    migrations.sort(key=lambda m: m.version)
    for before, after in itertools.pairwise(migrations):
        if before.version == after.version:
            raise MigrationError(f"{before.name} and {after.name} have the same version")
    return migrations


async def _applied(db: Database) -> dict[int, str]:
    rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return {int(row["version"]): str(row["name"]) for row in rows}


def check_known(applied: dict[int, str], known: Sequence[Migration]) -> None:
    """Refuse a database migrated by other code: an unknown version (newer code ran here) or
    a known version recorded under another name."""
    names = {m.version: m.name for m in known}
    newest = max(known, key=lambda m: m.version).name if known else "none"
    unknown = [f"{v:04d} ({applied[v]})" for v in sorted(applied) if v not in names]
    if unknown:
        raise MigrationError(
            f"the database has migration(s) {', '.join(unknown)} that this code does not know "
            f"(its newest is {newest}): it was migrated by a newer version; refusing to run"
        )
    for version, name in sorted(applied.items()):
        if names[version] != name:
            raise MigrationError(
                f"migration {version:04d} is recorded as {name!r} but this code calls it "
                f"{names[version]!r}; refusing to guess which schema the database has"
            )


async def _lock(tx: Database) -> None:
    if tx.dialect == "postgres":
        await tx.execute(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")


async def migrate(
    db: Database, *, migrations: Sequence[Migration] | None = None, clock: Clock | None = None
) -> list[str]:
    """Apply the migrations the database lacks, in version order, one transaction each.

    Returns the names applied (empty when the schema is current). Raises MigrationError when
    the database knows a version this code does not, before changing anything.
    """
    known = load_migrations() if migrations is None else sorted(migrations, key=lambda m: m.version)
    clock = clock if clock is not None else SystemClock()
    async with db.transaction() as tx:
        await _lock(tx)
        await tx.execute_script(_LEDGER)
    check_known(await _applied(db), known)
    done: list[str] = []
    for migration in known:
        async with db.transaction() as tx:
            await _lock(tx)
            # Checked again under the lock: another process may have applied it meanwhile.
            if await tx.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = ?", migration.version
            ):
                continue
            await tx.execute_script(migration.sql(tx.dialect))
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                migration.version,
                migration.name,
                int(clock.wall_now() * 1000),
            )
        done.append(migration.name)
    return done
