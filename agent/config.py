"""The cluster configuration: frozen pydantic models loaded from YAML, errors naming key paths."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.config_backups import BackupsConfig
from agent.config_rules import (
    MAX_PORT,
    check_dns_name,
    check_domain_label,
    check_env_var_name,
    check_host,
    check_name,
    check_tenant,
    cluster_problems,
    duplicate_problems,
    error_lines,
    raise_if_any,
    tenant_problems,
    timing_problems,
    voter_list_problems,
)

MIN_RAFT_PASSWORD_LEN = 8
# What the hosted app accepts as a slot's database URL, and its upload limit's range.
DATABASE_SCHEMES = ("postgresql://", "postgres://")
MAX_UPLOAD_MB = 4096

Name = Annotated[str, Strict(), AfterValidator(check_name)]
Tenant = Annotated[str, Strict(), AfterValidator(check_tenant)]
DomainLabel = Annotated[str, Strict(), AfterValidator(check_domain_label)]
DnsName = Annotated[str, Strict(), AfterValidator(check_dns_name)]
Host = Annotated[str, Strict(), AfterValidator(check_host)]
EnvVarName = Annotated[str, Strict(), AfterValidator(check_env_var_name)]
FileName = Annotated[str, Strict(), Field(min_length=1)]
Port = Annotated[int, Strict(), Field(ge=1, le=MAX_PORT)]
Seconds = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]


class ConfigError(Exception):
    """The configuration is unusable; `errors` holds one "key.path: message" line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_FrozenModel):
    """One machine in the cluster: where its agent, Raft node, edge and app instances listen."""

    name: Name
    host: Host
    agent_port: Port
    raft_port: Port
    app_port: Port
    edge_port: Port
    role: Literal["active", "spare"]
    domain: DomainLabel = "default"

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def agent_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.agent_port}"

    @property
    def edge_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.edge_port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class SlotConfig(_FrozenModel):
    """A group of tenants served by one app instance, owned by one active server at a time."""

    name: Name
    owner: Name
    tenants: tuple[Tenant, ...]
    # The slot's data in PostgreSQL (a postgresql:// URL, given like a secret: literally, as
    # `database_url_file` or `database_url_env`); none: SQLite under the slot's data directory.
    database_url_file: FileName | None = None
    database_url_env: EnvVarName | None = None
    database_url: SecretStr | None = Field(default=None, validate_default=True)

    @field_validator("tenants")
    @classmethod
    def _some_tenants(cls, tenants: tuple[str, ...]) -> tuple[str, ...]:
        if not tenants:
            raise ValueError("need at least one tenant")
        return tenants

    @field_validator("database_url", mode="before")
    @classmethod
    def _resolve_database_url(cls, literal: object, info: ValidationInfo) -> str | None:
        if "database_url_file" not in info.data or "database_url_env" not in info.data:
            return None  # that field's own error is already reported
        file, env_var = info.data["database_url_file"], info.data["database_url_env"]
        if literal is None and file is None and env_var is None:
            return None
        value = _resolve_secret("database_url", literal, file, env_var, info.context)
        if not value.startswith(DATABASE_SCHEMES) or len(value) <= len("postgres://"):
            raise ValueError("must be a postgresql://user:password@host:port/database URL")
        return value


class TimingConfig(_FrozenModel):
    """Every duration the agent uses, in seconds."""

    tick_s: Seconds = 0.1
    probe_interval_s: Seconds = 0.2
    probe_timeout_s: Seconds = 0.1
    suspicion_s: Seconds = 0.8
    suspicion_max_s: Seconds = 2.4
    suspicion_expire_s: Seconds = 10.0
    lease_s: Seconds = 2.0
    lease_renew_s: Seconds = 0.4
    lease_margin_s: Seconds = 0.25
    raft_election_min_s: Seconds = 0.4
    raft_election_max_s: Seconds = 1.2
    leader_fallback_s: Seconds = 1.0
    app_start_timeout_s: Seconds = 15.0
    app_health_interval_s: Seconds = 0.5
    shutdown_timeout_s: Seconds = 10.0
    # Bound on any server clock's rate error (0.01 = 1 %); leases are stretched by it.
    clock_drift: float = Field(default=0.01, ge=0.0, le=0.1)

    @model_validator(mode="after")
    def _invariants(self) -> TimingConfig:
        raise_if_any(timing_problems(self))
        return self


