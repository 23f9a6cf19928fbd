"""PostgreSQL backups of a slot: pg_dump with row counts from the same snapshot, pg_restore back.

The password never reaches argv: the tools get the URL without it and PGPASSWORD in their
environment. A backup is checked by restoring it into a scratch database on the same server.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from app.backup_files import FILE_ROWS_SQL, FILES_TABLE, FileRow, file_row
from app.backup_manifest import (
    BackupError,
    Kind,
    Manifest,
    backup_name,
    check_counts,
    check_destination,
    check_file,
    iso_utc,
    os_reason,
    publish,
    sha256_of,
    temp_path,
    unusable,
)
from app.postgres_db import PG_CONNECT_TIMEOUT_S, redact_dsn

PG_BIN_DIRS = Path("/usr/lib/postgresql")
SCRATCH_PREFIX = "mw_verify_"
# Variables the tools must not inherit: the slot's URL, and any password of the caller.
_NOT_INHERITED = ("MOONWATCH_DATABASE_URL", "PGPASSWORD", "PGPASSFILE", "PGSERVICE")
_COUNTED_TABLES = """
SELECT schemaname, tablename FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY schemaname, tablename"""


def pg_tool(name: str) -> str:
    """``pg_dump`` or ``pg_restore``: on PATH, else from the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which(name)
    if found is not None:
        return found
    versions = [p for p in PG_BIN_DIRS.glob(f"*/bin/{name}") if p.parts[-3].isdigit()]
    versions.sort(key=lambda p: int(p.parts[-3]), reverse=True)
    if versions:
        return str(versions[0])
    raise BackupError(
        f"{name} not found on PATH or in {PG_BIN_DIRS}/*/bin: install postgresql-client"
    )


def tool_target(dsn: str, database: str | None = None) -> tuple[str, dict[str, str]]:
    """The URL to give a PostgreSQL tool (without its password, optionally naming another
    database) and the environment that carries the password."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    password = unquote(parts.password) if parts.password is not None else None
    for key, value in query:
        if key == "password":
            password = value
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}@{host}" if parts.username else host
    path = f"/{database}" if database is not None else parts.path
    kept = urlencode([(k, v) for k, v in query if k != "password"])
    url = urlunsplit((parts.scheme, netloc, path, kept, ""))
    return url, ({"PGPASSWORD": password} if password else {})


def _with_database(dsn: str, database: str) -> str:
    return urlsplit(dsn)._replace(path=f"/{database}").geturl()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _connect(dsn: str) -> Any:
    try:
        return await asyncpg.connect(dsn, timeout=PG_CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise unusable(f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {exc}") from exc


async def row_counts(conn: Any) -> dict[str, int]:
    """Rows of every table outside the system schemas (``schema.table`` unless public)."""
    counts: dict[str, int] = {}
    for row in await conn.fetch(_COUNTED_TABLES):
        schema, table = str(row["schemaname"]), str(row["tablename"])
        key = table if schema == "public" else f"{schema}.{table}"
        counts[key] = int(
            await conn.fetchval(f"SELECT count(*) FROM {_ident(schema)}.{_ident(table)}")
        )
    return counts


async def file_rows(conn: Any, tables: Collection[str]) -> list[FileRow]:
    """The files a database lists (none when it has no files table)."""
    if FILES_TABLE not in tables:
        return []
    return [file_row(tuple(row)) for row in await conn.fetch(FILE_ROWS_SQL)]


async def live_file_ids(dsn: str, ids: Collection[int]) -> set[int]:
    """Which of ``ids`` the slot's database still lists as files."""
    conn = await _connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT id FROM {FILES_TABLE} WHERE id = ANY($1::bigint[])", sorted(ids)
        )
    except asyncpg.PostgresError as exc:
        raise unusable(f"cannot read the files table of {redact_dsn(dsn)}: {exc}") from exc
    finally:
        await conn.close()
    return {int(row["id"]) for row in rows}


async def current_counts(dsn: str) -> dict[str, int]:
    conn = await _connect(dsn)
    try:
        return await row_counts(conn)
    except asyncpg.PostgresError as exc:
        raise unusable(f"cannot count rows in {redact_dsn(dsn)}: {exc}") from exc
    finally:
        await conn.close()


