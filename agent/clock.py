"""The Clock seam: the one place in the agent that reads real time or sleeps."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything. It is
        shared with the app instances on this machine: lease deadlines are instants on it."""

    def wall(self) -> float:
        """Seconds since the epoch (UTC), for timestamps people read; may jump."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` (0 yields once)."""


class SystemClock:
    """Real time. `monotonic` is CLOCK_BOOTTIME: monotonic like CLOCK_MONOTONIC, but it also
    counts time the machine spent suspended, so a lease never outlives a suspend."""

    def monotonic(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def clock_monotonic() -> float:
    """CLOCK_MONOTONIC itself, for records that other tools compare on that clock."""
    return time.monotonic()