class DetectionConfig(_FrozenModel):
    """How servers watch each other and how much agreement a verdict needs."""

    # A verdict needs at least this many distinct observers (and a majority of those eligible).
    min_observers: int = Field(default=2, ge=2, le=50)
    # Helpers asked to probe a server that missed our direct probe.
    indirect_probes: int = Field(default=3, ge=0, le=10)


class CascadeConfig(_FrozenModel):
    """When many servers fail at once, hold back replacement (chain-failure prevention)."""

    # Enter cascade mode at max(min_verdicts, verdict_fraction x actives) verdicts in window_s.
    window_s: Seconds = 60.0
    min_verdicts: int = Field(default=2, ge=1)
    verdict_fraction: float = Field(default=0.3, gt=0.0, le=1.0)
    # Leave it after this long without a verdict (twice: cascade -> recovering -> normal).
    quiet_s: Seconds = 30.0
    # Replacements still allowed in cascade mode, per budget_window_s.
    budget: int = Field(default=1, ge=0)
    budget_window_s: Seconds = 300.0
    # Replacements allowed per budget_window_s in normal mode too: a runaway bound.
    normal_budget: int = Field(default=10, ge=1)


class HealingConfig(_FrozenModel):
    """Which spares replacement may use, when a repaired server rejoins, and Raft voters."""

    # Spares that automatic replacement leaves alone (operator drains may still use them);
    # with only this many spares left, the cluster counts its spares as run out.
    spare_reserve: int = Field(default=0, ge=0)
    # A server back after a verdict (quarantined) returns to the spare pool by itself after
    # staying healthy this long; null leaves every return to an operator.
    auto_return_s: Seconds | None = 120.0
    # A server with flap_failures verdicts within flap_window_s stays quarantined until an
    # operator returns it (flap quarantine).
    flap_failures: int = Field(default=2, ge=2, le=8)
    flap_window_s: Seconds = 3600.0
    # Replace a failed Raft voter by a healthy non-voter (Raft dynamic membership).
    replace_voters: bool = True


class TenantLimits(_FrozenModel):
    """What one tenant may use of the whole cluster; a missing key takes the default."""

    rps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    share: float | None = Field(default=None, gt=0, le=1)
    concurrent: int | None = Field(default=None, ge=1)


class DefaultLimits(TenantLimits):
    """The limits of every tenant without an override; null switches a limit off."""

    rps: float | None = Field(default=20.0, gt=0, allow_inf_nan=False)
    share: float | None = Field(default=0.5, gt=0, le=1)
    concurrent: int | None = Field(default=10, ge=1)


class ThrottleConfig(_FrozenModel):
    """Stopping a tenant subdomain that floods the service, so that the others keep working."""

    # Cluster-wide limits per tenant (requests per second, share of all requests, requests
    # in flight), and per-tenant overrides of them.
    limits: DefaultLimits = DefaultLimits()
    tenants: dict[Tenant, TenantLimits] = Field(default_factory=dict)
    # The share limit counts only while the cluster carries at least this many requests/s.
    share_min_rps: float = Field(default=50.0, gt=0, allow_inf_nan=False)
    # Over a limit for this long: stopped for stop_s, doubled for each repeat within
    # repeat_window_s, at most max_stop_s.
    confirm_s: Seconds = 1.0
    stop_s: Seconds = 30.0
    max_stop_s: Seconds = 3600.0
    repeat_window_s: Seconds = 3600.0
    # Each edge reports its counts this often; it tracks at most max_tracked subdomains.
    report_interval_s: Seconds = 1.0
    max_tracked: int = Field(default=10_000, ge=16, le=1_000_000)
    # Each edge's own token bucket per tenant holds this many seconds of the rps limit.
    local_burst_s: Seconds = 2.0
    # Peers whose X-Forwarded-For is believed (addresses or CIDR ranges).
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()

    @model_validator(mode="after")
    def _stops(self) -> ThrottleConfig:
        if self.max_stop_s < self.stop_s:
            raise ValueError(f"max_stop_s {self.max_stop_s} is less than stop_s {self.stop_s}")
        return self


