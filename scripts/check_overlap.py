#!/usr/bin/env python3
"""Prove from the apps' overlap logs that no slot ever had two instances serving at once.

    python scripts/check_overlap.py var/ [more files or directories ...] [--json]

Reads every *.log / *.jsonl file named or found (recursively) under a named directory. Each line
is one record an app instance appended (``app/overlap_log.py``)::

    {"slot", "server", "epoch", "pid", "event": "start"|"renew"|"stop",
     "boot", "mono", "until": float|null, "reason"}

Per slot and instance (server, epoch, pid) an interval opens at a start's ``boot`` and ends at
min(stop ``boot``, the latest ``until`` granted so far), or at that latest ``until`` when the
instance wrote no stop (SIGKILL) or its records end. The app refuses every request once
CLOCK_BOOTTIME passes ``until``, so it never serves past that; ``until: null`` (an app without
leases) bounds nothing, and such an instance without a stop serves forever. Intervals that merely
touch (one ends where the other starts) do not overlap.

``boot`` is CLOCK_BOOTTIME, which is per machine and per boot: every file checked together must
come from one boot of one machine.

Exit status: 0 no overlap; 1 some slot had two serving instances; 2 unreadable input or garbled
lines (a torn or garbled *last* line of a file, from a writer killed mid-line, is only a warning).
Input errors take precedence over overlaps, which are still reported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_OVERLAP = 1
EXIT_BAD_INPUT = 2
LOG_SUFFIXES = (".log", ".jsonl")
EVENTS = ("start", "renew", "stop")


@dataclass(frozen=True, order=True)
class Instance:
    """One app process serving a slot."""

    server: str
    epoch: int
    pid: int

    def __str__(self) -> str:
        return f"{self.server}/e{self.epoch}/pid{self.pid}"


@dataclass(frozen=True)
class Record:
    """One line of an overlap log."""

    slot: str
    instance: Instance
    event: str
    boot: float
    mono: float
    until: float | None
    reason: str


@dataclass(frozen=True)
class Interval:
    """A span of CLOCK_BOOTTIME during which ``instance`` may have served ``slot``."""

    slot: str
    instance: Instance
    start: float
    end: float  # math.inf when nothing bounds it

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True)
class Overlap:
    """Two instances that may both have served ``slot`` from ``start`` to ``end``."""

    slot: str
    first: Instance
    second: Instance
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SlotSummary:
    """One row of the report table."""

    slot: str
    instances: int
    intervals: int
    serving_s: float
    overlaps: int


@dataclass(frozen=True)
class Report:
    """What ``find_overlaps`` concluded."""

    slots: tuple[SlotSummary, ...]
    intervals: tuple[Interval, ...]
    overlaps: tuple[Overlap, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.overlaps


@dataclass
class Parsed:
    """Records read from some files, and what was wrong with the files."""

    records: list[Record] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # make the exit status 2
    warnings: list[str] = field(default_factory=list)
    files: int = 0


# ------------------------------------------------------------------ parsing


def _text(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} is not a non-empty string")
    return value


def _integer(raw: dict[str, Any], key: str, least: int) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{key!r} is not an integer >= {least}")
    return value


def _finite(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key!r} is not a finite number")
    return float(value)


def _until(raw: dict[str, Any]) -> float | None:
    if "until" in raw and raw["until"] is None:
        return None
    return _finite(raw, "until")


def parse_record(line: str) -> Record:
    """One JSON line to a Record; ValueError saying what is wrong with it."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    event = raw.get("event")
    if event not in EVENTS:
        raise ValueError(f"'event' is not one of {', '.join(EVENTS)}")
    instance = Instance(_text(raw, "server"), _integer(raw, "epoch", 0), _integer(raw, "pid", 1))
    reason = raw.get("reason")
    if not isinstance(reason, str):
        raise ValueError("'reason' is not a string")
    return Record(
        slot=_text(raw, "slot"),
        instance=instance,
        event=event,
        boot=_finite(raw, "boot"),
        mono=_finite(raw, "mono"),
        until=_until(raw),
        reason=reason,
    )


