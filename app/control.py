"""The control channel: lines the supervising agent writes to the app's stdin.

    lease <until>   serve until the CLOCK_BOOTTIME instant <until> (seconds, e.g. 12345.678);
                    a lease that does not extend the current one is ignored
    release         stop serving at once (until a later lease)
    <EOF>           the agent is gone: stop serving and shut down

A line is at most ``MAX_LINE`` bytes before its newline. Anything else is logged as
``control_rejected`` and ignored; nothing on this channel can crash the app.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.fence import EventLog

MAX_LINE = 1024
# How much of a rejected line the log echoes back.
SHOWN_LINE = 80
_INSTANT = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class Grant:
    """``lease <until>``."""

    until: float


@dataclass(frozen=True)
class Release:
    """``release``."""


@dataclass(frozen=True)
class Rejected:
    """A line that is no command, and why."""

    reason: str


Command = Grant | Release | Rejected


class ControlTarget(Protocol):
    """What the commands act on (the LeaseFence)."""

    def grant(self, until: float) -> None:
        """Serve until ``until`` if that extends the current lease; never raises."""
        ...

    def release(self) -> None:
        """Stop serving now; idempotent, never raises."""
        ...


def parse_command(line: bytes) -> Command:
    """One line (without its newline) to a command."""
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        return Rejected("not ASCII")
    words = text.split()
    if words == ["release"]:
        return Release()
    if len(words) == 2 and words[0] == "lease":
        if not _INSTANT.fullmatch(words[1]):
            return Rejected("lease instant is not a non-negative decimal number")
        until = float(words[1])
        if not math.isfinite(until):
            return Rejected("lease instant is not finite")
        return Grant(until)
    if words and words[0] in ("lease", "release"):
        return Rejected(f"wrong number of arguments to {words[0]}")
    return Rejected("unknown command" if words else "empty line")


class LineSplitter:
    """Bytes in, complete lines out; a line longer than ``limit`` is rejected, never buffered."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | Rejected]:
        """Append ``data``; return each line it completed, or a Rejected for an over-long one."""
        out: list[bytes | Rejected] = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False  # the tail of a line already rejected
            elif len(line.rstrip(b"\r")) > self._limit:
                out.append(Rejected(f"line longer than {self._limit} bytes"))
            else:
                out.append(line)
        if len(self._buffer) > self._limit:
            if not self._discarding:
                out.append(Rejected(f"line longer than {self._limit} bytes"))
            self._discarding = True
            self._buffer.clear()
        return out

    def leftover(self) -> bytes:
        """Bytes after the last newline (an unterminated line), if any."""
        return b"" if self._discarding else bytes(self._buffer)


def shown(line: bytes) -> str:
    """A rejected line, safe and short enough to log."""
    text = line[:SHOWN_LINE].decode("ascii", errors="replace")
    return text + "…" if len(line) > SHOWN_LINE else text


class ControlProtocol(asyncio.Protocol):
    """Reads the control pipe: applies each command to ``target``; calls ``on_eof`` once at EOF."""

    def __init__(self, target: ControlTarget, log: EventLog, on_eof: Callable[[], None]) -> None:
        self._target = target
        self._log = log
        self._on_eof = on_eof
        self._splitter = LineSplitter()
        self._transport: asyncio.BaseTransport | None = None
        self._ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def close(self) -> None:
        """Stop reading without treating it as EOF (the app is shutting down anyway)."""
        self._ended = True
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        for item in self._splitter.feed(data):
            command = item if isinstance(item, Rejected) else parse_command(item)
            self._apply(command, b"" if isinstance(item, Rejected) else item)

    def _apply(self, command: Command, line: bytes) -> None:
        if isinstance(command, Grant):
            self._target.grant(command.until)
        elif isinstance(command, Release):
            self._target.release()
        else:
            self._log("control_rejected", reason=command.reason, line=shown(line))

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        leftover = self._splitter.leftover()
        if leftover:
            self._log("control_rejected", reason="unterminated last line", line=shown(leftover))
        self._log("control_closed")
        self._on_eof()


async def read_stdin(protocol: ControlProtocol) -> None:
    """Feed stdin to ``protocol`` without blocking the loop (``protocol.close()`` stops it).

    Raises ValueError when stdin is closed or no pipe, socket or terminal: the event loop cannot
    watch a regular file or /dev/null, and an agent that gave us one cannot send leases anyway.
    """
    if sys.stdin is None:
        raise ValueError("stdin is closed")
    fd = sys.stdin.fileno()
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)):
        raise ValueError("stdin is not a pipe, socket or terminal")
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: protocol, sys.stdin)
