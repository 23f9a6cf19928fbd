"""This server's resource health as pure data: samples and thresholds in, levels, changes and
at most one self-drain per critical episode out. No I/O, no clock: `now` is a parameter."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from agent.config_resources import RESOURCES, Resource, Thresholds

LevelName = Literal["ok", "warning", "critical"]
LEVELS: Final[tuple[LevelName, ...]] = ("ok", "warning", "critical")
# armed: no self-drain in this critical episode yet; due: one should be committed now;
# requested: it was committed (or the server was draining anyway). Re-armed only once no
# drain condition is critical any more: an operator returns a drained server, never the agent.
DrainState = Literal["armed", "due", "requested"]
UNITS: Final[Mapping[Resource, str]] = {
    "disk": "% used",
    "memory": "% used",
    "fds": "% of the open-file limit",
    "steal": "% of CPU time stolen",
    "load": "load per CPU",
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement; `value` None when it could not be taken (`detail` says why)."""

    value: float | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Condition:
    """One resource's level, entered at the monotonic instant `since`."""

    resource: Resource
    level: LevelName
    value: float | None
    since: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """A condition that moved to another level in this evaluation."""

    resource: Resource
    before: LevelName
    after: LevelName
    value: float | None
    detail: str

    @property
    def degraded(self) -> bool:
        return LEVELS.index(self.after) > LEVELS.index(self.before)


@dataclass(frozen=True, slots=True)
class DrainRequest:
    """This server should drain itself: the reason for the DrainServer command, with evidence."""

    reason: str
    evidence: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Health:
    """Every condition of this server, and where it stands with its own drain."""

    conditions: Mapping[Resource, Condition] = field(default_factory=dict)
    drain: DrainState = "armed"
    drain_reason: str | None = None

    def requested(self) -> Health:
        """The drain was committed (or the server was draining already): not again."""
        return replace(self, drain="requested")


@dataclass(frozen=True, slots=True)
class Evaluation:
    health: Health
    changes: tuple[Change, ...]
    # Submit this DrainServer now (returned on every evaluation until `Health.requested`).
    drain: DrainRequest | None


def level_for(value: float | None, limits: Thresholds, before: LevelName) -> LevelName:
    """The level of `value`: a threshold is entered when reached and left once the value is
    `hysteresis` below it; an unmeasured value keeps the level it had."""
    if value is None:
        return before
    rank = LEVELS.index(before)
    if value >= limits.critical or (rank >= 2 and value > limits.critical - limits.hysteresis):
        return "critical"
    if value >= limits.warning or (rank >= 1 and value > limits.warning - limits.hysteresis):
        return "warning"
    return "ok"


def describe(resource: Resource, value: float | None, limits: Thresholds) -> str:
    """`disk 96.5 % used (warning 85, critical 95)`, in the resource's unit."""
    shown = "not measured" if value is None else f"{value:.1f} {UNITS[resource]}"
    return f"{resource} {shown} (warning {limits.warning:g}, critical {limits.critical:g})"


def evaluate(
    samples: Mapping[Resource, Sample],
    limits: Mapping[Resource, Thresholds],
    previous: Health,
    now: float,
    drain_on: Collection[Resource],
    drain_after_s: float,
) -> Evaluation:
    """One sampling round. A drain is due when a `drain_on` condition has been critical for
    `drain_after_s`, and none was requested in this critical episode."""
    conditions: dict[Resource, Condition] = {}
    changes: list[Change] = []
    for resource in RESOURCES:
        sample = samples.get(resource, Sample(None, "not measured"))
        before = previous.conditions.get(resource, Condition(resource, "ok", None, now))
        level = level_for(sample.value, limits[resource], before.level)
        since = before.since if level == before.level else now
        conditions[resource] = Condition(resource, level, sample.value, since, sample.detail)
        if level != before.level:
            changes.append(Change(resource, before.level, level, sample.value, sample.detail))
    health = _drain_state(conditions, limits, previous, now, drain_on, drain_after_s)
    request = None
    if health.drain == "due" and health.drain_reason is not None:
        request = DrainRequest(health.drain_reason, _evidence(conditions, limits, drain_on, now))
    return Evaluation(health, tuple(changes), request)


def _drain_state(
    conditions: dict[Resource, Condition],
    limits: Mapping[Resource, Thresholds],
    previous: Health,
    now: float,
    drain_on: Collection[Resource],
    drain_after_s: float,
) -> Health:
    critical = [c for r, c in conditions.items() if r in drain_on and c.level == "critical"]
    if not critical:
        return Health(conditions, "armed", None)
    if previous.drain != "armed":
        return Health(conditions, previous.drain, previous.drain_reason)
    held = [c for c in critical if now - c.since >= drain_after_s]
    if not held:
        return Health(conditions, "armed", None)
    words = "; ".join(_why(c, limits[c.resource], now) for c in held)
    return Health(conditions, "due", f"this server cannot keep serving safely: {words}")


def _why(condition: Condition, limits: Thresholds, now: float) -> str:
    held_s = now - condition.since
    text = f"{describe(condition.resource, condition.value, limits)} for {held_s:.1f} s"
    return f"{text}: {condition.detail}" if condition.detail else text


def _evidence(
    conditions: Mapping[Resource, Condition],
    limits: Mapping[Resource, Thresholds],
    drain_on: Collection[Resource],
    now: float,
) -> dict[str, Any]:
    return {
        "resources": {
            r: {
                "level": c.level,
                "value": None if c.value is None else round(c.value, 3),
                "unit": UNITS[r],
                "critical": limits[r].critical,
                "for_s": round(now - c.since, 3),
                "detail": c.detail,
            }
            for r, c in conditions.items()
            if r in drain_on and c.level == "critical"
        }
    }
