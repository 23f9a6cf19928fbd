"""Lease arithmetic, pure: given the lease end and ``now`` (CLOCK_BOOTTIME), what changes.

The state is one number: ``until``, the end of the lease this instance serves under, or None when
it is not serving. The instance serves exactly while ``now < until``. Each function returns the
transition to record (or why nothing changes); the caller reads the clock and applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Event = Literal["start", "renew", "stop"]

# How often the shell looks for an expiry that no request noticed (the brief: at least 20 Hz).
CHECK_INTERVAL_S = 0.05
# Shortest sleep between checks, so a lease ending "now" cannot spin the loop.
MIN_CHECK_S = 0.001

REASON_LEASE = "lease"
REASON_EXPIRED = "expired"
REASON_RELEASE = "release"


@dataclass(frozen=True)
class Transition:
    """One change of serving state: ``boot`` is when it happened, ``until`` the lease end."""

    event: Event
    boot: float
    until: float | None
    reason: str


@dataclass(frozen=True)
class Ignored:
    """A grant that changes nothing, and why."""

    reason: str


def expire(until: float | None, now: float) -> Transition | None:
    """The stop an expired lease calls for (``boot`` = the moment it is noticed), else None."""
    if until is not None and now >= until:
        return Transition("stop", now, until, REASON_EXPIRED)
    return None


def grant(until: float | None, new_until: float, now: float) -> Transition | Ignored:
    """Start or extend serving until ``new_until``; ``until`` must be live (call expire first)."""
    if new_until <= now:
        return Ignored(f"lease ended {now - new_until:.3f} s ago")
    if until is None:
        return Transition("start", now, new_until, REASON_LEASE)
    if new_until <= until:
        return Ignored(f"lease does not extend the current one ({until - new_until:.3f} s shorter)")
    return Transition("renew", now, new_until, REASON_LEASE)


def stop(until: float | None, now: float, reason: str) -> Transition | None:
    """Stop serving now (release, shutdown); None when not serving."""
    return None if until is None else Transition("stop", now, until, reason)


def remaining_s(until: float | None, now: float) -> float | None:
    """Seconds of lease left (0.0 once it has ended), or None without a lease."""
    return None if until is None else max(0.0, until - now)


def next_check_s(until: float | None, now: float) -> float:
    """How long the shell may sleep before it must look for expiry again."""
    if until is None:
        return CHECK_INTERVAL_S
    return max(MIN_CHECK_S, min(CHECK_INTERVAL_S, until - now))
