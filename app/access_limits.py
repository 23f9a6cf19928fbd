"""Bounded in-memory memories with deadlines: what was seen recently, and how often per window.

Pure: every method takes ``now`` (monotonic seconds). Each holds at most ``limit`` keys; when
full, expired keys go first, then the oldest half, so a flood of new keys costs memory once.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def _trim(entries: dict[K, tuple[float, int]], limit: int, now: float) -> None:
    if len(entries) < limit:
        return
    for key in [key for key, (deadline, _) in entries.items() if deadline <= now]:
        del entries[key]
    if len(entries) >= limit:
        for key in list(entries)[: max(1, len(entries) // 2)]:
            del entries[key]


class Recent(Generic[K]):
    """Keys remembered until their deadline."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entries: dict[K, tuple[float, int]] = {}

    def fresh(self, key: K, now: float) -> bool:
        """Whether ``key`` is remembered and its deadline has not passed."""
        found = self._entries.get(key)
        return found is not None and found[0] > now

    def remember(self, key: K, deadline: float, now: float) -> None:
        _trim(self._entries, self._limit, now)
        self._entries[key] = (deadline, 0)

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class WindowCount(Generic[K]):
    """Events per key in fixed windows of ``window_s`` seconds, counted from each key's first."""

    def __init__(self, window_s: float, limit: int) -> None:
        self._window_s = window_s
        self._limit = limit
        self._entries: dict[K, tuple[float, int]] = {}

    def count(self, key: K, now: float) -> int:
        """Events of ``key`` in its current window."""
        found = self._entries.get(key)
        return found[1] if found is not None and found[0] > now else 0

    def add(self, key: K, now: float) -> int:
        """Count one event of ``key``; its count in the window, this one included."""
        found = self._entries.get(key)
        if found is None or found[0] <= now:
            _trim(self._entries, self._limit, now)
            found = (now + self._window_s, 0)
        self._entries[key] = (found[0], found[1] + 1)
        return found[1] + 1

    def retry_after_s(self, key: K, now: float) -> float:
        """Seconds until the window of ``key`` ends (0 when it has none)."""
        found = self._entries.get(key)
        return max(0.0, found[0] - now) if found is not None else 0.0
