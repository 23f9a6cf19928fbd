"""Table tests of scripts/check_overlap.py: intervals, overlaps, damaged files, the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scripts.check_overlap import (
    Instance,
    Parsed,
    Record,
    find_overlaps,
    main,
    parse_file,
    parse_record,
)

A = {"server": "m1", "epoch": 3, "pid": 101}
B = {"server": "m2", "epoch": 4, "pid": 202}
C = {"server": "m3", "epoch": 5, "pid": 303}


def rec(
    who: dict[str, Any],
    event: str,
    boot: float,
    until: float | None,
    *,
    slot: str = "s1",
    reason: str = "lease",
) -> dict[str, Any]:
    return {
        "slot": slot,
        **who,
        "event": event,
        "boot": boot,
        "mono": boot - 1.0,
        "until": until,
        "reason": reason,
    }


def lines(*records: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def parsed(*records: dict[str, Any]) -> list[Record]:
    return [parse_record(json.dumps(r)) for r in records]


def instance(who: dict[str, Any]) -> Instance:
    return Instance(who["server"], who["epoch"], who["pid"])


@dataclass(frozen=True)
class Case:
    records: list[dict[str, Any]]
    overlaps: list[tuple[dict[str, Any], dict[str, Any], float]] = field(default_factory=list)
    serving_s: dict[str, float] = field(default_factory=dict)
    warnings: int = 0


CASES = {
    "no-overlap": Case(
        [
            rec(A, "start", 0.0, 10.0),
            rec(A, "renew", 5.0, 15.0),
            rec(A, "stop", 12.0, 15.0, reason="release"),
            rec(B, "start", 13.0, 20.0),
            rec(B, "stop", 20.02, 20.0, reason="expired"),
            rec(C, "start", 1.0, 30.0, slot="s2"),  # same time, other slot
        ],
        serving_s={"s1": 12.0 + 7.0, "s2": 29.0},
    ),
    "clean-handover": Case(
        [
            rec(A, "start", 0.0, 10.0),
            rec(A, "stop", 10.04, 10.0, reason="expired"),
            rec(B, "start", 10.0, 20.0),  # starts the instant A's lease ends: touching
        ],
        serving_s={"s1": 20.0},
    ),
    "overlap": Case(
        [
            rec(A, "start", 0.0, 10.0),
            rec(B, "start", 5.0, 15.0),
            rec(A, "stop", 8.0, 10.0, reason="release"),
            rec(B, "stop", 15.0, 15.0, reason="expired"),
        ],
        overlaps=[(A, B, 3.0)],
        serving_s={"s1": 8.0 + 10.0},
    ),
    "killed-bounded-by-last-until": Case(
        [
            rec(A, "start", 0.0, 5.0),
            rec(A, "renew", 3.0, 8.0),  # then SIGKILL: no stop
            rec(B, "start", 8.5, 20.0),
        ],
        serving_s={"s1": 8.0 + 11.5},
    ),
    "killed-overlapping-its-last-until": Case(
        [rec(A, "start", 0.0, 5.0), rec(A, "renew", 3.0, 8.0), rec(B, "start", 7.0, 20.0)],
        overlaps=[(A, B, 1.0)],
        serving_s={"s1": 8.0 + 13.0},
    ),
    "paused-stop-late-until-earlier": Case(
        [
            rec(A, "start", 0.0, 5.0),
            rec(B, "start", 6.0, 20.0),
            rec(A, "stop", 30.0, 5.0, reason="expired"),  # SIGSTOPped until 30, noticed then
        ],
        serving_s={"s1": 5.0 + 14.0},
    ),
    "released-before-the-lease-ended": Case(
        [
            rec(A, "start", 0.0, 50.0),
            rec(A, "stop", 4.0, 50.0, reason="release"),
            rec(B, "start", 4.5, 50.0),
        ],
        serving_s={"s1": 4.0 + 45.5},
    ),
    "one-instance-serving-twice-is-no-overlap": Case(
        [
            rec(A, "start", 0.0, 10.0),
            rec(A, "stop", 2.0, 10.0, reason="release"),
            rec(A, "start", 3.0, 10.0),
            rec(A, "stop", 10.01, 10.0, reason="expired"),
        ],
        serving_s={"s1": 2.0 + 7.0},
    ),
    "three-way": Case(
        [rec(A, "start", 0.0, 10.0), rec(B, "start", 2.0, 6.0), rec(C, "start", 4.0, 8.0)],
        overlaps=[(A, B, 4.0), (A, C, 4.0), (B, C, 2.0)],
        serving_s={"s1": 10.0 + 4.0 + 4.0},
    ),
    "unleased-stopped": Case(
        [rec(A, "start", 0.0, None), rec(A, "stop", 4.0, None), rec(B, "start", 4.0, 9.0)],
        serving_s={"s1": 4.0 + 5.0},
    ),
    "unleased-killed-serves-forever": Case(
        [rec(A, "start", 0.0, None), rec(B, "start", 100.0, 109.0)],
        overlaps=[(A, B, 9.0)],
        serving_s={"s1": math.inf},
    ),
    "stop-without-start-is-a-warning": Case(
        [rec(A, "stop", 3.0, 5.0, reason="expired")], serving_s={"s1": 0.0}, warnings=1
    ),
    "renew-without-start-counts-as-start": Case(
        [rec(A, "renew", 3.0, 5.0), rec(B, "start", 4.0, 9.0)],
        overlaps=[(A, B, 1.0)],
        serving_s={"s1": 2.0 + 5.0},
        warnings=1,
    ),
    "empty": Case([]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_find_overlaps(case: Case) -> None:
    report = find_overlaps(parsed(*case.records))
    found = [(o.first, o.second, pytest.approx(o.seconds)) for o in report.overlaps]
    assert found == [(instance(x), instance(y), span) for x, y, span in case.overlaps]
    assert {s.slot: s.serving_s for s in report.slots} == pytest.approx(case.serving_s)
    assert report.ok == (not case.overlaps)
    assert sum(s.overlaps for s in report.slots) == len(case.overlaps)
    assert len(report.warnings) == case.warnings


def test_overlap_reports_its_span_and_slot() -> None:
    report = find_overlaps(parsed(*CASES["overlap"].records))
    (overlap,) = report.overlaps
    assert (overlap.slot, overlap.start, overlap.end) == ("s1", 5.0, 8.0)
    (row,) = report.slots
    assert (row.instances, row.intervals, row.overlaps) == (2, 2, 1)


def test_records_out_of_file_order_are_ordered_by_boot() -> None:
    # The same instance's records from two files: merged by boot, not by argument order.
    stop_first = [rec(A, "stop", 8.0, 10.0, reason="release"), rec(A, "start", 0.0, 10.0)]
    report = find_overlaps(parsed(*stop_first, rec(B, "start", 8.0, 12.0)))
    assert report.ok
    assert [(i.start, i.end) for i in report.intervals] == [(0.0, 8.0), (8.0, 12.0)]


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"event": "begin"}, "'event'"),
        ({"pid": True}, "'pid'"),
        ({"pid": 0}, "'pid'"),
        ({"epoch": "3"}, "'epoch'"),
        ({"slot": ""}, "'slot'"),
        ({"boot": "1.0"}, "'boot'"),
        ({"boot": math.nan}, "'boot'"),
        ({"mono": math.inf}, "'mono'"),
        ({"until": "soon"}, "'until'"),
        ({"reason": None}, "'reason'"),
    ],
)
def test_parse_record_rejects_bad_fields(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_record(json.dumps({**rec(A, "start", 1.0, 2.0), **change}))


@pytest.mark.parametrize("missing", ["slot", "server", "epoch", "pid", "boot", "mono", "until"])
def test_parse_record_needs_every_field(missing: str) -> None:
    raw = rec(A, "start", 1.0, 2.0)
    del raw[missing]
    with pytest.raises(ValueError, match=repr(missing)):
        parse_record(json.dumps(raw))


@pytest.mark.parametrize("text", ["", "[]", "{", '"start"', "null"])
def test_parse_record_rejects_non_objects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_record(text)


def test_parse_record_ignores_unknown_fields() -> None:
    record = parse_record(json.dumps({**rec(A, "start", 1.0, 2.0), "future": 1}))
    assert record == Record("s1", instance(A), "start", 1.0, 0.0, 2.0, "lease")


@pytest.mark.parametrize(
    ("tail", "records", "errors", "warnings"),
    [
        pytest.param("", 2, 0, 0, id="clean"),
        pytest.param('{"slot": "s1", "serv', 2, 0, 1, id="torn-last-line"),
        pytest.param("\x00\x00\x00\n", 2, 0, 1, id="garbled-last-line-with-newline"),
        pytest.param("\n\n", 2, 0, 0, id="blank-lines"),
    ],
)
def test_parse_file_tolerates_only_the_last_line(
    tail: str, records: int, errors: int, warnings: int
) -> None:
    into = Parsed()
    data = lines(rec(A, "start", 0.0, 5.0), rec(A, "renew", 1.0, 6.0)) + tail
    parse_file(data.encode(), "f.log", into)
    assert (len(into.records), len(into.errors), len(into.warnings)) == (records, errors, warnings)


def test_parse_file_counts_garbled_middle_lines() -> None:
    data = lines(rec(A, "start", 0.0, 5.0)) + "garbage\n" + "\xff\n" + lines(rec(B, "start", 6, 9))
    into = Parsed()
    parse_file(data.encode("latin-1"), "f.log", into)
    assert len(into.records) == 2
    assert [e.split(":")[1] for e in into.errors] == ["2", "3"]


# ------------------------------------------------------------------ CLI


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="latin-1")
    return path


def test_cli_no_overlap_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "a" / "s1.log", lines(*CASES["clean-handover"].records[:2]))
    write(tmp_path / "b" / "deeper" / "s1.jsonl", lines(CASES["clean-handover"].records[2]))
    write(tmp_path / "b" / "notes.txt", "not a log\n")  # ignored: not *.log / *.jsonl
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OK: no slot ever had two serving instances; 3 records in 2 files" in out
    assert out.splitlines()[1].split() == ["s1", "2", "2", "20.000", "0"]


def test_cli_overlap_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write(tmp_path / "s1.log", lines(*CASES["overlap"].records))
    assert main([str(log)]) == 1
    out = capsys.readouterr().out
    assert "OVERLAP slot s1: m1/e3/pid101 and m2/e4/pid202 both served for 3.000 s" in out
    assert "FAIL: 1 overlap(s)" in out


def test_cli_torn_last_line_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(tmp_path / "s1.log", lines(*CASES["no-overlap"].records) + '{"slot": "s1", "se')
    assert main([str(log)]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "torn" in captured.err
    assert "OK:" in captured.out


def test_cli_garbled_middle_line_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = CASES["overlap"].records
    log = write(tmp_path / "s1.log", lines(records[0]) + "{oops}\n" + lines(*records[1:]))
    assert main([str(log)]) == 2  # input errors outrank the overlap, which is still shown
    captured = capsys.readouterr()
    assert f"error: {log}:2: not JSON" in captured.err
    assert "OVERLAP slot s1" in captured.out
    assert "INPUT ERROR: 1 problem(s)" in captured.out


def test_cli_unreadable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.log")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, ""], ids=["empty-directory", "empty-file"])
def test_cli_empty_input_exits_0_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    if content is not None:
        write(tmp_path / "s1.log", content)
    assert main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "warning: no records found" in captured.err
    assert "OK:" in captured.out


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = CASES["unleased-killed-serves-forever"].records
    log = write(tmp_path / "s1.log", lines(*records) + "{torn")
    assert main(["--json", str(log)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["exit_code"] == 1 and result["ok"] is False
    assert (result["files"], result["records"], result["errors"]) == (1, 2, [])
    assert result["slots"] == [
        {"slot": "s1", "instances": 2, "intervals": 2, "serving_s": None, "overlaps": 1}
    ]
    assert result["overlaps"] == [
        {
            "slot": "s1",
            "first": "m1/e3/pid101",
            "second": "m2/e4/pid202",
            "start": 100.0,
            "end": 109.0,
            "overlap_s": 9.0,
        }
    ]
    assert len(result["warnings"]) == 1


def test_cli_needs_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err
