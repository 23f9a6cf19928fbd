"""The AddressMover seam: put a slot's virtual IP on this server's interface, or take it off."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import Protocol

import structlog
from pyroute2 import AsyncIPRoute, NetlinkError
from pyroute2.netns import create_socket

from agent.clock import Clock

_log = structlog.get_logger("moonwatch.vip")

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST_MAC = b"\xff" * 6
# Netlink answers that mean "already done": the address exists / does not exist.
EEXIST = 17
EADDRNOTAVAIL = 99


class AddressMoveError(Exception):
    """The address could not be claimed or released (missing interface, no permission...)."""


class AddressMover(Protocol):
    """Moves a slot's virtual IP between servers: only the slot's current owner holds it."""

    async def claim(self, slot: str, address: IPv4Interface, interface: str) -> None:
        """Add `address` to `interface` and announce it with gratuitous ARP, so that neighbours
        send its traffic to this server at once. Idempotent: claiming an address already
        there succeeds (and announces it again). Bounded (about 0.3 s). Raises
        AddressMoveError when the address cannot be added; announcing is best effort."""

    async def release(self, slot: str, address: IPv4Interface, interface: str) -> None:
        """Remove `address` from `interface`. Idempotent: releasing an address that is not
        there (or whose interface is gone) succeeds. Bounded; raises AddressMoveError when the
        address may still be there."""


def garp_frame(mac: bytes, address: IPv4Address, op: int = ARP_REQUEST) -> bytes:
    """An Ethernet broadcast carrying a gratuitous ARP for `address` from `mac`: sender and
    target protocol addresses are both `address` (a request, or an unsolicited reply)."""
    if len(mac) != 6:
        raise ValueError(f"need a 6-byte MAC address, got {len(mac)} bytes")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise ValueError(f"ARP operation must be 1 (request) or 2 (reply), got {op}")
    ip = address.packed
    target_mac = b"\x00" * 6 if op == ARP_REQUEST else BROADCAST_MAC
    ethernet = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + mac + ip + target_mac + ip
    return ethernet + arp


class NetlinkAddressMover:
    """Addresses through rtnetlink (pyroute2), announcements through a raw AF_PACKET socket
    (needs CAP_NET_ADMIN and CAP_NET_RAW). `netns` names a network namespace to work in."""

    def __init__(
        self,
        clock: Clock,
        *,
        netns: str | None = None,
        announcements: int = 3,
        announce_interval_s: float = 0.1,
    ) -> None:
        self._clock = clock
        self._netns = netns
        self._announcements = announcements
        self._interval_s = announce_interval_s

    async def claim(self, slot: str, address: IPv4Interface, interface: str) -> None:
        await self._change("add", address, interface, tolerated=EEXIST)
        _log.info("vip_claimed", slot=slot, address=str(address), interface=interface)
        try:
            await self.announce(address.ip, interface)
        except OSError as exc:
            _log.warning("vip_announce_failed", slot=slot, interface=interface, error=str(exc))

    async def release(self, slot: str, address: IPv4Interface, interface: str) -> None:
        await self._change("del", address, interface, tolerated=EADDRNOTAVAIL)
        _log.info("vip_released", slot=slot, address=str(address), interface=interface)

    async def announce(self, address: IPv4Address, interface: str) -> None:
        """Send the gratuitous ARPs, alternating requests and replies, `interval` apart."""
        sock = await asyncio.to_thread(
            create_socket, self._netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)
        )
        with sock:
            sock.bind((interface, ETH_P_ARP))
            mac = sock.getsockname()[4]
            for n in range(self._announcements):
                if n:
                    await self._clock.sleep(self._interval_s)
                sock.send(garp_frame(mac, address, ARP_REQUEST if n % 2 == 0 else ARP_REPLY))

    async def _change(
        self, command: str, address: IPv4Interface, interface: str, *, tolerated: int
    ) -> None:
        try:
            async with AsyncIPRoute(netns=self._netns) as ipr:
                found = await ipr.link_lookup(ifname=interface)
                if not found:
                    if command == "del":
                        return  # no interface, so no address on it
                    raise AddressMoveError(f"no interface {interface!r}")
                await ipr.addr(
                    command,
                    index=found[0],
                    address=str(address.ip),
                    prefixlen=address.network.prefixlen,
                )
        except NetlinkError as exc:
            if exc.code != tolerated:
                raise AddressMoveError(f"{command} {address} on {interface}: {exc}") from exc
        except OSError as exc:
            raise AddressMoveError(f"{command} {address} on {interface}: {exc}") from exc


@dataclass
class MemoryAddressMover:
    """The fake: remembers which addresses are on which interface and every call made.
    Set `fail` to a number of calls that should raise AddressMoveError before succeeding."""

    held: dict[IPv4Interface, str] = field(default_factory=dict)
    calls: list[tuple[str, str, IPv4Interface, str]] = field(default_factory=list)
    fail: int = 0

    async def claim(self, slot: str, address: IPv4Interface, interface: str) -> None:
        self._record("claim", slot, address, interface)
        self.held[address] = interface

    async def release(self, slot: str, address: IPv4Interface, interface: str) -> None:
        self._record("release", slot, address, interface)
        if self.held.get(address) == interface:
            del self.held[address]

    def _record(self, what: str, slot: str, address: IPv4Interface, interface: str) -> None:
        self.calls.append((what, slot, address, interface))
        if self.fail > 0:
            self.fail -= 1
            raise AddressMoveError(f"{what} {address} on {interface}: failing on purpose")
