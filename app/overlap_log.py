"""The serving record: one JSON line per start/renew/stop, appended with one write per line.

The file is opened with O_APPEND and every line goes out in a single ``os.write`` with no
buffering, so several processes appending to the same file never interleave within a line
(the kernel positions and writes each appending write to a regular file as one unit).
``scripts/check_overlap.py`` reads these files back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

FILE_MODE = 0o644


class RecordSink(Protocol):
    """Where serving records go."""

    def append(self, record: Mapping[str, object]) -> bool:
        """Append one record as a whole line; False if it was not (fully) written. Never raises."""
        ...


class OverlapLog:
    """A RecordSink on an append-only file shared with other instances."""

    def __init__(self, path: Path) -> None:
        """Open (create) ``path`` for appending; raises OSError if it cannot."""
        self.path = path
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd: int | None = os.open(path, flags, FILE_MODE)

    def append(self, record: Mapping[str, object]) -> bool:
        """Write ``record`` as one line with one ``os.write``; False on any failure."""
        if self._fd is None:
            return False
        try:
            line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
            data = line.encode()
            # No retry of a short write: the rest would land after other writers' lines. The
            # torn line makes the checker report the file as damaged, which is the truth.
            return os.write(self._fd, data) == len(data)
        except (OSError, TypeError, ValueError):
            return False

    def close(self) -> None:
        """Close the file; later appends return False. Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
