"""File attachments on real SQLite files and a real PostgreSQL server: streamed uploads, size
limits, content sniffing, hostile names, download headers, tenant isolation, deletion, and
attaching to messages."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import work
from app.accounts import Forbidden, NotFound, PolicyViolation, User
from app.db import Database
from app.files import (
    MAX_NAME,
    FileRecord,
    TooLarge,
    UnsupportedType,
    attach_file,
    clean_name,
    content_disposition,
    delete_file,
    discard_file,
    files_for_messages,
    list_files,
    open_file,
    sniff_type,
    store_file,
    tenant_files_dir,
)
from tests.app_support import (
    FakeClock,
    People,
    clock,
    db,
    db_url,
    new_people,
    pg_dsn,
    pg_server,
)

# Fixtures shared from tests.support_pg; pytest finds them as names of this module.
__all__ = ["clock", "db", "db_url", "pg_dsn", "pg_server"]  # fixtures, for pytest

START_S = 1_700_000_000.0
DAY_S = 86_400.0
MAX_BYTES = 64 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
PDF = b"%PDF-1.7\n" + b"1 0 obj << >> endobj\n" * 500
EXE = b"MZ\x90\x00\x03\x00\x00\x00" + bytes(200)
HTML = b"<!DOCTYPE html><html><script>alert(1)</script></html>"
XSS_NAME = '<img src=x onerror=alert("x")>\'; DROP TABLE files;--.png'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data_dir = tmp_path / "slot"
    data_dir.mkdir()
    return data_dir


@dataclass
class Org(People):
    """The five people of a tenant, and alice's public space."""

    space_id: int = 0


async def new_org(db: Database, clock: FakeClock, name: str) -> Org:
    people = await new_people(db, clock, name)
    space = await work.create_space(db, people.tenant_id, people.alice, "general")
    fields = {f.name: getattr(people, f.name) for f in dataclasses.fields(people)}
    return Org(**fields, space_id=space.id)


@pytest.fixture
async def org(db: Database, clock: FakeClock) -> Org:
    return await new_org(db, clock, "acme")


