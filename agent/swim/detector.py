"""The SWIM failure detector: a pure, synchronous state machine driven by `tick` and `receive`."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.swim.awareness import Awareness
from agent.swim.messages import Ack, Message, Outgoing, Ping, PingReq
from agent.swim.probe import Probe, ProbeKind, ProbeReport
from agent.swim.rotation import ProbeRotation

__all__ = ["Detector", "DetectorConfig", "Outgoing", "ProbeReport"]

# Deadlines are sums of decimal durations; a nanosecond of slack keeps 0.1 * 3 from missing 0.3.
_SLACK_S = 1e-9

# Round trips kept for a runner that does not take them (at most this many, then dropped).
_MAX_ROUND_TRIPS = 1024

_STATS = (
    "probes_sent",
    "acks",
    "late_acks",
    "timeouts",
    "indirect_requests",
    "relays",
    "relayed_acks",
    "relay_timeouts",
    "relays_dropped",
    "pings_answered",
    "confirms",
    "confirm_retries",
    "unreachable",
    "suppressed_reports",
    "lag_penalties",
    "ignored",
)


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Probe timing (unscaled; awareness stretches it) and limits."""

    probe_interval_s: float = 0.2
    probe_timeout_s: float = 0.1
    indirect_probes: int = 3
    awareness_max: int = 8
    awareness_suppress_at: int | None = None
    lag_threshold_s: float = 0.05
    relay_timeout_s: float | None = None
    max_relays: int = 256
    max_confirms: int = 64
    # A witness reports a suspected server unreachable only after this many confirm probes in
    # a row found nobody to vouch for it (each direct plus indirect). On a lossy network one
    # probe fails often enough that a majority of single probes can be unlucky together.
    confirm_attempts: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout_s < self.probe_interval_s:
            raise ValueError("probe_timeout_s must be positive and below probe_interval_s")
        if self.indirect_probes < 0:
            raise ValueError("indirect_probes must not be negative")
        if self.relay_timeout_s is not None and self.relay_timeout_s <= 0:
            raise ValueError("relay_timeout_s must be positive")
        if self.max_relays < 1:
            raise ValueError("max_relays must be at least 1")
        if self.max_confirms < 1:
            raise ValueError("max_confirms must be at least 1")
        if self.confirm_attempts < 1:
            raise ValueError("confirm_attempts must be at least 1")


@dataclass(frozen=True, slots=True)
class _Relay:
    """A ping we sent to `target` for `requester`'s probe number `requester_seq`."""

    requester: str
    requester_seq: int
    target: str
    deadline: float