async def _run_tool(name: str, args: list[str], env_extra: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update(env_extra)
    try:
        proc = await asyncio.create_subprocess_exec(
            pg_tool(name),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        raise BackupError(f"cannot run {name}: {os_reason(exc)}") from exc
    _, err = await proc.communicate()
    if proc.returncode != 0:
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        detail = " / ".join(lines[-3:]) or "no message"
        if re.search(r"No space left|could not write", detail):
            detail = f"no space left on device ({detail})"
        raise BackupError(f"{name} failed (exit code {proc.returncode}): {detail}")


async def _dump(dsn: str, out: Path) -> tuple[dict[str, int], list[FileRow]]:
    """pg_dump into ``out`` inside a snapshot exported by a REPEATABLE READ transaction that
    counts the rows and reads the files table: both describe exactly what the dump holds."""
    url, env = tool_target(dsn)
    conn = await _connect(dsn)
    try:
        tx = conn.transaction(isolation="repeatable_read", readonly=True)
        await tx.start()
        try:
            snapshot = str(await conn.fetchval("SELECT pg_export_snapshot()"))
            tables = await row_counts(conn)
            files = await file_rows(conn, tables)
            args = ["--format=custom", f"--snapshot={snapshot}", f"--file={out}", f"--dbname={url}"]
            await _run_tool("pg_dump", args, env)
        finally:
            await tx.rollback()
    except asyncpg.PostgresError as exc:
        raise unusable(f"cannot read {redact_dsn(dsn)}: {exc}") from exc
    finally:
        await conn.close()
    return tables, files


async def create_pg(
    dsn: str, dest: Path, slot: str, at: float, kind: Kind
) -> tuple[Manifest, list[FileRow]]:
    """Back up the slot's PostgreSQL database into ``dest``; the new backup's manifest (for the
    caller to complete with the files and write) and the files the backup lists."""
    check_destination(dest)
    name = backup_name(slot, "postgres", at, kind)
    final = dest / name
    temp = temp_path(dest, name)
    try:
        tables, files = await _dump(dsn, temp)
        size, digest = temp.stat().st_size, sha256_of(temp)
        publish(temp, final)
    except OSError as exc:
        raise BackupError(f"cannot write the backup in {dest}: {os_reason(exc)}") from exc
    finally:
        temp.unlink(missing_ok=True)
    return Manifest(slot, "postgres", name, iso_utc(at), size, digest, tables, kind), files


async def _restore_scratch(
    dsn: str, backup: Path, scratch: str
) -> tuple[dict[str, int], list[FileRow]]:
    url, env = tool_target(dsn, scratch)
    args = ["--no-owner", "--exit-on-error", "--single-transaction", f"--dbname={url}"]
    await _run_tool("pg_restore", [*args, str(backup)], env)
    conn = await _connect(_with_database(dsn, scratch))
    try:
        counts = await row_counts(conn)
        return counts, await file_rows(conn, counts)
    finally:
        await conn.close()


async def verify_pg(dsn: str, backup: Path, manifest: Manifest) -> list[FileRow]:
    """Checksum, then pg_restore into a scratch database on the slot's server (dropped again
    whatever happens) and compare its row counts with the manifest; the files it lists."""
    check_file(backup, manifest)
    scratch = f"{SCRATCH_PREFIX}{secrets.token_hex(6)}"
    admin = await _connect(dsn)
    try:
        try:
            await admin.execute(f"CREATE DATABASE {_ident(scratch)}")
        except asyncpg.PostgresError as exc:
            raise BackupError(
                f"cannot create a scratch database to check the backup (needs CREATEDB): {exc}"
            ) from exc
        try:
            counts, files = await _restore_scratch(dsn, backup, scratch)
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {_ident(scratch)} WITH (FORCE)")
    finally:
        await admin.close()
    check_counts(counts, manifest.tables, f"backup {backup.name}")
    return files


async def restore_pg(dsn: str, backup: Path, manifest: Manifest) -> dict[str, int]:
    """pg_restore --clean into the slot's database in one transaction; check the counts."""
    url, env = tool_target(dsn)
    args = ["--clean", "--if-exists", "--single-transaction", "--no-owner", "--exit-on-error"]
    await _run_tool("pg_restore", [*args, f"--dbname={url}", str(backup)], env)
    counts = await current_counts(dsn)
    check_counts(counts, manifest.tables, f"restored database {redact_dsn(dsn)}")
    return counts
