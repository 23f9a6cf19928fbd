"""A slot's virtual IP in the cluster configuration: the address that follows its owner."""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Interface
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, field_validator

from agent.config_rules import Loc, Problem

if TYPE_CHECKING:
    from agent.config import SlotConfig

# A Linux interface name: 1-15 characters, no '/', ':' or white space.
_INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def check_interface(value: str) -> str:
    if not _INTERFACE_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a network interface name "
            "(1-15 characters of A-Z, a-z, 0-9, '_', '.', '-')"
        )
    return value


Interface = Annotated[str, Strict(), AfterValidator(check_interface)]


class VipConfig(BaseModel):
    """The address the slot's current owner adds to `interface` (and announces), e.g.
    {address: 10.20.0.100/24, interface: eth0}; a server may name its own `vip_interface`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: IPv4Interface
    interface: Interface

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: object) -> IPv4Interface:
        if not isinstance(value, str) or "/" not in value:
            raise ValueError("must be an IPv4 address with its prefix length, e.g. 10.20.0.100/24")
        try:
            address = IPv4Interface(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 address with a prefix length") from exc
        ip, network = address.ip, address.network
        if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
            raise ValueError(f"{ip} is not a unicast address a server can take over")
        if network.prefixlen < 31 and ip in (network.network_address, network.broadcast_address):
            raise ValueError(f"{ip} is the network or broadcast address of {network}")
        return address


def vip_problems(slots: Sequence[SlotConfig]) -> list[Problem]:
    """A virtual IP may belong to one slot only."""
    first: dict[str, int] = {}
    problems: list[Problem] = []
    for index, slot in enumerate(slots):
        if slot.vip is None:
            continue
        ip = str(slot.vip.address.ip)
        if ip in first:
            where = first[ip]
            loc: Loc = (index, "vip", "address")
            problems.append(
                (loc, f"virtual IP {ip} is also slots[{where}].vip ({slots[where].name!r})")
            )
        else:
            first[ip] = index
    return problems
