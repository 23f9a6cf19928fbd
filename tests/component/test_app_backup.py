"""`python -m app.backup`: create, verify and restore a slot's SQLite or PostgreSQL database.

The module runs in this process through its `main(argv)`; its JSON lines are read from stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from app import admin, backup
from app.backup_pg import tool_target
from app.db import sqlite_path
from tests.support_pg import pg_dsn, pg_server

__all__ = ["pg_dsn", "pg_server"]  # fixtures used by this module

URL_ENV = "MOONWATCH_DATABASE_URL"


class Tool:
    """Runs `python -m app.backup` or `python -m app.admin` in-process; (exit code, JSON lines)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def _lines(self) -> list[dict[str, Any]]:
        out = self._capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def backup(self, *argv: str) -> tuple[int, list[dict[str, Any]]]:
        code = backup.main(list(argv))
        return code, self._lines()

    def tenant(self, data_dir: Path, name: str) -> None:
        argv = ["tenant-create", "--data-dir", str(data_dir), "--name", name]
        assert admin.main([*argv, "--admin-email", f"owner@{name}.test"]) == 0
        self._lines()


@pytest.fixture
def tool(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Tool:
    monkeypatch.delenv(URL_ENV, raising=False)
    return Tool(capsys)


@pytest.fixture
def slot(tmp_path: Path, tool: Tool) -> Path:
    """A slot's data directory with two tenants in its SQLite database."""
    data_dir = tmp_path / "slots" / "s1"
    tool.tenant(data_dir, "acme")
    tool.tenant(data_dir, "globex")
    return data_dir


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "backups"
    path.mkdir()
    return path


def sqlite_rows(data_dir: Path, sql: str) -> Any:
    conn = sqlite3.connect(sqlite_path(data_dir))
    try:
        with conn:
            return conn.execute(sql).fetchall()
    finally:
        conn.close()


def make(tool: Tool, data_dir: Path, dest: Path, slot: str = "s1") -> dict[str, Any]:
    code, lines = tool.backup(
        "create", "--data-dir", str(data_dir), "--dest", str(dest), "--slot", slot
    )
    assert code == 0, lines
    (line,) = lines
    return line


# ---------------------------------------------------------------- SQLite


def test_a_backup_is_a_checked_copy_with_its_manifest(tool: Tool, slot: Path, dest: Path) -> None:
    line = make(tool, slot, dest)
    assert line["ok"] and line["verified"] and line["dialect"] == "sqlite"
    made = Path(line["file"])
    assert made.parent == dest
    assert made.name.startswith("s1-") and made.name.endswith("Z.sqlite3")
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    manifest = json.loads((dest / (made.name + ".json")).read_text())
    assert manifest["slot"] == "s1" and manifest["file"] == made.name
    assert manifest["size"] == made.stat().st_size
    assert manifest["tables"]["tenants"] == 2 and manifest["tables"]["users"] == 2
    assert manifest["created_at"].endswith("Z")
    names = [made.name, made.name + ".files.tar", made.name + ".json"]
    assert sorted(p.name for p in dest.iterdir()) == names
    # The backup is one self-contained file (no WAL beside it, rollback journal mode).
    conn = sqlite3.connect(f"{made.as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()

    code, (checked,) = tool.backup("verify", "--backup", str(made))
    assert code == 0 and checked["verified"] and checked["rows"] == line["rows"]


def test_restore_brings_back_deleted_rows_after_a_safety_backup(
    tool: Tool, slot: Path, dest: Path
) -> None:
    made = Path(make(tool, slot, dest)["file"])
    sqlite_rows(slot, "DELETE FROM invitations")
    assert sqlite_rows(slot, "SELECT count(*) FROM invitations") == [(0,)]

    code, lines = tool.backup("restore", "--backup", str(made), "--data-dir", str(slot))
    assert code == 0, lines
    safety, restored = lines
    assert safety["kind"] == "pre-restore" and safety["row_counts"]["invitations"] == 0
    assert Path(safety["file"]).name.startswith("s1-pre-restore-")
    assert restored["ok"] and restored["safety_backup"] == safety["file"]
    assert sqlite_rows(slot, "SELECT count(*) FROM invitations") == [(2,)]


def test_restore_reaches_connections_already_open(tool: Tool, slot: Path, dest: Path) -> None:
    made = Path(make(tool, slot, dest)["file"])
    live = sqlite3.connect(sqlite_path(slot))  # as the running app holds its connections
    try:
        live.execute("DELETE FROM invitations")
        live.commit()
        code, _ = tool.backup("restore", "--backup", str(made), "--data-dir", str(slot))
        assert code == 0
        assert live.execute("SELECT count(*) FROM invitations").fetchone() == (2,)
    finally:
        live.close()


def test_a_dry_run_shows_the_changes_and_changes_nothing(
    tool: Tool, slot: Path, dest: Path
) -> None:
    made = Path(make(tool, slot, dest)["file"])
    sqlite_rows(slot, "DELETE FROM invitations")
    before = sqlite_path(slot).read_bytes()
    code, (line,) = tool.backup(
        "restore", "--backup", str(made), "--data-dir", str(slot), "--dry-run"
    )
    assert code == 0 and line["dry_run"] is True
    assert line["changed"] == ["invitations"]
    assert line["compare"]["invitations"] == {"current": 0, "backup": 2}
    assert sqlite_path(slot).read_bytes() == before
    assert len(list(dest.iterdir())) == 3  # no safety backup either


def test_a_restore_refuses_a_backup_of_another_slot(tool: Tool, slot: Path, dest: Path) -> None:
    made = Path(make(tool, slot, dest)["file"])
    argv = ["restore", "--backup", str(made), "--data-dir", str(slot), "--slot", "s2"]
    code, (line,) = tool.backup(*argv)
    assert code == 2 and "of slot 's1', not 's2'" in line["error"]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def damaged(tool: Tool, made: Path, expected: str) -> None:
    code, (line,) = tool.backup("verify", "--backup", str(made))
    assert code == 1 and line["ok"] is False
    assert expected in line["error"], line["error"]


def test_flipped_bytes_are_detected(tool: Tool, slot: Path, dest: Path) -> None:
    made = Path(make(tool, slot, dest)["file"])
    flip_byte(made, made.stat().st_size // 2)
    damaged(tool, made, "does not match its manifest's sha256")
    # ... and a restore from it changes nothing.
    before = sqlite_path(slot).read_bytes()
    code, _ = tool.backup("restore", "--backup", str(made), "--data-dir", str(slot))
    assert code == 1 and sqlite_path(slot).read_bytes() == before


def test_a_truncated_backup_is_detected(tool: Tool, slot: Path, dest: Path) -> None:
    made = Path(make(tool, slot, dest)["file"])
    with made.open("r+b") as f:
        f.truncate(made.stat().st_size // 2)
    damaged(tool, made, "truncated")


def test_a_missing_or_edited_manifest_is_detected(tool: Tool, slot: Path, dest: Path) -> None:
    made = Path(make(tool, slot, dest)["file"])
    manifest = dest / (made.name + ".json")
    original = manifest.read_text()

    doc = json.loads(original)
    doc["tables"]["users"] = 5
    manifest.write_text(json.dumps(doc))
    damaged(tool, made, "row counts differ from the manifest (users: 2 vs 5)")

    doc = json.loads(original)
    doc["sha256"] = "0" * 64
    manifest.write_text(json.dumps(doc))
    damaged(tool, made, "sha256")

    manifest.write_text(original[: len(original) // 2])
    damaged(tool, made, "not valid JSON")

    manifest.unlink()
    damaged(tool, made, "is missing")


def test_a_damaged_file_with_a_matching_manifest_fails_its_integrity_check(
    tool: Tool, slot: Path, dest: Path
) -> None:
    made = Path(make(tool, slot, dest)["file"])
    data = bytearray(made.read_bytes())
    page = 4096
    data[2 * page : 3 * page] = bytes(page)  # a zeroed b-tree page, as a bad disk would
    made.write_bytes(bytes(data))
    manifest = dest / (made.name + ".json")
    doc = json.loads(manifest.read_text())
    doc["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    manifest.write_text(json.dumps(doc))
    code, (line,) = tool.backup("verify", "--backup", str(made))
    assert code == 1
    assert "fails integrity_check" in line["error"] or "cannot be read as SQLite" in line["error"]


def test_a_backup_into_a_missing_directory_fails_clearly(
    tool: Tool, slot: Path, tmp_path: Path
) -> None:
    nowhere = tmp_path / "no-such-dir"
    code, (line,) = tool.backup(
        "create", "--data-dir", str(slot), "--dest", str(nowhere), "--slot", "s1"
    )
    assert code == 1 and line["error"] == f"backup directory {nowhere} does not exist"
    assert not nowhere.exists()


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """A directory nobody (root included) can add files to: chattr +i as root, else 0555."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a read-only directory")
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_backup_into_a_read_only_directory_fails_clearly(
    tool: Tool, slot: Path, dest: Path
) -> None:
    with read_only(dest):
        code, (line,) = tool.backup(
            "create", "--data-dir", str(slot), "--dest", str(dest), "--slot", "s1"
        )
    assert code == 1
    assert line["error"] == f"cannot write in backup directory {dest}: read-only or no permission"
    assert list(dest.iterdir()) == []


def test_a_slot_without_a_database_is_reported_as_unusable(
    tool: Tool, tmp_path: Path, dest: Path
) -> None:
    code, (line,) = tool.backup(
        "create", "--data-dir", str(tmp_path / "empty"), "--dest", str(dest), "--slot", "s1"
    )
    assert code == 3 and "no SQLite database" in line["error"]


def test_usage_errors_exit_2(tool: Tool) -> None:
    assert backup.main(["create", "--dest", "/tmp"]) == 2
    assert backup.main(["explode"]) == 2


# ---------------------------------------------------------------- PostgreSQL


def test_the_password_stays_out_of_the_tools_arguments() -> None:
    url, env = tool_target("postgresql://app:s%40cret@db.example:5433/slot1?sslmode=require")
    assert url == "postgresql://app@db.example:5433/slot1?sslmode=require"
    assert env == {"PGPASSWORD": "s@cret"}
    url, env = tool_target("postgres://app@db/slot1?password=pw&connect_timeout=5", "mw_x")
    assert url == "postgres://app@db/mw_x?connect_timeout=5"
    assert env == {"PGPASSWORD": "pw"}


async def pg_run(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_slot(
    pg_dsn: str, tmp_path: Path, tool: Tool, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Path]:
    """A slot whose data is in PostgreSQL (URL in the environment), with two tenants."""
    monkeypatch.setenv(URL_ENV, pg_dsn)
    data_dir = tmp_path / "slots" / "s1"
    tool.tenant(data_dir, "acme")
    tool.tenant(data_dir, "globex")
    return pg_dsn, data_dir


def scratch_databases(dsn: str) -> Any:
    return asyncio.run(
        pg_run(dsn, "SELECT count(*) FROM pg_database WHERE datname LIKE 'mw\\_verify\\_%'")
    )


def test_postgres_backup_verify_dry_run_and_restore(
    pg_slot: tuple[str, Path], tool: Tool, dest: Path
) -> None:
    dsn, data_dir = pg_slot
    line = make(tool, data_dir, dest)
    made = Path(line["file"])
    assert line["dialect"] == "postgres" and made.name.endswith("Z.pgdump")
    assert line["row_counts"]["tenants"] == 2 and line["verified"]
    assert scratch_databases(dsn) == 0  # the check's scratch database is gone

    code, (checked,) = tool.backup("verify", "--backup", str(made))
    assert code == 0 and checked["rows"] == line["rows"]

    asyncio.run(pg_run(dsn, "DELETE FROM invitations"))
    code, (dry,) = tool.backup(
        "restore", "--backup", str(made), "--data-dir", str(data_dir), "--dry-run"
    )
    assert code == 0 and dry["compare"]["invitations"] == {"current": 0, "backup": 2}
    assert asyncio.run(pg_run(dsn, "SELECT count(*) FROM invitations")) == 0

    code, lines = tool.backup("restore", "--backup", str(made), "--data-dir", str(data_dir))
    assert code == 0, lines
    safety, restored = lines
    assert safety["kind"] == "pre-restore" and safety["row_counts"]["invitations"] == 0
    assert restored["ok"] and restored["rows"] == line["rows"]
    assert asyncio.run(pg_run(dsn, "SELECT count(*) FROM invitations")) == 2
    assert scratch_databases(dsn) == 0


def test_postgres_flipped_bytes_and_edited_manifest_are_detected(
    pg_slot: tuple[str, Path], tool: Tool, dest: Path
) -> None:
    _, data_dir = pg_slot
    made = Path(make(tool, data_dir, dest)["file"])
    manifest = dest / (made.name + ".json")
    doc = json.loads(manifest.read_text())
    doc["tables"]["tenants"] = 3
    manifest.write_text(json.dumps(doc))
    damaged(tool, made, "row counts differ from the manifest (tenants: 2 vs 3)")
    flip_byte(made, made.stat().st_size // 2)
    damaged(tool, made, "sha256")


def test_a_postgres_backup_needs_the_server_url_to_be_checked(
    pg_slot: tuple[str, Path], tool: Tool, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data_dir = pg_slot
    made = Path(make(tool, data_dir, dest)["file"])
    monkeypatch.delenv(URL_ENV)
    code, (line,) = tool.backup("verify", "--backup", str(made))
    assert code == 2 and URL_ENV in line["error"]
