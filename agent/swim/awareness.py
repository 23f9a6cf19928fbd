"""Lifeguard local health: a small score that widens our timeouts and silences our accusations."""

from __future__ import annotations


class Awareness:
    """How much this agent distrusts its own view: 0 (healthy) .. `max_score`.

    Missed probes that nobody could vouch for, and a lagging event loop, raise the score; successful
    direct probes lower it. Timeouts are stretched by `score + 1`, and at `suppress_at` or above
    the agent stops accusing others (an unhealthy agent's verdicts are mostly about itself).
    """

    def __init__(
        self, max_score: int = 8, suppress_at: int | None = None, lag_threshold_s: float = 0.05
    ) -> None:
        if max_score < 1:
            raise ValueError("max_score must be at least 1")
        threshold = max_score // 2 if suppress_at is None else suppress_at
        if not 1 <= threshold <= max_score:
            raise ValueError("suppress_at must be within 1..max_score")
        if lag_threshold_s <= 0:
            raise ValueError("lag_threshold_s must be positive")
        self._max = max_score
        self._suppress_at = threshold
        self._lag_threshold_s = lag_threshold_s
        self._score = 0

    @property
    def score(self) -> int:
        return self._score

    @property
    def max_score(self) -> int:
        return self._max

    @property
    def suppressed(self) -> bool:
        """True while this agent is too unhealthy to accuse anyone."""
        return self._score >= self._suppress_at

    def apply_delta(self, delta: int) -> int:
        """Move the score by `delta`, clamped to 0..max_score; returns the new score."""
        self._score = min(self._max, max(0, self._score + delta))
        return self._score

    def scale(self, timeout_s: float) -> float:
        """`timeout_s` stretched for our current health: `timeout_s * (score + 1)`."""
        return timeout_s * (self._score + 1)

    def note_lag(self, lag_s: float) -> bool:
        """Count one point if our loop woke `lag_s` late beyond the threshold; True if counted."""
        if lag_s <= self._lag_threshold_s:
            return False
        self.apply_delta(1)
        return True
