"""Building blocks of the cluster configuration: its error, base model and value types."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
)

from agent.config_rules import (
    MAX_PORT,
    check_dns_name,
    check_domain_label,
    check_env_var_name,
    check_host,
    check_name,
    check_tenant,
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


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
