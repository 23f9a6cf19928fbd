"""What the edge keeps per tenant subdomain: request counts, token buckets, the client address."""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final

from agent.traffic_counts import TenantCounts

# X-Forwarded-For: only this much of the header's tail is read, and at most this many entries.
MAX_FORWARDED_CHARS: Final = 2048
MAX_FORWARDED_ENTRIES: Final = 20
# Longer than any textual IP address (IPv6 with a zone, brackets and a port).
_MAX_ADDRESS_CHARS: Final = 64

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(slots=True)
class _Tally:
    """One subdomain's figures for the current interval (mutable, owned by TrafficCounter)."""

    requests: int = 0
    errors: int = 0
    bytes: int = 0
    refused: int = 0
    inflight: int = 0
    inflight_peak: int = 0

    def counted(self) -> bool:
        return bool(self.requests or self.errors or self.bytes or self.refused)

    def counts(self) -> TenantCounts:
        return TenantCounts(
            requests=self.requests,
            errors=self.errors,
            bytes=self.bytes,
            inflight_peak=self.inflight_peak,
            refused=self.refused,
        )


class TrafficCounter:
    """Per-subdomain counts of the current interval, for at most `max_tracked` subdomains.

    The subdomain seen least recently is dropped first when a new one arrives at the cap
    (`evicted` counts the drops), so a flood of distinct names costs bounded memory. Every
    call is O(1) but `take`, which is O(tracked) and runs once per reporting interval.
    """

    def __init__(self, max_tracked: int) -> None:
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1, got {max_tracked}")
        self._max_tracked = max_tracked
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._tallies)

    def _tally(self, subdomain: str) -> _Tally:
        tally = self._tallies.get(subdomain)
        if tally is not None:
            self._tallies.move_to_end(subdomain)
            return tally
        if len(self._tallies) >= self._max_tracked:
            self._tallies.popitem(last=False)
            self.evicted += 1
        tally = self._tallies[subdomain] = _Tally()
        return tally

    def start(self, subdomain: str) -> None:
        """A request of `subdomain` arrived and is now in flight."""
        tally = self._tally(subdomain)
        tally.requests += 1
        tally.inflight += 1
        tally.inflight_peak = max(tally.inflight_peak, tally.inflight)

    def finish(self, subdomain: str, status: int, nbytes: int, refused: bool = False) -> None:
        """A request `start`ed earlier was answered with `status` and `nbytes` of body."""
        tally = self._tally(subdomain)
        tally.inflight = max(0, tally.inflight - 1)
        self._answered(tally, status, nbytes, refused)

    def refuse(self, subdomain: str, status: int, nbytes: int) -> None:
        """A request answered by the edge itself at once, never in flight (not `start`ed)."""
        tally = self._tally(subdomain)
        tally.requests += 1
        self._answered(tally, status, nbytes, refused=True)

    @staticmethod
    def _answered(tally: _Tally, status: int, nbytes: int, refused: bool) -> None:
        tally.errors += status >= 500
        tally.bytes += max(0, nbytes)
        tally.refused += refused

    def inflight(self, subdomain: str) -> int:
        """Requests of `subdomain` in flight at this edge now (does not refresh its recency)."""
        tally = self._tallies.get(subdomain)
        return 0 if tally is None else tally.inflight

    def take(self) -> dict[str, TenantCounts]:
        """The current interval's counts per subdomain; a new interval starts.

        Requests in flight carry over (the new interval's peak starts at them); a subdomain
        with nothing in flight and nothing counted is left out and forgotten.
        """
        taken: dict[str, TenantCounts] = {}
        kept: OrderedDict[str, _Tally] = OrderedDict()
        for subdomain, tally in self._tallies.items():
            if tally.counted() or tally.inflight_peak:
                taken[subdomain] = tally.counts()
            if tally.inflight:
                kept[subdomain] = _Tally(inflight=tally.inflight, inflight_peak=tally.inflight)
        self._tallies = kept
        return taken


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float  # monotonic instant of the last refill


class TokenBuckets:
    """One token bucket per subdomain, for at most `max_tracked` subdomains (LRU, like
    TrafficCounter; a dropped bucket comes back full)."""

    def __init__(self, clock_monotonic: Callable[[], float], max_tracked: int) -> None:
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1, got {max_tracked}")
        self._monotonic = clock_monotonic
        self._max_tracked = max_tracked
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, subdomain: str, rate: float | None, capacity: float) -> float | None:
        """Take one token: None when admitted, else the seconds until a token is there.

        `rate` is tokens per second (None, or not positive: no limit, always admitted);
        the bucket holds `capacity` tokens, at least one, and starts full.
        """
        if rate is None or not rate > 0 or not math.isfinite(rate):
            return None
        capacity = max(1.0, capacity) if math.isfinite(capacity) else 1.0
        now = self._monotonic()
        bucket = self._bucket(subdomain, capacity, now)
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(capacity, bucket.tokens + elapsed * rate)
        bucket.stamp = max(bucket.stamp, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate

    def _bucket(self, subdomain: str, capacity: float, now: float) -> _Bucket:
        bucket = self._buckets.get(subdomain)
        if bucket is not None:
            self._buckets.move_to_end(subdomain)
            return bucket
        if len(self._buckets) >= self._max_tracked:
            self._buckets.popitem(last=False)
            self.evicted += 1
        bucket = self._buckets[subdomain] = _Bucket(tokens=capacity, stamp=now)
        return bucket


def parse_address(text: str) -> IPAddress | None:
    """An IP address written as `1.2.3.4`, `1.2.3.4:port`, `::1` or `[::1]:port`, else None.

    An IPv4-mapped IPv6 address is read as the IPv4 address it maps.
    """
    text = text.strip()
    if not text or len(text) > _MAX_ADDRESS_CHARS:
        return None
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> str:
    """The client's address: X-Forwarded-For only counts when the direct peer is trusted.

    From a trusted peer the header is walked from the right, past trusted proxies, to the
    first untrusted address; an entry that is not an address ends the walk at the last good
    one. Never raises; reads at most the header's last MAX_FORWARDED_ENTRIES entries.
    """
    peer_address = parse_address(peer) if peer else None
    if peer_address is None:
        return peer or ""
    if not forwarded_for or not _trusted(peer_address, trusted):
        return str(peer_address)
    tail = forwarded_for[-MAX_FORWARDED_CHARS:]
    entries = tail.split(",")
    if len(tail) < len(forwarded_for):
        entries = entries[1:]  # cut in the middle: its first entry may be a fragment
    entries = entries[-MAX_FORWARDED_ENTRIES:]
    best = peer_address
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            break
        best = address
        if not _trusted(address, trusted):
            break
    return str(best)
