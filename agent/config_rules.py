"""Rules for the cluster configuration: value formats, cross-field invariants, error lines."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    from agent.config import ClusterConfig, ServerConfig, SlotConfig, TimingConfig

Loc = tuple[str | int, ...]
"""A key path inside the configuration, as pydantic spells it: ("servers", 2, "raft_port")."""

Problem = tuple[Loc, str]
"""One rule violation: where (relative to the model being validated) and what."""

RULES_ERROR_TYPE = "config_rules"
"""The pydantic error type that carries a list of `Problem`s in its context under "problems"."""

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
TENANT_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DOMAIN_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9-_.]{0,62}$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_PORT = 65535
VOTER_COUNTS = (3, 5)


def format_loc(loc: Loc) -> str:
    """Spell a key path the way error messages do: `servers[2].raft_port`."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def rules_failed(problems: Sequence[Problem]) -> PydanticCustomError:
    """One pydantic error carrying several problems; the loader expands it into one line each."""
    summary = "; ".join(f"{format_loc(loc)}: {msg}" if loc else msg for loc, msg in problems)
    return PydanticCustomError(
        RULES_ERROR_TYPE, "{summary}", {"summary": summary, "problems": list(problems)}
    )


def raise_if_any(problems: Sequence[Problem]) -> None:
    """Raise the problems as one pydantic error, if there are any."""
    if problems:
        raise rules_failed(problems)


# ---------------------------------------------------------------- scalar formats


def check_name(value: str) -> str:
    """A cluster, server or slot name."""
    if not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-32 characters of a-z, 0-9 and '-',"
            " starting with a letter"
        )
    return value


def check_tenant(value: str) -> str:
    """A tenant: one lower-case DNS label."""
    if not TENANT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid tenant: use a lower-case DNS label (1-63 characters"
            " of a-z, 0-9 and '-', not starting or ending with '-')"
        )
    return value


def check_domain_label(value: str) -> str:
    """A failure-domain label such as `rack-a`."""
    if not DOMAIN_LABEL_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid domain label: use 1-63 characters of a-z, 0-9,"
            " '-', '_' and '.', starting with a letter or digit"
        )
    return value


def _is_dns_name(value: str) -> bool:
    labels = value.split(".")
    return (
        0 < len(value) <= 253
        and all(DNS_LABEL_RE.match(label) for label in labels)
        and not labels[-1].isdigit()  # "300.1.1.1" is a broken address, not a hostname
    )


def check_dns_name(value: str) -> str:
    """A DNS name such as `localhost` or `example.test`, returned lower-cased."""
    lowered = value.lower()
    if not _is_dns_name(lowered):
        raise ValueError(f"{value!r} is not a valid DNS name")
    return lowered