async def chunks(parts: Iterable[bytes], counter: list[int] | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        if counter is not None:
            counter.append(len(part))
        yield part


async def store(
    db: Database,
    org: Org,
    root: Path,
    data: bytes | AsyncIterator[bytes],
    name: str = "picture.png",
    content_type: str = "image/png",
    *,
    who: User | None = None,
    space_id: int | None = None,
    message_id: int | None = None,
) -> FileRecord:
    return await store_file(
        db,
        org.tenant_id,
        who or org.alice,
        org.space_id if space_id is None else space_id,
        data,
        name,
        content_type,
        root=root,
        max_bytes=MAX_BYTES,
        message_id=message_id,
    )


async def file_count(db: Database) -> int:
    count = await db.fetchval("SELECT count(*) FROM files")
    return int(count)


def disk_names(root: Path) -> list[str]:
    """Every file under ``root`` (temporary ones included), relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- storing


async def test_store_bytes_and_chunks(db: Database, org: Org, root: Path, clock: FakeClock) -> None:
    t = org.tenant_id
    png = await store_file(
        db, t, org.alice, org.space_id, PNG, "picture.png", "image/png",
        root=root, max_bytes=MAX_BYTES, clock=clock,
    )  # fmt: skip
    assert (png.original_name, png.content_type, png.size) == ("picture.png", "image/png", len(PNG))
    assert png.sha256 == hashlib.sha256(PNG).hexdigest()
    assert (png.uploader_id, png.space_id, png.message_id) == (org.alice.id, org.space_id, None)
    assert png.created_at == int(START_S * 1000)
    parts = [PDF[i : i + 1000] for i in range(0, len(PDF), 1000)]
    pdf = await store(db, org, root, chunks(parts), "report.pdf", "application/pdf")
    assert (pdf.size, pdf.sha256) == (len(PDF), hashlib.sha256(PDF).hexdigest())
    assert pdf.content_type == "application/pdf"
    tenant_dir = root / "files" / str(t)
    assert tenant_files_dir(root, t) == tenant_dir
    assert disk_names(root) == [f"files/{t}/{png.id}", f"files/{t}/{pdf.id}"]  # no .part left
    assert (tenant_dir / str(pdf.id)).read_bytes() == PDF
    record, path = await open_file(db, t, org.bob, png.id, root=root)
    assert (record, path) == (png, tenant_dir / str(png.id))
    assert path.read_bytes() == PNG
    stored_name = await db.fetchval("SELECT stored_name FROM files WHERE id = ?", png.id)
    assert stored_name == f"files/{t}/{png.id}"
    page = await list_files(db, t, org.bob, org.space_id)
    assert (page.items, page.next_cursor) == ([pdf, png], None)


async def test_declared_type_is_a_hint_checked_against_content(
    db: Database, org: Org, root: Path
) -> None:
    csv = await store(db, org, root, b"a,b\n1,2\n", "data.csv", "application/vnd.ms-excel")
    assert csv.content_type == "text/csv; charset=utf-8"
    text = await store(db, org, root, "héllo\n".encode(), "notes", "")
    assert text.content_type == "text/plain; charset=utf-8"
    jpeg = await store(db, org, root, b"\xff\xd8\xff\xe0" + bytes(100), "a.jpg", "image/jpg")
    assert jpeg.content_type == "image/jpeg"
    docx = b"PK\x03\x04" + b"[Content_Types].xml" + bytes(100)
    doc = await store(db, org, root, docx, "plan.docx", "application/octet-stream")
    assert doc.content_type.endswith("wordprocessingml.document")
    webp = await store(db, org, root, b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(20), "x.webp", "")
    assert webp.content_type == "image/webp"


async def test_empty_upload_and_exact_limit(db: Database, org: Org, root: Path) -> None:
    empty = await store(db, org, root, b"", "empty.txt", "text/plain")
    assert (empty.size, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())
    exact = PDF[:5] + b"x" * (MAX_BYTES - 5)
    assert (await store(db, org, root, exact, "big.pdf", "application/pdf")).size == MAX_BYTES


async def test_oversize_upload_is_aborted_without_a_trace(
    db: Database, org: Org, root: Path
) -> None:
    seen: list[int] = []
    parts = [PDF[:4096]] + [b"x" * 4096] * 100  # 404 KiB, the limit is 64 KiB
    with pytest.raises(TooLarge):
        await store(db, org, root, chunks(parts, seen), "big.pdf", "application/pdf")
    assert sum(seen) <= MAX_BYTES + 4096  # stopped reading at the limit
    with pytest.raises(TooLarge):
        await store(db, org, root, PDF[:5] + b"x" * MAX_BYTES, "big.pdf", "application/pdf")
    assert disk_names(root) == []
    assert await file_count(db) == 0


@pytest.mark.parametrize(
    ("data", "name", "declared"),
    [
        (EXE, "evil.png", "image/png"),  # an .exe renamed .png
        (EXE, "evil.exe", "application/octet-stream"),
        (HTML, "page.png", "image/png"),  # HTML claimed as an image
        (HTML, "page", "image/png"),
        (HTML, "page.txt", "text/plain"),  # markup a browser could render
        (b"  <svg onload=alert(1)>", "x.txt", "text/plain"),
        (b"just words", "notes", "image/png"),  # the header disagrees with the content
        (PNG, "picture.png.exe", "image/png"),  # the name disagrees with the content
        (PNG, "picture.html", ""),
        (b"echo pwned\r\n", "run.bat", "text/plain"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(50), "setup.msi", "application/msword"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(50), "legacy", ""),
        (b"text\x00with nul", "a.txt", "text/plain"),
        (b"\xff\xfe\x00broken utf-8", "a.txt", "text/plain"),
        (b"\x1f\x8b\x08\x00" + bytes(50), "a.tar.gz", "application/gzip"),
    ],
)
async def test_refused_types_leave_nothing(
    db: Database, org: Org, root: Path, data: bytes, name: str, declared: str
) -> None:
    with pytest.raises(UnsupportedType):
        await store(db, org, root, chunks([data[:7], data[7:]]), name, declared)
    assert disk_names(root) == []
    assert await file_count(db) == 0


def test_sniffing_stops_at_the_head_and_tolerates_a_split_character() -> None:
    head = ("é" * 3000).encode()[:4095]  # ends inside a two-byte character
    assert sniff_type(head, "text/plain", "a.txt", complete=False).startswith("text/plain")
    with pytest.raises(UnsupportedType):
        sniff_type(head, "text/plain", "a.txt", complete=True)


# ---------------------------------------------------------------- names and headers


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("/abs/path/", "file"),
        ("..", "file"),
        ("", "file"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        ("evil\r\nSet-Cookie: a=b.txt", "evilSet-Cookie: a=b.txt"),
        ("nul\x00byte\x7f.txt", "nulbyte.txt"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),  # no right-to-left override
        ("line\u2028break.txt", "linebreak.txt"),
        (".hidden", "hidden"),
        ("trailing. . ", "trailing"),
        ("naïve résumé.pdf", "naïve résumé.pdf"),
        (XSS_NAME, XSS_NAME),
    ],
)
def test_clean_name(given: str, kept: str) -> None:
    assert clean_name(given) == kept


def test_long_names_keep_their_extension() -> None:
    assert clean_name("x" * 1000 + ".pdf") == "x" * (MAX_NAME - 4) + ".pdf"
    assert clean_name("y" * 1000) == "y" * MAX_NAME


@pytest.mark.parametrize(
    "name",
    [XSS_NAME, 'a"b\\c;d%22e\r\nSet-Cookie: x=y', '文件 "名".pdf', "\x00\x1b[2J", "résumé.pdf"],
)
def test_content_disposition_cannot_be_broken_out_of(name: str) -> None:
    header = content_disposition(name)
    assert header.isprintable() and header.isascii()
    assert "\r" not in header and "\n" not in header
    disposition, fallback, extended = header.split("; ")
    assert disposition == "attachment"
    assert fallback.startswith('filename="') and fallback.endswith('"')
    assert '"' not in fallback[10:-1] and "\\" not in fallback
    assert extended.startswith("filename*=UTF-8''")
    assert all(c.isalnum() or c in "%-._~" for c in extended.removeprefix("filename*=UTF-8''"))


def test_content_disposition_exact() -> None:
    assert content_disposition('../a "b".txt') == (
        "attachment; filename=\"a _b_.txt\"; filename*=UTF-8''a%20%22b%22.txt"
    )
    assert content_disposition("résumé.pdf") == (
        "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
    )


async def test_hostile_names_are_cleaned_and_never_reach_the_disk(
    db: Database, org: Org, root: Path
) -> None:
    t = org.tenant_id
    passwd = await store(db, org, root, b"root:x:0:0\n", "../../etc/passwd", "text/plain")
    assert passwd.original_name == "passwd"
    xss = await store(db, org, root, PNG, XSS_NAME, "image/png")
    assert xss.original_name == XSS_NAME  # stored verbatim: escaping is the renderer's job
    control = await store(db, org, root, b"hi", "a\r\nb\x00c.txt", "text/plain")
    assert control.original_name == "abc.txt"
    assert disk_names(root) == [f"files/{t}/{f.id}" for f in (passwd, xss, control)]
    assert not (root.parent / "etc").exists()
    record, _ = await open_file(db, t, org.bob, xss.id, root=root)
    assert record.original_name == XSS_NAME
    header = content_disposition(record.original_name)
    assert "\r" not in header and "\n" not in header and "%22" in header and "%3C" in header


# ---------------------------------------------------------------- who may do what


async def test_who_may_upload(db: Database, org: Org, root: Path) -> None:
    t = org.tenant_id
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    with pytest.raises(NotFound):  # not a member of a private space
        await store(db, org, root, PNG, who=org.bob, space_id=secret.id)
    with pytest.raises(NotFound):  # guests see only the spaces they were added to
        await store(db, org, root, PNG, who=org.guest)
    with pytest.raises(NotFound):
        await store(db, org, root, PNG, space_id=12345)
    thread = await work.create_thread(db, t, org.alice, org.space_id, "topic")
    message = await work.post_message(db, t, org.alice, thread.id, "see attached")
    with pytest.raises(Forbidden):  # someone else's message
        await store(db, org, root, PNG, who=org.bob, message_id=message.id)
    other = await work.create_thread(db, t, org.alice, secret.id, "elsewhere")
    elsewhere = await work.post_message(db, t, org.alice, other.id, "hidden")
    with pytest.raises(NotFound):  # a message of another space
        await store(db, org, root, PNG, message_id=elsewhere.id)
    attached = await store(db, org, root, PNG, message_id=message.id)
    assert attached.message_id == message.id
    await work.archive_space(db, t, org.alice, org.space_id)
    with pytest.raises(Forbidden):  # archived: read-only
        await store(db, org, root, PNG)
    assert await file_count(db) == 1
    assert disk_names(root) == [f"files/{t}/{attached.id}"]


async def test_losing_permission_mid_upload_removes_the_file(
    db: Database, org: Org, root: Path
) -> None:
    async def archive_while_streaming() -> AsyncIterator[bytes]:
        yield PNG
        await work.archive_space(db, org.tenant_id, org.alice, org.space_id)
        yield b"more"

    with pytest.raises(Forbidden):  # re-checked with the row: the row is refused
        await store(db, org, root, archive_while_streaming())
    assert disk_names(root) == []
    assert await file_count(db) == 0


async def test_tenants_are_isolated(db: Database, org: Org, root: Path, clock: FakeClock) -> None:
    other = await new_org(db, clock, "globex")
    theirs = await store(db, other, root, PNG, "theirs.png")
    ours = await store(db, org, root, PNG, "ours.png")
    t = org.tenant_id
    with pytest.raises(NotFound):
        await open_file(db, t, org.owner, theirs.id, root=root)
    with pytest.raises(NotFound):
        await list_files(db, t, org.owner, other.space_id)
    with pytest.raises(NotFound):
        await delete_file(db, t, org.owner, theirs.id, root=root)
    with pytest.raises(Forbidden):  # a user of one tenant acting in another
        await open_file(db, other.tenant_id, org.alice, theirs.id, root=root)
    assert (await open_file(db, other.tenant_id, other.bob, theirs.id, root=root))[0] == theirs
    assert [f.id for f in (await list_files(db, t, org.bob, org.space_id)).items] == [ours.id]
    assert (root / "files" / str(other.tenant_id) / str(theirs.id)).is_file()
    for bad_id in (0, -1, 2**63, True):
        with pytest.raises(NotFound):
            await open_file(db, t, org.alice, bad_id, root=root)


async def test_private_space_files_are_invisible_to_non_members(
    db: Database, org: Org, root: Path
) -> None:
    t = org.tenant_id
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    hidden = await store(db, org, root, PNG, space_id=secret.id)
    for outsider in (org.bob, org.owner, org.guest):
        with pytest.raises(NotFound):
            await open_file(db, t, outsider, hidden.id, root=root)
        with pytest.raises(NotFound):
            await list_files(db, t, outsider, secret.id)
        with pytest.raises(NotFound):
            await delete_file(db, t, outsider, hidden.id, root=root)
    await work.add_member(db, t, org.alice, secret.id, org.guest.id)
    assert (await open_file(db, t, org.guest, hidden.id, root=root))[0] == hidden
    public = await store(db, org, root, PNG)
    with pytest.raises(NotFound):  # a guest not added to the public space
        await open_file(db, t, org.guest, public.id, root=root)


async def test_list_files_pages_newest_first(db: Database, org: Org, root: Path) -> None:
    t = org.tenant_id
    made = [await store(db, org, root, PNG, f"{i}.png") for i in range(5)]
    first = await list_files(db, t, org.bob, org.space_id, limit=2)
    assert [f.id for f in first.items] == [made[4].id, made[3].id]
    assert first.next_cursor == made[3].id
    second = await list_files(db, t, org.bob, org.space_id, limit=2, before_id=first.next_cursor)
    assert [f.id for f in second.items] == [made[2].id, made[1].id]
    everything = await list_files(db, t, org.bob, org.space_id, limit=10_000)  # clamped
    assert len(everything.items) == 5 and everything.next_cursor is None


async def test_delete_removes_row_and_bytes(db: Database, org: Org, root: Path) -> None:
    t = org.tenant_id
    mine = await store(db, org, root, PNG)
    by_admin = await store(db, org, root, PNG)
    _, path = await open_file(db, t, org.alice, mine.id, root=root)
    with pytest.raises(Forbidden):  # not the uploader, not an admin
        await delete_file(db, t, org.bob, mine.id, root=root)
    await delete_file(db, t, org.alice, mine.id, root=root)
    assert not path.exists()
    with pytest.raises(NotFound):
        await open_file(db, t, org.alice, mine.id, root=root)
    with pytest.raises(NotFound):  # a second delete
        await delete_file(db, t, org.alice, mine.id, root=root)
    await delete_file(db, t, org.admin, by_admin.id, root=root)
    assert disk_names(root) == []
    assert await file_count(db) == 0


async def test_missing_bytes_are_not_found(db: Database, org: Org, root: Path) -> None:
    record = await store(db, org, root, PNG)
    (tenant_files_dir(root, org.tenant_id) / str(record.id)).unlink()
    with pytest.raises(NotFound):
        await open_file(db, org.tenant_id, org.alice, record.id, root=root)


async def test_cancelled_upload_leaves_nothing(db: Database, org: Org, root: Path) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield PNG
        started.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b"never"

    upload = asyncio.create_task(store(db, org, root, stalls()))
    await started.wait()
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert disk_names(root) == []
    assert await file_count(db) == 0


# ---------------------------------------------------------------- attached to messages


async def message_count(db: Database) -> int:
    return int(await db.fetchval("SELECT count(*) FROM messages"))


async def test_a_stored_file_is_attached_with_its_message(
    db: Database, org: Org, root: Path
) -> None:
    t = org.tenant_id
    thread = await work.create_thread(db, t, org.alice, org.space_id, "topic")
    record = await store(db, org, root, PNG)
    message = await work.post_message(db, t, org.alice, thread.id, "see", file_id=record.id)
    attached = dataclasses.replace(record, message_id=message.id)
    assert await files_for_messages(db, t, org.bob, [message.id]) == {message.id: [attached]}
    assert (await open_file(db, t, org.bob, record.id, root=root))[0] == attached
    with pytest.raises(NotFound):  # attached already: not to a second message
        await work.post_message(db, t, org.alice, thread.id, "again", file_id=record.id)
    await discard_file(db, t, record.id, root=root)  # attached after all: kept
    assert disk_names(root) == [f"files/{t}/{record.id}"]
    assert await message_count(db) == 1


async def test_a_message_not_posted_attaches_nothing(db: Database, org: Org, root: Path) -> None:
    t = org.tenant_id
    thread = await work.create_thread(db, t, org.alice, org.space_id, "topic")
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    mine = await store(db, org, root, PNG)
    elsewhere = await store(db, org, root, PNG, space_id=secret.id)
    await work.join_space(db, t, org.bob, org.space_id)
    bobs = await store(db, org, root, PNG, who=org.bob)
    with pytest.raises(PolicyViolation):  # the message is refused: the file stays unattached
        await work.post_message(db, t, org.alice, thread.id, "  ", file_id=mine.id)
    for file_id in (elsewhere.id, bobs.id, 12345, 0):  # another space, uploader, nothing
        with pytest.raises(NotFound):
            await work.post_message(db, t, org.alice, thread.id, "see", file_id=file_id)
    assert await message_count(db) == 0
    assert (await open_file(db, t, org.alice, mine.id, root=root))[0] == mine
    for record in (mine, elsewhere, bobs):
        await discard_file(db, t, record.id, root=root)
    await discard_file(db, t, mine.id, root=root)  # idempotent
    assert disk_names(root) == []
    assert await file_count(db) == 0


async def test_attach_only_to_a_live_message_of_the_uploader(
    db: Database, org: Org, root: Path
) -> None:
    t = org.tenant_id
    thread = await work.create_thread(db, t, org.alice, org.space_id, "topic")
    gone = await work.post_message(db, t, org.alice, thread.id, "soon deleted")
    await work.delete_message(db, t, org.alice, gone.id)
    await work.join_space(db, t, org.bob, org.space_id)
    bobs_message = await work.post_message(db, t, org.bob, thread.id, "bob's")
    record = await store(db, org, root, PNG)
    for message_id in (gone.id, bobs_message.id, 12345, -1):
        with pytest.raises(NotFound):
            async with db.transaction() as tx:
                await attach_file(tx, t, record.id, message_id)
    assert await files_for_messages(db, t, org.alice, [gone.id, bobs_message.id]) == {}


async def test_files_for_messages_in_one_go(
    db: Database, org: Org, root: Path, clock: FakeClock
) -> None:
    t = org.tenant_id
    thread = await work.create_thread(db, t, org.alice, org.space_id, "topic")
    first = await work.post_message(db, t, org.alice, thread.id, "one")
    second = await work.post_message(db, t, org.alice, thread.id, "two")
    a = await store(db, org, root, PNG, "a.png", message_id=first.id)
    b = await store(db, org, root, PDF, "b.pdf", "application/pdf", message_id=first.id)
    c = await store(db, org, root, PNG, "c.png", message_id=second.id)
    await store(db, org, root, PNG, "loose.png")  # attached to nothing
    secret = await work.create_space(db, t, org.alice, "secret", private=True)
    hidden_thread = await work.create_thread(db, t, org.alice, secret.id, "hidden")
    hidden = await work.post_message(db, t, org.alice, hidden_thread.id, "hidden")
    h = await store(db, org, root, PNG, space_id=secret.id, message_id=hidden.id)
    other = await new_org(db, clock, "globex")
    other_thread = await work.create_thread(db, other.tenant_id, other.alice, other.space_id, "x")
    theirs = await work.post_message(db, other.tenant_id, other.alice, other_thread.id, "x")
    await store(db, other, root, PNG, message_id=theirs.id)
    ids = [second.id, first.id, first.id, hidden.id, theirs.id, 0, 2**63]
    seen = await files_for_messages(db, t, org.alice, ids)
    assert seen == {first.id: [a, b], second.id: [c], hidden.id: [h]}
    assert await files_for_messages(db, t, org.bob, ids) == {first.id: [a, b], second.id: [c]}
    assert await files_for_messages(db, t, org.guest, ids) == {}
    assert await files_for_messages(db, t, org.bob, []) == {}
    with pytest.raises(Forbidden):  # a user of another tenant
        await files_for_messages(db, t, other.alice, [first.id])
