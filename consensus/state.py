"""The replicated cluster state: servers, slots and the bounded list of decisions, all immutable."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

STATE_SCHEMA: Final = 1
MAX_DECISIONS: Final = 1000
MAX_REMEMBERED_COMMANDS: Final = 512
MAX_FAILURES_KEPT: Final = 8
# Stops and the offence record are per tenant, so bounded by the tenants; these are backstops.
MAX_STOPS: Final = 1024
MAX_OFFENCES: Final = 1024

# A snapshot from a newer agent with fields we do not know must not load as if complete.
_STRICT: Final = ConfigDict(extra="forbid")

Role = Literal["active", "spare"]
# draining: an operator is taking it out of service; it hands its slots over and owns nothing.
ServerState = Literal["new", "up", "failed", "quarantined", "draining"]
# lost: the owner was declared failed; it may still serve until its lease runs out.
SlotState = Literal["unassigned", "assigned", "serving", "released", "lost"]


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """One server as the cluster agrees it is."""

    __pydantic_config__ = _STRICT

    name: str
    role: Role
    domain: str
    state: ServerState = "new"
    incarnation: int = 0
    # Wall time (the committing command's `at`) of the last change of `state`.
    since: float = 0.0
    # Wall times of the latest verdicts against it (at most MAX_FAILURES_KEPT): flap evidence.
    failures: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """One slot: who owns it under which epoch, and whether the owner serves it yet.

    `epoch` grows by one with every change of owner; commands that name an older epoch are
    stale. `lease_seq` counts committed lease renewals of the current epoch; each side measures
    the lease duration (`lease_s`) on its own monotonic clock from the renewal it knows of.
    """

    __pydantic_config__ = _STRICT

    name: str
    tenants: tuple[str, ...]
    owner: str | None = None
    epoch: int = 0
    state: SlotState = "unassigned"
    address: str | None = None
    lease_s: float = 0.0
    lease_seq: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """A committed decision with the evidence it was taken on."""

    __pydantic_config__ = _STRICT

    id: str
    kind: str
    at: float
    subject: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """One observer's latest word on a suspected server."""

    __pydantic_config__ = _STRICT

    observer: str
    reachable: bool
    at: float
    evidence: dict[str, Any] = field(default_factory=dict)

    def from_confirm(self) -> bool:
        """Whether a witness's confirm probe made this report (several attempts in a row), not
        a routine probe; a report that does not say counts as a confirm."""
        return bool(self.evidence.get("kind", "confirm") == "confirm")


@dataclass(frozen=True, slots=True)
class Suspicion:
    """A server some observer could not reach, with every observer's report since."""

    __pydantic_config__ = _STRICT

    target: str
    incarnation: int
    since: float
    reports: tuple[ProbeReport, ...] = ()

    def unreachable_by(self) -> tuple[str, ...]:
        return tuple(r.observer for r in self.reports if not r.reachable)

    def reachable_by(self) -> tuple[str, ...]:
        return tuple(r.observer for r in self.reports if r.reachable)


@dataclass(frozen=True, slots=True)
class Stop:
    """A tenant subdomain refused at every edge (503 + Retry-After) until `until` (wall time).

    `offence` counts this tenant's stops within the repeat window (the backoff exponent);
    `pinned` stops were set by an operator and are lifted only by one or by expiry.
    """

    __pydantic_config__ = _STRICT

    subdomain: str
    since: float
    until: float
    reason: str
    offence: int = 1
    pinned: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)

    def active(self, wall: float) -> bool:
        return wall < self.until


@dataclass(frozen=True, slots=True)
class Offence:
    """How often a tenant was stopped automatically, and when last (for the backoff)."""

    __pydantic_config__ = _STRICT

    subdomain: str
    count: int
    last: float


@dataclass(frozen=True, slots=True)
class VoterChange:
    """A Raft membership change in progress: `add` becomes a voter, then `remove` leaves.

    step "prepare": committed intent; `add` restarts its Raft node as a full node.
    step "added": the Raft log has committed `add` as a voter; `remove` leaves next.
    """

    __pydantic_config__ = _STRICT

    add: str
    remove: str
    since: float
    step: Literal["prepare", "added"] = "prepare"


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Everything the cluster agrees on. Small by design: it is pickled into Raft snapshots."""

    __pydantic_config__ = _STRICT

    schema: int = STATE_SCHEMA
    cluster: str | None = None
    config_digest: str | None = None
    servers: tuple[ServerRecord, ...] = ()
    slots: tuple[SlotRecord, ...] = ()
    mode: Literal["normal", "cascade", "recovering"] = "normal"
    mode_since: float = 0.0
    suspicions: tuple[Suspicion, ...] = ()
    decisions: tuple[Decision, ...] = ()
    decision_seq: int = 0
    applied: int = 0
    recent_commands: tuple[str, ...] = ()
    # The Raft voters as the cluster last recorded them, and a membership change under way.
    voters: tuple[str, ...] = ()
    voter_change: VoterChange | None = None
    # Tenants stopped for flooding the service, and their record of earlier stops.
    stops: tuple[Stop, ...] = ()
    offences: tuple[Offence, ...] = ()

    @property
    def bootstrapped(self) -> bool:
        return self.cluster is not None

    def server(self, name: str) -> ServerRecord | None:
        return next((s for s in self.servers if s.name == name), None)

    def slot(self, name: str) -> SlotRecord | None:
        return next((s for s in self.slots if s.name == name), None)

    def slots_owned_by(self, server: str) -> tuple[SlotRecord, ...]:
        return tuple(s for s in self.slots if s.owner == server)

    def suspicion(self, target: str) -> Suspicion | None:
        return next((s for s in self.suspicions if s.target == target), None)

    def up_servers(self) -> tuple[ServerRecord, ...]:
        return tuple(s for s in self.servers if s.state == "up")

    def free_spares(self) -> tuple[ServerRecord, ...]:
        """Spares that are up and own no live slot: what a replacement can use. A lost slot's
        owner is history (it failed; returned to the pool it is a spare like any other)."""
        busy = {s.owner for s in self.slots if s.owner and s.state != "lost"}
        return tuple(
            s for s in self.servers if s.role == "spare" and s.state == "up" and s.name not in busy
        )

    def tenant_slot(self, tenant: str) -> SlotRecord | None:
        return next((s for s in self.slots if tenant in s.tenants), None)

    def stop(self, subdomain: str) -> Stop | None:
        return next((s for s in self.stops if s.subdomain == subdomain), None)

    def offence(self, subdomain: str) -> Offence | None:
        return next((o for o in self.offences if o.subdomain == subdomain), None)

    def decision(self, decision_id: str) -> Decision | None:
        return next((d for d in self.decisions if d.id == decision_id), None)


_STATE_ADAPTER: Final = TypeAdapter(ClusterState)


class StateDecodeError(ValueError):
    """A serialized state could not be read back."""


def encode_state(state: ClusterState) -> str:
    """Canonical JSON of a state (sorted keys), identical on every node for equal states."""
    return json.dumps(dataclasses.asdict(state), sort_keys=True, separators=(",", ":"))


def decode_state(text: str | bytes) -> ClusterState:
    try:
        state = _STATE_ADAPTER.validate_json(text)
    except ValidationError as exc:
        raise StateDecodeError(f"cannot decode cluster state: {exc.error_count()} errors") from exc
    if state.schema != STATE_SCHEMA:
        raise StateDecodeError(f"state schema {state.schema} is not {STATE_SCHEMA}")
    return state
