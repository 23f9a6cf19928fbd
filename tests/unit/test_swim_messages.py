"""Wire format: round trips, every rejection reason, and decode never raising anything else."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.swim.messages import (
    MAX_DATAGRAM,
    Ack,
    Codec,
    Message,
    MessageRejected,
    Ping,
    PingReq,
    derive_probe_key,
)

KEY = derive_probe_key("raft-secret")
MEMBERS = frozenset({"a", "b", "c"})
NOW = 1_700_000_000.0


def codec(members: frozenset[str] = MEMBERS) -> Codec:
    return Codec(KEY, members)


def nonce(i: int = 1) -> bytes:
    return i.to_bytes(12, "big")


def signed(payload: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


def good_body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1,
        "type": "ping",
        "seq": 7,
        "sender": "a",
        "target": "b",
        "incarnation": 2,
        "on_behalf_of": None,
        "ts": NOW,
        "nonce": nonce().hex(),
    }
    body.update(changes)
    return body


def reason_of(data: bytes, now: float = NOW, c: Codec | None = None) -> str:
    with pytest.raises(MessageRejected) as caught:
        (c or codec()).decode(data, now)
    return caught.value.reason


MESSAGES: list[Message] = [
    Ping(1, "a", "b", 0, None),
    Ping(2**40, "a", "b", 9, "c"),
    Ack(3, "b", "a", 4, None),
    Ack(4, "b", "a", 5, "c"),
    PingReq(5, "a", "c"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=repr)
def test_round_trip(message: Message) -> None:
    data = codec().encode(message, NOW, nonce())
    assert len(data) <= MAX_DATAGRAM
    assert codec().decode(data, NOW + 1.0) == message


def test_payload_layout_is_tag_then_json() -> None:
    data = codec().encode(Ping(1, "a", "b", 0), NOW, nonce())
    body = json.loads(data[32:])
    assert body["v"] == 1 and body["type"] == "ping" and body["nonce"] == nonce().hex()
    assert data[:32] == hmac.new(KEY, data[32:], hashlib.sha256).digest()


def test_probe_key_is_derived_not_the_password() -> None:
    key = derive_probe_key("raft-secret")
    assert len(key) == 32
    assert key != b"raft-secret" and b"raft-secret" not in key
    assert key == derive_probe_key("raft-secret") != derive_probe_key("raft-secret2")
    with pytest.raises(ValueError):
        derive_probe_key("")


def test_flipped_bit_is_a_bad_signature() -> None:
    data = bytearray(codec().encode(Ping(1, "a", "b", 0), NOW, nonce()))
    for index in (0, 31, 32, len(data) - 1):
        flipped = bytearray(data)
        flipped[index] ^= 0x01
        assert reason_of(bytes(flipped)) == "bad_signature"


def test_wrong_key_is_a_bad_signature() -> None:
    other = Codec(derive_probe_key("other-secret"), MEMBERS)
    assert reason_of(other.encode(Ping(1, "a", "b", 0), NOW, nonce())) == "bad_signature"


def test_truncated_datagram_is_rejected() -> None:
    data = codec().encode(Ping(1, "a", "b", 0), NOW, nonce())
    assert reason_of(data[:-1]) == "bad_signature"
    assert reason_of(data[:20]) == "malformed"
    assert reason_of(b"") == "malformed"


def test_ten_kilobytes_is_oversized() -> None:
    assert reason_of(b"x" * 10_240) == "oversized"
    assert reason_of(signed(b" " * (MAX_DATAGRAM - 32 + 1))) == "oversized"


def test_encode_refuses_an_oversized_message() -> None:
    with pytest.raises(MessageRejected) as caught:
        codec().encode(Ping(1, "a" * 2000, "b", 0), NOW, nonce())
    assert caught.value.reason == "oversized"


def test_random_bytes_are_rejected() -> None:
    assert reason_of(bytes(range(256)) * 2) == "bad_signature"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2, 3]",
        b'"ping"',
        json.dumps(good_body(type="pong")).encode(),
        json.dumps(good_body(v=2)).encode(),
        json.dumps(good_body(v=True)).encode(),
        json.dumps(good_body(seq="7")).encode(),
        json.dumps(good_body(seq=-1)).encode(),
        json.dumps(good_body(seq=True)).encode(),
        json.dumps(good_body(seq=7.0)).encode(),
        json.dumps(good_body(incarnation=None)).encode(),
        json.dumps(good_body(sender="")).encode(),
        json.dumps(good_body(sender=["a"])).encode(),
        json.dumps(good_body(on_behalf_of=3)).encode(),
        json.dumps(good_body(ts="now")).encode(),
        json.dumps(good_body(ts=True)).encode(),
        json.dumps(good_body(nonce="zz")).encode(),
        json.dumps(good_body(nonce="00")).encode(),
        json.dumps(good_body(nonce=nonce(0xABCDEF).hex().upper())).encode(),
        json.dumps(good_body(extra=1)).encode(),
        json.dumps({k: v for k, v in good_body().items() if k != "on_behalf_of"}).encode(),
        json.dumps(good_body(type="ping_req")).encode(),
        json.dumps(good_body()).replace('"ts": ', '"ts": NaN, "ts": ').encode(),
        json.dumps(good_body()).replace('"seq": 7', '"seq": 7, "seq": 8').encode(),
        json.dumps(good_body()).replace(str(NOW), "Infinity").encode(),
    ],
    ids=lambda p: p[:60].decode("utf-8", "replace"),
)
def test_signed_payload_of_the_wrong_shape_is_malformed(payload: bytes) -> None:
    assert reason_of(signed(payload)) == "malformed"


def test_well_formed_hand_built_payload_is_accepted() -> None:
    data = signed(json.dumps(good_body(type="ack", on_behalf_of="c")).encode())
    assert codec().decode(data, NOW) == Ack(7, "a", "b", 2, "c")


@pytest.mark.parametrize("offset_s", [-5.01, 5.01, -3600.0, 3600.0])
def test_timestamp_outside_the_window_is_stale(offset_s: float) -> None:
    data = codec().encode(Ping(1, "a", "b", 0), NOW + offset_s, nonce())
    assert reason_of(data) == "stale"


@pytest.mark.parametrize("offset_s", [-4.99, 0.0, 4.99])
def test_timestamp_inside_the_window_is_accepted(offset_s: float) -> None:
    data = codec().encode(Ping(1, "a", "b", 0), NOW + offset_s, nonce())
    assert codec().decode(data, NOW) == Ping(1, "a", "b", 0)


def test_the_same_datagram_twice_is_replayed() -> None:
    c = codec()
    data = c.encode(Ping(1, "a", "b", 0), NOW, nonce())
    c.decode(data, NOW)
    assert reason_of(data, NOW + 0.5, c) == "replayed"
    # Long after, the copy is refused as stale instead, and the cache has forgotten it.
    assert reason_of(data, NOW + 60.0, c) == "stale"


def test_same_nonce_in_a_different_message_is_replayed() -> None:
    c = codec()
    c.decode(c.encode(Ping(1, "a", "b", 0), NOW, nonce(5)), NOW)
    assert reason_of(c.encode(Ack(1, "b", "a", 0), NOW, nonce(5)), NOW, c) == "replayed"
    assert c.decode(c.encode(Ack(1, "b", "a", 0), NOW, nonce(6)), NOW) == Ack(1, "b", "a", 0)


def test_nonce_cache_is_bounded_and_refuses_what_it_forgot() -> None:
    c = Codec(KEY, MEMBERS, nonce_capacity=4)
    sent = [c.encode(Ping(i, "a", "b", 0), NOW + i * 0.01, nonce(i)) for i in range(6)]
    for data in sent:
        c.decode(data, NOW)
    for data in sent:  # forgotten early or remembered: a replay is refused either way
        assert reason_of(data, NOW, c) == "replayed"


def test_unknown_sender_is_rejected() -> None:
    data = codec().encode(Ping(1, "mallory", "b", 0), NOW, nonce())
    assert reason_of(data) == "unknown_sender"


def test_members_may_be_a_callable_that_follows_membership() -> None:
    current = {"a", "b"}
    c = Codec(KEY, lambda: current)
    data = c.encode(Ping(1, "c", "a", 0), NOW, nonce(1))
    assert reason_of(data, NOW, c) == "unknown_sender"
    current.add("c")
    assert c.decode(c.encode(Ping(1, "c", "a", 0), NOW, nonce(2)), NOW).sender == "c"


def test_constructor_and_encode_validate_their_inputs() -> None:
    with pytest.raises(ValueError):
        Codec(b"short", MEMBERS)
    with pytest.raises(ValueError):
        Codec(KEY, MEMBERS, max_skew_s=0)
    with pytest.raises(ValueError):
        codec().encode(Ping(1, "a", "b", 0), NOW, b"123")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_of_arbitrary_bytes_only_raises_message_rejected(data: bytes) -> None:
    with pytest.raises(MessageRejected):
        codec().decode(data, NOW)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)
_ACK_BODY = good_body(type="ack")


@settings(max_examples=400, deadline=None)
@given(
    key=st.sampled_from([*_ACK_BODY, "extra"]),
    value=_json | st.sampled_from(list(_ACK_BODY.values())),
    drop=st.booleans(),
)
def test_decode_of_a_signed_mutated_body_yields_a_message_or_a_rejection(
    key: str, value: object, drop: bool
) -> None:
    body = dict(_ACK_BODY)
    if drop:
        body.pop(key, None)
    else:
        body[key] = value
    try:
        message = codec().decode(signed(json.dumps(body).encode()), NOW)
    except MessageRejected as rejected:
        assert rejected.reason in {"oversized", "malformed", "stale", "unknown_sender"}
    else:
        fields = ("seq", "sender", "target", "incarnation", "on_behalf_of")
        assert message == Ack(*(body[f] for f in fields))  # type: ignore[arg-type]
        assert set(body) == set(_ACK_BODY)
