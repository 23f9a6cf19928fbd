"""The `resources` block of the cluster configuration: this server's own health thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, Strict, field_validator, model_validator

from agent.config_rules import Problem, raise_if_any
from agent.config_types import FrozenModel, Seconds

Resource = Literal["disk", "memory", "fds", "steal", "load"]
RESOURCES: tuple[Resource, ...] = ("disk", "memory", "fds", "steal", "load")
# What can make a server drain itself: running out of them stops it serving safely.
DRAINABLE: tuple[Resource, ...] = ("disk", "memory", "fds")

Level = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]


class Thresholds(FrozenModel):
    """A condition's levels: `warning` and `critical` are entered when the value reaches them
    and left only once it falls `hysteresis` below them, so a value hovering at a threshold
    does not flap."""

    warning: Level
    critical: Level
    hysteresis: Level = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        problems: list[Problem] = []
        if self.critical < self.warning:
            problems.append(
                (("critical",), f"must be at least warning ({self.warning}), got {self.critical}")
            )
        if self.hysteresis >= self.warning > 0:
            problems.append(
                (
                    ("hysteresis",),
                    f"must be below warning ({self.warning}), got {self.hysteresis}",
                )
            )
        raise_if_any(problems)
        return self


class PercentThresholds(Thresholds):
    """Thresholds of a percentage (0-100)."""

    warning: Annotated[Level, Field(le=100)]
    critical: Annotated[Level, Field(le=100)]
    hysteresis: Annotated[Level, Field(le=100)] = 0.0


class ResourcesConfig(FrozenModel):
    """What the agent watches of its own server with psutil, how often, and when a server
    that cannot keep serving safely drains itself through the cluster."""

    enabled: Annotated[bool, Strict()] = True
    interval_s: Seconds = 5.0
    # A sample that takes longer (disk_usage on a dead NFS mount) counts as unmeasured.
    timeout_s: Seconds = 2.0
    # The file system whose space is watched; None: the data directory. Relative: from the
    # config file's directory.
    disk_path: Path | None = None
    # A critical level of any of these, held for drain_after_s, drains this server (once).
    drain_on: tuple[Literal["disk", "memory", "fds"], ...] = ("disk", "memory")
    drain_after_s: Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)] = 10.0
    disk: PercentThresholds = PercentThresholds(warning=85.0, critical=95.0, hysteresis=2.0)
    memory: PercentThresholds = PercentThresholds(warning=90.0, critical=97.0, hysteresis=2.0)
    fds: PercentThresholds = PercentThresholds(warning=80.0, critical=95.0, hysteresis=5.0)
    steal: PercentThresholds = PercentThresholds(warning=10.0, critical=30.0, hysteresis=3.0)
    load: Thresholds = Thresholds(warning=2.0, critical=4.0, hysteresis=0.5)

    @field_validator("disk_path", mode="before")
    @classmethod
    def _disk_path(cls, value: object) -> object:
        if value is not None and (not isinstance(value, str | Path) or not str(value)):
            raise ValueError("must be a non-empty path (or null for the data directory)")
        return value

    @field_validator("drain_on")
    @classmethod
    def _unique(cls, drain_on: tuple[str, ...]) -> tuple[str, ...]:
        twice = sorted({r for r in drain_on if drain_on.count(r) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once")
        return drain_on

    @model_validator(mode="after")
    def _timing(self) -> ResourcesConfig:
        if self.timeout_s >= self.interval_s:
            raise_if_any(
                [
                    (
                        ("timeout_s",),
                        f"must be below interval_s ({self.interval_s}), got {self.timeout_s}",
                    )
                ]
            )
        return self

    def thresholds(self) -> dict[Resource, Thresholds]:
        """Each condition's thresholds, by resource."""
        return {r: getattr(self, r) for r in RESOURCES}
