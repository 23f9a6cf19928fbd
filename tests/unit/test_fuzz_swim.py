"""Hostile probe datagrams: mangled, forged, oversized and replayed inputs never crash the
detector, never change its membership or incarnation view, and each is counted by reason.

Complements the decoder's own fuzz tests in test_swim_messages.py: here the datagrams start
from genuine ones (so mutations reach deep into the format), and they go through the whole
receive path (transport -> runner -> codec -> detector) and out as Prometheus counters.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
from collections import Counter
from typing import get_args

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.metrics import AgentMetrics
from agent.swim.detector import Detector, DetectorConfig, ProbeReport
from agent.swim.memory_transport import MemoryNetwork
from agent.swim.messages import (
    MAX_DATAGRAM,
    TAG_BYTES,
    Ack,
    Codec,
    Message,
    MessageRejected,
    Ping,
    PingReq,
    RejectReason,
    derive_probe_key,
)
from agent.swim.runner import SwimRunner
from consensus.protocol import RaftStatus, Snapshot
from consensus.state import ClusterState

KEY = derive_probe_key("fuzz-raft-password")
OTHER_KEY = derive_probe_key("someone-elses-password")
MEMBERS = frozenset({"a", "b", "c"})
WALL = 1_700_000_000.0
SKEW_S = 5.0
FUZZ = settings(max_examples=300, deadline=None)
FUZZ_BATCHES = settings(max_examples=200, deadline=None)  # each example is a list of inputs

# Rejections that need no key: what a stranger on the network can provoke.
KEYLESS = {"oversized", "malformed", "bad_signature"}

names = st.sampled_from(sorted(MEMBERS))
counts = st.integers(0, 2**63 - 1)
pings = st.builds(Ping, counts, names, names, counts, st.none() | names)
acks = st.builds(Ack, counts, names, names, counts, st.none() | names)
ping_reqs = st.builds(PingReq, counts, names, names)
messages: st.SearchStrategy[Message] = pings | acks | ping_reqs
foreign = messages.filter(lambda m: m.sender != "a")  # to agent "a", from another member
# Strategies drawn inside composites are built once: building one per draw is slow.
_mangles = st.sampled_from(["truncate", "flip", "append", "oversize", "splice"])
_bits = st.integers(0, 7)
_tails = st.binary(min_size=1, max_size=64)
_forged = st.binary(min_size=1, max_size=200)
_hostile_kinds = st.sampled_from(["random", "mangled", "wrong_key", "stranger", "stale"])
_random_bytes = st.binary(max_size=2 * MAX_DATAGRAM)
_strangers = st.sampled_from(["mallory", "a" * 128])
_skews = st.floats(SKEW_S + 0.001, 1e6) | st.floats(-1e6, -SKEW_S - 0.001)


def signed(payload: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


class Nonces:
    """Distinct 12-byte nonces, as the runner draws them (there at random)."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def __call__(self) -> bytes:
        return next(self._next).to_bytes(12, "big")


# ---------------------------------------------------------------- the codec alone


