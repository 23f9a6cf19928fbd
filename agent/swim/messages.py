"""The SWIM wire format: HMAC-signed, timestamped, replay-checked JSON datagrams."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, Literal

from agent.swim.replay import NonceCache

MAX_DATAGRAM: Final = 1400
TAG_BYTES: Final = 32
VERSION: Final = 1
NONCE_BYTES: Final = (8, 32)
MAX_NAME: Final = 128
_MAX_INT: Final = 2**63 - 1
_KEY_SALT: Final = b"moonwatch/swim"
_KEY_INFO: Final = b"moonwatch/swim/probe-key/v1"

RejectReason = Literal[
    "oversized", "malformed", "bad_signature", "stale", "replayed", "unknown_sender"
]


class MessageRejected(Exception):
    """A datagram we will not act on; `reason` is one of `RejectReason`, good for a counter."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: RejectReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? `incarnation` is the sender's own; `on_behalf_of` names the requester when
    this is an indirect probe."""

    seq: int
    sender: str
    target: str
    incarnation: int
    on_behalf_of: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """I am here. Addressed to `target`; echoes the ping's `seq` and `on_behalf_of`.

    `incarnation` is the acking server's own. A helper relaying an ack to its requester sends
    `Ack(requester's seq, helper, requester, probed server's incarnation, on_behalf_of=probed
    server)`: the helper acks on behalf of the server it probed.
    """

    seq: int
    sender: str
    target: str
    incarnation: int
    on_behalf_of: str | None = None


@dataclass(frozen=True, slots=True)
class PingReq:
    """Please probe `target` for me and relay its ack; `seq` is the requester's probe number."""

    seq: int
    sender: str
    target: str


Message = Ping | Ack | PingReq


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for one peer, by server name."""

    to: str
    message: Message


_TYPE_OF: Final[dict[type[Any], str]] = {Ping: "ping", Ack: "ack", PingReq: "ping_req"}
_PROBE_FIELDS: Final = ("seq", "sender", "target", "incarnation", "on_behalf_of")
_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "ping": _PROBE_FIELDS,
    "ack": _PROBE_FIELDS,
    "ping_req": ("seq", "sender", "target"),
}
_ENVELOPE: Final = ("v", "type", "ts", "nonce")


def derive_probe_key(raft_password: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the Raft password with a fixed context: a distinct 32-byte key."""
    if not raft_password:
        raise ValueError("raft_password must not be empty")
    prk = hmac.new(_KEY_SALT, raft_password.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(prk, _KEY_INFO + b"\x01", hashlib.sha256).digest()


class Codec:
    """Encodes messages as `tag(32) || json` and decodes only what is signed, fresh and unseen.

    Not thread-safe: `decode` updates the replay cache. Checks run cheapest-first and never parse
    unauthenticated bytes: size, signature, shape, timestamp, sender, nonce.
    """

    def __init__(
        self,
        key: bytes,
        members: Collection[str] | Callable[[], Collection[str]],
        max_skew_s: float = 5.0,
        nonce_capacity: int = 65536,
    ) -> None:
        if len(key) < 16:
            raise ValueError("key must be at least 16 bytes")
        if max_skew_s <= 0:
            raise ValueError("max_skew_s must be positive")
        self._key = key
        self._members = members
        self._max_skew_s = max_skew_s
        self._nonces = NonceCache(2 * max_skew_s, nonce_capacity)

    def encode(self, msg: Message, now_wall: float, nonce: bytes) -> bytes:
        """The signed datagram; raises MessageRejected("oversized") if it would not fit."""
        if not NONCE_BYTES[0] <= len(nonce) <= NONCE_BYTES[1]:
            raise ValueError(f"nonce must be {NONCE_BYTES[0]}..{NONCE_BYTES[1]} bytes")
        body: dict[str, object] = {
            name: getattr(msg, name) for name in _FIELDS[_TYPE_OF[type(msg)]]
        }
        body.update(v=VERSION, type=_TYPE_OF[type(msg)], ts=float(now_wall), nonce=nonce.hex())
        payload = _ENCODER.encode(body).encode("utf-8")
        data = self._tag(payload) + payload
        if len(data) > MAX_DATAGRAM:
            raise MessageRejected("oversized", f"{len(data)} bytes")
        return data

    def decode(self, data: bytes, now_wall: float) -> Message:
        """The message in `data`, or MessageRejected naming why not (nothing else is raised)."""
        if len(data) > MAX_DATAGRAM:
            raise MessageRejected("oversized", f"{len(data)} bytes")
        if len(data) <= TAG_BYTES:
            raise MessageRejected("malformed", "shorter than the tag")
        tag, payload = data[:TAG_BYTES], data[TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(payload)):
            raise MessageRejected("bad_signature")
        msg, ts, nonce = parse_payload(payload)
        if abs(ts - now_wall) > self._max_skew_s:
            raise MessageRejected("stale", f"ts {ts:.3f} vs now {now_wall:.3f}")
        members = self._members() if callable(self._members) else self._members
        if msg.sender not in members:
            raise MessageRejected("unknown_sender", msg.sender)
        if not self._nonces.admit(nonce, ts, now_wall):
            raise MessageRejected("replayed")
        return msg

    def _tag(self, payload: bytes) -> bytes:
        return hmac.digest(self._key, payload, "sha256")


def parse_payload(payload: bytes) -> tuple[Message, float, bytes]:
    """Message, timestamp and nonce of a payload, strictly; else MessageRejected("malformed")."""
    try:
        body = _DECODER.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageRejected("malformed", "not JSON") from exc
    if not isinstance(body, dict):
        raise MessageRejected("malformed", "not an object")
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise MessageRejected("malformed", "unknown type")
    fields = _FIELDS[kind]
    if set(body) != {*fields, *_ENVELOPE}:
        raise MessageRejected("malformed", "wrong fields")
    if type(body["v"]) is not int or body["v"] != VERSION:
        raise MessageRejected("malformed", "unknown version")
    ts, nonce = _timestamp(body["ts"]), _nonce(body["nonce"])
    seq, sender, target = _count(body["seq"]), _name(body["sender"]), _name(body["target"])
    if kind == "ping_req":
        return PingReq(seq, sender, target), ts, nonce
    incarnation = _count(body["incarnation"])
    behalf = None if body["on_behalf_of"] is None else _name(body["on_behalf_of"])
    cls = Ping if kind == "ping" else Ack
    return cls(seq, sender, target, incarnation, behalf), ts, nonce


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("duplicate key")
    return body


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def _count(value: object) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise MessageRejected("malformed", "expected a non-negative integer")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise MessageRejected("malformed", "expected a server name")
    return value


def _timestamp(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MessageRejected("malformed", "expected a finite timestamp")
    return float(value)


def _nonce(value: object) -> bytes:
    if not isinstance(value, str) or not value.isascii():
        raise MessageRejected("malformed", "expected a hex nonce")
    try:
        nonce = bytes.fromhex(value)
    except ValueError as exc:
        raise MessageRejected("malformed", "expected a hex nonce") from exc
    if not NONCE_BYTES[0] <= len(nonce) <= NONCE_BYTES[1] or value != nonce.hex():
        raise MessageRejected("malformed", "nonce of the wrong length or spelling")
    return nonce