class AppConfig(_FrozenModel):
    """Settings of the hosted collaboration service, passed to every instance the agent runs."""

    # The largest file a user may upload, in MiB.
    max_upload_mb: int = Field(default=25, ge=1, le=MAX_UPLOAD_MB)


class MqttConfig(_FrozenModel):
    """The MQTT broker that carries traffic reports (the agents fall back to HTTP without it)."""

    host: Host = "127.0.0.1"
    port: Port = 1883
    topic_prefix: Name = "moonwatch"
    # `moonwatch up` starts a local mosquitto on this port for the demo.
    managed: bool = False


class SecretsConfig(_FrozenModel):
    """Shared secrets, each given literally, as `<name>_file` or `<name>_env`; always resolved."""

    # The *_file / *_env fields come first: the resolvers of the secrets below read them.
    raft_password_file: FileName | None = None
    raft_password_env: EnvVarName | None = None
    api_token_file: FileName | None = None
    api_token_env: EnvVarName | None = None
    raft_password: SecretStr = Field(default=None, validate_default=True)
    api_token: SecretStr = Field(default=None, validate_default=True)

    @field_validator("raft_password", "api_token", mode="before")
    @classmethod
    def _resolve(cls, literal: object, info: ValidationInfo) -> str:
        name = str(info.field_name)
        if f"{name}_file" not in info.data or f"{name}_env" not in info.data:
            # That field's own error is already reported and the model will not be built.
            return ""
        value = _resolve_secret(
            name, literal, info.data[f"{name}_file"], info.data[f"{name}_env"], info.context
        )
        if not value:
            raise ValueError("is empty")
        if name == "raft_password" and len(value) < MIN_RAFT_PASSWORD_LEN:
            raise ValueError(
                f"must be at least {MIN_RAFT_PASSWORD_LEN} characters long, got {len(value)}"
            )
        return value


def _resolve_secret(
    name: str, literal: object, file: str | None, env_var: str | None, context: object
) -> str:
    forms = ((name, literal), (f"{name}_file", file), (f"{name}_env", env_var))
    given = [key for key, value in forms if value is not None]
    if len(given) != 1:
        found = f"got {', '.join(given)}" if given else "got none"
        raise ValueError(f"give exactly one of {name}, {name}_file, {name}_env ({found})")
    base_dir, env = _context(context)
    if file is not None:
        secret_path = base_dir / file
        try:
            return secret_path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"cannot read {name}_file {str(secret_path)!r}: {reason}") from None
    if env_var is not None:
        if env_var not in env:
            raise ValueError(f"{name}_env names {env_var!r}, which is not set")
        return env[env_var]
    if isinstance(literal, SecretStr):
        return literal.get_secret_value()
    if not isinstance(literal, str):
        raise ValueError("must be a string")
    return literal


def _context(context: object) -> tuple[Path, Mapping[str, str]]:
    """The config file's directory and the environment, as given to `parse_config`."""
    if isinstance(context, dict):
        return Path(context["base_dir"]).absolute(), context["env"]
    return Path.cwd(), os.environ