@st.composite
def mangled(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(genuine datagram, a mangled copy that differs from it)."""
    genuine = Codec(KEY, MEMBERS).encode(draw(messages), WALL, Nonces()())
    kind = draw(_mangles)
    if kind == "truncate":
        data = genuine[: draw(st.integers(0, len(genuine) - 1))]
    elif kind == "flip":
        at = draw(st.integers(0, len(genuine) - 1))
        bit = 1 << draw(_bits)
        data = genuine[:at] + bytes([genuine[at] ^ bit]) + genuine[at + 1 :]
    elif kind == "append":
        data = genuine + draw(_tails)
    elif kind == "oversize":
        data = genuine + b" " * (MAX_DATAGRAM + 1 - len(genuine))
    else:  # a genuine tag on a forged body, or a forged tag on the genuine body
        forged = draw(_forged)
        data = genuine[:TAG_BYTES] + forged if draw(st.booleans()) else forged + genuine[32:]
    return genuine, data


@FUZZ
@given(mangled())
def test_a_mangled_genuine_datagram_is_never_accepted(pair: tuple[bytes, bytes]) -> None:
    genuine, data = pair
    codec = Codec(KEY, MEMBERS)
    try:
        message = codec.decode(data, WALL)
    except MessageRejected as rejected:
        assert rejected.reason in KEYLESS
    else:  # only a splice can rebuild the genuine bytes by chance
        assert data == genuine, f"accepted a forgery: {message!r}"


_deep = st.integers(1, MAX_DATAGRAM - TAG_BYTES).map(lambda n: b"[" * n)  # RecursionError
_signed_junk = (
    st.binary(max_size=MAX_DATAGRAM - TAG_BYTES)
    | _deep
    | st.sampled_from(
        [b"NaN", b"{}", b"null", b'{"v":1}', b'{"type":"ping"}', b"\xff\xfe{", b'"' * 9]
    )
)


@FUZZ
@given(_signed_junk)
def test_signed_junk_is_rejected_by_reason_and_nothing_else(payload: bytes) -> None:
    """Even a holder of the key (a compromised member) cannot make the decoder raise."""
    try:
        Codec(KEY, MEMBERS).decode(signed(payload), WALL)
    except MessageRejected as rejected:
        assert rejected.reason in get_args(RejectReason)


@FUZZ_BATCHES
@given(st.lists(messages, min_size=1, max_size=20), st.randoms(use_true_random=False))
def test_every_replay_is_rejected_even_when_the_cache_overflows(
    sent: list[Message], rng: random.Random
) -> None:
    capacity = rng.randint(1, 8)  # far below the traffic: the cache forgets early
    codec = Codec(KEY, MEMBERS, max_skew_s=SKEW_S, nonce_capacity=capacity)
    nonce = Nonces()
    datagrams = [codec.encode(m, WALL + i * 0.01, nonce()) for i, m in enumerate(sent)]
    accepted = []
    for i, data in enumerate(datagrams):
        try:
            codec.decode(data, WALL + i * 0.01)
        except MessageRejected as rejected:  # only a forgotten-early timestamp, never a bug
            assert rejected.reason == "replayed"
        else:
            accepted.append(data)
    assert accepted, "the newest datagram is always admitted"
    replays = [rng.choice(datagrams) for _ in range(len(datagrams))]
    later = WALL + len(sent) * 0.01 + rng.uniform(0.0, 3 * SKEW_S)
    for data in replays:
        try:
            codec.decode(data, later)
        except MessageRejected as rejected:
            assert rejected.reason in {"replayed", "stale"}
        else:
            raise AssertionError("a replayed datagram was accepted")


# ---------------------------------------------------------------- the whole receive path


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def _drop(report: ProbeReport) -> None:
    return None


class Agent:
    """Agent "a" of three: its runner, detector and metrics, over an in-memory network."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.network = MemoryNetwork(random.Random(0))
        self.transport = self.network.transport("a")
        for peer in ("b", "c"):
            self.network.transport(peer)
        self.detector = Detector("a", DetectorConfig(), random.Random(0))
        self.runner = SwimRunner(
            "a",
            self.detector,
            Codec(KEY, MEMBERS, max_skew_s=SKEW_S),
            self.transport,
            self.clock,
            _drop,
            lambda: {"b": 3, "c": 5},
            nonce=Nonces(),
        )
        self.runner.step(self.clock.monotonic())
        snapshot = Snapshot(ClusterState(), RaftStatus(server="a", voter=True))
        self.metrics = AgentMetrics(lambda: snapshot)
        self.metrics.watch_detector(self.runner.stats)

    def view(self) -> tuple[object, ...]:
        """What a datagram must not change unless it is genuine and fresh."""
        return (
            self.detector.members,
            self.detector.seen_incarnations(),
            self.detector.incarnation,
            self.detector.awareness.score,
        )

    def counted(self) -> dict[str, float]:
        """Rejected datagrams by reason, as a scrape of the agent's registry shows them."""
        return {
            sample.labels["kind"].removeprefix("rejected_"): sample.value
            for family in self.metrics.registry.collect()
            if family.name == "moonwatch_detector_events"
            for sample in family.samples
            if sample.labels["kind"].startswith("rejected_")
        }


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, bytes]:
    """(how it was made, one hostile datagram) as a stranger or a replayer would send it."""
    wall = WALL + 100.0
    message = draw(foreign)
    how = draw(_hostile_kinds)
    if how == "random":
        return how, draw(_random_bytes)
    if how == "mangled":
        return how, draw(mangled())[1]
    if how == "wrong_key":
        return how, Codec(OTHER_KEY, MEMBERS).encode(message, wall, Nonces()())
    if how == "stranger":  # signed right, but the sender is no member
        forged = PingReq(message.seq, draw(_strangers), "b")
        return how, Codec(KEY, {forged.sender}).encode(forged, wall, Nonces()())
    return how, Codec(KEY, MEMBERS).encode(message, wall + draw(_skews), Nonces()())


@FUZZ_BATCHES
@given(st.lists(hostile(), min_size=1, max_size=15))
def test_hostile_datagrams_change_nothing_and_are_counted(batch: list[tuple[str, bytes]]) -> None:
    agent = Agent()
    before, sent = agent.view(), agent.network.in_flight  # our own first probe
    for _, data in batch:
        assert agent.transport.deliver(data)
    assert agent.view() == before
    assert agent.network.in_flight == sent, "a hostile datagram was answered"
    rejected = agent.runner.rejected
    assert sum(rejected.values()) == len(batch)
    assert set(rejected) <= set(get_args(RejectReason))
    assert agent.counted() == rejected


@FUZZ_BATCHES
@given(st.lists(foreign, min_size=1, max_size=12))
def test_replayed_genuine_datagrams_are_rejected_and_change_nothing(sent: list[Message]) -> None:
    agent = Agent()
    peer = Codec(KEY, MEMBERS)
    nonce = Nonces()
    genuine = [peer.encode(m, agent.clock.wall(), nonce()) for m in sent]
    for data in genuine:
        agent.transport.deliver(data)
    assert not agent.runner.rejected, "genuine datagrams are accepted once"
    before, replies = agent.view(), agent.network.in_flight
    agent.clock.now += 1.0  # well inside the skew window: only the nonce cache stops them
    for data in genuine[::-1] + genuine:
        agent.transport.deliver(data)
    assert agent.view() == before
    assert agent.network.in_flight == replies, "a replay was answered"
    assert agent.runner.rejected == Counter(replayed=2 * len(genuine))
    assert agent.counted() == {"replayed": 2 * len(genuine)}
