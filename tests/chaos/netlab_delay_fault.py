"""Added delay in the network lab: the rules and the proxy (tests/chaos/netlab_delay.py) in
one server's namespace, and their removal.

What is delayed, for a server S with the fault (tc netem is not available on this kernel):

- every UDP datagram S sends to another lab server: `delay` later (TPROXY, per packet);
- TCP connections S opens to another lab server: each chunk `delay` later, both ways (NAT
  REDIRECT, per connection). Connections S opened before are reset when the fault starts,
  so they reconnect through the proxy; connections the others open to S are not delayed.

With every server delayed, a UDP round trip and a TCP round trip each take 2 x `delay` more.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.chaos.netlab import Topology, kill_group

PROXY_TCP_PORT = 7900
PROXY_UDP_PORT = 7901
PROXY_MARK = 0x6D77  # SO_MARK of the proxy's own sockets: never diverted again
DIVERT_MARK = 0x6D78  # UDP to divert into the proxy
ROUTE_TABLE = "7919"
NAT_CHAIN = "MWLAB-DELAY"
MANGLE_OUT = "MWLAB-DELAY-OUT"
MANGLE_PRE = "MWLAB-DELAY-PRE"
CHAINS = (("nat", NAT_CHAIN, "OUTPUT"), ("mangle", MANGLE_OUT, "OUTPUT"),
          ("mangle", MANGLE_PRE, "PREROUTING"))  # fmt: skip
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0

Spawn = Callable[[str, list[str], str], Awaitable[asyncio.subprocess.Process]]


def delay_rules(peers: list[str]) -> list[list[str]]:
    """The iptables arguments (after `iptables`) that divert traffic to `peers` (addresses)."""
    rules = [
        ["-t", "nat", "-A", NAT_CHAIN, "-m", "mark", "--mark", str(PROXY_MARK), "-j", "RETURN"],
        ["-t", "mangle", "-A", MANGLE_OUT, "-m", "mark", "--mark", str(PROXY_MARK), "-j", "RETURN"],
    ]
    for peer in peers:
        rules.append(["-t", "nat", "-A", NAT_CHAIN, "-p", "tcp", "-d", peer,
                      "-j", "REDIRECT", "--to-ports", str(PROXY_TCP_PORT)])  # fmt: skip
        rules.append(["-t", "mangle", "-A", MANGLE_OUT, "-p", "udp", "-d", peer,
                      "-j", "MARK", "--set-mark", str(DIVERT_MARK)])  # fmt: skip
    rules.append(["-t", "mangle", "-A", MANGLE_PRE, "-i", "lo", "-p", "udp", "-m", "mark",
                  "--mark", str(DIVERT_MARK), "-j", "TPROXY", "--on-ip", "127.0.0.1",
                  "--on-port", str(PROXY_UDP_PORT), "--tproxy-mark", str(DIVERT_MARK)])  # fmt: skip
    return rules


def proxy_argv(delay_ms: float) -> list[str]:
    return [sys.executable, "-m", "tests.chaos.netlab_delay", "--delay-ms", f"{delay_ms:g}",
            "--tcp-port", str(PROXY_TCP_PORT), "--udp-port", str(PROXY_UDP_PORT),
            "--mark", str(PROXY_MARK)]  # fmt: skip


def install(topo: Topology, host: str, peers: list[str]) -> None:
    """Chains (made once, hooked once), the rules, and the route that loops marked UDP to lo."""
    for table, chain, hook in CHAINS:
        topo.ns_run(host, "iptables", "-t", table, "-N", chain, check=False)
        hooked = topo.ns_run(host, "iptables", "-t", table, "-S", hook)
        if f"-j {chain}" not in hooked:
            topo.ns_run(host, "iptables", "-t", table, "-A", hook, "-j", chain)
        topo.ns_run(host, "iptables", "-t", table, "-F", chain)
    for rule in delay_rules(peers):
        topo.ns_run(host, "iptables", *rule)
    mark = str(DIVERT_MARK)
    topo.ns_run(host, "ip", "rule", "del", "fwmark", mark, "lookup", ROUTE_TABLE, check=False)
    topo.ns_run(host, "ip", "rule", "add", "fwmark", mark, "lookup", ROUTE_TABLE)
    topo.ns_run(host, "ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo",
                "table", ROUTE_TABLE)  # fmt: skip


def reset_opened(topo: Topology, host: str, peers: list[str]) -> None:
    """Reset the TCP connections `host` opened to `peers` (ephemeral local port): they
    reconnect, now through the proxy. Connections the peers opened are left alone."""
    low = topo.ns_run(host, "cat", "/proc/sys/net/ipv4/ip_local_port_range").split()[0]
    for peer in peers:
        topo.ns_run(host, "ss", "-K", "-t", "dst", peer, "sport", ">=", f":{low}", check=False)


def diverted(topo: Topology, host: str) -> tuple[int, int]:
    """(UDP datagrams diverted into `host`'s proxy so far, TCP connections open through it)."""
    listing = topo.ns_run(host, "iptables", "-t", "mangle", "-L", MANGLE_PRE, "-v", "-n", "-x")
    rows = [line.split() for line in listing.splitlines()[2:] if "TPROXY" in line]
    datagrams = sum(int(row[0]) for row in rows)
    sport = f"( sport = :{PROXY_TCP_PORT} )"
    conns = topo.ns_run(host, "ss", "-tnH", "state", "established", sport, check=False)
    return datagrams, len(conns.splitlines())


def uninstall(topo: Topology, host: str) -> None:
    """Flush the delay chains and drop the route (idempotent; traffic goes direct again)."""
    for table, chain, _ in CHAINS:
        topo.ns_run(host, "iptables", "-t", table, "-F", chain, check=False)
    mark = str(DIVERT_MARK)
    topo.ns_run(host, "ip", "rule", "del", "fwmark", mark, "lookup", ROUTE_TABLE, check=False)
    topo.ns_run(host, "ip", "route", "flush", "table", ROUTE_TABLE, check=False)


async def _wait_ready(log: Path, offset: int, proxy: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while loop.time() < deadline and proxy.returncode is None:
        with contextlib.suppress(OSError), log.open("rb") as f:
            f.seek(offset)
            if b"ready" in f.read():
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"delay proxy not ready (exit {proxy.returncode}); see {log}")


async def stop_proxy(proxy: asyncio.subprocess.Process) -> None:
    """SIGTERM its group, SIGKILL what is left after STOP_TIMEOUT_S."""
    kill_group(proxy.pid, None, signal.SIGTERM)
    try:
        await asyncio.wait_for(proxy.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        kill_group(proxy.pid, None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proxy.wait(), STOP_TIMEOUT_S)


async def start_delay(
    topo: Topology, spawn: Spawn, log_dir: Path, host: str, peers: list[str], delay_ms: float
) -> Callable[[], Awaitable[None]]:
    """Start the proxy in `host`, divert its traffic to `peers` (addresses) through it, and
    return the undo (flush the rules, stop the proxy). Any failure undoes what was done."""
    log_name = f"delay-{host}.log"
    log = log_dir / log_name
    offset = log.stat().st_size if log.exists() else 0
    proxy = await spawn(host, proxy_argv(delay_ms), log_name)

    async def undo() -> None:
        try:
            await asyncio.to_thread(uninstall, topo, host)
        finally:
            await stop_proxy(proxy)

    try:
        await _wait_ready(log, offset, proxy)
        await asyncio.to_thread(install, topo, host, peers)
        await asyncio.to_thread(reset_opened, topo, host, peers)
    except BaseException:
        await undo()
        raise
    return undo
