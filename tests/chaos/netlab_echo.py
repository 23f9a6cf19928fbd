"""TCP and UDP echo for lab tests, run inside a namespace.

`python -m tests.chaos.netlab_echo serve --port P` echoes on TCP and UDP port P (all
addresses) until killed, printing "ready" once listening;
`python -m tests.chaos.netlab_echo measure --host H --port P --count N` prints one JSON
line: {"tcp": [round trips in s], "udp": [...]} (one TCP connection, N exchanges each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import cast

TIMEOUT_S = 5.0


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # 3.11: not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # to the source address, like most UDP servers


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(_tcp_echo, "0.0.0.0", port, reuse_address=True)
    await loop.create_datagram_endpoint(_UdpEcho, local_addr=("0.0.0.0", port))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def measure(host: str, port: int, count: int) -> dict[str, list[float]]:
    """Round trips of `count` small TCP exchanges on one connection, then of UDP datagrams."""
    tcp: list[float] = []
    with socket.create_connection((host, port), TIMEOUT_S) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for n in range(count):
            payload = f"tcp {n}".encode()
            sent = time.perf_counter()
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError("echo closed the connection")
                got += chunk
            tcp.append(time.perf_counter() - sent)
    udp: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        for n in range(count):
            payload = f"udp {n}".encode()
            sent = time.perf_counter()
            sock.sendto(payload, (host, port))
            while sock.recv(65536) != payload:
                pass  # a late answer to an earlier datagram
            udp.append(time.perf_counter() - sent)
    return {"tcp": tcp, "udp": udp}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.netlab_echo")
    parser.add_argument("mode", choices=["serve", "measure"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        asyncio.run(serve(args.port))
    else:
        print(json.dumps(measure(args.host, args.port, args.count)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
