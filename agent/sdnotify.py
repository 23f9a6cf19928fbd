"""A small sd_notify client: service state datagrams to systemd's $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

import structlog

_log = structlog.get_logger("moonwatch.sdnotify")

# What systemd hands a service it supervises; the agent's children must not inherit them.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a $NOTIFY_SOCKET value: a filesystem path, or an abstract
    socket for "@name" (sent as b"\\0name"); None for anything else (empty, relative, vsock)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """systemd's watchdog timeout from $WATCHDOG_USEC, or None when there is none for this
    process: unset, not a positive integer, or $WATCHDOG_PID names another process."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    if not usec.isdigit() or int(usec) <= 0:
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends sd_notify messages; does nothing without an address. Never raises: the first
    failure to send is logged, later ones are counted in `failures` only."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self.failures = 0
        self._socket: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> tuple[Notifier, float | None]:
        """The notifier and watchdog timeout systemd gave this process. The variables are taken
        out of `environ`, so that processes this one starts do not inherit them."""
        watchdog_s = watchdog_interval_s(environ, os.getpid())
        value = environ.get("NOTIFY_SOCKET", "")
        for name in NOTIFY_ENV:
            environ.pop(name, None)
        return cls(socket_address(value)), watchdog_s

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is finished (systemd's watchdog starts counting from here)."""
        return self.send("READY=1", *([] if status is None else [f"STATUS={status}"]))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service still makes progress."""
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=: one line for `systemctl status` (newlines become spaces)."""
        return self.send(f"STATUS={' '.join(text.splitlines())}")

    def send(self, *fields: str) -> bool:
        """Send one datagram of newline-separated fields; True when it was sent."""
        if self.address is None or not fields:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                _log.warning("sd_notify_failed", address=repr(self.address), error=str(exc))
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
