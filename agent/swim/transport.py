"""The PeerTransport seam for probe datagrams, and its UDP implementation."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

Receiver = Callable[[bytes], None]


class PeerTransport(Protocol):
    """Unreliable, unordered datagrams between servers addressed by name."""

    errors: Counter[str]
    """Datagrams that could not be sent or handed over, by reason (never raised)."""

    async def start(self) -> None:
        """Begin sending and receiving; raises OSError if the local endpoint cannot be opened."""

    def send(self, to: str, data: bytes) -> None:
        """Send one datagram to server `to`, best effort: never raises, never blocks; an unknown
        peer or an OS error is counted in `errors` and the datagram is dropped."""

    def on_receive(self, callback: Receiver) -> None:
        """Call `callback(data)` for each datagram received (replaces any earlier callback). The
        callback runs on the event loop and must not block."""

    async def close(self) -> None:
        """Stop sending and receiving; idempotent."""


class UdpTransport:
    """Datagrams over UDP. `addresses()` maps server names to (IP literal, port); it is read on
    every send, so it may follow committed membership. Hostnames would block on DNS: use IPs."""

    def __init__(
        self,
        bind_host: str,
        bind_port: int,
        addresses: Callable[[], Mapping[str, tuple[str, int]]],
    ) -> None:
        self._bind = (bind_host, bind_port)
        self._addresses = addresses
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: Receiver | None = None
        self.errors: Counter[str] = Counter()

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound (host, port), useful after binding port 0; raises before `start`."""
        if self._transport is None:
            raise RuntimeError("transport not started")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def start(self) -> None:
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=self._bind
        )

    def send(self, to: str, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            self.errors["not_open"] += 1
            return
        address = self._addresses().get(to)
        if address is None:
            self.errors["unknown_peer"] += 1
            return
        try:
            self._transport.sendto(data, address)
        except (OSError, ValueError, TypeError):
            self.errors["send_error"] += 1

    def on_receive(self, callback: Receiver) -> None:
        self._receiver = callback

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _deliver(self, data: bytes) -> None:
        if self._receiver is None:
            self.errors["no_receiver"] += 1
            return
        self._receiver(data)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self._owner._deliver(data)

    def error_received(self, exc: Exception) -> None:
        self._owner.errors["os_error"] += 1
