"""The edge's per-subdomain bookkeeping: counter, token buckets, client address (pure)."""

from __future__ import annotations

import ipaddress
import random
import string
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.traffic import (
    MAX_FORWARDED_ENTRIES,
    TokenBuckets,
    TrafficCounter,
    client_address,
    parse_address,
)
from agent.traffic_counts import TenantCounts

# ---------------------------------------------------------------- TrafficCounter


def test_counts_requests_errors_bytes_and_refusals() -> None:
    counter = TrafficCounter(16)
    counter.start("acme")
    counter.finish("acme", 200, 100)
    counter.start("acme")
    counter.finish("acme", 502, 20)
    counter.refuse("acme", 503, 7)
    counter.start("globex")
    counter.finish("globex", 404, 5, refused=False)
    assert counter.take() == {
        "acme": TenantCounts(requests=3, errors=2, bytes=127, inflight_peak=1, refused=1),
        "globex": TenantCounts(requests=1, errors=0, bytes=5, inflight_peak=1, refused=0),
    }


def test_finish_with_refused_counts_a_refusal() -> None:
    counter = TrafficCounter(16)
    counter.start("acme")
    counter.finish("acme", 503, 10, refused=True)
    assert counter.take()["acme"] == TenantCounts(
        requests=1, errors=1, bytes=10, inflight_peak=1, refused=1
    )


def test_peak_is_the_most_in_flight_at_once() -> None:
    counter = TrafficCounter(16)
    for _ in range(3):
        counter.start("acme")
    assert counter.inflight("acme") == 3
    counter.finish("acme", 200, 0)
    counter.start("acme")
    counter.finish("acme", 200, 0)
    assert counter.inflight("acme") == 2
    assert counter.take()["acme"].inflight_peak == 3


def test_take_starts_a_new_interval_and_carries_inflight_over() -> None:
    counter = TrafficCounter(16)
    counter.start("acme")
    counter.start("acme")
    counter.start("globex")
    counter.finish("globex", 200, 1)
    counter.finish("acme", 200, 1)
    first = counter.take()
    assert first["acme"].requests == 2
    assert first["acme"].inflight_peak == 2
    # acme still has one in flight: it carries over, its new peak starts there; globex is gone.
    assert counter.inflight("acme") == 1
    assert len(counter) == 1
    assert counter.take() == {"acme": TenantCounts(inflight_peak=1)}
    counter.finish("acme", 200, 3)
    assert counter.take() == {"acme": TenantCounts(bytes=3, inflight_peak=1)}
    assert counter.take() == {}
    assert len(counter) == 0


def test_a_subdomain_that_was_only_looked_at_is_not_reported() -> None:
    counter = TrafficCounter(16)
    assert counter.inflight("acme") == 0
    assert counter.take() == {}


def test_inflight_never_goes_negative() -> None:
    counter = TrafficCounter(16)
    counter.finish("acme", 200, 0)
    counter.finish("acme", 200, 0)
    assert counter.inflight("acme") == 0
    counter.start("acme")
    assert counter.inflight("acme") == 1


def test_negative_byte_counts_are_ignored() -> None:
    counter = TrafficCounter(16)
    counter.start("acme")
    counter.finish("acme", 200, -5)
    assert counter.take()["acme"].bytes == 0


def test_least_recently_seen_subdomain_is_dropped_at_the_cap() -> None:
    counter = TrafficCounter(3)
    for name in ("a", "b", "c"):
        counter.start(name)
    counter.finish("a", 200, 0)  # a is now the most recently seen
    counter.start("d")  # drops b
    assert counter.evicted == 1
    assert counter.inflight("b") == 0
    assert set(counter.take()) == {"a", "c", "d"}


