"""Real namespaces: a virtual IP moves from a dead owner to a spare, the client follows within
about a second thanks to gratuitous ARP, and the old owner coming back releases its copy.

Topology (every name carries a random suffix; all of it is removed in `finally`):
a bridge in its own namespace, and namespaces a, b (two servers) and c (a client), each
with `eth0` on a veth into the bridge, in 10.213.7.0/24.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from pyroute2.netns import create_socket

from agent.address_mover import AddressMoveError, NetlinkAddressMover
from agent.clock import SystemClock
from agent.vips import Vip, VipKeeper
from tests.support import wait_until

pytestmark = [pytest.mark.timeout(60)]

PREFIX = "mw-vip-"
NETNS_DIR = Path("/run/netns")
# A crashed run's namespaces are removed once they are older than any run can last.
STALE_AFTER_S = 600.0
VIP = IPv4Interface("10.213.7.100/24")
HOSTS = {"a": "10.213.7.1/24", "b": "10.213.7.2/24", "c": "10.213.7.3/24"}
PORT = 8080


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def remove_stale_namespaces() -> None:
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        if entry.name.startswith(PREFIX):
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > STALE_AFTER_S:
                    subprocess.run(["ip", "netns", "del", entry.name], timeout=10, check=False)


@dataclass
class Lab:
    names: dict[str, str]  # role (br, a, b, c) -> namespace
    ports: dict[str, str]  # server role -> its veth end on the bridge

    def ns(self, role: str) -> str:
        return self.names[role]

    def link(self, role: str, up: bool) -> None:
        ip("-n", self.ns("br"), "link", "set", self.ports[role], "up" if up else "down")

    def has_vip(self, role: str) -> bool:
        return f" {VIP} " in ip("-n", self.ns(role), "-4", "-o", "addr", "show", "dev", "eth0")

    def mac(self, role: str) -> str:
        out = ip("-n", self.ns(role), "-o", "link", "show", "dev", "eth0")
        return out.split("link/ether ", 1)[1].split()[0]

    def neighbour_of_vip(self, role: str) -> str:
        return ip("-n", self.ns(role), "neigh", "show", str(VIP.ip)).strip()


def build_lab() -> Lab:
    suffix = secrets.token_hex(3)
    names = {role: f"{PREFIX}{suffix}-{role}" for role in ("br", "a", "b", "c")}
    lab = Lab(names, {role: f"mwv{role}{suffix}" for role in HOSTS})
    created: list[str] = []
    try:
        for name in names.values():
            ip("netns", "add", name)
            created.append(name)
        br = names["br"]
        ip("-n", br, "link", "add", "br0", "type", "bridge")
        ip("-n", br, "link", "set", "br0", "up")
        for role, address in HOSTS.items():
            port = lab.ports[role]
            ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
               names[role])  # fmt: skip
            ip("-n", br, "link", "set", port, "master", "br0", "up")
            ip("-n", names[role], "addr", "add", address, "dev", "eth0")
            ip("-n", names[role], "link", "set", "eth0", "up")
            ip("-n", names[role], "link", "set", "lo", "up")
    except BaseException:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], timeout=10, check=False)
        raise
    return lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed")
    probe = f"{PREFIX}probe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    subprocess.run(["ip", "netns", "del", probe], timeout=10, check=False)
    remove_stale_namespaces()
    made = build_lab()
    try:
        yield made
    finally:
        for name in made.names.values():
            subprocess.run(["ip", "netns", "del", name], timeout=10, check=False)
        assert not any((NETNS_DIR / name).exists() for name in made.names.values())


async def listen_as(name: str, netns: str) -> asyncio.Server:
    """A TCP server on 0.0.0.0:PORT in `netns` answering its own name."""
    sock = await asyncio.to_thread(create_socket, netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", PORT))
    sock.listen()
    sock.setblocking(False)

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name.encode())
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, sock=sock)


async def ask_vip(client_ns: str, timeout_s: float = 0.2) -> str | None:
    """Which server answers on the VIP from `client_ns` (None: nobody within `timeout_s`)."""
    sock = await asyncio.to_thread(create_socket, client_ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, (str(VIP.ip), PORT))
            return (await loop.sock_recv(sock, 16)).decode() or None
    except (TimeoutError, OSError):
        return None
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def servers(lab: Lab) -> AsyncIterator[None]:
    started = [await listen_as(role, lab.ns(role)) for role in ("a", "b")]
    try:
        yield
    finally:
        for server in started:
            server.close()
            await server.wait_closed()


async def test_vip_moves_to_the_spare_and_the_old_owner_releases_it(lab: Lab) -> None:
    clock = SystemClock()
    mover_a = NetlinkAddressMover(clock, netns=lab.ns("a"))
    mover_b = NetlinkAddressMover(clock, netns=lab.ns("b"))
    async with servers(lab):
        await mover_a.claim("s1", VIP, "eth0")
        await mover_a.claim("s1", VIP, "eth0")  # idempotent
        assert await wait_until(lambda: _answers(lab, "a"), 5.0)
        assert lab.mac("a") in lab.neighbour_of_vip("c")

        lab.link("a", up=False)  # a dies holding the address; it releases nothing
        started = time.monotonic()
        claim = asyncio.create_task(mover_b.claim("s1", VIP, "eth0"))
        await wait_until(lambda: _answers(lab, "b", timeout_s=0.05), 10.0, interval_s=0.01)
        took_s = time.monotonic() - started
        await claim
        print(f"\nclient reached the VIP on b {took_s:.3f} s after b began to claim it")
        # The announcement, not a neighbour cache timing out (5-20 s), moved the client over:
        # its entry names b's MAC already (the speed itself is the benchmark's to measure).
        assert lab.mac("b") in lab.neighbour_of_vip("c")

        lab.link("a", up=True)  # a comes back, the address still on its interface
        assert lab.has_vip("a") and lab.has_vip("b")
        keeper = VipKeeper(
            vips={"s1": Vip(VIP, "eth0")},
            mover=mover_a,
            serving=lambda: (),
            clock=clock,
            interval_s=0.1,
        )
        plan = await keeper.sync()  # a's start-up: it serves nothing, so it releases s1
        assert plan.release == ("s1",)
        await mover_a.release("s1", VIP, "eth0")  # idempotent
        assert not lab.has_vip("a") and lab.has_vip("b")
        assert await ask_vip(lab.ns("c"), timeout_s=1.0) == "b"


async def test_without_gratuitous_arp_the_client_keeps_the_old_mac(lab: Lab) -> None:
    """Informative: what the announcements are for."""
    clock = SystemClock()
    async with servers(lab):
        await NetlinkAddressMover(clock, netns=lab.ns("a")).claim("s1", VIP, "eth0")
        assert await wait_until(lambda: _answers(lab, "a"), 5.0)
        lab.link("a", up=False)
        silent = NetlinkAddressMover(clock, netns=lab.ns("b"), announcements=0)
        await silent.claim("s1", VIP, "eth0")
        assert await ask_vip(lab.ns("c"), timeout_s=0.5) is None
        assert lab.mac("a") in lab.neighbour_of_vip("c")


async def _answers(lab: Lab, role: str, timeout_s: float = 0.2) -> bool:
    return await ask_vip(lab.ns("c"), timeout_s) == role


async def test_missing_interface(lab: Lab) -> None:
    mover = NetlinkAddressMover(SystemClock(), netns=lab.ns("c"))
    await mover.release("s1", VIP, "nosuch0")  # nothing there: released
    with pytest.raises(AddressMoveError, match="no interface 'nosuch0'"):
        await mover.claim("s1", VIP, "nosuch0")