class ClusterConfig(_FrozenModel):
    """The whole cluster: servers, Raft voters, slots of tenants, secrets and timing.

    Built by `load_config`/`parse_config`; constructed directly, relative paths are taken from
    the working directory and *_env secrets from the process environment.
    """

    cluster: Name
    base_domain: DnsName
    data_dir: Path = Field(default=Path("var"), validate_default=True)
    secrets: SecretsConfig
    servers: tuple[ServerConfig, ...]
    voters: tuple[Name, ...]
    slots: tuple[SlotConfig, ...]
    timing: TimingConfig = TimingConfig()
    detection: DetectionConfig = DetectionConfig()
    cascade: CascadeConfig = CascadeConfig()
    healing: HealingConfig = HealingConfig()
    throttle: ThrottleConfig = ThrottleConfig()
    mqtt: MqttConfig | None = None
    app: AppConfig = AppConfig()
    backups: BackupsConfig = BackupsConfig()

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir(cls, value: object, info: ValidationInfo) -> Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ValueError("must be a non-empty path")
        base_dir, _ = _context(info.context)
        return (base_dir / value).resolve()

    @field_validator("backups")
    @classmethod
    def _backups(cls, backups: BackupsConfig, info: ValidationInfo) -> BackupsConfig:
        if backups.dir is None or backups.dir.is_absolute():
            return backups
        base_dir, _ = _context(info.context)
        return backups.model_copy(update={"dir": (base_dir / backups.dir).resolve()})

    @field_validator("servers")
    @classmethod
    def _servers(cls, servers: tuple[ServerConfig, ...]) -> tuple[ServerConfig, ...]:
        if not servers:
            raise ValueError("need at least one server")
        raise_if_any(
            duplicate_problems([s.name for s in servers], "servers", "name", "server name")
        )
        return servers

    @field_validator("slots")
    @classmethod
    def _slots(cls, slots: tuple[SlotConfig, ...]) -> tuple[SlotConfig, ...]:
        if not slots:
            raise ValueError("need at least one slot")
        names = duplicate_problems([s.name for s in slots], "slots", "name", "slot name")
        raise_if_any(names + tenant_problems(slots))
        return slots

    @field_validator("voters")
    @classmethod
    def _voters(cls, voters: tuple[str, ...]) -> tuple[str, ...]:
        raise_if_any(voter_list_problems(voters))
        return voters

    @model_validator(mode="after")
    def _cross_checks(self) -> ClusterConfig:
        raise_if_any(cluster_problems(self))
        return self

    def server(self, name: str) -> ServerConfig:
        """The server called `name`; KeyError if there is none."""
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def slot(self, name: str) -> SlotConfig:
        """The slot called `name`; KeyError if there is none."""
        return self.slots[self.slot_index(name)]

    def slot_index(self, name: str) -> int:
        """The slot's position in `slots`; KeyError if there is none."""
        for index, slot in enumerate(self.slots):
            if slot.name == name:
                return index
        raise KeyError(name)

    def app_port(self, server: str, slot: str) -> int:
        """The port of `slot`'s app instance when it runs on `server`."""
        return self.server(server).app_port + self.slot_index(slot)

    def tenant_slots(self) -> dict[str, str]:
        """Tenant name -> name of the slot that serves it."""
        return {tenant: slot.name for slot in self.slots for tenant in slot.tenants}

    @property
    def backup_dir(self) -> Path:
        """Where this server keeps its slots' backups."""
        return self.backups.dir or self.data_dir / "backups"

    def is_voter(self, name: str) -> bool:
        return name in self.voters

    def digest(self) -> str:
        """sha256 of everything but secrets and local paths: equal digests mean agents agree."""
        local: dict[str, Any] = {"secrets": True, "data_dir": True, "backups": {"dir"}}
        shared = self.model_dump(mode="json", exclude=local)
        canonical = json.dumps(shared, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping (merge keys aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_line: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first_line[key]})",
                    key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> object:
    """The YAML document in `text`; ConfigError with line and column if it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_message(exc)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"invalid YAML: {exc}"]) from exc


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    context = ""
    if exc.context and exc.context_mark:
        context = f" ({exc.context} on line {exc.context_mark.line + 1})"
    return f"{where}{exc.problem or 'invalid YAML'}{context}"


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> ClusterConfig:
    """Read, parse and validate a config file; ConfigError lists every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(["cannot read the file: it is not UTF-8 text"]) from exc
    return parse_config(parse_yaml(text), path.parent, os.environ if env is None else env)


def parse_config(data: object, base_dir: Path, env: Mapping[str, str]) -> ClusterConfig:
    """Validate an already-parsed YAML document; relative paths are taken from `base_dir`."""
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError([f"(top level): expected a mapping of keys, got {got}"])
    try:
        return ClusterConfig.model_validate(data, context={"base_dir": base_dir, "env": env})
    except ValidationError as exc:
        raise ConfigError(error_lines(exc)) from None
