"""`moonwatch backup|backups|restore` on a config's local slots, and the daily BackupKeeper.

The keeper runs the real `python -m app.backup` processes; only its clock is fake, so the
scheduled time arrives at once. No cluster processes are started.
"""

from __future__ import annotations

import asyncio
import calendar
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from agent.backups import BackupKeeper, SubprocessBackups
from agent.cli import main
from agent.config import ClusterConfig, parse_config
from agent.driver import InstanceStatus
from agent.loop import bootstrap_command
from agent.metrics import AgentMetrics
from agent.wiring import build_agent
from consensus.commands import ServerUp, SlotServing
from consensus.memory import MemoryConsensus, MemoryLog
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState
from tests.backup_support import Uploads, tree
from tests.support import StaticDriver, cluster_config, write_config

# 02:59:58 UTC: the default schedule (03:00) is two seconds away.
WALL = float(calendar.timegm(time.strptime("2024-03-10 02:59:58", "%Y-%m-%d %H:%M:%S")))
AT_3 = WALL + 2


def cli(config_path: Path, *argv: str) -> int:
    return main([*argv, "--config", str(config_path)])


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "cluster.yml", cluster_config(tmp_path / "data", actives=3))
    # A tenant in slot s1 only: s1 has data on this machine, s2 and s3 have none.
    assert cli(path, "tenant", "create", "t1x1", "--admin-email", "boss@example.test") == 0
    return path


def slot_db(config_path: Path, slot: str = "s1") -> Path:
    return config_path.parent / "data" / "slots" / slot / "app.sqlite3"


def run_sql(db: Path, sql: str) -> Any:
    conn = sqlite3.connect(db)
    try:
        with conn:
            return conn.execute(sql).fetchall()
    finally:
        conn.close()


def count(db: Path, table: str) -> int:
    return int(run_sql(db, f"SELECT count(*) FROM {table}")[0][0])


def slot_uploads(config_path: Path, slot: str = "s1") -> Uploads:
    return Uploads(slot_db(config_path, slot), slot_db(config_path, slot).parent)


# ---------------------------------------------------------------- the command line


