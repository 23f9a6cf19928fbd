"""The app's one window onto real time: a Clock protocol, the system clock and nothing else."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Reads time for the app; tests pass a fake they move by hand."""

    def wall_now(self) -> float:
        """Return wall-clock seconds since the epoch (for ``*_at`` timestamps, never durations)."""
        ...

    def boottime(self) -> float:
        """Return CLOCK_BOOTTIME seconds: never steps back and keeps counting through suspend.

        Leases are instants on this clock, so a machine that wakes from suspend sees its lease
        as expired instead of believing it still holds it.
        """
        ...

    def monotonic(self) -> float:
        """Return CLOCK_MONOTONIC seconds (stops while the machine is suspended)."""
        ...


class SystemClock:
    """The real clock."""

    def wall_now(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    def boottime(self) -> float:
        """Return ``clock_gettime(CLOCK_BOOTTIME)``."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def monotonic(self) -> float:
        """Return ``clock_gettime(CLOCK_MONOTONIC)``."""
        return time.clock_gettime(time.CLOCK_MONOTONIC)


async def pause(seconds: float) -> None:
    """Sleep in the event loop (the app's only sleep)."""
    await asyncio.sleep(seconds)
