"""The client's IP address: the TCP peer, or what trusted proxies say in X-Forwarded-For."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import hdrs, web

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The proxies (edges) whose X-Forwarded-For is believed; set once by app.service.build_app.
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple[IPNetwork, ...])
# More entries than this in X-Forwarded-For is not a chain of our proxies: use the peer.
MAX_FORWARDED_HOPS = 20


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR ranges (a bare address is a /32 or /128); ValueError naming the first bad one."""
    networks: list[IPNetwork] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def within(ip: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether the address ``ip`` lies in one of ``networks`` (never, when it is no address)."""
    address = _address(ip)
    return address is not None and _trusted(address, networks)


def resolve(peer: str, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]) -> str:
    """The client of a connection from ``peer`` that carried the ``X-Forwarded-For`` header
    values ``forwarded_for``: the right-most untrusted hop when ``peer`` is a trusted proxy,
    else ``peer`` itself. A malformed header (any entry not an IP address) yields ``peer``."""
    peer_address = _address(peer)
    if peer_address is None or not _trusted(peer_address, trusted):
        return peer
    hops: list[IPAddress] = []
    for value in forwarded_for:
        for entry in value.split(","):
            hop = _address(entry)
            if hop is None:
                return peer
            hops.append(hop)
    if len(hops) > MAX_FORWARDED_HOPS:
        return peer
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return str(hop)
    return str(hops[0]) if hops else peer


def client_ip(request: web.Request) -> str:
    """The address of the client that sent ``request`` ("" when the peer is unknown)."""
    peer = request.remote or ""
    trusted = request.config_dict.get(TRUSTED_PROXIES, ())
    if not trusted:
        return peer
    return resolve(peer, request.headers.getall(hdrs.X_FORWARDED_FOR, []), trusted)
