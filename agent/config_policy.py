"""The policy blocks of the cluster configuration: timing, detection, cascade, healing,
throttling, the hosted app and the MQTT broker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    IPvAnyNetwork,
    SecretStr,
    Strict,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.config_rules import (
    raise_if_any,
    timing_problems,
)
from agent.config_secrets import resolve_secret
from agent.config_types import (
    MAX_UPLOAD_MB,
    EnvVarName,
    FileName,
    FrozenModel,
    Host,
    Name,
    Port,
    Seconds,
    Tenant,
)

# A broker login name: no ':' (mosquitto's password file separates with it), no spaces.
MqttUser = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
]


class TimingConfig(FrozenModel):
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


class DetectionConfig(FrozenModel):
    """How servers watch each other and how much agreement a verdict needs."""

    # A verdict needs at least this many distinct observers (and a majority of those eligible).
    min_observers: int = Field(default=2, ge=2, le=50)
    # Helpers asked to probe a server that missed our direct probe.
    indirect_probes: int = Field(default=3, ge=0, le=10)


class CascadeConfig(FrozenModel):
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


class HealingConfig(FrozenModel):
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


class TenantLimits(FrozenModel):
    """What one tenant may use of the whole cluster; a missing key takes the default."""

    rps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    share: float | None = Field(default=None, gt=0, le=1)
    concurrent: int | None = Field(default=None, ge=1)


class DefaultLimits(TenantLimits):
    """The limits of every tenant without an override; null switches a limit off."""

    rps: float | None = Field(default=20.0, gt=0, allow_inf_nan=False)
    share: float | None = Field(default=0.5, gt=0, le=1)
    concurrent: int | None = Field(default=10, ge=1)


class ThrottleConfig(FrozenModel):
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


# A Docker Engine address: a unix socket or plain TCP (put TLS in front with a proxy).
DockerUrl = Annotated[
    str,
    Strict(),
    StringConstraints(max_length=200, pattern=r"^(unix:///\S+|tcp://[A-Za-z0-9.:\[\]-]+)$"),
]
# An image reference: repository[:tag] of lower-case names, as `docker build -t` accepts.
ImageRef = Annotated[
    str,
    Strict(),
    StringConstraints(
        max_length=200, pattern=r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
    ),
]


class DockerConfig(FrozenModel):
    """How the docker driver runs app instances (see agent/driver_docker.py)."""

    url: DockerUrl = "unix:///var/run/docker.sock"
    # Built on each server by `moonwatch image build`; nothing is pulled from a registry.
    image: ImageRef = "moonwatch-app:local"
    memory_mb: int | None = Field(default=None, ge=64, le=1_048_576)
    cpus: float | None = Field(default=None, gt=0, le=1024, allow_inf_nan=False)
    # Docker's own health check of each container (what `docker ps` shows).
    health_interval_s: Seconds = 5.0


class AppConfig(FrozenModel):
    """Settings of the hosted collaboration service, passed to every instance the agent runs."""

    # The largest file a user may upload, in MiB.
    max_upload_mb: int = Field(default=25, ge=1, le=MAX_UPLOAD_MB)
    # What runs each instance: `process` (a child of the agent) or `docker` (a container).
    driver: Literal["process", "docker"] = "process"
    docker: DockerConfig = DockerConfig()


class MqttConfig(FrozenModel):
    """The MQTT broker that carries traffic reports (the agents fall back to HTTP without it)
    and the cluster's events; every connection of the agent logs in with these credentials."""

    host: Host = "127.0.0.1"
    port: Port = 1883
    topic_prefix: Name = "moonwatch"
    # `moonwatch up` starts a local mosquitto on this port for the demo.
    managed: bool = False
    # Login; the password is a secret given like the others (password, password_file or
    # password_env), and only together with a username. Neither: anonymous connections.
    username: MqttUser | None = None
    password_file: FileName | None = None
    password_env: EnvVarName | None = None
    password: SecretStr | None = Field(default=None, validate_default=True)

    @field_validator("password", mode="before")
    @classmethod
    def _resolve_password(cls, literal: object, info: ValidationInfo) -> str | None:
        if "password_file" not in info.data or "password_env" not in info.data:
            return None  # that field's own error is already reported
        file, env_var = info.data["password_file"], info.data["password_env"]
        if literal is None and file is None and env_var is None:
            return None
        value = resolve_secret("password", literal, file, env_var, info.context)
        if not value:
            raise ValueError("is empty")
        return value

    @model_validator(mode="after")
    def _login(self) -> MqttConfig:
        if (self.username is None) != (self.password is None):
            given, missing = (
                ("username", "password") if self.password is None else ("password", "username")
            )
            raise ValueError(f"{given} is given without {missing}: give both or neither")
        return self

    @property
    def login(self) -> tuple[str, str] | None:
        """(username, password) for the broker, or None for anonymous connections."""
        if self.username is None or self.password is None:
            return None
        return self.username, self.password.get_secret_value()