def check_host(value: str) -> str:
    """An IPv4/IPv6 literal (returned in canonical form) or a hostname (returned lower-cased)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    lowered = value.lower()
    if not _is_dns_name(lowered):
        raise ValueError(f"{value!r} is neither an IP address nor a valid hostname")
    return lowered


def check_env_var_name(value: str) -> str:
    """The name of an environment variable."""
    if not ENV_VAR_RE.match(value):
        raise ValueError(f"{value!r} is not a valid environment variable name")
    return value


# ---------------------------------------------------------------- single-field lists


def duplicate_problems(
    values: Sequence[str], field: str, key: str | None, what: str
) -> list[Problem]:
    """A problem for every repeat of an earlier value in list `field` (`key` inside each item)."""
    first: dict[str, Loc] = {}
    problems: list[Problem] = []
    for index, value in enumerate(values):
        loc: Loc = (index, key) if key else (index,)
        if value in first:
            earlier = format_loc((field, *first[value]))
            problems.append((loc, f"duplicate {what} {value!r} (also {earlier})"))
        else:
            first[value] = loc
    return problems


def voter_list_problems(voters: Sequence[str]) -> list[Problem]:
    """Voter count and duplicates (membership is checked against the servers later)."""
    problems: list[Problem] = []
    if len(voters) not in VOTER_COUNTS:
        problems.append(((), f"need 3 or 5 voters, got {len(voters)}"))
    return problems + duplicate_problems(voters, "voters", None, "voter")


def tenant_problems(slots: Sequence[SlotConfig]) -> list[Problem]:
    """A tenant may appear once, in one slot."""
    seen: dict[str, int] = {}
    problems: list[Problem] = []
    for s_index, slot in enumerate(slots):
        for t_index, tenant in enumerate(slot.tenants):
            where = seen.get(tenant)
            loc: Loc = (s_index, "tenants", t_index)
            if where == s_index:
                problems.append((loc, f"duplicate tenant {tenant!r}"))
            elif where is not None:
                problems.append(
                    (
                        loc,
                        f"tenant {tenant!r} is in two slots: slots[{where}]"
                        f" ({slots[where].name!r}) and slots[{s_index}] ({slot.name!r})",
                    )
                )
            else:
                seen[tenant] = s_index
    return problems


# ---------------------------------------------------------------- timing


def timing_problems(t: TimingConfig) -> list[Problem]:
    """The orderings between durations that keep detection, leases and Raft consistent."""
    rules = [
        (
            "probe_timeout_s",
            t.probe_timeout_s < t.probe_interval_s,
            f"must be less than probe_interval_s ({t.probe_interval_s})",
        ),
        (
            "probe_interval_s",
            t.probe_interval_s < t.suspicion_s,
            f"must be less than suspicion_s ({t.suspicion_s})",
        ),
        (
            "suspicion_max_s",
            t.suspicion_s <= t.suspicion_max_s < t.suspicion_expire_s,
            f"must be between suspicion_s ({t.suspicion_s}) and suspicion_expire_s "
            f"({t.suspicion_expire_s})",
        ),
        (
            "lease_margin_s",
            t.lease_margin_s < t.lease_s,
            f"must be less than lease_s ({t.lease_s})",
        ),
        (
            "lease_renew_s",
            t.lease_renew_s * 2 <= t.lease_s,
            f"must be at most half of lease_s ({t.lease_s})",
        ),
        (
            "tick_s",
            t.tick_s <= t.lease_renew_s,
            f"must be at most lease_renew_s ({t.lease_renew_s})",
        ),
        (
            "raft_election_min_s",
            t.raft_election_min_s < t.raft_election_max_s,
            f"must be less than raft_election_max_s ({t.raft_election_max_s})",
        ),
        (
            "leader_fallback_s",
            t.leader_fallback_s < t.lease_s,
            f"must be less than lease_s ({t.lease_s})",
        ),
    ]
    return [
        ((key,), f"{message}, got {getattr(t, key)}") for key, holds, message in rules if not holds
    ]


# ---------------------------------------------------------------- whole cluster


def cluster_problems(config: ClusterConfig) -> list[Problem]:
    """Every rule that relates one part of the configuration to another."""
    names = {server.name: server for server in config.servers}
    problems: list[Problem] = []
    for index, voter in enumerate(config.voters):
        if voter not in names:
            problems.append((("voters", index), f"{voter!r} is not a server"))
    for index, slot in enumerate(config.slots):
        owner = names.get(slot.owner)
        if owner is None:
            problems.append((("slots", index, "owner"), f"{slot.owner!r} is not a server"))
        elif owner.role != "active":
            problems.append(
                (
                    ("slots", index, "owner"),
                    f"{slot.owner!r} is a spare; only active servers own slots",
                )
            )
    tenants = {t for slot in config.slots for t in slot.tenants}
    for tenant in config.throttle.tenants:
        if tenant not in tenants:
            problems.append((("throttle", "tenants", tenant), f"{tenant!r} is not a tenant"))
    return problems + port_problems(config.servers, len(config.slots)) + _mqtt_problems(config)


def _mqtt_problems(config: ClusterConfig) -> list[Problem]:
    """A broker that `moonwatch up` starts must not take a port a server binds."""
    mqtt = config.mqtt
    if mqtt is None or not mqtt.managed:
        return []
    return [
        (
            ("mqtt", "port"),
            f"port {mqtt.port} on {mqtt.host} is already used by {format_loc(('servers', i))}",
        )
        for i, server in enumerate(config.servers)
        if server.host == mqtt.host and mqtt.port in _ports_of(server, len(config.slots))
    ]


def _ports_of(server: ServerConfig, app_count: int) -> set[int]:
    return {port for _, port in _claims(0, server, app_count)}


def _claims(index: int, server: ServerConfig, app_count: int) -> Iterator[tuple[Loc, int]]:
    """(key path, port) for every port a server binds, in declaration order."""
    yield ("servers", index, "agent_port"), server.agent_port
    yield ("servers", index, "raft_port"), server.raft_port
    yield ("servers", index, "edge_port"), server.edge_port
    for port in range(server.app_port, server.app_port + app_count):
        yield ("servers", index, "app_port"), port


def port_problems(servers: Sequence[ServerConfig], app_count: int) -> list[Problem]:
    """No two ports on one host may coincide, within a server or across servers."""
    owners: dict[tuple[str, int], Loc] = {}
    reported: set[tuple[Loc, Loc]] = set()
    problems: list[Problem] = []
    for index, server in enumerate(servers):
        last_app = server.app_port + app_count - 1
        if last_app > MAX_PORT:
            problems.append(
                (
                    ("servers", index, "app_port"),
                    f"app port range {server.app_port}..{last_app} (one port per slot)"
                    f" goes past {MAX_PORT}",
                )
            )
        for loc, port in _claims(index, server, app_count):
            owner = owners.setdefault((server.host, port), loc)
            if owner != loc and (loc, owner) not in reported:
                reported.add((loc, owner))
                problems.append((loc, _collision(loc, port, server.host, owner)))
    return problems


def _collision(loc: Loc, port: int, host: str, owner: Loc) -> str:
    in_range = " (in its app port range, one port per slot)" if loc[-1] == "app_port" else ""
    return f"port {port}{in_range} on {host} is already used by {format_loc(owner)}"


# ---------------------------------------------------------------- reporting


def error_lines(exc: ValidationError) -> list[str]:
    """One "key.path: message" line per problem in a validation error, rule problems expanded."""
    lines: list[str] = []
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        if error["type"] == RULES_ERROR_TYPE:
            problems: list[tuple[Loc, str]] = error.get("ctx", {})["problems"]
            lines += [f"{format_loc(loc + rel)}: {message}" for rel, message in problems]
        elif error["type"] == "invalid_key":  # pydantic puts the key itself at the end of loc
            message = f"key {error['input']!r} is not a string{_bool_hint(error['input'])}"
            lines.append(f"{format_loc(loc[:-1]) or '(top level)'}: {message}")
        else:
            lines.append(f"{format_loc(loc) or '(top level)'}: {_error_message(error, loc)}")
    return lines


def _error_message(error: ErrorDetails, loc: Loc) -> str:
    kind, value = error["type"], error["input"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    message: str = error["msg"]
    if kind == "string_type":
        message += _bool_hint(value)
    if (value is None or isinstance(value, str | int | float)) and "secrets" not in loc:
        message += f", got {value!r}"
    return message


def _bool_hint(value: object) -> str:
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off/true/false as booleans; quote it)"
    return ""
