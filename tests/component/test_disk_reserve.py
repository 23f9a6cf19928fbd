"""The Raft journal's room to grow on a disk that fills up: pysyncobj grows its memory-mapped
journal by truncating it longer, and on a full file system the first write into the new pages
kills the process with SIGBUS. A small tmpfs (root) stands in for the full disk."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.disk_reserve import reserve_ahead
from agent.resources import PsutilSampler

DISK_KB = 1024
KIB = 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_KB}k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def fill(disk: Path) -> None:
    with (disk / "filler").open("ab", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_missing_journal_needs_nothing(tmp_path: Path) -> None:
    assert reserve_ahead(tmp_path / "raft.journal") == 0


def test_the_reserve_holds_blocks_without_growing_the_file(small_disk: Path) -> None:
    journal = small_disk / "raft.journal"
    journal.write_bytes(b"j" * 64 * KIB)
    held = reserve_ahead(journal, minimum_ahead=256 * KIB)
    assert held == (64 + 256) * KIB
    stat = journal.stat()
    assert stat.st_size == 64 * KIB
    assert stat.st_blocks * 512 >= held


def test_a_full_disk_is_reported_as_full_when_the_journal_cannot_grow(small_disk: Path) -> None:
    journal = small_disk / "raft.journal"
    journal.write_bytes(b"j" * 64 * KIB)
    fill(small_disk)
    with pytest.raises(OSError) as raised:
        reserve_ahead(journal, minimum_ahead=256 * KIB)
    assert raised.value.errno == errno.ENOSPC

    sampler = PsutilSampler(small_disk, timeout_s=2.0, journal=journal)
    disk = asyncio.run(sampler.sample())["disk"]
    assert disk.value == 100.0
    assert "no space for the Raft journal to grow" in disk.detail


JOURNAL_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pysyncobj.journal import FileJournal
    from agent.disk_reserve import reserve_ahead

    disk, reserve, entries = Path(sys.argv[1]), sys.argv[2] == "reserve", int(sys.argv[3])
    journal = FileJournal(str(disk / "raft.journal"))
    if reserve:
        reserve_ahead(disk / "raft.journal", minimum_ahead=512 * 1024)
    with (disk / "filler").open("ab", buffering=0) as out:
        try:
            while True:
                out.write(b"\\0" * 4096)
        except OSError:
            pass
    for index in range(1, entries + 1):
        journal.add(b"e" * 200, index, 1)
    print("wrote", entries)
    """
)


@pytest.mark.parametrize(("reserve", "survives"), [(False, False), (True, True)])
def test_the_journal_survives_a_full_disk_only_with_its_reserve(
    small_disk: Path, reserve: bool, survives: bool
) -> None:
    # 1,000 entries of about 220 bytes: past the journal's first growths, inside the reserve.
    mode = "reserve" if reserve else "none"
    done = subprocess.run(
        [sys.executable, "-c", JOURNAL_WRITER, str(small_disk), mode, "1000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    if survives:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "wrote 1000"
    else:
        assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr)
