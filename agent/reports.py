"""Traffic reports: every edge's per-interval counts, signed, summed per tenant by the leader.

Wire format (the MQTT payload and the `POST /v1/traffic` body alike), as the SWIM datagrams:
the 32-byte HMAC-SHA256 tag of the body, then the body, compact JSON with sorted keys:

    {"at":1700000000.0,"boot":8123,"cluster":"demo","interval_s":1.0,"seq":7,"server":"m1",
     "tenants":{"acme":[requests,errors,bytes,inflight_peak,refused]},"v":1}

The key is derived from the Raft password (`report_key`), never the password itself. Decoding
checks the size, then the tag, and parses only authenticated bytes, strictly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, TypeVar

import structlog
from aiohttp import web

from agent.config_rules import NAME_RE, TENANT_RE
from agent.traffic_counts import TenantCounts
from healer.throttle import TenantRate

MAX_REPORT_BYTES: Final = 256 * 1024
MAX_TENANTS: Final = 2000
MAX_INTERVAL_S: Final = 3600.0
TAG_BYTES: Final = 32
VERSION: Final = 1
_MAX_INT: Final = 2**63 - 1
_COUNT_FIELDS: Final = tuple(f.name for f in fields(TenantCounts))
_BODY_FIELDS: Final = frozenset(
    {"v", "cluster", "server", "boot", "seq", "at", "interval_s", "tenants"}
)
_KEY_SALT: Final = b"moonwatch/reports"
_KEY_INFO: Final = b"moonwatch/reports/traffic-key/v1"

_log = structlog.get_logger("moonwatch.reports")
_T = TypeVar("_T")

ReportReason = Literal[
    "too_big",
    "malformed",
    "bad_mac",
    "wrong_cluster",
    "too_many_tenants",
    "bad_tenant",
    "unknown_server",
]


class ReportError(Exception):
    """A report we will not use; `reason` (one of `ReportReason`) is good for a counter."""

    def __init__(self, reason: ReportReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: ReportReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TrafficReport:
    """One edge's counts over `interval_s` seconds ending at wall time `at`. `seq` grows with
    every report of one agent run; `boot` is drawn at random when the agent starts."""

    cluster: str
    server: str
    seq: int
    boot: int
    at: float
    interval_s: float
    tenants: dict[str, TenantCounts]


def report_key(raft_password: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the Raft password with the reports' own context: 32 bytes."""
    if not raft_password:
        raise ValueError("raft_password must not be empty")
    prk = hmac.new(_KEY_SALT, raft_password.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(prk, _KEY_INFO + b"\x01", hashlib.sha256).digest()


def encode_report(report: TrafficReport, key: bytes) -> bytes:
    """tag || body; ReportError if the report is not one `decode_report` would accept."""
    _check(report)
    body = {
        "v": VERSION,
        "cluster": report.cluster,
        "server": report.server,
        "boot": report.boot,
        "seq": report.seq,
        "at": float(report.at),
        "interval_s": float(report.interval_s),
        "tenants": {
            name: [getattr(counts, f) for f in _COUNT_FIELDS]
            for name, counts in report.tenants.items()
        },
    }
    payload = _ENCODER.encode(body).encode("utf-8")
    data = hmac.digest(key, payload, "sha256") + payload
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError("too_big", f"{len(data)} bytes, at most {MAX_REPORT_BYTES}")
    return data


def decode_report(data: bytes, key: bytes, cluster: str) -> TrafficReport:
    """The report in `data`, or ReportError saying why not (nothing else is raised)."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError("too_big", f"{len(data)} bytes, at most {MAX_REPORT_BYTES}")
    if len(data) <= TAG_BYTES:
        raise ReportError("malformed", "shorter than the tag")
    tag, payload = bytes(data[:TAG_BYTES]), bytes(data[TAG_BYTES:])
    if not hmac.compare_digest(tag, hmac.digest(key, payload, "sha256")):
        raise ReportError("bad_mac")
    try:
        body = _DECODER.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReportError("malformed", "not JSON") from exc
    return _parse(body, cluster)


def _parse(body: object, cluster: str) -> TrafficReport:
    if not isinstance(body, dict):
        raise ReportError("malformed", "not an object")
    if set(body) != _BODY_FIELDS:
        raise ReportError("malformed", "wrong fields")
    if type(body["v"]) is not int or body["v"] != VERSION:
        raise ReportError("malformed", "unknown version")
    if body["cluster"] != cluster:
        raise ReportError("wrong_cluster", f"{str(body['cluster'])[:64]!r}, not {cluster!r}")
    tenants = body["tenants"]
    if not isinstance(tenants, dict):
        raise ReportError("malformed", "tenants: expected an object")
    return TrafficReport(
        cluster=cluster,
        server=_name(body["server"]),
        boot=_count(body["boot"], "boot"),
        seq=_count(body["seq"], "seq"),
        at=_seconds(body["at"], "at"),
        interval_s=_interval(body["interval_s"]),
        tenants=_tenants(tenants, _tenant_counts),
    )


def _check(report: TrafficReport) -> None:
    """The checks of `_parse`, on a report about to be sent."""
    if not isinstance(report.cluster, str) or not NAME_RE.fullmatch(report.cluster):
        raise ReportError("malformed", "cluster: expected a name")
    _name(report.server)
    _count(report.boot, "boot")
    _count(report.seq, "seq")
    _seconds(report.at, "at")
    _interval(report.interval_s)
    _tenants(report.tenants, _checked_counts)


def _tenants(
    tenants: Mapping[Any, _T], counts: Callable[[_T], TenantCounts]
) -> dict[str, TenantCounts]:
    if len(tenants) > MAX_TENANTS:
        raise ReportError("too_many_tenants", f"{len(tenants)}, at most {MAX_TENANTS}")
    parsed: dict[str, TenantCounts] = {}
    for name, value in tenants.items():
        if not isinstance(name, str) or not TENANT_RE.fullmatch(name):
            raise ReportError("bad_tenant", f"{str(name)[:64]!r} is not a tenant label")
        parsed[name] = counts(value)
    return parsed


def _tenant_counts(value: object) -> TenantCounts:
    if not isinstance(value, list) or len(value) != len(_COUNT_FIELDS):
        raise ReportError("malformed", f"tenant counts: expected {len(_COUNT_FIELDS)} integers")
    return TenantCounts(*(_count(v, f) for v, f in zip(value, _COUNT_FIELDS, strict=True)))


def _checked_counts(value: TenantCounts) -> TenantCounts:
    if not isinstance(value, TenantCounts):
        raise ReportError("malformed", "tenant counts: expected TenantCounts")
    for name in _COUNT_FIELDS:
        _count(getattr(value, name), name)
    return value


def _count(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise ReportError("malformed", f"{what}: expected a non-negative integer")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ReportError("malformed", "server: expected a server name")
    return value


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError("malformed", f"{what}: expected a number")
    if not math.isfinite(value) or value < 0:
        raise ReportError("malformed", f"{what}: expected a finite non-negative number")
    return float(value)


def _interval(value: object) -> float:
    seconds = _seconds(value, "interval_s")
    if not 0 < seconds <= MAX_INTERVAL_S:
        raise ReportError("malformed", f"interval_s: expected 0 < seconds <= {MAX_INTERVAL_S}")
    return seconds


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("duplicate key")
    return body


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def top_tenants(
    counts: Mapping[str, TenantCounts], limit: int = MAX_TENANTS
) -> dict[str, TenantCounts]:
    """The `limit` tenants with the most requests (ties by name); the rest are left out."""
    if len(counts) <= limit:
        return dict(counts)
    ranked = sorted(counts.items(), key=lambda item: (-item[1].requests, item[0]))
    return dict(ranked[:limit])


# ---------------------------------------------------------------- aggregation


@dataclass(frozen=True, slots=True)
class _Held:
    report: TrafficReport
    arrived: float  # monotonic


class Aggregator:
    """The latest report of each known server, summed into cluster-wide rates per tenant.

    Bounded: one report per server named at construction; reports from others are refused.
    Within one `boot` only a higher `seq` replaces the held report (duplicates, replays and
    reordered reports are ignored); a report of another boot replaces it when it is newer by
    its `at`, or when the held report has gone stale. With `wall`, reports whose `at` is more
    than `max_skew_s` from our wall clock are refused too, which bounds replays across boots.
    """

    def __init__(
        self,
        monotonic: Callable[[], float],
        stale_after_s: float,
        servers: Collection[str],
        *,
        wall: Callable[[], float] | None = None,
        max_skew_s: float = 30.0,
    ) -> None:
        if stale_after_s <= 0 or max_skew_s <= 0:
            raise ValueError("stale_after_s and max_skew_s must be positive")
        self._monotonic = monotonic
        self._stale_after_s = stale_after_s
        self._servers = frozenset(servers)
        self._wall = wall
        self._max_skew_s = max_skew_s
        self._latest: dict[str, _Held] = {}

    def knows(self, server: str) -> bool:
        return server in self._servers

    def add(self, report: TrafficReport) -> bool:
        """Keep `report` if it is the newest of its server; False when it was not kept."""
        if report.server not in self._servers:
            return False
        if self._wall is not None and abs(report.at - self._wall()) > self._max_skew_s:
            return False
        now = self._monotonic()
        held = self._latest.get(report.server)
        if held is not None and not self._replaces(held, report, now):
            return False
        self._latest[report.server] = _Held(report, now)
        return True

    def _replaces(self, held: _Held, report: TrafficReport, now: float) -> bool:
        if report.boot == held.report.boot:
            return report.seq > held.report.seq
        return report.at > held.report.at or now - held.arrived > self._stale_after_s

    def fresh(self) -> dict[str, TrafficReport]:
        """Server -> its report, for every server that reported within `stale_after_s`."""
        now = self._monotonic()
        return {
            server: held.report
            for server, held in self._latest.items()
            if now - held.arrived <= self._stale_after_s
        }

    def rates(self) -> dict[str, TenantRate]:
        """Tenant -> its rates summed over every server with a fresh report."""
        sums: dict[str, list[float]] = {}
        for report in self.fresh().values():
            for tenant, c in report.tenants.items():
                acc = sums.setdefault(tenant, [0.0, 0.0, 0.0, 0.0, 0.0])
                acc[0] += c.requests / report.interval_s
                acc[1] += c.errors / report.interval_s
                acc[2] += c.bytes / report.interval_s
                acc[3] += c.inflight_peak
                acc[4] += 1
        return {
            tenant: TenantRate(
                rps=rps, errors_ps=eps, bytes_ps=bps, concurrent=int(conc), edges=int(edges)
            )
            for tenant, (rps, eps, bps, conc, edges) in sorted(sums.items())
        }


# ---------------------------------------------------------------- intake


@dataclass
class IntakeStats:
    """What arrived from other agents: kept, ignored as not newer, rejected by reason."""

    accepted: int = 0
    ignored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        first = reason not in self.rejected
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if first:
            _log.warning("traffic_report_rejected", reason=reason, note="logged once per reason")


class ReportIntake:
    """Verifies incoming report bytes and hands good reports to the aggregator; counts all."""

    def __init__(
        self,
        aggregator: Aggregator,
        key: bytes,
        cluster: str,
        stats: IntakeStats | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.stats = stats if stats is not None else IntakeStats()
        self._key = key
        self._cluster = cluster

    def admit(self, data: bytes) -> bool:
        """True when the report was kept, False when it was valid but not newer; ReportError
        (counted) when it is not a valid report of a known server."""
        try:
            report = decode_report(data, self._key, self._cluster)
            if not self.aggregator.knows(report.server):
                raise ReportError("unknown_server", report.server)
        except ReportError as exc:
            self.stats.reject(exc.reason)
            raise
        kept = self.aggregator.add(report)
        if kept:
            self.stats.accepted += 1
        else:
            self.stats.ignored += 1
        return kept

    def offer(self, data: bytes) -> bool:
        """`admit` that never raises: for the MQTT subscription."""
        try:
            return self.admit(data)
        except ReportError:
            return False


_STATUS_OF: Final[dict[str, int]] = {"too_big": 413, "bad_mac": 403}


def traffic_handler(
    aggregator: Aggregator, key: bytes, cluster: str, stats: IntakeStats | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of `POST /v1/traffic`: 204 when the report is valid (kept or not
    newer), 413 when the body is over MAX_REPORT_BYTES, 403 on a bad tag, else 400; errors
    are JSON {"error", "reason", "status"}."""
    intake = ReportIntake(aggregator, key, cluster, stats)

    async def handle(request: web.Request) -> web.Response:
        try:
            data = await _read_capped(request, MAX_REPORT_BYTES)
        except web.RequestPayloadError:  # e.g. a Content-Encoding the bytes do not follow
            intake.stats.reject("malformed")
            unreadable = _error(400, "malformed", "the body could not be read")
            unreadable.force_close()  # the rest of the stream cannot be read either
            return unreadable
        if data is None:
            intake.stats.reject("too_big")
            return _error(413, "too_big", f"a report has at most {MAX_REPORT_BYTES} bytes")
        try:
            intake.admit(data)
        except ReportError as exc:
            return _error(_STATUS_OF.get(exc.reason, 400), exc.reason, str(exc))
        return web.Response(status=204)

    return handle


async def _read_capped(request: web.Request, cap: int) -> bytes | None:
    """The request body, or None as soon as it is known to be longer than `cap`."""
    if request.content_length is not None and request.content_length > cap:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


def _error(status: int, reason: str, text: str) -> web.Response:
    return web.json_response({"error": text, "reason": reason, "status": status}, status=status)
