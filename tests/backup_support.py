"""Uploads in a slot's real database and files directory for the backup tests: stored and deleted
through `app.files`, as the app does, and archives rebuilt with chosen members."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import work
from app.db import Database, open_database
from app.files import delete_file, store_file, tenant_files_dir
from tests.app_support import FakeClock, People, new_people

MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Upload:
    tenant_id: int
    file_id: int
    data: bytes

    @property
    def member(self) -> str:
        return f"{self.tenant_id}/{self.file_id}"

    def path(self, data_dir: Path) -> Path:
        return tenant_files_dir(data_dir, self.tenant_id) / str(self.file_id)


class Uploads:
    """Tenant `uploads` with one space in the slot's database (`target`: its SQLite file or
    PostgreSQL URL); its member alice uploads and deletes files under `data_dir`."""

    def __init__(self, target: str | Path, data_dir: Path) -> None:
        self.target = target
        self.data_dir = data_dir
        self._people: People | None = None
        self._space_id = 0

    def add(self, *payloads: bytes) -> list[Upload]:
        return asyncio.run(self.store(*payloads))

    async def store(self, *payloads: bytes) -> list[Upload]:
        """`add`, from a test that runs in an event loop."""
        made: list[Upload] = await self._on_db(lambda db: self._add(db, payloads))
        return made

    def delete(self, upload: Upload) -> None:
        """Delete as the app does: the row, then the bytes."""
        asyncio.run(self._on_db(lambda db: self._delete(db, upload)))

    async def _on_db(self, work_on: Callable[[Database], Any]) -> Any:
        db = await open_database(self.target)
        try:
            if self._people is None:
                self._people = await new_people(db, FakeClock(), "uploads")
                space = await work.create_space(db, self._people.tenant_id, self._people.alice, "f")
                self._space_id = space.id
            return await work_on(db)
        finally:
            await db.close()

    async def _add(self, db: Database, payloads: Iterable[bytes]) -> list[Upload]:
        assert self._people is not None
        people, made = self._people, []
        for n, data in enumerate(payloads):
            record = await store_file(
                *(db, people.tenant_id, people.alice, self._space_id, data),
                *(f"note-{n}.txt", "text/plain"),
                root=self.data_dir,
                max_bytes=MAX_BYTES,
            )
            made.append(Upload(people.tenant_id, record.id, data))
        return made

    async def _delete(self, db: Database, upload: Upload) -> None:
        assert self._people is not None
        await delete_file(
            db, upload.tenant_id, self._people.alice, upload.file_id, root=self.data_dir
        )


def tree(data_dir: Path) -> dict[str, bytes]:
    """Every regular file under the slot's files directory by its name there, with its bytes."""
    root = data_dir / "files"
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        found = {}
        for member in tar:
            stream = tar.extractfile(member)
            assert stream is not None and member.isreg()
            found[member.name] = stream.read()
        return found


Member = tuple[tarfile.TarInfo, bytes | None]


def regular(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def rewrite_archive(archive: Path, edit: Callable[[list[Member]], list[Member]]) -> None:
    """Rebuild the archive with `edit` applied to its members and record the new archive's size
    and sha256 in the manifest, as an attacker who can write both would: what is left to catch
    is what the members themselves are."""
    with tarfile.open(archive) as tar:
        original: list[Member] = []
        for member in tar:
            stream = tar.extractfile(member)
            original.append((member, stream.read() if stream is not None else None))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for info, data in edit(original):
            out.addfile(info, None if data is None else io.BytesIO(data))
    archive.write_bytes(buffer.getvalue())
    manifest = archive.with_name(archive.name.removesuffix(".files.tar") + ".json")
    doc = json.loads(manifest.read_text())
    doc["files"]["size"] = len(buffer.getvalue())
    doc["files"]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    manifest.write_text(json.dumps(doc))