def test_backup_backs_up_the_local_slots_and_lists_them(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slot_uploads(config_path).add(b"x" * 2048, b"y" * 1024)
    capsys.readouterr()
    assert cli(config_path, "backup") == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split() == [
        *("SLOT", "FILE", "SIZE", "TABLES", "ROWS", "UPLOADS", "UPLOAD_SIZE", "VERIFIED"),
    ]
    assert row.split()[0] == "s1" and row.split()[-4:] == ["2", "3.0", "KiB", "yes"]
    assert "s2" not in out  # no data here: not chosen
    backups = config_path.parent / "data" / "backups"
    (made,) = backups.glob("s1-*.sqlite3")
    assert (backups / (made.name + ".json")).is_file()
    assert (backups / (made.name + ".files.tar")).is_file()

    assert cli(config_path, "backups") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == [
        *("SLOT", "FILE", "CREATED", "SIZE", "TABLES", "ROWS", "UPLOADS", "UPLOAD_SIZE", "KIND"),
    ]
    assert listing[1].split()[:2] == ["s1", made.name]
    assert listing[1].split()[-4:] == ["2", "3.0", "KiB", "backup"]
    assert len(listing) == 2  # the archive is no backup of its own
    assert cli(config_path, "backups", "--slot", "s2") == 0
    assert "no backups in" in capsys.readouterr().out


def test_backup_of_a_slot_without_local_data_fails(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert cli(config_path, "backup", "--slot", "s1", "--slot", "s2") == 1
    captured = capsys.readouterr()
    rows = {line.split()[0]: line.split()[-1] for line in captured.out.splitlines()[1:3]}
    assert rows == {"s1": "yes", "s2": "FAILED"}
    assert "backup of s2 failed: no data on this machine" in captured.err
    assert cli(config_path, "backup", "--slot", "nope") == 2


def test_restore_asks_for_yes_and_brings_back_deleted_rows_and_files(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uploads = slot_uploads(config_path)
    kept, lost = uploads.add(b"kept\n", b"lost\n")
    db = slot_db(config_path)
    invitations = count(db, "invitations")
    assert cli(config_path, "backup", "--slot", "s1") == 0
    (made,) = (config_path.parent / "data" / "backups").glob("s1-*.sqlite3")
    run_sql(db, "DELETE FROM invitations")
    uploads.delete(lost)
    capsys.readouterr()

    assert cli(config_path, "restore", "s1", made.name, "--dry-run") == 0
    out = capsys.readouterr().out
    change = ["invitations", "0", str(invitations), f"+{invitations}"]
    assert any(line.split() == change for line in out.splitlines())
    assert "files: 1 would be added, 0 removed, 0 changed, 1 unchanged" in out
    assert "dry run: nothing changed (2 tables would change)" in out
    assert count(db, "invitations") == 0

    assert cli(config_path, "restore", "s1", str(made)) == 2
    assert "--yes" in capsys.readouterr().err
    assert cli(config_path, "restore", "s2", str(made), "--yes") == 2  # another slot's backup
    assert "not 's2'" in capsys.readouterr().err

    assert cli(config_path, "restore", "s1", str(made), "--yes") == 0
    out = capsys.readouterr().out
    assert "saved the current data first:" in out and "pre-restore" in out
    assert f"restored slot s1 from {made}" in out
    assert f"files: 2 restored (10 B) in {db.parent / 'files'}" in out
    assert count(db, "invitations") == invitations
    assert tree(db.parent) == {kept.member: b"kept\n", lost.member: b"lost\n"}


# ---------------------------------------------------------------- the daily task


class FakeClock:
    """Wall time starts at WALL; sleeping moves both clocks at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_now = WALL

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        self.wall_now += max(0.0, seconds)
        await asyncio.sleep(0)


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_the_keeper_backs_up_at_the_scheduled_time_and_reports_failures(
    config_path: Path,
) -> None:
    config = parse_config(
        {**cluster_config(config_path.parent / "data"), "backups": {"keep_days": 3}},
        config_path.parent,
        {},
    )
    clock = FakeClock()
    metrics = AgentMetrics(lambda: Snapshot(ClusterState(), RaftStatus("a1", voter=True)))
    keeper = BackupKeeper(
        settings=config.backups,
        backup_dir=config.backup_dir,
        runner=SubprocessBackups(config, clock),
        serving=lambda: ["s1", "s2"],  # s2 has no data here: its backup fails
        clock=clock,
        metrics=metrics,
    )
    # An expired backup with its manifest, and a file that is not ours: rotation's business.
    config.backup_dir.mkdir(parents=True)
    old = config.backup_dir / "s1-20240301T030000Z.sqlite3"
    old.write_bytes(b"old")
    (config.backup_dir / (old.name + ".json")).write_text("{}")
    (config.backup_dir / (old.name + ".files.tar")).write_bytes(b"old files")
    (config.backup_dir / "notes.txt").write_text("keep me")
    # An upload whose bytes are lost from the slot: the backup succeeds and says so.
    (lost,) = await slot_uploads(config_path).store(b"lost\n")
    lost.path(slot_db(config_path).parent).unlink()

    stopping = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(keeper.run(stopping))
        for _ in range(2000):
            if len(keeper.statuses()) == 2 and keeper.next_at != AT_3:
                break
            await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(task, 5)

    statuses = {s["slot"]: s for s in keeper.statuses()}
    assert statuses["s1"]["last_error"] is None and statuses["s1"]["last_ok_at"] >= AT_3
    assert statuses["s2"]["last_ok_at"] is None
    assert "no SQLite database" in statuses["s2"]["last_error"]
    assert keeper.next_at == AT_3 + 86_400  # tomorrow's run

    ok_at = statuses["s1"]["last_ok_at"]
    assert sample(metrics, "moonwatch_backup_last_success_timestamp_seconds", slot="s1") == ok_at
    assert sample(metrics, "moonwatch_backup_failures_total", slot="s2") == 1
    assert sample(metrics, "moonwatch_backup_failures_total", slot="s1") is None
    assert (sample(metrics, "moonwatch_backup_bytes", slot="s1") or 0) > 0
    assert sample(metrics, "moonwatch_backup_duration_seconds_count") == 2

    failed = [e for e in logs if e["event"] == "backup_failed"]
    assert [(e["slot"], e["log_level"]) for e in failed] == [("s2", "error")]
    assert "no SQLite database" in failed[0]["reason"]
    (warned,) = [e for e in logs if e["event"] == "backup_files_lost"]
    assert (warned["slot"], warned["lost"], warned["log_level"]) == ("s1", 1, "warning")

    names = sorted(p.name for p in config.backup_dir.iterdir())
    assert not [n for n in names if n.startswith(old.name)] and "notes.txt" in names
    (made,) = [n for n in names if n.endswith(".sqlite3")]  # named by the real clock
    assert names == sorted([made, made + ".files.tar", made + ".json", "notes.txt"])
    assert statuses["s1"]["last_file"] == str(config.backup_dir / made)
    on_disk = sum((config.backup_dir / n).stat().st_size for n in (made, made + ".files.tar"))
    assert sample(metrics, "moonwatch_backup_bytes", slot="s1") == on_disk


# ---------------------------------------------------------------- GET /v1/status


def serving_driver(config: ClusterConfig) -> StaticDriver:
    """This server's instance of s1 serves at epoch 1; nothing else runs."""
    address = f"127.0.0.1:{config.app_port('a1', 's1')}"
    return StaticDriver({"s1": InstanceStatus("s1", 1, address, 1, True, True, serving=True)})


@pytest.fixture
async def status(config_path: Path) -> AsyncIterator[tuple[Any, aiohttp.ClientSession, str]]:
    config = parse_config(cluster_config(config_path.parent / "data"), config_path.parent, {})
    clock = FakeClock()
    log = MemoryLog(voters=config.voters)
    consensus = MemoryConsensus(log, "a1", clock)
    await consensus.start()
    log.elect("a1")
    driver = serving_driver(config)
    for command in (
        bootstrap_command(config, WALL - 60),
        ServerUp(id="up-a1", at=WALL - 50, server="a1", incarnation=1),
        SlotServing(
            id="serving-s1",
            at=WALL - 40,
            slot="s1",
            owner="a1",
            epoch=1,
            address=driver.running["s1"].address,
        ),
    ):
        assert (await consensus.submit(command, timeout_s=1.0)).ok
    parts = build_agent(config, "a1", clock, consensus=consensus, driver=driver)
    runner = web.AppRunner(parts.api)
    await runner.setup()
    await web.TCPSite(runner, parts.host, parts.agent_port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield parts, http, config.server("a1").agent_url
    finally:
        await runner.cleanup()
        await consensus.stop()


async def test_status_shows_each_backed_up_slot(
    status: tuple[Any, aiohttp.ClientSession, str],
) -> None:
    parts, http, url = status
    async with http.get(url + "/v1/status") as resp:
        assert (await resp.json())["backups"] == []
    assert parts.backups is not None
    (outcome,) = await parts.backups.run_once()  # only s1 is served by a1
    assert outcome.slot == "s1" and outcome.ok and outcome.verified
    async with http.get(url + "/v1/status") as resp:
        (entry,) = (await resp.json())["backups"]
    assert entry["slot"] == "s1" and entry["last_error"] is None
    assert entry["last_ok_at"] == WALL and entry["last_file"] == outcome.file
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    assert 'moonwatch_backup_last_success_timestamp_seconds{slot="s1"} 1.710039598e+09' in text
