"""A bounded, time-pruned memory of datagram nonces that turns replays into rejections."""

from __future__ import annotations

import heapq


class NonceCache:
    """Remembers nonces of accepted datagrams for as long as their timestamps could still pass.

    A datagram whose timestamp is older than `window_s` is rejected as stale anyway, so its nonce
    can be forgotten. When more than `capacity` nonces are live, the oldest are forgotten early and
    every timestamp up to the newest forgotten one is refused from then on (a flood can cost us
    old-but-valid datagrams, never a replay).
    """

    def __init__(self, window_s: float, capacity: int = 65536) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._window_s = window_s
        self._capacity = capacity
        self._heap: list[tuple[float, bytes]] = []
        self._seen: set[bytes] = set()
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, nonce: bytes, ts: float, now: float) -> bool:
        """Record `nonce` stamped `ts` and return True, or False if it may be a replay."""
        self._prune(now)
        if ts <= self._floor or nonce in self._seen:
            return False
        self._seen.add(nonce)
        heapq.heappush(self._heap, (ts, nonce))
        while len(self._heap) > self._capacity:
            old_ts, old_nonce = heapq.heappop(self._heap)
            self._seen.discard(old_nonce)
            self._floor = max(self._floor, old_ts)
        return True

    def _prune(self, now: float) -> None:
        horizon = now - self._window_s
        while self._heap and self._heap[0][0] < horizon:
            _, nonce = heapq.heappop(self._heap)
            self._seen.discard(nonce)
