"""The lab's delay fault: the proxy's sockaddr parsing and the rules that divert traffic."""

from __future__ import annotations

import socket
import struct

from tests.chaos.netlab_delay import parse_sockaddr_in
from tests.chaos.netlab_delay_fault import (
    DIVERT_MARK,
    PROXY_MARK,
    PROXY_TCP_PORT,
    PROXY_UDP_PORT,
    delay_rules,
)


def test_sockaddr_in_as_getsockopt_returns_it() -> None:
    raw = struct.pack("!HH4s8x", socket.AF_INET, 7001, socket.inet_aton("10.214.3.12"))
    raw = struct.pack("=H", socket.AF_INET) + raw[2:]  # sin_family is host order
    assert parse_sockaddr_in(raw) == ("10.214.3.12", 7001)


def test_the_proxys_own_packets_pass_before_anything_is_diverted() -> None:
    rules = [" ".join(r) for r in delay_rules(["10.0.0.11", "10.0.0.12"])]
    for table in ("nat", "mangle"):
        mine = [r for r in rules if r.startswith(f"-t {table} ") and "PRE" not in r]
        assert f"--mark {PROXY_MARK} -j RETURN" in mine[0], mine
        assert len(mine) == 3, mine  # the exemption, then one rule per peer


def test_only_the_peers_are_diverted_tcp_by_nat_udp_by_tproxy() -> None:
    rules = [" ".join(r) for r in delay_rules(["10.0.0.11"])]
    assert f"-p tcp -d 10.0.0.11 -j REDIRECT --to-ports {PROXY_TCP_PORT}" in rules[2]
    assert f"-p udp -d 10.0.0.11 -j MARK --set-mark {DIVERT_MARK}" in rules[3]
    assert f"--on-port {PROXY_UDP_PORT}" in rules[-1] and "-i lo" in rules[-1]
    assert all("-d" not in r for r in rules[:2])