def test_ten_thousand_random_subdomains_stay_bounded() -> None:
    rng = random.Random(7)
    counter = TrafficCounter(100)
    for _ in range(12_000):
        name = "".join(rng.choices(string.ascii_lowercase, k=12))
        counter.start(name)
        counter.finish(name, 200, 10)
        assert len(counter) <= 100
    assert counter.evicted == 12_000 - 100
    assert len(counter.take()) == 100
    assert len(counter) == 0


def test_an_evicted_subdomain_in_flight_finishes_without_going_negative() -> None:
    counter = TrafficCounter(2)
    counter.start("a")
    counter.start("b")
    counter.start("c")  # a is dropped while in flight
    counter.finish("a", 200, 0)
    assert counter.inflight("a") == 0
    assert len(counter) == 2


def test_max_tracked_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tracked"):
        TrafficCounter(0)
    with pytest.raises(ValueError, match="max_tracked"):
        TokenBuckets(lambda: 0.0, 0)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["start", "finish", "refuse", "take"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from([200, 404, 500, 503]),
    ),
    max_size=200,
)


@given(_OPS)
def test_counter_matches_a_reference_model(ops: list[tuple[str, str, int]]) -> None:
    counter = TrafficCounter(10)  # more than the five names: nothing is evicted
    inflight: dict[str, int] = {}
    interval: dict[str, TenantCounts] = {}
    for op, name, status in ops:
        row = interval.get(name, TenantCounts(inflight_peak=inflight.get(name, 0)))
        if op == "start":
            counter.start(name)
            inflight[name] = inflight.get(name, 0) + 1
            peak = max(row.inflight_peak, inflight[name])
            interval[name] = replace(row, requests=row.requests + 1, inflight_peak=peak)
        elif op == "finish":
            counter.finish(name, status, 1)
            inflight[name] = max(0, inflight.get(name, 0) - 1)
            interval[name] = replace(row, errors=row.errors + (status >= 500), bytes=row.bytes + 1)
        elif op == "refuse":
            counter.refuse(name, status, 1)
            interval[name] = replace(
                row,
                requests=row.requests + 1,
                errors=row.errors + (status >= 500),
                bytes=row.bytes + 1,
                refused=row.refused + 1,
            )
        else:
            assert counter.take() == {n: c for n, c in interval.items() if c != TenantCounts()}
            # what is still in flight carries over, and is the new interval's first peak
            interval = {n: TenantCounts(inflight_peak=i) for n, i in inflight.items() if i}
        assert counter.inflight(name) == inflight.get(name, 0) >= 0


@given(_OPS)
def test_counter_stays_bounded_under_any_sequence(ops: list[tuple[str, str, int]]) -> None:
    counter = TrafficCounter(3)
    for op, name, status in ops:
        if op == "start":
            counter.start(name)
        elif op == "finish":
            counter.finish(name, status, 1)
        elif op == "refuse":
            counter.refuse(name, status, 1)
        else:
            assert len(counter.take()) <= 3
        assert counter.inflight(name) >= 0
        assert len(counter) <= 3


# ---------------------------------------------------------------- TokenBuckets


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_admits_a_burst_up_to_capacity_then_waits() -> None:
    clock = FakeMonotonic()
    buckets = TokenBuckets(clock, 16)
    # rps 2, capacity 4 (2 s of burst)
    assert [buckets.take("acme", 2.0, 4.0) for _ in range(4)] == [None] * 4
    assert buckets.take("acme", 2.0, 4.0) == pytest.approx(0.5)
    clock.now += 0.25
    assert buckets.take("acme", 2.0, 4.0) == pytest.approx(0.25)
    clock.now += 0.25
    assert buckets.take("acme", 2.0, 4.0) is None
    assert buckets.take("acme", 2.0, 4.0) == pytest.approx(0.5)


def test_bucket_refills_at_the_rate_and_never_beyond_capacity() -> None:
    clock = FakeMonotonic()
    buckets = TokenBuckets(clock, 16)
    for _ in range(3):
        assert buckets.take("acme", 1.0, 3.0) is None
    clock.now += 3600.0  # a long quiet time refills to capacity, no more
    admitted = 0
    while buckets.take("acme", 1.0, 3.0) is None:
        admitted += 1
    assert admitted == 3


