"""Time-ordered 63-bit row ids: unix milliseconds << 20 | 20 random bits, increasing per process.

An id fits SQLite INTEGER and PostgreSQL BIGINT, sorts by creation time (pagination uses it as a
cursor: ``WHERE id < ? ORDER BY id DESC``) and carries its creation millisecond (``id_ms``).
Ids are not secrets: never use one where a token is needed.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable

from app.clock import Clock, SystemClock

RANDOM_BITS = 20
MAX_ID = (1 << 63) - 1
_RANDOM_MASK = (1 << RANDOM_BITS) - 1


def id_ms(row_id: int) -> int:
    """Return the unix millisecond an id was made in (its upper 43 bits)."""
    return row_id >> RANDOM_BITS


def lowest_id_at(unix_ms: int) -> int:
    """Return the smallest id ``new_id`` can make at ``unix_ms``: a cursor for "since this time"."""
    return unix_ms << RANDOM_BITS


class IdGenerator:
    """Makes strictly increasing ids from a clock and random bits; safe to share between threads.

    Two ids in the same millisecond (or after the wall clock stepped back) still increase: a
    candidate not above the last id becomes the last id plus one.
    """

    def __init__(self, clock: Clock, randbits: Callable[[int], int] = secrets.randbits) -> None:
        self._clock = clock
        self._randbits = randbits
        self._last = 0
        self._lock = threading.Lock()

    def new_id(self) -> int:
        """Return an id greater than every id this generator returned before.

        Raises OverflowError past the year 2248, when milliseconds no longer fit 43 bits.
        """
        unix_ms = int(self._clock.wall_now() * 1000)
        candidate = (unix_ms << RANDOM_BITS) | (self._randbits(RANDOM_BITS) & _RANDOM_MASK)
        with self._lock:
            if candidate <= self._last:
                candidate = self._last + 1
            if candidate > MAX_ID:
                raise OverflowError("id does not fit 63 bits")
            self._last = candidate
        return candidate


# The requested ``new_id()`` takes no arguments, so the process keeps one generator: ids must
# increase across every caller in the process, which only shared state can promise.
_PROCESS_IDS = IdGenerator(SystemClock())


def new_id() -> int:
    """Return a new 63-bit id, greater than every id made before in this process."""
    return _PROCESS_IDS.new_id()
