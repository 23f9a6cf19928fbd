"""The cluster's events as MQTT carries them: each committed decision as a JSON event, each
agent's server state, their topics, and the bounded buffer that holds events while the
broker is away. Pure: no I/O, no clock.

Delivery contract: the Raft leader publishes each committed decision once, in decision
order, with QoS 1 (not retained) on `<prefix>/<cluster>/events/<kind>`. QoS 1 and leader
changes mean a consumer may see an event twice (a publish whose acknowledgement was lost, or
a new leader that had not yet seen the old one's cursor): the event's `id` is the decision's
id, the same whoever publishes it, so consumers de-duplicate on `id`. The leader records how
far it got as a retained cursor on `<prefix>/<cluster>/cursor`; a new leader continues from
the highest cursor it saw (or from its own last acknowledged event).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from agent.explain import explain
from consensus.protocol import Snapshot
from consensus.state import Decision

DEFAULT_BUFFER: Final = 1000
OFFLINE: Final = "offline"
# Far above any event or state document; a payload over it is not one of ours.
MAX_PAYLOAD_BYTES: Final = 1024 * 1024
_SEQ_DIGITS: Final = re.compile(r"[0-9]{1,18}")


def events_topic(prefix: str, cluster: str, kind: str = "+") -> str:
    """Where events of `kind` go; the default is the filter for every kind."""
    return f"{prefix}/{cluster}/events/{kind}"


def server_topic(prefix: str, cluster: str, server: str = "+") -> str:
    """Where `server`'s agent keeps its retained state; the default is the filter for all."""
    return f"{prefix}/{cluster}/servers/{server}"


def cursor_topic(prefix: str, cluster: str) -> str:
    """The retained id of the last event the leader had acknowledged by the broker."""
    return f"{prefix}/{cluster}/cursor"


def encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def decode(payload: bytes) -> dict[str, Any] | None:
    """A JSON object from a payload, or None for anything else (never raises: anyone who may
    publish on the broker writes these bytes)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting
        return None
    return value if isinstance(value, dict) else None


def decision_seq(decision_id: str) -> int | None:
    """The position of a decision in the cluster's history, from its id ("d000012" -> 12);
    None for anything else (ASCII digits only: `int` refuses "²" and over 4300 digits)."""
    digits = decision_id[1:]
    if not decision_id.startswith("d") or not _SEQ_DIGITS.fullmatch(digits):
        return None
    return int(digits)


def summary(decision: Decision) -> str:
    """The one-line words of the explain module; a plain line if the evidence is odd."""
    try:
        return explain(decision)
    except (TypeError, ValueError, KeyError, AttributeError):
        return f"{decision.kind} about {decision.subject}."


def decision_event(decision: Decision, cluster: str) -> dict[str, Any]:
    """The event of a committed decision."""
    return {
        "id": decision.id,
        "kind": decision.kind,
        "at": decision.at,
        "subject": decision.subject,
        "evidence": decision.evidence,
        "summary": summary(decision),
        "cluster": cluster,
    }


# Events an agent publishes about its own server (not committed decisions; not in the cursor).
RESOURCE_DEGRADED: Final = "resource_degraded"
RESOURCE_RECOVERED: Final = "resource_recovered"


def resource_event(
    server: str, cluster: str, at: float, degraded: bool, evidence: Mapping[str, Any]
) -> dict[str, Any]:
    """The event of one of `server`'s resource conditions changing level; its id is unique
    per server, resource and millisecond (consumers de-duplicate on it like on decisions)."""
    kind = RESOURCE_DEGRADED if degraded else RESOURCE_RECOVERED
    resource = str(evidence.get("resource", "?"))
    value = evidence.get("value")
    shown = f"{value:.1f} {evidence.get('unit', '')}" if isinstance(value, float | int) else "?"
    words = (
        f"{server}'s {resource} went from {evidence.get('from')} to {evidence.get('to')}: "
        f"{shown} (warning {evidence.get('warning')}, critical {evidence.get('critical')})"
    )
    detail = evidence.get("detail")
    return {
        "id": f"{server}:{resource}:{round(at * 1000)}",
        "kind": kind,
        "at": at,
        "subject": server,
        "evidence": dict(evidence),
        "summary": f"{words}; {detail}." if detail else f"{words}.",
        "cluster": cluster,
    }


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event built and not yet acknowledged by the broker."""

    seq: int
    id: str
    topic: str
    payload: bytes


