"""Pure timing math: Lifeguard awareness scores and suspicion windows, table-tested."""

from __future__ import annotations

import math

import pytest

from agent.swim.awareness import Awareness
from healer.suspicion import suspicion_deadline, suspicion_min_s, suspicion_timeout

# ---------------------------------------------------------------- awareness


@pytest.mark.parametrize(
    ("deltas", "score", "scaled", "suppressed"),
    [
        ([], 0, 0.1, False),
        ([1], 1, 0.2, False),
        ([3], 3, 0.4, False),
        ([4], 4, 0.5, True),
        ([20], 8, 0.9, True),
        ([20, -5], 3, 0.4, False),
        ([-3], 0, 0.1, False),
    ],
)
def test_awareness_score_table(
    deltas: list[int], score: int, scaled: float, suppressed: bool
) -> None:
    a = Awareness()
    for delta in deltas:
        a.apply_delta(delta)
    assert a.score == score
    assert a.scale(0.1) == pytest.approx(scaled)
    assert a.suppressed is suppressed


def test_awareness_validates_and_counts_lag() -> None:
    a = Awareness(max_score=4, suppress_at=3, lag_threshold_s=0.1)
    assert not a.note_lag(0.1) and a.note_lag(0.11) and a.score == 1
    for bad in ({"max_score": 0}, {"suppress_at": 9}, {"lag_threshold_s": 0.0}):
        with pytest.raises(ValueError):
            Awareness(**bad)


# ---------------------------------------------------------------- suspicion timing


@pytest.mark.parametrize(
    ("confirmations", "expected", "timeout_s"),
    [
        (0, 3, 30.0),
        (1, 3, 30.0 - 25.0 * math.log(2) / math.log(4)),  # 17.5
        (2, 3, 30.0 - 25.0 * math.log(3) / math.log(4)),
        (3, 3, 5.0),
        (4, 3, 5.0),  # more than expected: the floor
        (-1, 3, 30.0),
        (0, 0, 5.0),  # nobody to wait for
        (5, 0, 5.0),
        (1, 1, 5.0),
        (0, 1, 30.0),
    ],
)
def test_suspicion_timeout_table(confirmations: int, expected: int, timeout_s: float) -> None:
    assert suspicion_timeout(confirmations, expected, 5.0, 30.0) == pytest.approx(timeout_s)


def test_suspicion_timeout_falls_monotonically() -> None:
    values = [suspicion_timeout(c, 8, 2.0, 20.0) for c in range(10)]
    assert values == sorted(values, reverse=True) and values[0] == 20.0 and values[-1] == 2.0


def test_suspicion_helpers() -> None:
    assert suspicion_deadline(100.0, 0, 3, 5.0, 30.0) == 130.0
    assert suspicion_min_s(10, 0.2) == pytest.approx(0.8)
    assert suspicion_min_s(100, 0.2) == pytest.approx(1.6)
    assert suspicion_min_s(3, 0.2) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        suspicion_timeout(0, 3, 10.0, 5.0)
    with pytest.raises(ValueError):
        suspicion_min_s(0, 0.2)
