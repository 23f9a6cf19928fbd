"""Daily backups of the slots this server serves: the schedule, the rotation and BackupKeeper.

The work on a slot's data is done by the app's own backup module, run as a process (the agent
never imports the app's internals): `python -m app.backup create` backs up the database and the
uploaded files it lists (`<backup>.files.tar`), checks both by restoring the database into a
scratch database and reading the archive back, and prints one JSON line. Only the server that
serves a slot backs it up, so two servers never back up one slot.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.clock import Clock
from agent.config import ClusterConfig
from agent.config_backups import BackupsConfig
from agent.driver import DATABASE_URL_ENV, InstanceStatus
from agent.metrics import AgentMetrics
from consensus.state import ClusterState

_log = structlog.get_logger("moonwatch.backups")

DAY_S = 86_400.0
# While waiting for the scheduled time the keeper looks at the clock this often, so that a
# shutdown or a jump of the wall clock is noticed promptly.
CHECK_S = 1.0
MANIFEST_SUFFIX = ".json"
# The archive of a backup's uploaded files (none beside backups made before files were kept).
ARCHIVE_SUFFIX = ".files.tar"
COMPANION_SUFFIXES = (MANIFEST_SUFFIX, ARCHIVE_SUFFIX)
# The names `python -m app.backup` gives its backups; the rotation touches nothing else.
BACKUP_NAME = re.compile(
    r"^(?P<slot>[a-z][a-z0-9-]*?)-(?:(?P<kind>pre-restore)-)?"
    r"(?P<stamp>\d{8}T\d{6}Z)\.(?P<ext>sqlite3|pgdump)$"
)


# ---------------------------------------------------------------- pure: schedule and rotation


def next_run_at(minute_of_day: int, now: float) -> float:
    """The first wall-clock instant after `now` that is `minute_of_day` minutes past a UTC
    midnight (epoch seconds)."""
    candidate = now - now % DAY_S + minute_of_day * 60
    return candidate if candidate > now else candidate + DAY_S


@dataclass(frozen=True, slots=True)
class BackupName:
    name: str
    slot: str
    at: float
    pre_restore: bool


def parse_backup_name(name: str) -> BackupName | None:
    """What a backup's file name says (slot, time made), or None for a name not ours."""
    match = BACKUP_NAME.match(name)
    if match is None:
        return None
    try:
        at = float(calendar.timegm(time.strptime(match.group("stamp"), "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None
    return BackupName(name, match.group("slot"), at, match.group("kind") is not None)


def _backup_of(name: str) -> str:
    """The backup a file of the directory belongs to: itself, or the backup it accompanies."""
    for suffix in COMPANION_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def to_delete(names: Iterable[str], keep_days: int, now: float) -> list[str]:
    """The files of a backup directory listing to remove: backups (with their manifests and
    files archives) made more than `keep_days` days before `now` by the time in their name,
    except each slot's newest successful backup (one with its manifest). Names not ours are
    never listed."""
    listed = set(names)
    backups: dict[str, BackupName] = {}
    for name in listed:
        parsed = parse_backup_name(_backup_of(name))
        if parsed is not None:
            backups[parsed.name] = parsed
    newest: dict[str, BackupName] = {}
    for backup in backups.values():
        if backup.name in listed and backup.name + MANIFEST_SUFFIX in listed:
            best = newest.get(backup.slot)
            if best is None or (backup.at, backup.name) > (best.at, best.name):
                newest[backup.slot] = backup
    keep_s = keep_days * DAY_S
    doomed = [
        b.name for b in backups.values() if now - b.at > keep_s and newest.get(b.slot) is not b
    ]
    files = [n for b in doomed for n in (b, *(b + s for s in COMPANION_SUFFIXES)) if n in listed]
    return sorted(files)


def newest_backups(names: Iterable[str]) -> dict[str, float]:
    """Slot -> when its newest successful backup (one with a manifest) was made."""
    listed = set(names)
    newest: dict[str, float] = {}
    for name in listed:
        parsed = parse_backup_name(name)
        if parsed is not None and name + MANIFEST_SUFFIX in listed:
            newest[parsed.slot] = max(parsed.at, newest.get(parsed.slot, parsed.at))
    return newest


def slots_to_back_up(
    state: ClusterState, server: str, instances: Mapping[str, InstanceStatus]
) -> list[str]:
    """The slots `server` serves now: committed to it as serving, and its own instance of
    that epoch serving them. Only that server backs such a slot up."""
    chosen = []
    for slot in state.slots_owned_by(server):
        instance = instances.get(slot.name)
        if (
            slot.state == "serving"
            and instance is not None
            and instance.serving
            and instance.epoch == slot.epoch
        ):
            chosen.append(slot.name)
    return chosen


@dataclass(frozen=True, slots=True)
class BackupOutcome:
    """One slot's backup as `python -m app.backup create` reported it: the database file's
    `size`; the uploaded files in its archive (`files`, `file_bytes` of contents, the archive's
    `archive_size`) and how many files the database lists that are lost to the slot itself
    (`files_lost`: bytes absent or damaged, not deleted while the backup ran)."""

    slot: str
    ok: bool
    error: str | None = None
    file: str | None = None
    size: int = 0
    tables: int = 0
    rows: int = 0
    verified: bool = False
    duration_s: float = 0.0
    files: int = 0
    file_bytes: int = 0
    archive_size: int = 0
    files_lost: int = 0

    @property
    def total_bytes(self) -> int:
        """What the backup takes on disk: the database file and the files archive."""
        return self.size + self.archive_size


def last_json(text: str) -> dict[str, Any]:
    """The last line of `text` that is a JSON object ({} if none)."""
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


def outcome_of(
    slot: str, code: int | None, stdout: str, stderr: str, timeout_s: float
) -> BackupOutcome:
    """Read the backup process's result: None as `code` means it was killed at `timeout_s`."""
    if code is None:
        return BackupOutcome(slot, False, f"timed out after {timeout_s:g} s (killed)")
    doc = last_json(stdout)
    if code != 0 or doc.get("ok") is not True:
        tail = " / ".join(line for line in stderr.strip().splitlines()[-3:])
        why = doc.get("error") or tail or "no message"
        return BackupOutcome(slot, False, f"{why} (exit code {code})")
    files = doc.get("files")
    files = files if isinstance(files, dict) else {}
    missing = files.get("missing")
    lost = [m for m in missing if m.get("reason") != "deleted"] if isinstance(missing, list) else []
    return BackupOutcome(
        slot,
        True,
        file=str(doc.get("file")),
        size=int(doc.get("size", 0)),
        tables=int(doc.get("tables", 0)),
        rows=int(doc.get("rows", 0)),
        verified=doc.get("verified") is True,
        files=int(files.get("count", 0)),
        file_bytes=int(files.get("bytes", 0)),
        archive_size=int(files.get("size", 0)),
        files_lost=len(lost),
    )


# ---------------------------------------------------------------- shell: processes


def slot_data_dir(config: ClusterConfig, slot: str) -> Path:
    return config.data_dir / "slots" / slot


def slot_environment(config: ClusterConfig, slot: str) -> dict[str, str]:
    """This process's environment with the slot's database URL (never in argv)."""
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    database_url = config.slot(slot).database_url
    if database_url is not None:
        env[DATABASE_URL_ENV] = database_url.get_secret_value()
    return env


async def run_module(
    args: Sequence[str], env: Mapping[str, str], timeout_s: float
) -> tuple[int | None, str, str]:
    """`python -m ARGS` in a process group of its own: exit code, stdout, stderr. On timeout
    (code None) or cancellation the whole group is killed, its tools (pg_dump) included."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        await _kill_group(proc)
        return None, "", ""
    except asyncio.CancelledError:
        await _kill_group(proc)
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class BackupRunner(Protocol):
    async def create(self, slot: str) -> BackupOutcome:
        """Back `slot` up now and check the backup; never raises for a failed backup (the
        outcome says why). Bounded by the configured timeout."""


class SubprocessBackups:
    """Backs a slot up with `python -m app.backup create` into the configured directory."""

    def __init__(self, config: ClusterConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock

    async def create(self, slot: str) -> BackupOutcome:
        started = self._clock.monotonic()
        outcome = await self._create(slot)
        return dataclasses.replace(outcome, duration_s=self._clock.monotonic() - started)

    async def _create(self, slot: str) -> BackupOutcome:
        dest = self._config.backup_dir
        try:
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            return BackupOutcome(slot, False, f"cannot create {dest}: {exc.strerror or exc}")
        args = [
            "app.backup", "create", "--data-dir", str(slot_data_dir(self._config, slot)),
            "--dest", str(dest), "--slot", slot,
        ]  # fmt: skip
        timeout_s = self._config.backups.timeout_s
        try:
            code, out, err = await run_module(args, slot_environment(self._config, slot), timeout_s)
        except OSError as exc:
            return BackupOutcome(slot, False, f"cannot run the backup: {exc.strerror or exc}")
        return outcome_of(slot, code, out, err, timeout_s)


# ---------------------------------------------------------------- shell: the daily task


@dataclass
class SlotBackupStatus:
    slot: str
    last_ok_at: float | None = None
    last_error: str | None = None
    last_attempt_at: float | None = None
    last_file: str | None = None


class BackupKeeper:
    """At `backups.at` each day, backs up every slot this server serves, then rotates."""

    def __init__(
        self,
        *,
        settings: BackupsConfig,
        backup_dir: Path,
        runner: BackupRunner,
        serving: Callable[[], Sequence[str]],
        clock: Clock,
        metrics: AgentMetrics,
    ) -> None:
        self._settings = settings
        self._dir = backup_dir
        self._runner = runner
        self._serving = serving
        self._clock = clock
        self._metrics = metrics
        self._status: dict[str, SlotBackupStatus] = {}
        self.next_at: float | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        self._remember_existing()
        while not stopping.is_set():
            due = next_run_at(self._settings.minute_of_day, self._clock.wall())
            self.next_at = due
            while not stopping.is_set() and (wait := due - self._clock.wall()) > 0:
                await self._clock.sleep(min(CHECK_S, wait))
            if stopping.is_set():
                return
            await self.run_once()

    async def run_once(self) -> list[BackupOutcome]:
        """Back up every slot served here now, one after the other, then rotate."""
        outcomes = []
        for slot in self._serving():
            try:
                outcome = await self._runner.create(slot)
            except Exception as exc:  # noqa: BLE001  # one slot's failure must not end the task
                outcome = BackupOutcome(slot, False, f"the backup could not run: {exc!r}")
            self._record(outcome, self._clock.wall())
            outcomes.append(outcome)
        self.rotate()
        return outcomes

    def _record(self, outcome: BackupOutcome, wall: float) -> None:
        status = self._status.setdefault(outcome.slot, SlotBackupStatus(outcome.slot))
        status.last_attempt_at = wall
        self._metrics.backup_duration.observe(outcome.duration_s)
        if not outcome.ok:
            status.last_error = outcome.error
            self._metrics.backup_failures.labels(outcome.slot).inc()
            _log.error("backup_failed", slot=outcome.slot, reason=outcome.error)
            return
        status.last_ok_at, status.last_error, status.last_file = wall, None, outcome.file
        self._metrics.backup_last_success.labels(outcome.slot).set(wall)
        self._metrics.backup_bytes.labels(outcome.slot).set(outcome.total_bytes)
        _log.info(
            "backup_done",
            slot=outcome.slot,
            file=outcome.file,
            size=outcome.size,
            rows=outcome.rows,
            files=outcome.files,
            file_bytes=outcome.file_bytes,
            seconds=round(outcome.duration_s, 3),
        )
        if outcome.files_lost:
            _log.warning(
                "backup_files_lost",
                slot=outcome.slot,
                file=outcome.file,
                lost=outcome.files_lost,
                hint="listed in the database but absent or damaged on disk: see the manifest",
            )

    def _listing(self) -> list[str]:
        try:
            return os.listdir(self._dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            _log.error("backup_dir_unreadable", dir=str(self._dir), error=str(exc))
            return []

    def _remember_existing(self) -> None:
        """Seed last success per slot from the backups already on disk (after a restart)."""
        for slot, at in newest_backups(self._listing()).items():
            status = self._status.setdefault(slot, SlotBackupStatus(slot))
            if status.last_ok_at is None:
                status.last_ok_at = at
                self._metrics.backup_last_success.labels(slot).set(at)

    def rotate(self) -> list[str]:
        """Remove expired backups; the names removed."""
        doomed = to_delete(self._listing(), self._settings.keep_days, self._clock.wall())
        removed = []
        for name in doomed:
            try:
                (self._dir / name).unlink(missing_ok=True)
            except OSError as exc:
                _log.warning("backup_not_removed", file=name, error=str(exc))
                continue
            removed.append(name)
        if removed:
            _log.info("backups_rotated", removed=removed, keep_days=self._settings.keep_days)
        return removed

    def statuses(self) -> list[dict[str, Any]]:
        """For GET /v1/status: per slot, the last successful backup and the last error."""
        return [dataclasses.asdict(self._status[slot]) for slot in sorted(self._status)]