def pending_events(
    decisions: Iterable[Decision], after: int, prefix: str, cluster: str
) -> list[PendingEvent]:
    """The events of the decisions later than position `after`, oldest first."""
    pending = []
    for decision in decisions:
        seq = decision_seq(decision.id)
        if seq is None or seq <= after:
            continue
        topic = events_topic(prefix, cluster, decision.kind)
        pending.append(
            PendingEvent(seq, decision.id, topic, encode(decision_event(decision, cluster)))
        )
    return pending


def resume_after(seen: int | None, acknowledged: int | None, committed: int) -> int:
    """Where a new leader starts: after the highest position it knows was published (a
    cursor on the broker, or its own acknowledged events), 0 when it knows of none. A cursor
    beyond what is committed belongs to another life of the cluster and is ignored."""
    known = [s for s in (seen, acknowledged) if s is not None and s <= committed]
    return max(known, default=0)


def missed(decisions: Iterable[Decision], after: int) -> int:
    """Decisions after position `after` that the retained history no longer holds."""
    seqs = [s for s in (decision_seq(d.id) for d in decisions) if s is not None]
    if after <= 0 or not seqs:
        return 0
    return max(0, min(seqs) - after - 1)


class EventBuffer:
    """Events waiting for the broker, oldest first; when full, the oldest is dropped and
    counted. `done` removes the first event once the broker has acknowledged it."""

    def __init__(self, capacity: int = DEFAULT_BUFFER) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[PendingEvent] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, event: PendingEvent) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(event)

    def lost(self, count: int) -> None:
        """Count events that never reached the buffer."""
        self.dropped += max(0, count)

    def first(self) -> PendingEvent | None:
        return self._items[0] if self._items else None

    def done(self, event: PendingEvent) -> None:
        """`event` was acknowledged: remove it if it is still the first (it may have been
        dropped meanwhile)."""
        if self._items and self._items[0] is event:
            self._items.popleft()

    def clear(self) -> int:
        """Forget every waiting event; how many there were."""
        count = len(self._items)
        self._items.clear()
        return count

    def ids(self) -> list[str]:
        return [event.id for event in self._items]


def server_document(snap: Snapshot, server: str, at: float) -> dict[str, Any]:
    """`server`'s retained state as its own agent sees it in committed state."""
    record = snap.state.server(server)
    return {
        "server": server,
        "state": record.state if record is not None else "unknown",
        "role": record.role if record is not None else None,
        "voter": server in snap.state.voters,
        "leader": snap.raft.is_leader,
        "at": at,
    }


def state_key(document: Mapping[str, Any]) -> tuple[object, ...]:
    """What counts as a change of a server document (its time does not)."""
    return tuple(document.get(k) for k in ("state", "role", "voter", "leader"))


def offline_document(server: str, at: float | None = None) -> dict[str, Any]:
    """The state of an agent that left the broker (without `at` when it is its last will)."""
    document: dict[str, Any] = {"server": server, "state": OFFLINE}
    if at is not None:
        document["at"] = at
    return document


def cursor_document(event: PendingEvent, server: str, at: float) -> dict[str, Any]:
    return {"id": event.id, "server": server, "at": at}


def cursor_seq(payload: bytes) -> int | None:
    document = decode(payload)
    value = document.get("id") if document is not None else None
    return decision_seq(value) if isinstance(value, str) else None


def _when(at: object) -> str:
    if at is None:
        return "-"
    if not isinstance(at, int | float):
        return "?"
    try:
        return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return "?"


def event_line(event: Mapping[str, Any]) -> str:
    """One line for a person: time (UTC), kind, subject, summary."""
    kind, subject = str(event.get("kind", "?")), str(event.get("subject", "?"))
    return f"{_when(event.get('at'))}  {kind:<26} {subject:<12} {event.get('summary', '')}"


def server_line(document: Mapping[str, Any]) -> str:
    """One line per server: name, state, role, voter, leader, since when."""
    flags = [
        flag
        for flag, on in (("voter", document.get("voter")), ("leader", document.get("leader")))
        if on
    ]
    role = document.get("role") or "-"
    return (
        f"{document.get('server', '?')!s:<12} {document.get('state', '?')!s:<12} "
        f"{role!s:<7} {' '.join(flags) or '-':<13} {_when(document.get('at'))}"
    ).rstrip()
