"""`python -m app.backup` and uploaded files: the archive beside each backup, its checks, and what
a restore does to the slot's files directory. Real files, real SQLite (and PostgreSQL).

The module runs in this process through its `main(argv)`; its JSON lines are read from stdout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app import backup
from app.backup_manifest import backup_name
from app.db import sqlite_path
from tests.backup_support import (
    Member,
    Upload,
    Uploads,
    members,
    regular,
    rewrite_archive,
    special,
    tree,
)
from tests.component.test_app_backup import (
    Tool,
    damaged,
    dest,
    flip_byte,
    make,
    pg_slot,
    slot,
    sqlite_rows,
    tool,
)
from tests.support_pg import pg_dsn, pg_server

__all__ = ["dest", "pg_dsn", "pg_server", "pg_slot", "slot", "tool"]  # fixtures, for pytest


@pytest.fixture
def uploads(slot: Path) -> Uploads:
    return Uploads(sqlite_path(slot), slot)


def archive_of(made: Path) -> Path:
    return made.with_name(made.name + ".files.tar")


def manifest_file(made: Path) -> Path:
    return made.with_name(made.name + ".json")


def manifest_of(made: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(manifest_file(made).read_text())
    return doc


def edit_manifest(made: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = manifest_of(made)
    edit(doc)
    manifest_file(made).write_text(json.dumps(doc))


def restore(tool: Tool, made: Path, data_dir: Path, *extra: str) -> tuple[int, list[Any]]:
    return tool.backup("restore", "--backup", str(made), "--data-dir", str(data_dir), *extra)


def missing(upload: Upload, reason: str) -> dict[str, Any]:
    return {"tenant_id": upload.tenant_id, "file_id": upload.file_id, "reason": reason}


def leftovers(data_dir: Path) -> list[str]:
    """Staged or previous files directories a restore left beside the files directory."""
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".files"))


# ---------------------------------------------------------------- create and verify


def test_uploads_are_in_the_archive_and_verify_passes(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads
) -> None:
    made_uploads = uploads.add(b"first note\n", b"a second, longer note\n" * 100)
    line = make(tool, slot, dest)
    made = Path(line["file"])
    archive = archive_of(made)
    total = sum(len(u.data) for u in made_uploads)
    assert line["files"] == {
        "included": True,
        "archive": str(archive),
        "count": 2,
        "bytes": total,
        "size": archive.stat().st_size,
        "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "missing": [],
    }
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert members(archive) == {u.member: u.data for u in made_uploads}
    with tarfile.open(archive) as tar:  # relative names, regular files only
        assert all(m.isreg() and not m.name.startswith("/") for m in tar.getmembers())
    manifest = manifest_of(made)
    assert manifest["format"] == 2 and manifest["files"]["archive"] == archive.name
    assert manifest["files"]["count"] == 2 and manifest["files"]["bytes"] == total

    code, (checked,) = tool.backup("verify", "--backup", str(made))
    assert code == 0 and checked["verified"] and checked["files"]["count"] == 2


def test_a_slot_without_uploads_gets_an_empty_archive(tool: Tool, slot: Path, dest: Path) -> None:
    line = make(tool, slot, dest)
    archive = archive_of(Path(line["file"]))
    assert (line["files"]["count"], line["files"]["bytes"]) == (0, 0)
    assert members(archive) == {}
    code, _ = tool.backup("verify", "--backup", line["file"])
    assert code == 0


def test_bytes_lost_from_the_slot_are_listed_with_their_reason(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads
) -> None:
    gone, edited, linked, kept = uploads.add(b"alpha\n", b"bravo\n", b"charlie\n", b"delta\n")
    gone.path(slot).unlink()
    edited.path(slot).write_bytes(b"BRAVO\n")  # same size, other bytes
    linked.path(slot).unlink()
    linked.path(slot).symlink_to(kept.path(slot))  # never followed
    line = make(tool, slot, dest)
    assert line["files"]["missing"] == [
        missing(gone, "absent"),
        missing(edited, "damaged"),
        missing(linked, "damaged"),
    ]
    assert members(archive_of(Path(line["file"]))) == {kept.member: kept.data}
    code, _ = tool.backup("verify", "--backup", line["file"])
    assert code == 0


def test_a_file_deleted_between_snapshot_and_copy_is_listed_as_missing(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads
) -> None:
    deleted, kept = uploads.add(b"alpha\n", b"bravo\n")
    manifest, rows = asyncio.run(backup.snapshot(slot, dest, "s1", None, "backup"))
    uploads.delete(deleted)  # row, then bytes: after the snapshot, before the copy
    made = dest / manifest.file
    asyncio.run(backup.add_files(slot, made, manifest, rows, None))

    code, (checked,) = tool.backup("verify", "--backup", str(made))
    assert code == 0, checked
    assert checked["files"]["missing"] == [missing(deleted, "deleted")]
    assert checked["row_counts"]["files"] == 2  # the snapshot still lists it
    assert members(archive_of(made)) == {kept.member: kept.data}

    # Exactly that file may be missing: not fewer, not more, not another.
    original = manifest_of(made)
    entries = {
        "the first " + deleted.member: [],
        "unexpected member " + kept.member: [missing(deleted, "deleted"), missing(kept, "deleted")],
        "has no such file": [{"tenant_id": kept.tenant_id, "file_id": 12345, "reason": "deleted"}],
        "invalid files.missing entry": [missing(deleted, "misplaced")],
    }
    for expected, listed in entries.items():
        edit_manifest(made, lambda doc, listed=listed: doc["files"].update(missing=listed))
        damaged(tool, made, expected)
    manifest_file(made).write_text(json.dumps(original))

    # Restored, the slot has the snapshot's rows and the bytes there were.
    code, _ = restore(tool, made, slot)
    assert code == 0
    assert tree(slot) == {kept.member: kept.data}


def test_a_backup_whose_archive_cannot_be_published_is_removed(
    tool: Tool, slot: Path, dest: Path
) -> None:
    # Someone else's archive under every name the next backup can get: it must stay theirs.
    now = int(time.time())
    stale = [archive_of(dest / backup_name("s1", "sqlite", at)) for at in range(now, now + 30)]
    for path in stale:
        path.write_bytes(b"not ours")
    code, (line,) = tool.backup(
        "create", "--data-dir", str(slot), "--dest", str(dest), "--slot", "s1"
    )
    assert code == 1 and "already exists" in line["error"], line
    assert sorted(dest.iterdir()) == sorted(stale)  # the database file is gone, no manifest
    assert all(p.read_bytes() == b"not ours" for p in stale)


# ---------------------------------------------------------------- a tampered archive


def test_a_changed_byte_in_the_archive_fails_verify_and_a_restore_changes_nothing(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads
) -> None:
    uploads.add(b"keep me as I am\n")
    made = Path(make(tool, slot, dest)["file"])
    flip_byte(archive_of(made), 512)  # the first member's first byte
    damaged(tool, made, f"files archive {archive_of(made).name} does not match")
    before, database = tree(slot), sqlite_path(slot).read_bytes()
    code, (line,) = restore(tool, made, slot)
    assert code == 1 and "sha256" in line["error"]
    assert tree(slot) == before and sqlite_path(slot).read_bytes() == database
    assert len(list(dest.iterdir())) == 3 and leftovers(slot) == []  # no safety backup made


def _first_changed(ms: list[Member]) -> list[Member]:
    info, data = ms[0]
    assert data is not None
    return [regular(info.name, bytes(b ^ 1 for b in data)), *ms[1:]]


def _first_longer(ms: list[Member]) -> list[Member]:
    info, data = ms[0]
    return [regular(info.name, (data or b"") + b"!"), *ms[1:]]


def _extra(ms: list[Member]) -> list[Member]:
    tenant = ms[0][0].name.split("/")[0]
    return [*ms, regular(f"{tenant}/99", b"planted\n")]


TAMPERING: dict[str, tuple[Callable[[list[Member]], list[Member]], str]] = {
    "changed content": (_first_changed, "does not match the sha256 its database records"),
    "changed size": (_first_longer, "bytes but the database records"),
    "extra member": (_extra, "unexpected member"),
    "missing member": (lambda ms: ms[1:], "lacks 1 file(s) its database lists"),
    "member twice": (lambda ms: [*ms, ms[0]], "(a second time)"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampered_members_fail_verify_even_with_a_matching_manifest(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads, case: str
) -> None:
    uploads.add(b"alpha\n", b"bravo\n")
    made = Path(make(tool, slot, dest)["file"])
    edit, expected = TAMPERING[case]
    rewrite_archive(archive_of(made), edit)
    damaged(tool, made, expected)


HOSTILE: dict[str, tuple[Callable[[str], Member], str]] = {
    "absolute": (lambda m: regular("/" + m, b"x"), "an absolute name"),
    "dot-dot": (lambda m: regular("../../etc/cron.d/x", b"x"), "leads out of the files directory"),
    "dot-dot inside": (lambda m: regular(m + "/../../x", b"x"), "leads out of the files"),
    "symlink": (lambda m: special(m, tarfile.SYMTYPE, "/etc/passwd"), "a link"),
    "hard link": (lambda m: special(m, tarfile.LNKTYPE, "/etc/passwd"), "a link"),
    "device": (lambda m: special(m, tarfile.CHRTYPE), "a device or a pipe"),
    "fifo": (lambda m: special(m, tarfile.FIFOTYPE), "a device or a pipe"),
    "directory": (lambda m: special(m.split("/")[0], tarfile.DIRTYPE), "not a regular file"),
    "other layout": (lambda m: regular("files/" + m, b"x"), "not named <tenant_id>/<file_id>"),
    "leading zero": (lambda m: regular("0" + m, b"x"), "not named <tenant_id>/<file_id>"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_and_nothing_changes(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads, case: str
) -> None:
    (kept,) = uploads.add(b"alpha\n")
    made = Path(make(tool, slot, dest)["file"])
    member, expected = HOSTILE[case]
    rewrite_archive(archive_of(made), lambda ms: [member(kept.member), *ms])
    damaged(tool, made, "refused member")
    damaged(tool, made, expected)

    sqlite_rows(slot, "DELETE FROM invitations")
    before, database = tree(slot), sqlite_path(slot).read_bytes()
    listing = sorted(dest.iterdir())
    code, (line,) = restore(tool, made, slot)
    assert code == 1 and expected in line["error"]
    assert tree(slot) == before and sqlite_path(slot).read_bytes() == database
    assert sorted(dest.iterdir()) == listing and leftovers(slot) == []
    assert not (slot.parent / "etc").exists() and not Path("/etc/cron.d/x").exists()


def test_edits_of_the_files_section_are_detected(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads
) -> None:
    uploads.add(b"alpha\n")
    made = Path(make(tool, slot, dest)["file"])
    original = manifest_file(made).read_text()
    edits: dict[str, Callable[[dict[str, Any]], Any]] = {
        "holds 1 files of 6 bytes but its manifest says 5 files": lambda d: d["files"].update(
            count=5
        ),
        "is format 1 but has a 'files' section": lambda d: d.update(format=1),
        "is format 2 but lacks a 'files' section": lambda d: d.pop("files"),
        "names archive 'other.tar'": lambda d: d["files"].update(archive="other.tar"),
        "has no valid 'bytes'": lambda d: d["files"].update(bytes="6"),
    }
    for expected, edit in edits.items():
        edit_manifest(made, edit)
        damaged(tool, made, expected)
        manifest_file(made).write_text(original)
    archive_of(made).unlink()
    damaged(tool, made, f"files archive {archive_of(made).name} does not exist")


# ---------------------------------------------------------------- restore


def test_restore_brings_back_a_deleted_upload_and_removes_a_later_one(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads
) -> None:
    alpha, bravo = uploads.add(b"alpha\n", b"bravo\n")
    made = Path(make(tool, slot, dest)["file"])
    uploads.delete(alpha)
    (charlie,) = uploads.add(b"charlie\n")
    bravo.path(slot).write_bytes(b"BRAVO\n")  # damaged on disk since the backup
    (slot / "files" / "stray.part").write_bytes(b"half an upload")

    code, (dry,) = restore(tool, made, slot, "--dry-run")
    assert code == 0 and dry["changed"] == []  # row counts: one file gone, one added
    assert dry["files"] == {
        "included": True,
        "added": 1,
        "removed": 2,
        "changed": 1,
        "unchanged": 0,
    }
    before = tree(slot)
    assert before[charlie.member] == b"charlie\n"  # a dry run changes nothing

    code, lines = restore(tool, made, slot)
    assert code == 0, lines
    safety, done = lines
    assert tree(slot) == {alpha.member: b"alpha\n", bravo.member: b"bravo\n"}
    assert done["files"] == {
        "included": True,
        "directory": str(slot / "files"),
        "count": 2,
        "bytes": 12,
        "missing": 0,
        "previous_left_at": None,
    }
    assert leftovers(slot) == []
    for upload in (alpha, bravo):
        assert stat.S_IMODE(upload.path(slot).stat().st_mode) == 0o600
    ids = sqlite_rows(slot, "SELECT id FROM files ORDER BY id")
    assert ids == [(alpha.file_id,), (bravo.file_id,)]

    # The safety backup holds the files as they were (bravo's damaged bytes listed, not kept).
    assert safety["files"]["missing"] == [missing(bravo, "damaged")]
    assert members(archive_of(Path(safety["file"]))) == {charlie.member: b"charlie\n"}
    code, _ = tool.backup("verify", "--backup", safety["file"])
    assert code == 0


def test_an_old_backup_restores_the_database_and_leaves_the_files_alone(
    tool: Tool, slot: Path, dest: Path, uploads: Uploads
) -> None:
    uploads.add(b"alpha\n")
    made = Path(make(tool, slot, dest)["file"])

    def made_before_file_backups(doc: dict[str, Any]) -> None:
        del doc["files"]
        doc["format"] = 1

    archive_of(made).unlink()
    edit_manifest(made, made_before_file_backups)
    uploads.add(b"bravo\n")
    invitations = sqlite_rows(slot, "SELECT count(*) FROM invitations")
    sqlite_rows(slot, "DELETE FROM invitations")
    before = tree(slot)

    code, (checked,) = tool.backup("verify", "--backup", str(made))
    assert code == 0 and checked["files"]["included"] is False
    code, (dry,) = restore(tool, made, slot, "--dry-run")
    assert code == 0 and dry["files"]["included"] is False
    assert "left as it is" in dry["files"]["note"]

    code, (safety, done) = restore(tool, made, slot)
    assert code == 0
    assert done["files"]["included"] is False and "left as it is" in done["files"]["note"]
    assert tree(slot) == before  # bravo's bytes stay, though its row is gone with the restore
    assert sqlite_rows(slot, "SELECT count(*) FROM invitations") == invitations
    assert sqlite_rows(slot, "SELECT count(*) FROM files") == [(1,)]
    assert safety["files"]["included"] and safety["files"]["count"] == 2


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_backups_hold_the_uploads_and_restore_them(
    pg_slot: tuple[str, Path], tool: Tool, dest: Path
) -> None:
    dsn, data_dir = pg_slot
    uploads = Uploads(dsn, data_dir)
    alpha, bravo = uploads.add(b"alpha\n", b"bravo\n")
    line = make(tool, data_dir, dest)
    made = Path(line["file"])
    assert line["dialect"] == "postgres" and line["files"]["count"] == 2
    assert members(archive_of(made)) == {alpha.member: b"alpha\n", bravo.member: b"bravo\n"}

    uploads.delete(alpha)
    (charlie,) = uploads.add(b"charlie\n")
    code, (dry,) = restore(tool, made, data_dir, "--dry-run")
    assert code == 0 and dry["files"]["added"] == 1 and dry["files"]["removed"] == 1
    code, (safety, done) = restore(tool, made, data_dir)
    assert code == 0 and done["files"]["count"] == 2
    assert tree(data_dir) == {alpha.member: b"alpha\n", bravo.member: b"bravo\n"}
    assert members(archive_of(Path(safety["file"]))) == {
        bravo.member: b"bravo\n",
        charlie.member: b"charlie\n",
    }

    # A file deleted between the snapshot and the copy, on PostgreSQL too.
    manifest, rows = asyncio.run(backup.snapshot(data_dir, dest, "s1", dsn, "backup"))
    uploads.delete(bravo)
    asyncio.run(backup.add_files(data_dir, dest / manifest.file, manifest, rows, dsn))
    code, (checked,) = tool.backup("verify", "--backup", str(dest / manifest.file))
    assert code == 0 and checked["files"]["missing"] == [missing(bravo, "deleted")]