def parse_file(data: bytes, source: str, into: Parsed) -> None:
    """Parse one file's bytes into ``into``; only its last line may be torn."""
    lines = [(n, line) for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]
    into.files += 1
    for position, (number, line) in enumerate(lines, 1):
        try:
            into.records.append(parse_record(line.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as exc:
            problem = f"{source}:{number}: {exc}"
            if position == len(lines):
                into.warnings.append(f"{problem} (last line, torn by a killed writer? ignored)")
            else:
                into.errors.append(f"{problem} (garbled line)")


def log_files(paths: Iterable[Path]) -> list[Path]:
    """Files named, and *.log / *.jsonl files under directories named (sorted, recursive)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in LOG_SUFFIXES and p.is_file())
        else:
            found.append(path)
    return found


def read_paths(paths: Iterable[Path]) -> Parsed:
    """Read and parse every log file; unreadable ones are errors."""
    parsed = Parsed()
    for path in log_files(paths):
        try:
            data = path.read_bytes()
        except OSError as exc:
            parsed.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        parse_file(data, str(path), parsed)
    return parsed


# ------------------------------------------------------------------ intervals


class _Serving:
    """Folds one instance's records, in order, into its serving intervals."""

    def __init__(self, slot: str, instance: Instance) -> None:
        self.slot = slot
        self.instance = instance
        self.intervals: list[Interval] = []
        self.warnings: list[str] = []
        self._opened: float | None = None
        self._bound = -math.inf  # latest until granted since the interval opened

    def feed(self, record: Record) -> None:
        until = math.inf if record.until is None else record.until
        if record.event == "start":
            if self._opened is not None:
                self._warn(record, "start while already serving")
                self._close(record.boot)
            self._opened, self._bound = record.boot, until
        elif self._opened is None:
            if record.event == "stop":
                self._warn(record, "stop while not serving; ignored")
                return
            self._warn(record, "renew while not serving; counted as a start")
            self._opened, self._bound = record.boot, until
        else:
            self._bound = max(self._bound, until)
            if record.event == "stop":
                self._close(record.boot)

    def finish(self) -> list[Interval]:
        """Close an interval no stop closed (the writer was killed) at its latest until."""
        if self._opened is not None:
            self._close(math.inf)
        return self.intervals

    def _close(self, at: float) -> None:
        assert self._opened is not None
        self.intervals.append(
            Interval(self.slot, self.instance, self._opened, min(at, self._bound))
        )
        self._opened = None

    def _warn(self, record: Record, problem: str) -> None:
        self.warnings.append(f"slot {self.slot} {self.instance} at boot {record.boot}: {problem}")


def _overlaps(intervals: Sequence[Interval]) -> list[Overlap]:
    """Every pair of different instances' intervals sharing a span longer than zero."""
    found: list[Overlap] = []
    active: list[Interval] = []
    for interval in sorted(intervals, key=lambda i: (i.start, i.end)):
        active = [a for a in active if a.end > interval.start]
        for other in active:
            end = min(other.end, interval.end)
            if other.instance != interval.instance and end > interval.start:
                found.append(
                    Overlap(interval.slot, other.instance, interval.instance, interval.start, end)
                )
        active.append(interval)
    return found


def find_overlaps(records: Iterable[Record]) -> Report:
    """Serving intervals per slot and instance, and every overlap between instances."""
    by_instance: dict[tuple[str, Instance], list[Record]] = defaultdict(list)
    for record in records:
        by_instance[record.slot, record.instance].append(record)
    by_slot: dict[str, list[Interval]] = defaultdict(list)
    warnings: list[str] = []
    for (slot, instance), own in sorted(by_instance.items()):
        serving = _Serving(slot, instance)
        for record in sorted(own, key=lambda r: r.boot):  # stable: file order breaks ties
            serving.feed(record)
        by_slot[slot] += serving.finish()
        warnings += serving.warnings
    slots: list[SlotSummary] = []
    overlaps: list[Overlap] = []
    for slot, intervals in sorted(by_slot.items()):
        found = _overlaps(intervals)
        overlaps += found
        instances = len({i.instance for i in intervals})
        serving_s = math.fsum(i.seconds for i in intervals)
        slots.append(SlotSummary(slot, instances, len(intervals), serving_s, len(found)))
    every = tuple(i for slot in sorted(by_slot) for i in by_slot[slot])
    return Report(tuple(slots), every, tuple(overlaps), tuple(warnings))


# ------------------------------------------------------------------ output


def exit_code(report: Report, parsed: Parsed) -> int:
    """2 for input errors (they void a proof of safety), else 1 for overlaps, else 0."""
    if parsed.errors:
        return EXIT_BAD_INPUT
    return EXIT_OK if report.ok else EXIT_OVERLAP


def _seconds(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 6)


def as_json(report: Report, parsed: Parsed) -> dict[str, Any]:
    """The machine-readable result (infinite spans are null)."""
    return {
        "exit_code": exit_code(report, parsed),
        "ok": report.ok and not parsed.errors,
        "files": parsed.files,
        "records": len(parsed.records),
        "slots": [{**asdict(s), "serving_s": _seconds(s.serving_s)} for s in report.slots],
        "overlaps": [
            {
                "slot": o.slot,
                "first": str(o.first),
                "second": str(o.second),
                "start": o.start,
                "end": _seconds(o.end),
                "overlap_s": _seconds(o.seconds),
            }
            for o in report.overlaps
        ],
        "errors": parsed.errors,
        "warnings": parsed.warnings + list(report.warnings),
    }


def _span(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:.3f}"


def as_text(report: Report, parsed: Parsed) -> str:
    """The table, each overlap, and a verdict."""
    rows = [("slot", "instances", "intervals", "serving_s", "overlaps")]
    rows += [
        (s.slot, str(s.instances), str(s.intervals), _span(s.serving_s), str(s.overlaps))
        for s in report.slots
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines += [
        f"OVERLAP slot {o.slot}: {o.first} and {o.second} both served for {_span(o.seconds)} s"
        f" (boot {o.start:.3f} .. {_span(o.end)})"
        for o in report.overlaps
    ]
    code = exit_code(report, parsed)
    counted = f"{len(parsed.records)} records in {parsed.files} files"
    if code == EXIT_BAD_INPUT:
        lines.append(f"INPUT ERROR: {len(parsed.errors)} problem(s); {counted}")
    elif code == EXIT_OVERLAP:
        lines.append(f"FAIL: {len(report.overlaps)} overlap(s); {counted}")
    else:
        lines.append(f"OK: no slot ever had two serving instances; {counted}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Check the named logs; print the table (or JSON); return the exit status."""
    parser = argparse.ArgumentParser(
        prog="check_overlap.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("paths", nargs="+", type=Path, help="log files or directories of them")
    parser.add_argument("--json", action="store_true", help="print a machine-readable result")
    args = parser.parse_args(argv)
    parsed = read_paths(args.paths)
    report = find_overlaps(parsed.records)
    if not parsed.records and not parsed.errors:
        parsed.warnings.append("no records found")
    if args.json:
        print(json.dumps(as_json(report, parsed), indent=2))
    else:
        for problem in parsed.errors:
            print(f"error: {problem}", file=sys.stderr)
        for warning in parsed.warnings + list(report.warnings):
            print(f"warning: {warning}", file=sys.stderr)
        print(as_text(report, parsed))
    return exit_code(report, parsed)


if __name__ == "__main__":
    sys.exit(main())
