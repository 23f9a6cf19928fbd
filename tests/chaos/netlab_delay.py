"""A delaying proxy for the network lab: holds every TCP chunk and UDP datagram `--delay-ms`.

Run inside one server's namespace (`python -m tests.chaos.netlab_delay --delay-ms 30
--tcp-port 7900 --udp-port 7901 --mark 28023`); tests/chaos/netlab_delay_fault.py installs the
rules that send that server's traffic to its peers here and starts and stops it.

- TCP arrives by `iptables -t nat -j REDIRECT` (connections the server opens); the original
  destination comes from SO_ORIGINAL_DST. Bytes are forwarded both ways, each chunk held the
  delay, in order (one queue per direction).
- UDP arrives by TPROXY (per packet, no conntrack state to go stale), so IP_RECVORIGDSTADDR
  gives the original destination. Each (sender, destination) flow gets an upstream socket;
  datagrams answered to that socket go back to the sender after the same delay, from a
  transparent socket bound to the original destination, so the sender sees the usual peer.
- Every socket towards a peer carries SO_MARK `--mark`: the rules let marked packets pass.

Prints "ready" once listening; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import cast

SO_ORIGINAL_DST = 80  # level SOL_IP
IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20  # the ancillary message has the same number (IP_ORIGDSTADDR)
SOL_IP = 0
LISTEN_HOST = "127.0.0.1"
CHUNK = 65536
QUEUE_CHUNKS = 256  # per direction: a slow reader holds back its writer
CONNECT_TIMEOUT_S = 5.0
FLOW_IDLE_S = 60.0
Address = tuple[str, int]


def parse_sockaddr_in(raw: bytes) -> Address:
    """(host, port) of a struct sockaddr_in (family, port big-endian, address)."""
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


def marked_socket(kind: int, mark: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    sock.setblocking(False)
    return sock


# ------------------------------------------------------------------------------ TCP


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy `reader` to `writer`, each chunk written `delay_s` after it was read; EOF last."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def read() -> None:
        while chunk := await reader.read(CHUNK):
            await queue.put((loop.time() + delay_s, chunk))
        await queue.put((loop.time() + delay_s, b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            due, chunk = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await reading


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _both_ways(client: Stream, server: Stream, delay_s: float) -> None:
    try:
        async with asyncio.TaskGroup() as pumps:  # one side failing ends both
            pumps.create_task(_pump(client[0], server[1], delay_s))
            pumps.create_task(_pump(server[0], client[1], delay_s))
    except* OSError:
        pass  # one side reset its connection


async def _relay(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, delay_s: float, mark: int
) -> None:
    """One redirected connection: connect to its original destination and pump both ways.
    Returns quietly when cancelled (the proxy stopping): the client sees its connection close."""
    sock = client_w.get_extra_info("socket")
    target = parse_sockaddr_in(sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16))
    upstream = marked_socket(socket.SOCK_STREAM, mark)
    loop = asyncio.get_running_loop()
    server_w: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await loop.sock_connect(upstream, target)
        server_r, server_w = await asyncio.open_connection(sock=upstream)
        await _both_ways((client_r, client_w), (server_r, server_w), delay_s)
    except (OSError, TimeoutError, asyncio.CancelledError):
        pass  # the peer is down or cut off, or the proxy stops
    finally:
        for w in (client_w, server_w):
            if w is not None:
                w.close()
        if server_w is None:
            upstream.close()


# ------------------------------------------------------------------------------ UDP


class _Flow(asyncio.DatagramProtocol):
    """Datagrams of one sender to one destination, and the answers coming back."""

    def __init__(self, proxy: UdpDelay, sender: Address, target: Address) -> None:
        self.proxy, self.sender, self.target = proxy, sender, target
        self.transport: asyncio.DatagramTransport | None = None
        self.answer_sock: socket.socket | None = None
        self.last = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # 3.11: not a subclass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.last = asyncio.get_running_loop().time()
        self.proxy.later(self._answer, data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a dead peer: UDP is best effort

    def forward(self, data: bytes) -> None:
        self.last = asyncio.get_running_loop().time()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)

    def _answer(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            if self.answer_sock is None:  # appear to the sender as the peer it wrote to
                self.answer_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.answer_sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
                self.answer_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.answer_sock.setblocking(False)
                self.answer_sock.bind(self.target)
            self.answer_sock.sendto(data, self.sender)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.answer_sock is not None:
            self.answer_sock.close()


class UdpDelay:
    """The TPROXY listener: learns each datagram's destination and sends it on, late."""

    def __init__(self, port: int, delay_s: float, mark: int) -> None:
        self.delay_s, self.mark = delay_s, mark
        self.flows: dict[tuple[Address, Address], _Flow] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
        self.sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
        self.sock.setblocking(False)
        self.sock.bind((LISTEN_HOST, port))
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def later(self, action: Callable[..., None], *args: object) -> None:
        self.loop.call_later(self.delay_s, action, *args)

    def _readable(self) -> None:
        for _ in range(64):  # drain what is queued, then yield to the loop
            try:
                data, ancdata, _flags, sender = self.sock.recvmsg(CHUNK, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            target = next(
                (parse_sockaddr_in(d) for lvl, kind, d in ancdata
                 if lvl == SOL_IP and kind == IP_RECVORIGDSTADDR),
                None,
            )  # fmt: skip
            if target is not None:
                self.later(self._send, data, sender, target)

    def _send(self, data: bytes, sender: Address, target: Address) -> None:
        flow = self.flows.get((sender, target))
        if flow is None:
            flow = _Flow(self, sender, target)
            self.flows[(sender, target)] = flow
            upstream = marked_socket(socket.SOCK_DGRAM, self.mark)
            with contextlib.suppress(OSError):
                upstream.connect(target)  # answers from `target` only
            self.loop.create_task(self._open(flow, upstream, data))
            return
        flow.forward(data)

    async def _open(self, flow: _Flow, upstream: socket.socket, first: bytes) -> None:
        try:
            await self.loop.create_datagram_endpoint(lambda: flow, sock=upstream)
        except OSError:
            upstream.close()
            self.flows.pop((flow.sender, flow.target), None)
            return
        flow.forward(first)

    def expire(self) -> None:
        now = self.loop.time()
        for key, flow in list(self.flows.items()):
            if now - flow.last > FLOW_IDLE_S:
                flow.close()
                del self.flows[key]

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for flow in self.flows.values():
            flow.close()


# ------------------------------------------------------------------------------ CLI


async def serve(delay_ms: float, tcp_port: int, udp_port: int, mark: int) -> None:
    delay_s = delay_ms / 1000
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relays: set[asyncio.Task[None]] = set()

    async def relay(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        relays.add(task)
        try:
            await _relay(r, w, delay_s, mark)
        finally:
            relays.discard(task)

    server = await asyncio.start_server(relay, LISTEN_HOST, tcp_port, reuse_address=True)
    udp = UdpDelay(udp_port, delay_s, mark)
    print(f"ready: delay {delay_ms} ms, tcp {tcp_port}, udp {udp_port}, mark {mark}", flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLOW_IDLE_S / 4)
            udp.expire()
    finally:
        udp.close()
        server.close()
        for task in list(relays):
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.netlab_delay")
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--tcp-port", type=int, required=True)
    parser.add_argument("--udp-port", type=int, required=True)
    parser.add_argument("--mark", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.delay_ms, args.tcp_port, args.udp_port, args.mark))
    return 0


if __name__ == "__main__":
    sys.exit(main())
