"""What an edge counts per tenant subdomain in one reporting interval (shared vocabulary of the
edge's counters, the traffic reports and the leader's aggregation)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TenantCounts:
    """One subdomain at one edge over one interval."""

    requests: int = 0
    errors: int = 0  # answers with status >= 500, the edge's own 503s included
    bytes: int = 0  # response bytes sent
    inflight_peak: int = 0  # most requests in flight at once during the interval
    refused: int = 0  # answered 503 by the edge itself (stop, local bucket, concurrency cap)