def test_buckets_are_per_subdomain() -> None:
    clock = FakeMonotonic()
    buckets = TokenBuckets(clock, 16)
    assert buckets.take("acme", 1.0, 1.0) is None
    assert buckets.take("acme", 1.0, 1.0) == pytest.approx(1.0)
    assert buckets.take("globex", 1.0, 1.0) is None


def test_capacity_below_one_token_still_admits_one() -> None:
    buckets = TokenBuckets(FakeMonotonic(), 16)
    assert buckets.take("acme", 0.1, 0.2) is None
    assert buckets.take("acme", 0.1, 0.2) == pytest.approx(10.0)


@pytest.mark.parametrize("rate", [None, 0.0, -1.0, float("nan"), float("inf")])
def test_a_tenant_without_an_rps_limit_is_always_admitted(rate: float | None) -> None:
    buckets = TokenBuckets(FakeMonotonic(), 16)
    assert all(buckets.take("acme", rate, 1.0) is None for _ in range(1000))
    assert len(buckets) == 0


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    clock = FakeMonotonic()
    buckets = TokenBuckets(clock, 16)
    assert buckets.take("acme", 1.0, 1.0) is None
    clock.now -= 100.0
    assert buckets.take("acme", 1.0, 1.0) is not None
    clock.now += 100.0
    assert buckets.take("acme", 1.0, 1.0) is not None  # no time has passed since the refill
    clock.now += 1.0
    assert buckets.take("acme", 1.0, 1.0) is None


def test_buckets_stay_bounded_least_recently_used_dropped() -> None:
    clock = FakeMonotonic()
    buckets = TokenBuckets(clock, 50)
    for i in range(10_000):
        buckets.take(f"t{i}", 1.0, 1.0)
        assert len(buckets) <= 50
    assert buckets.evicted == 10_000 - 50
    # the most recent ones are still there (empty), the first ones come back full
    assert buckets.take("t9999", 1.0, 1.0) is not None
    assert buckets.take("t0", 1.0, 1.0) is None


@settings(max_examples=50)
@given(
    rate=st.floats(min_value=0.1, max_value=100.0),
    burst_s=st.floats(min_value=0.5, max_value=5.0),
    steps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=200),
)
def test_bucket_never_admits_more_than_capacity_plus_refill(
    rate: float, burst_s: float, steps: list[float]
) -> None:
    clock = FakeMonotonic()
    buckets = TokenBuckets(clock, 4)
    capacity = max(1.0, rate * burst_s)
    admitted = 0
    for step in steps:
        clock.now += step
        wait = buckets.take("acme", rate, capacity)
        if wait is None:
            admitted += 1
        else:
            assert 0 < wait <= 1.0 / rate + 1e-9
    assert admitted <= capacity + rate * sum(steps) + 1e-6


