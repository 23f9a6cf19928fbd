"""Commands to the replicated state: versioned, JSON-safe dataclasses and their strict codec."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from consensus.state import Role

COMMAND_VERSION: Final = 1
MAX_COMMAND_BYTES: Final = 64 * 1024
# Unknown fields are errors: a field we do not know is a field we would silently drop.
_STRICT: Final = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True, slots=True)
class ServerSpec:
    __pydantic_config__ = _STRICT

    name: str
    role: Role
    domain: str


@dataclass(frozen=True, slots=True)
class SlotSpec:
    __pydantic_config__ = _STRICT

    name: str
    owner: str
    tenants: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Bootstrap:
    """Create the cluster's initial state from the configuration. Accepted once."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    cluster: str
    config_digest: str
    servers: tuple[ServerSpec, ...]
    slots: tuple[SlotSpec, ...]
    lease_s: float
    # The configured Raft voters (empty: the cluster does not track its voters).
    voters: tuple[str, ...] = ()
    kind: Literal["bootstrap"] = "bootstrap"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerUp:
    """A server's agent (re)started with a new, higher incarnation and joined the cluster."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    server: str
    incarnation: int
    kind: Literal["server_up"] = "server_up"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkServerFailed:
    """The cluster's verdict that a server has failed, at the incarnation the observers saw."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    server: str
    incarnation: int
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: Literal["mark_server_failed"] = "mark_server_failed"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignSlot:
    """Give a slot to a new owner under the next epoch (the previous owner is fenced by it)."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    slot: str
    owner: str
    epoch: int
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: Literal["assign_slot"] = "assign_slot"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotServing:
    """The owner reports that its instance of the slot passes health checks at `address`."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    slot: str
    owner: str
    epoch: int
    address: str
    kind: Literal["slot_serving"] = "slot_serving"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewLease:
    """The owner renews its lease on a slot for the current epoch."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    slot: str
    owner: str
    epoch: int
    kind: Literal["renew_lease"] = "renew_lease"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseSlot:
    """The owner gives a slot up (it cannot serve it); the slot waits for a new owner."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    slot: str
    owner: str
    epoch: int
    reason: str
    kind: Literal["release_slot"] = "release_slot"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportProbe:
    """An observer's probe result about a server: unreachable opens or joins a suspicion;
    reachable counts against an open one."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    observer: str
    target: str
    incarnation: int
    reachable: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: Literal["report_probe"] = "report_probe"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class DropSuspicion:
    """The leader closes a suspicion that did not become a verdict in time."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    target: str
    incarnation: int
    reason: str
    kind: Literal["drop_suspicion"] = "drop_suspicion"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnServer:
    """An operator puts a failed or quarantined server back into the spare pool."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    server: str
    reason: str
    kind: Literal["return_server"] = "return_server"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainServer:
    """An operator takes a server out of service for maintenance, without any verdict: it
    stops and releases its slots, which the leader hands to spares at once. `operator` False:
    the server's own agent drains it because it cannot keep serving safely (its `evidence`
    says what ran out). Both fields have defaults, so entries written before them decode."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    server: str
    reason: str
    operator: bool = True
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: Literal["drain_server"] = "drain_server"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMode:
    """The leader (or an operator) moves the cluster between normal, cascade and recovering."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    mode: Literal["normal", "cascade", "recovering"]
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    operator: bool = False
    kind: Literal["set_mode"] = "set_mode"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordHeld:
    """The leader records an action it held back, and why (cascade mode, budget)."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    subject: str
    action: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: Literal["record_held"] = "record_held"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class VoterStep:
    """One step of replacing a failed Raft voter, recorded by the leader.

    prepare: `add` is to become a voter in place of `remove` (its agent restarts its Raft node
    as a full node); added: Raft committed `add` as a voter; removed: Raft committed the
    removal of `remove`, the change is over; abandoned: `add` never came up as a voter.
    """

    __pydantic_config__ = _STRICT

    id: str
    at: float
    step: Literal["prepare", "added", "removed", "abandoned"]
    add: str
    remove: str
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: Literal["voter_step"] = "voter_step"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class StopTenant:
    """Refuse a tenant subdomain at every edge until `until` (wall time): the leader's answer
    to a flood (`offence` is its count of stops in the repeat window), or an operator's pin."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    subdomain: str
    until: float
    reason: str
    offence: int = 1
    evidence: dict[str, Any] = field(default_factory=dict)
    operator: bool = False
    kind: Literal["stop_tenant"] = "stop_tenant"
    version: int = COMMAND_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class LiftStop:
    """End a tenant's stop: expired (the leader tidies up) or lifted by an operator."""

    __pydantic_config__ = _STRICT

    id: str
    at: float
    subdomain: str
    reason: str
    operator: bool = False
    kind: Literal["lift_stop"] = "lift_stop"
    version: int = COMMAND_VERSION


Command = (
    Bootstrap
    | ServerUp
    | MarkServerFailed
    | AssignSlot
    | SlotServing
    | RenewLease
    | ReleaseSlot
    | ReportProbe
    | DropSuspicion
    | ReturnServer
    | SetMode
    | RecordHeld
    | DrainServer
    | VoterStep
    | StopTenant
    | LiftStop
)

_COMMAND_ADAPTER: Final = TypeAdapter[Command](Annotated[Command, Field(discriminator="kind")])


class CommandDecodeError(ValueError):
    """A command payload is not a well-formed command (hostile, corrupt or from a newer agent)."""


def encode_command(command: Command) -> str:
    """Canonical JSON; raises ValueError for NaN or infinite numbers, which JSON cannot carry."""
    return json.dumps(
        dataclasses.asdict(command), sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def decode_command(payload: str | bytes) -> Command:
    """Parse a payload strictly: unknown kinds, missing or extra fields are errors."""
    if isinstance(payload, str):
        try:
            payload = payload.encode()
        except UnicodeEncodeError as exc:
            raise CommandDecodeError(f"malformed command: not valid text: {exc.reason}") from exc
    size = len(payload)
    if size > MAX_COMMAND_BYTES:
        raise CommandDecodeError(f"command of {size} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        command = _COMMAND_ADAPTER.validate_json(payload, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "command"
        raise CommandDecodeError(f"malformed command: {where}: {first['msg']}") from exc
    try:  # free-form evidence is not typed: NaN or Infinity there would poison the state
        encode_command(command)
    except ValueError as exc:
        raise CommandDecodeError(f"malformed command: {exc}") from exc
    return command
