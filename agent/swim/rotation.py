"""Shuffled round-robin probe order: every member is probed once per cycle, in random order."""

from __future__ import annotations

import random
from collections.abc import Iterable


class ProbeRotation:
    """The order in which one agent probes its peers.

    The order is reshuffled at the start of every cycle; a member added mid-cycle is inserted at a
    random position among those not yet probed this cycle, so any member waits at most two cycles
    (one when it has just joined). Deterministic for a given `rng`.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._pos = 0
        self._members: frozenset[str] = frozenset()

    @property
    def members(self) -> frozenset[str]:
        return self._members

    def __len__(self) -> int:
        return len(self._order)

    def set_members(self, names: Iterable[str]) -> None:
        """Replace the membership, keeping the current cycle's progress."""
        new = frozenset(names)
        if new == self._members:
            return
        gone = self._members - new
        if gone:
            passed = sum(1 for name in self._order[: self._pos] if name in gone)
            self._order = [name for name in self._order if name not in gone]
            self._pos -= passed
        for name in sorted(new - self._members):
            self._order.insert(self._rng.randint(self._pos, len(self._order)), name)
        self._members = new

    def next(self) -> str | None:
        """The next member to probe, or None with no members."""
        if not self._order:
            return None
        if self._pos >= len(self._order):
            self._rng.shuffle(self._order)
            self._pos = 0
        name = self._order[self._pos]
        self._pos += 1
        return name

    def sample(self, k: int, exclude: str) -> list[str]:
        """Up to `k` distinct random members other than `exclude`."""
        candidates = [name for name in self._order if name != exclude]
        return self._rng.sample(candidates, min(k, len(candidates)))
