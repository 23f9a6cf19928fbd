"""The backup schedule, the rotation and which slots a server backs up: pure, at fixed times."""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

import pytest

from agent.backups import (
    DAY_S,
    next_run_at,
    outcome_of,
    parse_backup_name,
    slots_to_back_up,
    to_delete,
)
from agent.config import ConfigError, parse_config
from agent.driver import InstanceStatus
from consensus.state import ClusterState, SlotRecord
from tests.support import cluster_config


def utc(text: str) -> float:
    """'2024-03-10 03:00:00' (UTC) as epoch seconds."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("at", "now", "expected"),
    [
        ("03:00", "2024-03-10 02:59:59", "2024-03-10 03:00:00"),
        ("03:00", "2024-03-10 03:00:00", "2024-03-11 03:00:00"),  # just ran: tomorrow
        ("03:00", "2024-03-10 03:00:01", "2024-03-11 03:00:00"),
        ("03:00", "2024-03-10 23:59:59", "2024-03-11 03:00:00"),
        ("00:00", "2024-02-28 12:00:00", "2024-02-29 00:00:00"),  # leap day
        ("23:59", "2024-12-31 23:58:00", "2024-12-31 23:59:00"),
        ("23:59", "2024-12-31 23:59:30", "2025-01-01 23:59:00"),  # over the year's end
    ],
)
def test_next_run_at(at: str, now: str, expected: str) -> None:
    hours, minutes = map(int, at.split(":"))
    assert next_run_at(hours * 60 + minutes, utc(now)) == utc(expected)


def test_next_run_is_within_a_day_and_on_the_minute() -> None:
    start = utc("2024-01-01 00:00:00")
    for step in range(0, int(2 * DAY_S), 977):
        now = start + step + 0.25
        due = next_run_at(3 * 60 + 30, now)
        assert now < due <= now + DAY_S
        assert (due - 3 * 3600 - 30 * 60) % DAY_S == 0


# ---------------------------------------------------------------- names


def test_backup_names() -> None:
    parsed = parse_backup_name("s1-20240310T030000Z.sqlite3")
    assert parsed is not None
    assert (parsed.slot, parsed.at, parsed.pre_restore) == ("s1", utc("2024-03-10 03:00:00"), False)
    pre = parse_backup_name("web-eu-pre-restore-20240310T030001Z.pgdump")
    assert pre is not None and (pre.slot, pre.pre_restore) == ("web-eu", True)
    dashed = parse_backup_name("web-eu-20240310T030000Z.pgdump")
    assert dashed is not None and dashed.slot == "web-eu"
    for name in (
        "s1-20240310T030000Z.sqlite3.json",
        "s1-20240310T030000Z.sqlite3.tmp",
        ".s1-20240310T030000Z.sqlite3.ab12cd34.tmp",
        "s1-20241310T030000Z.sqlite3",  # month 13
        "s1-2024-03-10.sqlite3",
        "notes.txt",
        "S1-20240310T030000Z.sqlite3",
    ):
        assert parse_backup_name(name) is None, name


# ---------------------------------------------------------------- rotation

NOW = utc("2024-03-20 03:00:00")


def pair(slot: str, stamp: str, ext: str = "sqlite3") -> list[str]:
    name = f"{slot}-{stamp}.{ext}"
    return [name, name + ".json"]


def test_rotation_removes_backups_older_than_keep_days_with_their_manifests() -> None:
    names = [
        *pair("s1", "20240305T030000Z"),  # 15 days old
        *pair("s1", "20240306T030000Z"),  # exactly 14 days: kept
        *pair("s1", "20240319T030000Z"),
        *pair("s2", "20240301T030000Z", "pgdump"),
        *pair("s2", "20240320T030000Z", "pgdump"),
    ]
    assert to_delete(names, 14, NOW) == sorted(
        [*pair("s1", "20240305T030000Z"), *pair("s2", "20240301T030000Z", "pgdump")]
    )


def test_rotation_keeps_the_newest_successful_backup_however_old() -> None:
    names = [
        *pair("s1", "20240101T030000Z"),
        *pair("s1", "20240102T030000Z"),  # newest with a manifest: kept
        "s1-20240103T030000Z.sqlite3",  # no manifest: not a successful backup
    ]
    assert to_delete(names, 14, NOW) == [
        *pair("s1", "20240101T030000Z"),
        "s1-20240103T030000Z.sqlite3",
    ]


def test_rotation_counts_pre_restore_backups_and_orphan_manifests() -> None:
    names = [
        *pair("s1", "pre-restore-20240101T030000Z"),
        "s1-20240102T030000Z.sqlite3.json",  # its backup is gone
        *pair("s1", "20240318T030000Z"),
    ]
    assert to_delete(names, 14, NOW) == sorted(
        [*pair("s1", "pre-restore-20240101T030000Z"), "s1-20240102T030000Z.sqlite3.json"]
    )


def test_rotation_never_touches_names_that_are_not_backups() -> None:
    names = [
        "README",
        ".s1-20240101T030000Z.sqlite3.deadbeef.tmp",
        "s1-20240101T030000Z.sqlite3.old",
        "s1-20240101.sqlite3",
        "lost+found",
    ]
    assert to_delete(names, 1, NOW) == []


def with_archive(slot: str, stamp: str, ext: str = "sqlite3") -> list[str]:
    name = f"{slot}-{stamp}.{ext}"
    return [name, name + ".files.tar", name + ".json"]


def test_rotation_removes_a_backup_with_its_files_archive() -> None:
    names = [
        *with_archive("s1", "20240301T030000Z"),  # expired: all three go
        *pair("s1", "20240302T030000Z"),  # expired, made before files were kept
        "s1-20240303T030000Z.sqlite3.files.tar",  # expired orphan archive
        *with_archive("s1", "20240303T030000Z", "pgdump")[1:],  # manifest and archive only
        *with_archive("s1", "20240319T030000Z"),  # recent: kept
        ".s1-20240301T030000Z.sqlite3.files.tar.ab12cd34.tmp",  # a temporary name: never
    ]
    assert to_delete(names, 14, NOW) == sorted(
        [
            *with_archive("s1", "20240301T030000Z"),
            *pair("s1", "20240302T030000Z"),
            "s1-20240303T030000Z.sqlite3.files.tar",
            *with_archive("s1", "20240303T030000Z", "pgdump")[1:],
        ]
    )


def test_rotation_keeps_the_newest_backup_with_its_archive() -> None:
    names = [*with_archive("s1", "20240101T030000Z"), *with_archive("s1", "20240102T030000Z")]
    assert to_delete(names, 14, NOW) == with_archive("s1", "20240101T030000Z")


def test_rotation_with_a_long_keep_keeps_everything() -> None:
    names = [*pair("s1", "20200101T000000Z"), *pair("s1", "20240101T000000Z")]
    assert to_delete(names, 3650, NOW) == []
    assert to_delete(names, 1, NOW) == pair("s1", "20200101T000000Z")


# ---------------------------------------------------------------- which slots


def instance(slot: str, epoch: int, serving: bool = True) -> InstanceStatus:
    return InstanceStatus(slot, epoch, "127.0.0.1:1", 1, True, True, serving=serving)


def test_only_the_serving_owner_backs_a_slot_up() -> None:
    state = ClusterState(
        slots=(
            SlotRecord("s1", ("a",), owner="m1", epoch=2, state="serving"),
            SlotRecord("s2", ("b",), owner="m1", epoch=1, state="assigned"),
            SlotRecord("s3", ("c",), owner="m2", epoch=1, state="serving"),
            SlotRecord("s4", ("d",), owner="m1", epoch=3, state="serving"),
            SlotRecord("s5", ("e",), owner="m1", epoch=1, state="serving"),
        )
    )
    instances = {
        "s1": instance("s1", 2),
        "s2": instance("s2", 1),
        "s3": instance("s3", 1),  # owned by m2: not ours whatever runs here
        "s4": instance("s4", 2),  # an older epoch still running here
        "s5": instance("s5", 1, serving=False),
    }
    assert slots_to_back_up(state, "m1", instances) == ["s1"]
    assert slots_to_back_up(state, "m2", instances) == ["s3"]
    assert slots_to_back_up(state, "m3", instances) == []


# ---------------------------------------------------------------- the process's answer


def test_outcome_of_the_backup_process() -> None:
    line = (
        '{"ok": true, "action": "create", "file": "/b/s1-20240310T030000Z.sqlite3", '
        '"size": 4096, "tables": 3, "rows": 7, "verified": true}'
    )
    ok = outcome_of("s1", 0, "noise\n" + line + "\n", "", 600)
    assert ok.ok and (ok.file, ok.size, ok.tables, ok.rows, ok.verified) == (
        "/b/s1-20240310T030000Z.sqlite3", 4096, 3, 7, True,
    )  # fmt: skip
    failed = outcome_of("s1", 1, '{"ok": false, "error": "no space left on device"}', "", 600)
    assert not failed.ok and failed.error == "no space left on device (exit code 1)"
    crashed = outcome_of("s1", 1, "", "Traceback\nKeyError: x\n", 600)
    assert crashed.error == "Traceback / KeyError: x (exit code 1)"
    late = outcome_of("s1", None, "", "", 600)
    assert late.error == "timed out after 600 s (killed)"


def test_outcome_of_a_backup_with_files() -> None:
    line = (
        '{"ok": true, "action": "create", "file": "/b/s1-20240310T030000Z.sqlite3", '
        '"size": 4096, "tables": 3, "rows": 7, "verified": true, "files": {"included": true, '
        '"count": 5, "bytes": 900, "size": 10240, "missing": [{"tenant_id": 1, "file_id": 2, '
        '"reason": "deleted"}, {"tenant_id": 1, "file_id": 3, "reason": "absent"}]}}'
    )
    ok = outcome_of("s1", 0, line, "", 600)
    assert (ok.files, ok.file_bytes, ok.archive_size, ok.files_lost) == (5, 900, 10240, 1)
    assert ok.total_bytes == 4096 + 10240
    old = '{"ok": true, "size": 4096, "files": {"included": false, "note": "..."}}'
    assert outcome_of("s1", 0, old, "", 600).files == 0


# ---------------------------------------------------------------- configuration


def config_with(tmp_path: Path, backups: Any) -> Any:
    raw = cluster_config(tmp_path / "data")
    raw["backups"] = backups
    return parse_config(raw, tmp_path, {})


def test_backups_defaults(tmp_path: Path) -> None:
    config = parse_config(cluster_config(tmp_path / "data"), tmp_path, {})
    assert config.backups.enabled and config.backups.keep_days == 14
    assert (config.backups.at, config.backups.minute_of_day) == ("03:00", 180)
    assert config.backups.timeout_s == 600.0
    assert config.backup_dir == (tmp_path / "data" / "backups").resolve()


def test_backups_dir_is_taken_from_the_config_directory(tmp_path: Path) -> None:
    raw = cluster_config(tmp_path / "data")
    raw["backups"] = {"dir": "bk", "at": "23:15"}
    config = parse_config(raw, tmp_path, {})
    assert config.backup_dir == (tmp_path / "bk").resolve()
    assert config.backups.minute_of_day == 23 * 60 + 15
    other = parse_config(raw, tmp_path / "elsewhere", {})
    assert other.backup_dir != config.backup_dir
    assert other.digest() == config.digest()  # a local path, like data_dir


@pytest.mark.parametrize(
    ("backups", "expected"),
    [
        ({"keep_days": 0}, "backups.keep_days: Input should be greater than or equal to 1"),
        ({"keep_days": 3651}, "backups.keep_days: Input should be less than or equal to 3650"),
        ({"at": "3:00"}, "backups.at: must be a UTC time of day as HH:MM"),
        ({"at": "24:00"}, "backups.at: must be a UTC time of day as HH:MM"),
        ({"at": 180}, 'backups.at: write the time in quotes, e.g. at: "03:00"'),
        ({"timeout_s": 0}, "backups.timeout_s: Input should be greater than 0"),
        ({"enabled": "yes"}, "backups.enabled: Input should be a valid boolean"),
        ({"dir": ""}, "backups.dir: must be a non-empty path"),
        ({"every": "day"}, "backups.every: unknown key"),
    ],
)
def test_backups_errors_name_their_key(tmp_path: Path, backups: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, backups)
    assert any(line.startswith(expected) for line in caught.value.errors), caught.value.errors
