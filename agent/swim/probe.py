"""One probe in flight and the report it concludes with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ProbeKind = Literal["periodic", "confirm"]
HelperResult = Literal["ack", "timeout", "no_answer"]


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What one agent concluded about `target` at monotonic time `at`.

    `incarnation` is the highest incarnation of `target` this agent has seen. `evidence` is
    JSON-safe: {"direct": "ack"|"timeout", "indirect": {helper: "ack"|"timeout"|"no_answer"},
    "rtt_ms": float|None, "awareness": int, "kind": "periodic"|"confirm"}. A helper is "timeout"
    when we heard from it during the probe but it relayed no ack (it was up; the target did not
    answer it either), "no_answer" when we heard nothing from it at all.
    """

    target: str
    incarnation: int
    reachable: bool
    at: float
    evidence: dict[str, object]


@dataclass(slots=True)
class Probe:
    """Our own probe of `target`: direct ping first, helpers after `timeout_deadline`."""

    target: str
    seq: int
    kind: ProbeKind
    started: float
    incarnation: int
    timeout_deadline: float
    end_deadline: float
    direct_acked: bool = False
    indirect_sent: bool = False
    helpers: dict[str, HelperResult] = field(default_factory=dict)
    rtt_ms: float | None = None
    # Which confirm probe in a row this is (1 for every other probe).
    attempt: int = 1

    @property
    def acked(self) -> bool:
        """Someone (the target or a helper) vouched for the target during this probe."""
        return self.rtt_ms is not None

    def note_ack(self, now: float, helper: str | None) -> bool:
        """Record an ack (direct when `helper` is None); True if it is this probe's first."""
        if helper is None:
            self.direct_acked = True
        else:
            self.helpers[helper] = "ack"
        first = self.rtt_ms is None
        if first:
            self.rtt_ms = round((now - self.started) * 1000.0, 3)
        return first

    def note_heard(self, helper: str) -> None:
        """A helper that is still silent about the target showed it is up."""
        if self.helpers.get(helper) == "no_answer":
            self.helpers[helper] = "timeout"

    def report(self, incarnation: int, reachable: bool, now: float, awareness: int) -> ProbeReport:
        evidence: dict[str, object] = {
            "direct": "ack" if self.direct_acked else "timeout",
            "indirect": dict(self.helpers),
            "rtt_ms": self.rtt_ms,
            "awareness": awareness,
            "kind": self.kind,
        }
        if self.kind == "confirm":
            evidence["attempt"] = self.attempt
        return ProbeReport(self.target, incarnation, reachable, now, evidence)
