"""Lifeguard suspicion timing: a window that shrinks as independent confirmations arrive."""

from __future__ import annotations

import math


def suspicion_timeout(confirmations: int, expected: int, min_s: float, max_s: float) -> float:
    """Seconds a suspicion should last given `confirmations` of the `expected` ones.

    `max_s` with no confirmation, falling logarithmically to `min_s` once `expected` have arrived
    (memberlist: max(min, max - (max - min) * log(c + 1) / log(k + 1))). With nothing expected
    the window is `min_s`.
    """
    if min_s < 0 or max_s < min_s:
        raise ValueError("need 0 <= min_s <= max_s")
    if expected < 1:
        return min_s
    fraction = math.log(max(0, confirmations) + 1) / math.log(expected + 1)
    return max(min_s, max_s - (max_s - min_s) * fraction)


def suspicion_deadline(
    started: float, confirmations: int, expected: int, min_s: float, max_s: float
) -> float:
    """The monotonic instant a suspicion begun at `started` expires."""
    return started + suspicion_timeout(confirmations, expected, min_s, max_s)


def suspicion_min_s(cluster_size: int, probe_interval_s: float, multiplier: float = 4.0) -> float:
    """memberlist's lower bound: `multiplier * max(1, log10(n)) * probe_interval_s`."""
    if cluster_size < 1 or probe_interval_s <= 0 or multiplier <= 0:
        raise ValueError("need cluster_size >= 1 and positive interval and multiplier")
    return multiplier * max(1.0, math.log10(cluster_size)) * probe_interval_s
