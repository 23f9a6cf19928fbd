"""Time-ordered ids: increasing, unique, in 63 bits, carrying their millisecond."""

from __future__ import annotations

import threading

import pytest

from app.ids import MAX_ID, RANDOM_BITS, IdGenerator, id_ms, lowest_id_at, new_id

NOW_S = 1_700_000_000.123


class StepClock:
    """A wall clock the test sets by hand."""

    def __init__(self, now: float = NOW_S) -> None:
        self.now = now

    def wall_now(self) -> float:
        return self.now

    def boottime(self) -> float:
        return 0.0

    def monotonic(self) -> float:
        return 0.0


def test_process_ids_increase_and_are_unique() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(0 < i <= MAX_ID for i in ids)


def test_an_id_carries_its_millisecond() -> None:
    gen = IdGenerator(StepClock(), randbits=lambda bits: 12345)
    first = gen.new_id()
    assert id_ms(first) == 1_700_000_000_123
    assert first == lowest_id_at(1_700_000_000_123) | 12345
    assert first.bit_length() <= 63


@pytest.mark.parametrize(
    ("random_values", "expected_offsets"),
    [
        # the same millisecond: a smaller random part still yields a larger id
        ([500, 100, 100], [500, 501, 502]),
        # a larger random part is used as it is
        ([5, 900], [5, 900]),
        # the largest random part spills into the next millisecond, still increasing
        ([(1 << RANDOM_BITS) - 1, 0], [(1 << RANDOM_BITS) - 1, 1 << RANDOM_BITS]),
    ],
)
def test_ids_in_one_millisecond_increase(
    random_values: list[int], expected_offsets: list[int]
) -> None:
    values = iter(random_values)
    gen = IdGenerator(StepClock(), randbits=lambda bits: next(values))
    base = lowest_id_at(1_700_000_000_123)
    assert [gen.new_id() - base for _ in random_values] == expected_offsets


def test_ids_increase_when_the_clock_steps_back() -> None:
    clock = StepClock()
    gen = IdGenerator(clock)
    before = gen.new_id()
    clock.now -= 3600.0
    after = gen.new_id()
    assert after == before + 1
    clock.now += 7200.0
    assert id_ms(gen.new_id()) == int((NOW_S + 3600.0) * 1000)


def test_ids_are_unique_across_threads() -> None:
    gen = IdGenerator(StepClock())  # a frozen clock: every id in one millisecond
    results: list[list[int]] = [[] for _ in range(8)]

    def work(out: list[int]) -> None:
        out.extend(gen.new_id() for _ in range(2000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in results for i in out]
    assert len(set(every)) == len(every) == 16_000
    assert all(out == sorted(out) for out in results)


@pytest.mark.parametrize(
    ("now_s", "fits"),
    [
        (0.0, True),
        (NOW_S, True),
        ((1 << 43) / 1000 - 0.002, True),  # the last millisecond that fits: year 2248
        ((1 << 43) / 1000, False),
    ],
)
def test_ids_stay_within_63_bits(now_s: float, fits: bool) -> None:
    gen = IdGenerator(StepClock(now_s), randbits=lambda bits: 7)
    if fits:
        assert 0 <= gen.new_id() <= MAX_ID
    else:
        with pytest.raises(OverflowError):
            gen.new_id()
