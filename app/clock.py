"""The app's one window onto real time: a Clock protocol, the system clock and nothing else."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Reads time for the app; tests pass a fixed fake."""

    def wall_now(self) -> float:
        """Return wall-clock seconds since the epoch (for ``*_at`` timestamps, never durations)."""
        ...


class SystemClock:
    """The real clock."""

    def wall_now(self) -> float:
        """Return ``time.time()``."""
        return time.time()


async def pause(seconds: float) -> None:
    """Sleep in the event loop (the app's only sleep)."""
    await asyncio.sleep(seconds)
