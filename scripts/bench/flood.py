#!/usr/bin/env python3
"""Tenant flood benchmark: one tenant floods at 20x its limit while five others carry on.

A three-server local cluster (real agent processes on 127.0.0.1, a local mosquitto for the
traffic reports when one is installed), six tenants. Five tenants send a steady rate each
through the edges in turn; first alone (the baseline), then while the sixth tenant floods every
edge at `--flood-x` times its requests/s limit. Printed, and written as JSON:
  - the time from the flood's start (it crosses the limit within its first second) until every
    edge refuses the flooding tenant with the cluster's stop (`X-Moonwatch-Stopped`);
  - the flooding tenant's share of 503 answers during the flood;
  - the normal tenants' success ratio and p50/p99 latency, baseline against flood.

    python scripts/bench/flood.py --json bench-results/flood.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.clock import SystemClock  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.launcher import LocalCluster  # noqa: E402
from tests.support import cluster_config, free_port_block, write_config  # noqa: E402

LIMIT_RPS = 20.0
FLOODER = "t1x1"
NORMAL = ("t1x2", "t2x1", "t2x2", "t3x1", "t3x2")


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    refused: int = 0

    def record(self, status: int, seconds: float) -> None:
        if status == 200:
            self.ok += 1
            self.latencies.append(seconds)
        else:
            self.failed += 1
            self.refused += status == 503

    def summary(self) -> dict[str, float]:
        total = self.ok + self.failed
        return {
            "requests": total,
            "success": round(self.ok / total, 5) if total else 0.0,
            "p50_ms": round(1000 * percentile(self.latencies, 0.5), 2),
            "p99_ms": round(1000 * percentile(self.latencies, 0.99), 2),
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))]


async def one(http: aiohttp.ClientSession, edge: str, tenant: str) -> tuple[int, float, bool]:
    started = time.monotonic()
    try:
        async with http.get(f"{edge}/", headers={"Host": f"{tenant}.localhost"}) as resp:
            await resp.read()
            stopped = "X-Moonwatch-Stopped" in resp.headers
            return resp.status, time.monotonic() - started, stopped
    except (aiohttp.ClientError, TimeoutError):
        return 0, time.monotonic() - started, False


async def steady(
    http: aiohttp.ClientSession, edges: list[str], rate: float, seconds: float, into: Samples
) -> None:
    """Every normal tenant at `rate` requests/s, open loop, edges in turn."""
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    n = 0

    async def send(tenant: str, edge: str) -> None:
        status, took, _ = await one(http, edge, tenant)
        into.record(status, took)

    while (now := time.monotonic()) - start < seconds:
        for tenant in NORMAL:
            tasks.append(asyncio.create_task(send(tenant, edges[n % len(edges)])))
            n += 1
        await asyncio.sleep(max(0.0, start + (n / len(NORMAL)) / rate - now))
    await asyncio.gather(*tasks)


async def flood(
    http: aiohttp.ClientSession,
    edges: list[str],
    rate: float,
    seconds: float,
    into: Samples,
    stopped_at: dict[str, float],
    started: float,
) -> None:
    """The flooding tenant at `rate` requests/s over every edge, at most 200 in flight."""
    slots = asyncio.Semaphore(200)
    tasks: list[asyncio.Task[None]] = []
    n = 0

    async def send(edge: str) -> None:
        async with slots:
            status, took, stopped = await one(http, edge, FLOODER)
        into.record(status, took)
        if stopped and edge not in stopped_at:
            stopped_at[edge] = time.monotonic() - started

    while (now := time.monotonic()) - started < seconds:
        tasks.append(asyncio.create_task(send(edges[n % len(edges)])))
        n += 1
        await asyncio.sleep(max(0.0, started + n / rate - now))
    await asyncio.gather(*tasks)


def config(data: Path, with_broker: bool) -> dict[str, Any]:
    doc = cluster_config(data, actives=3, spares=0, voters=3)
    doc["throttle"] = {"limits": {"rps": LIMIT_RPS, "share": 0.9, "concurrent": 50}}
    if with_broker:
        doc["mqtt"] = {"host": "127.0.0.1", "port": free_port_block(1), "managed": True}
    return doc


async def flood_worker(args: argparse.Namespace) -> None:
    """The flood in its own process, so that it does not slow down the neighbours' client."""
    edges = args.worker_edges.split(",")
    flooded = Samples()
    stopped_at: dict[str, float] = {}
    timeout = aiohttp.ClientTimeout(total=5.0)
    connector = aiohttp.TCPConnector(limit=400)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        await flood(
            http, edges, args.worker_rps, args.seconds, flooded, stopped_at, time.monotonic()
        )
    print(
        json.dumps(
            {
                "requests": flooded.ok + flooded.failed,
                "refused": flooded.refused,
                "stopped_at": stopped_at,
            }
        ),
        flush=True,
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="moonwatch-flood-") as tmp:
        broker = shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/sbin:/bin") is not None
        path = write_config(Path(tmp) / "cluster.yml", config(Path(tmp) / "data", broker))
        cluster = LocalCluster(path, load_config(path), SystemClock())
        try:
            await cluster.start()
            if await cluster.wait_ready(30) or not await cluster.wait_serving(30):
                raise RuntimeError(f"cluster did not come up; logs in {cluster.log_dir}")
            edges = [s.edge_url for s in cluster.config.servers]
            timeout = aiohttp.ClientTimeout(total=5.0)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                baseline = Samples()
                await steady(http, edges, args.rate, args.seconds, baseline)
                during = Samples()
                worker = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--flood-worker",
                    "--worker-edges",
                    ",".join(edges),
                    "--worker-rps",
                    str(args.flood_x * LIMIT_RPS),
                    "--seconds",
                    str(args.seconds),
                    stdout=asyncio.subprocess.PIPE,
                )
                await steady(http, edges, args.rate, args.seconds, during)
                out, _ = await worker.communicate()
        finally:
            await cluster.stop(timeout_s=10.0)
    flooded = json.loads(out.decode().strip().splitlines()[-1])
    stopped_at = flooded["stopped_at"]
    everywhere = max(stopped_at.values()) if len(stopped_at) == len(edges) else None
    total = flooded["requests"]
    return {
        "machine": platform.node(),
        "broker": broker,
        "limit_rps": LIMIT_RPS,
        "flood_rps": args.flood_x * LIMIT_RPS,
        "normal_rps_per_tenant": args.rate,
        "seconds": args.seconds,
        "stopped_everywhere_after_s": round(everywhere, 3) if everywhere is not None else None,
        "stopped_per_edge_s": {e: round(t, 3) for e, t in sorted(stopped_at.items())},
        "flood_503_share": round(flooded["refused"] / total, 4) if total else None,
        "flood_requests": total,
        "baseline": baseline.summary(),
        "during_flood": during.summary(),
    }


def table(result: dict[str, Any]) -> str:
    base, during = result["baseline"], result["during_flood"]
    ratio = during["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
    rows = [
        ("stopped at every edge after (s)", result["stopped_everywhere_after_s"]),
        ("flooding tenant: 503 share", result["flood_503_share"]),
        ("flooding tenant: requests", result["flood_requests"]),
        ("neighbours success, baseline", base["success"]),
        ("neighbours success, during flood", during["success"]),
        ("neighbours p50 ms, baseline / flood", f"{base['p50_ms']} / {during['p50_ms']}"),
        ("neighbours p99 ms, baseline / flood", f"{base['p99_ms']} / {during['p99_ms']}"),
        ("neighbours p99 flood / baseline", round(ratio, 2)),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"| {'-' * width} | ----- |"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s per normal tenant")
    parser.add_argument("--flood-x", type=float, default=20.0, help="flood rate / limit")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--flood-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-edges", help=argparse.SUPPRESS)
    parser.add_argument("--worker-rps", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_worker:
        asyncio.run(flood_worker(args))
        return
    result = asyncio.run(run(args))
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
