"""The cluster configuration: frozen pydantic models loaded from YAML, errors naming key paths."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.config_backups import BackupsConfig
from agent.config_policy import (
    AppConfig as AppConfig,
)
from agent.config_policy import (
    CascadeConfig as CascadeConfig,
)
from agent.config_policy import (
    DefaultLimits as DefaultLimits,
)
from agent.config_policy import (
    DetectionConfig as DetectionConfig,
)
from agent.config_policy import (
    HealingConfig as HealingConfig,
)
from agent.config_policy import (
    MqttConfig as MqttConfig,
)
from agent.config_policy import (
    TenantLimits as TenantLimits,
)
from agent.config_policy import (
    ThrottleConfig as ThrottleConfig,
)
from agent.config_policy import (
    TimingConfig as TimingConfig,
)
from agent.config_resources import ResourcesConfig
from agent.config_rules import (
    cluster_problems,
    duplicate_problems,
    error_lines,
    raise_if_any,
    tenant_problems,
    voter_list_problems,
)
from agent.config_secrets import config_context as _context
from agent.config_secrets import resolve_secret as _resolve_secret
from agent.config_types import (
    DATABASE_SCHEMES as DATABASE_SCHEMES,
)
from agent.config_types import (
    MAX_UPLOAD_MB as MAX_UPLOAD_MB,
)
from agent.config_types import (
    MIN_RAFT_PASSWORD_LEN as MIN_RAFT_PASSWORD_LEN,
)
from agent.config_types import (
    ConfigError as ConfigError,
)
from agent.config_types import (
    DnsName as DnsName,
)
from agent.config_types import (
    DomainLabel as DomainLabel,
)
from agent.config_types import (
    EnvVarName as EnvVarName,
)
from agent.config_types import (
    FileName as FileName,
)
from agent.config_types import (
    FrozenModel as FrozenModel,
)
from agent.config_types import (
    Host as Host,
)
from agent.config_types import (
    Name as Name,
)
from agent.config_types import (
    Port as Port,
)
from agent.config_types import (
    Seconds as Seconds,
)
from agent.config_types import (
    Tenant as Tenant,
)
from agent.config_vip import Interface, VipConfig, vip_problems


class ServerConfig(FrozenModel):
    """One machine in the cluster: where its agent, Raft node, edge and app instances listen."""

    name: Name
    host: Host
    agent_port: Port
    raft_port: Port
    app_port: Port
    edge_port: Port
    role: Literal["active", "spare"]
    domain: DomainLabel = "default"
    # The interface this server puts slots' virtual IPs on; None: each slot's vip.interface.
    vip_interface: Interface | None = None

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


class SlotConfig(FrozenModel):
    """A group of tenants served by one app instance, owned by one active server at a time."""

    name: Name
    owner: Name
    tenants: tuple[Tenant, ...]
    # The slot's data in PostgreSQL (a postgresql:// URL, given like a secret: literally, as
    # `database_url_file` or `database_url_env`); none: SQLite under the slot's data directory.
    database_url_file: FileName | None = None
    database_url_env: EnvVarName | None = None
    database_url: SecretStr | None = Field(default=None, validate_default=True)
    # The address that follows the slot's owner (none: clients reach it through the edges).
    vip: VipConfig | None = None

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


class SecretsConfig(FrozenModel):
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


class ClusterConfig(FrozenModel):
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
    resources: ResourcesConfig = ResourcesConfig()

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

    @field_validator("resources")
    @classmethod
    def _resources(cls, resources: ResourcesConfig, info: ValidationInfo) -> ResourcesConfig:
        path = resources.disk_path
        if path is None or path.is_absolute():
            return resources
        base_dir, _ = _context(info.context)
        return resources.model_copy(update={"disk_path": (base_dir / path).resolve()})

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
        raise_if_any(names + tenant_problems(slots) + vip_problems(slots))
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

    @property
    def disk_path(self) -> Path:
        """Where this server's free disk space is watched (`resources.disk_path`)."""
        return self.resources.disk_path or self.data_dir

    def is_voter(self, name: str) -> bool:
        return name in self.voters

    def digest(self) -> str:
        """sha256 of everything but secrets and local paths: equal digests mean agents agree."""
        local: dict[str, Any] = {
            "secrets": True,
            "data_dir": True,
            "backups": {"dir"},
            "resources": {"disk_path"},
        }
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