# ---------------------------------------------------------------- client_address

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # an untrusted peer: its own address, whatever it claims
        ("203.0.113.7", None, "203.0.113.7"),
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),
        ("203.0.113.7", "10.0.0.1, 198.51.100.1", "203.0.113.7"),
        # a trusted proxy without the header is the client
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "", "10.0.0.5"),
        # a trusted proxy: the rightmost untrusted entry
        ("10.0.0.5", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.5", "198.51.100.1, 10.1.1.1", "198.51.100.1"),
        ("10.0.0.5", "1.1.1.1, 198.51.100.1, 10.1.1.1, 10.2.2.2", "198.51.100.1"),
        # spoofed leftmost entries are never reached
        ("10.0.0.5", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        # every hop trusted: the leftmost
        ("10.0.0.5", "10.3.3.3, 10.1.1.1", "10.3.3.3"),
        # garbage stops the walk at the last good address
        ("10.0.0.5", "198.51.100.1, nonsense", "10.0.0.5"),
        ("10.0.0.5", "nonsense, 10.1.1.1", "10.1.1.1"),
        ("10.0.0.5", "198.51.100.1, , 10.1.1.1", "10.1.1.1"),
        ("10.0.0.5", ",,,", "10.0.0.5"),
        ("10.0.0.5", "unknown", "10.0.0.5"),
        ("10.0.0.5", "\x00\xff\u2603", "10.0.0.5"),
        # ports and brackets are accepted and dropped
        ("10.0.0.5", "198.51.100.1:4711", "198.51.100.1"),
        ("10.0.0.5", "[2001:db8::1]:443", "2001:db8::1"),
        # IPv6 peers and entries
        ("2001:db8::9", "198.51.100.1", "2001:db8::9"),
        ("fd00::1", "2001:db8::1, fd00::2", "2001:db8::1"),
        ("fd00::1", "198.51.100.1", "198.51.100.1"),
        # an IPv4-mapped peer is its IPv4 address
        ("::ffff:10.0.0.5", "198.51.100.1", "198.51.100.1"),
        ("::ffff:203.0.113.7", "198.51.100.1", "203.0.113.7"),
        # no usable peer
        (None, "198.51.100.1", ""),
        ("", "198.51.100.1", ""),
        ("not-an-ip", "198.51.100.1", "not-an-ip"),
    ],
)
def test_client_address(peer: str | None, forwarded_for: str | None, expected: str) -> None:
    assert client_address(peer, forwarded_for, TRUSTED) == expected


def test_with_no_trusted_proxies_the_header_is_ignored() -> None:
    assert client_address("127.0.0.1", "198.51.100.1", ()) == "127.0.0.1"


def test_only_the_last_entries_of_a_long_chain_are_read() -> None:
    chain = ["198.51.100.1"] + ["10.0.0.1"] * (MAX_FORWARDED_ENTRIES + 5)
    # the untrusted address is beyond the entries read: the leftmost one read is used
    assert client_address("10.0.0.5", ", ".join(chain), TRUSTED) == "10.0.0.1"
    chain = ["198.51.100.1"] + ["10.0.0.1"] * (MAX_FORWARDED_ENTRIES - 1)
    assert client_address("10.0.0.5", ", ".join(chain), TRUSTED) == "198.51.100.1"


def test_a_huge_header_is_read_from_its_end_only() -> None:
    header = "x" * 1_000_000 + ", 198.51.100.1"
    assert client_address("10.0.0.5", header, TRUSTED) == "198.51.100.1"
    # the cut-off first entry of the tail is never taken for an address
    header = "1" * 10_000 + "1.2.3.4" + ", 10.0.0.9" * 300
    assert client_address("10.0.0.5", header, TRUSTED) in {"10.0.0.9", "10.0.0.5"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[::1]:8080", "::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("1.2.3", None),
        ("", None),
        ("[", None),
        ("1.2.3.4:80:90", None),
        ("9" * 100, None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected


@given(peer=st.one_of(st.none(), st.text(max_size=80)), header=st.one_of(st.none(), st.text()))
def test_client_address_never_raises(peer: str | None, header: str | None) -> None:
    result = client_address(peer, header, TRUSTED)
    assert isinstance(result, str)


@given(
    peer=st.ip_addresses(),
    entries=st.lists(st.one_of(st.ip_addresses(), st.text(max_size=10)), max_size=30),
)
def test_the_answer_is_the_peer_or_one_of_the_entries(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    entries: list[object],
) -> None:
    header = ", ".join(str(e) for e in entries)
    result = client_address(str(peer), header, TRUSTED)
    candidates = {str(parse_address(str(e))) for e in [peer, *entries]}
    assert result in candidates
    if not any(peer in network for network in TRUSTED):
        assert result == str(parse_address(str(peer)))