class Detector:
    """Decides which peer to probe when, and what the answers (or silences) mean.

    No I/O, no clock: `now` is a monotonic instant passed in, randomness comes from `rng`, and
    every method returns the messages to send. Conclusions accumulate for `take_reports`.
    """

    def __init__(
        self, me: str, config: DetectorConfig, rng: random.Random, incarnation: int = 0
    ) -> None:
        self._me = me
        self._config = config
        self._rng = rng
        self._incarnation = incarnation
        self.awareness = Awareness(
            config.awareness_max, config.awareness_suppress_at, config.lag_threshold_s
        )
        self._rotation = ProbeRotation(rng)
        self._seq = 0
        self._current: Probe | None = None
        self._probes: dict[int, Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._seen: dict[str, int] = {}
        self._reports: list[ProbeReport] = []
        self._round_trips: list[tuple[str, float]] = []
        self._last_lag_penalty = float("-inf")
        self._stats: Counter[str] = Counter(dict.fromkeys(_STATS, 0))

    @property
    def me(self) -> str:
        return self._me

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def members(self) -> frozenset[str]:
        return self._rotation.members

    @property
    def stats(self) -> dict[str, int]:
        """Counters since construction (a copy)."""
        return dict(self._stats)

    def set_incarnation(self, n: int) -> None:
        """Our own incarnation, carried in every Ping and Ack; it never goes down."""
        if n < self._incarnation:
            raise ValueError(f"incarnation may not go down ({self._incarnation} -> {n})")
        self._incarnation = n

    def incarnation_of(self, name: str) -> int:
        """The highest incarnation seen from `name` (0 if none yet)."""
        return self._seen.get(name, 0)

    def seen_incarnations(self) -> Mapping[str, int]:
        return dict(self._seen)

    def set_members(
        self, names: Iterable[str], incarnations: Mapping[str, int] | None = None
    ) -> None:
        """The servers that may be probed (committed membership); this agent is left out.
        `incarnations` are the committed ones: a report must name at least the incarnation the
        cluster knows, or it is stale on arrival (a server that crashed right after joining or
        refuting would never be judged)."""
        self._rotation.set_members(name for name in names if name != self._me)
        for name, incarnation in (incarnations or {}).items():
            if name != self._me:
                self._note_incarnation(name, incarnation)

    def take_reports(self) -> list[ProbeReport]:
        """Conclusions since the last call, oldest first."""
        reports, self._reports = self._reports, []
        return reports

    def take_round_trips(self) -> list[tuple[str, float]]:
        """(target, seconds) of each direct ack of our own probes since the last call."""
        taken, self._round_trips = self._round_trips, []
        return taken

    def note_loop_lag(self, lag_s: float, now: float) -> None:
        """Our loop woke `lag_s` late; at most one awareness point per probe interval."""
        if now - self._last_lag_penalty < self._config.probe_interval_s:
            return
        if self.awareness.note_lag(lag_s):
            self._last_lag_penalty = now
            self._stats["lag_penalties"] += 1

    def tick(self, now: float) -> list[Outgoing]:
        """Advance deadlines and start the next probe period when the current one is over."""
        self._expire_relays(now)
        out: list[Outgoing] = []
        for probe in list(self._probes.values()):
            out.extend(self._advance(probe, now))
        if self._current is None:
            target = self._rotation.next()
            if target is not None:
                self._current = self._open(target, "periodic", now)
                out.append(self._ping(self._current))
        return out

    def next_deadline(self) -> float:
        """The earliest instant at which `tick` has something to do (-inf: now; inf: never
        until a message arrives or membership changes). Lets a simulation skip idle ticks."""
        if self._current is None and len(self._rotation):
            return float("-inf")
        deadlines = [relay.deadline for relay in self._relays.values()]
        for probe in self._probes.values():
            pending_indirect = not probe.acked and not probe.indirect_sent
            deadlines.append(probe.timeout_deadline if pending_indirect else probe.end_deadline)
        return min(deadlines, default=float("inf")) - _SLACK_S

    def confirm(self, target: str, now: float) -> list[Outgoing]:
        """Probe `target` now, out of band; a report follows either way once it is decided
        (except an unreachable verdict while awareness suppresses accusations).

        A confirm already in flight for `target` is not duplicated. Raises ValueError for ourself.
        """
        if target == self._me:
            raise ValueError("an agent cannot confirm itself")
        confirms = [p for p in self._probes.values() if p.kind == "confirm"]
        if any(p.target == target for p in confirms) or len(confirms) >= self._config.max_confirms:
            return []
        self._stats["confirms"] += 1
        return [self._ping(self._open(target, "confirm", now))]

    def receive(self, message: Message, now: float) -> list[Outgoing]:
        """Handle one authenticated message; returns the replies."""
        if message.sender == self._me:
            self._stats["ignored"] += 1
            return []
        for probe in self._probes.values():
            probe.note_heard(message.sender)
        if isinstance(message, Ping):
            return self._on_ping(message)
        if isinstance(message, Ack):
            return self._on_ack(message, now)
        return self._on_ping_req(message, now)

    # ------------------------------------------------------------------ probes we run

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _open(self, target: str, kind: ProbeKind, now: float) -> Probe:
        probe = Probe(
            target=target,
            seq=self._next_seq(),
            kind=kind,
            started=now,
            incarnation=self.incarnation_of(target),
            timeout_deadline=now + self.awareness.scale(self._config.probe_timeout_s),
            end_deadline=now + self.awareness.scale(self._config.probe_interval_s),
        )
        self._probes[probe.seq] = probe
        return probe

    def _ping(self, probe: Probe) -> Outgoing:
        self._stats["probes_sent"] += 1
        return Outgoing(probe.target, Ping(probe.seq, self._me, probe.target, self._incarnation))

    def _advance(self, probe: Probe, now: float) -> list[Outgoing]:
        if probe.acked:
            if now + _SLACK_S >= probe.end_deadline:
                self._close(probe)
            return []
        if not probe.indirect_sent:
            if now + _SLACK_S >= probe.timeout_deadline:
                return self._ask_helpers(probe, now)
            return []
        if now + _SLACK_S >= probe.end_deadline:
            if probe.kind == "confirm" and probe.attempt < self._config.confirm_attempts:
                return self._confirm_again(probe, now)
            self._conclude_unreachable(probe, now)
        return []

    def _confirm_again(self, probe: Probe, now: float) -> list[Outgoing]:
        """A confirm probe found nobody to vouch for the target: try again before reporting,
        about the same life of the target as the first attempt."""
        self._close(probe)
        self._stats["confirm_retries"] += 1
        again = self._open(probe.target, "confirm", now)
        again.attempt, again.incarnation = probe.attempt + 1, probe.incarnation
        return [self._ping(again)]

    def _ask_helpers(self, probe: Probe, now: float) -> list[Outgoing]:
        """The direct probe timed out: ask up to k others to try, and give them the rest of the
        period (at least the nominal indirect window, even if this tick came late)."""
        self._stats["timeouts"] += 1
        probe.indirect_sent = True
        window_s = self._config.probe_interval_s - self._config.probe_timeout_s
        probe.end_deadline = max(probe.end_deadline, now + self.awareness.scale(window_s))
        helpers = self._rotation.sample(self._config.indirect_probes, exclude=probe.target)
        probe.helpers = dict.fromkeys(helpers, "no_answer")
        self._stats["indirect_requests"] += len(helpers)
        return [Outgoing(h, PingReq(probe.seq, self._me, probe.target)) for h in helpers]

    def _close(self, probe: Probe) -> None:
        del self._probes[probe.seq]
        if probe is self._current:
            self._current = None

    def _conclude_unreachable(self, probe: Probe, now: float) -> None:
        """Nobody vouched for the target: count it against our own health, then accuse unless we
        are too unhealthy (or the target left the membership meanwhile)."""
        self._close(probe)
        score, suppressed = self.awareness.score, self.awareness.suppressed
        self.awareness.apply_delta(1)
        if probe.kind == "periodic" and probe.target not in self._rotation.members:
            return
        if suppressed:
            self._stats["suppressed_reports"] += 1
            return
        self._stats["unreachable"] += 1
        # The life we started probing: a refutation that arrived meanwhile is not accused.
        report = probe.report(probe.incarnation, False, now, score)
        self._reports.append(report)

    def _on_own_ack(self, probe: Probe, ack: Ack, now: float, helper: str | None) -> None:
        self._note_incarnation(probe.target, ack.incarnation)
        direct_before = probe.direct_acked
        if probe.note_ack(now, helper):
            self._stats["acks"] += 1
            if helper is None and len(self._round_trips) < _MAX_ROUND_TRIPS:
                self._round_trips.append((probe.target, now - probe.started))
        if helper is None and not direct_before:
            self.awareness.apply_delta(-1)
        if probe.kind == "confirm":
            self._close(probe)
            report = probe.report(
                self.incarnation_of(probe.target), True, now, self.awareness.score
            )
            self._reports.append(report)

    # ------------------------------------------------------------------ messages from peers

    def _note_incarnation(self, name: str, incarnation: int) -> None:
        if incarnation > self._seen.get(name, -1):
            self._seen[name] = incarnation

    def _on_ping(self, ping: Ping) -> list[Outgoing]:
        if ping.target != self._me:
            self._stats["ignored"] += 1
            return []
        self._note_incarnation(ping.sender, ping.incarnation)
        self._stats["pings_answered"] += 1
        ack = Ack(ping.seq, self._me, ping.sender, self._incarnation, ping.on_behalf_of)
        return [Outgoing(ping.sender, ack)]

    def _on_ack(self, ack: Ack, now: float) -> list[Outgoing]:
        if ack.target != self._me:
            self._stats["ignored"] += 1
            return []
        probe = self._probes.get(ack.seq)
        if probe is not None and ack.sender == probe.target and ack.on_behalf_of is None:
            self._on_own_ack(probe, ack, now, helper=None)
            return []
        if probe is not None and ack.sender in probe.helpers and ack.on_behalf_of == probe.target:
            self._on_own_ack(probe, ack, now, helper=ack.sender)
            return []
        relay = self._relays.get(ack.seq)
        if relay is not None and ack.sender == relay.target and ack.on_behalf_of == relay.requester:
            return self._forward(ack.seq, relay, ack)
        if ack.on_behalf_of is None:
            self._note_incarnation(ack.sender, ack.incarnation)
        self._stats["late_acks"] += 1
        return []

    # ------------------------------------------------------------------ probes we run for others

    def _on_ping_req(self, req: PingReq, now: float) -> list[Outgoing]:
        if req.target in (self._me, req.sender) or req.target not in self._rotation.members:
            self._stats["ignored"] += 1
            return []
        if any(
            r.requester == req.sender and r.requester_seq == req.seq for r in self._relays.values()
        ):
            self._stats["ignored"] += 1
            return []
        if len(self._relays) >= self._config.max_relays:
            self._stats["relays_dropped"] += 1
            return []
        ttl_s = self._config.relay_timeout_s or self._config.probe_interval_s
        seq = self._next_seq()
        self._relays[seq] = _Relay(req.sender, req.seq, req.target, now + ttl_s)
        self._stats["relays"] += 1
        ping = Ping(seq, self._me, req.target, self._incarnation, on_behalf_of=req.sender)
        return [Outgoing(req.target, ping)]

    def _forward(self, seq: int, relay: _Relay, ack: Ack) -> list[Outgoing]:
        del self._relays[seq]
        self._note_incarnation(ack.sender, ack.incarnation)
        self._stats["relayed_acks"] += 1
        forwarded = Ack(
            relay.requester_seq, self._me, relay.requester, ack.incarnation, relay.target
        )
        return [Outgoing(relay.requester, forwarded)]

    def _expire_relays(self, now: float) -> None:
        expired = [seq for seq, relay in self._relays.items() if now + _SLACK_S >= relay.deadline]
        for seq in expired:
            del self._relays[seq]
        self._stats["relay_timeouts"] += len(expired)
