#!/usr/bin/env python3
"""App load benchmark: concurrent clients read threads and post messages through the edge.

A three-server local cluster (real agents, real app instances), once with the slot's data on
SQLite under its data directory and once on PostgreSQL (a throwaway server started here, when
the Debian package is installed; `--database` picks one). One tenant is provisioned with
`python -m app.admin`, its owner signs in through the API, creates a space and ten threads;
then `--clients` clients (50 by default) run for `--seconds`, each request either reading a
thread's newest messages (GET) or posting a message (POST, one in `--write-every`), through
the edges of all servers in turn. Printed, and written as JSON: requests/s, and p50/p99
latency and error count for reads and for writes, per database.

    python scripts/bench/app_load.py --json bench-results/app_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.clock import SystemClock  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.driver import DATABASE_URL_ENV  # noqa: E402
from agent.launcher import LocalCluster  # noqa: E402
from tests.support import cluster_config, write_config  # noqa: E402
from tests.support_pg import PostgresServer, pg_bin_dir  # noqa: E402

TENANT = "t1x1"
PASSWORD = "correct horse battery staple"


@dataclass
class Ops:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self, seconds: float) -> dict[str, float]:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            if not ordered:
                return float("nan")
            return round(1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)

        return {
            "requests": len(ordered) + self.errors,
            "per_s": round(len(ordered) / seconds, 1),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "errors": self.errors,
        }


class Session:
    def __init__(self, http: aiohttp.ClientSession, edges: list[str]) -> None:
        self.http = http
        self.edges = edges
        self.headers = {"Host": f"{TENANT}.localhost", "Origin": f"http://{TENANT}.localhost"}

    async def call(self, method: str, path: str, n: int, body: Any = None) -> tuple[int, Any]:
        url = self.edges[n % len(self.edges)] + "/api/v1" + path
        async with self.http.request(method, url, json=body, headers=self.headers) as resp:
            if "mw_session" in resp.cookies:
                self.headers["Cookie"] = f"mw_session={resp.cookies['mw_session'].value}"
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:  # an edge's or a fenced instance's HTML page: counted as an error
                return resp.status, None


async def prepare(s: Session, setup_token: str) -> list[str]:
    body = {"token": setup_token, "display_name": "Bench", "password": PASSWORD}
    status, answer = await s.call("POST", "/invitations/accept", 0, body)
    if status != 201:
        raise RuntimeError(f"cannot sign in: {status} {answer}")
    _, space = await s.call("POST", "/spaces", 0, {"name": "load"})
    threads = []
    for i in range(10):
        _, thread = await s.call("POST", f"/spaces/{space['id']}/threads", 0, {"title": f"t{i}"})
        threads.append(str(thread["id"]))
        await s.call("POST", f"/threads/{thread['id']}/messages", 0, {"body": "first"})
    return threads


async def client(
    s: Session, threads: list[str], until: float, write_every: int, reads: Ops, writes: Ops
) -> None:
    rng = random.Random()
    n = rng.randrange(1000)
    while time.monotonic() < until:
        n += 1
        thread = rng.choice(threads)
        write = n % write_every == 0
        ops = writes if write else reads
        started = time.monotonic()
        try:
            if write:
                body = {"body": f"message {n} from a load client"}
                status, _ = await s.call("POST", f"/threads/{thread}/messages", n, body)
            else:
                status, _ = await s.call("GET", f"/threads/{thread}/messages?limit=20", n)
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        if status in (200, 201):
            ops.latencies.append(time.monotonic() - started)
        else:
            ops.errors += 1


def provision(data_dir: Path, database_url: str | None) -> str:
    env = {**os.environ, **({DATABASE_URL_ENV: database_url} if database_url else {})}
    done = subprocess.run(
        [sys.executable, "-m", "app.admin", "tenant-create", "--data-dir",
         str(data_dir / "slots" / "s1"), "--name", TENANT, "--admin-email", "bench@x.test"],
        capture_output=True, text=True, check=True, timeout=60, env=env,
    )  # fmt: skip
    return str(json.loads(done.stdout.strip().splitlines()[-1])["setup_token"])


def cpu_seconds(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds used so far by each agent (edge included), its app instances, and us."""
    used = {"bench client": sum(psutil.Process().cpu_times()[:2])}
    for name, server in cluster.servers.items():
        agent = psutil.Process(server.process.pid)
        used[f"{name} agent"] = sum(agent.cpu_times()[:2])
        apps = [c for c in agent.children() if "-m app" in " ".join(c.cmdline())]
        used[f"{name} apps"] = sum(sum(c.cpu_times()[:2]) for c in apps)
    return used


async def load(args: argparse.Namespace, edges: list[str], token: str) -> tuple[Ops, Ops]:
    timeout = aiohttp.ClientTimeout(total=10.0)
    connector = aiohttp.TCPConnector(limit=args.clients * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        s = Session(http, edges)
        threads = await prepare(s, token)
        reads, writes = Ops(), Ops()
        until = time.monotonic() + args.seconds
        await asyncio.gather(
            *(
                client(s, threads, until, args.write_every, reads, writes)
                for _ in range(args.clients)
            )
        )
    return reads, writes


async def run(args: argparse.Namespace, database_url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="moonwatch-app-load-") as tmp:
        data = Path(tmp) / "data"
        config = cluster_config(data, actives=3)
        if database_url is not None:
            config["slots"][0]["database_url"] = database_url
        path = write_config(Path(tmp) / "cluster.yml", config)
        cluster = LocalCluster(path, load_config(path), SystemClock())
        try:
            await cluster.start()
            if await cluster.wait_ready(30) or not await cluster.wait_serving(30):
                raise RuntimeError(f"cluster did not come up; logs in {cluster.log_dir}")
            token = provision(data, database_url)
            edges = [s.edge_url for s in cluster.config.servers]
            before = cpu_seconds(cluster)
            reads, writes = await load(args, edges, token)
            after = cpu_seconds(cluster)
        finally:
            await cluster.stop(timeout_s=10.0)
    return {
        "machine": platform.node(),
        "database": "sqlite" if database_url is None else "postgresql",
        "clients": args.clients,
        "seconds": args.seconds,
        "write_every": args.write_every,
        "reads": reads.summary(args.seconds),
        "writes": writes.summary(args.seconds),
        "cpu_share": {
            k: round((after[k] - before.get(k, 0.0)) / args.seconds, 2) for k in sorted(after)
        },
    }


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    if args.database in ("sqlite", "both"):
        results.append(asyncio.run(run(args, None)))
    if args.database in ("postgresql", "both"):
        if pg_bin_dir() is None:
            print("PostgreSQL is not installed here (Debian package postgresql): skipped")
            return results
        with tempfile.TemporaryDirectory(prefix="moonwatch-app-load-pg-") as logs:
            server = PostgresServer(Path(logs))
            server.start()
            try:
                results.append(asyncio.run(run(args, server.create_database())))
            finally:
                server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--write-every", type=int, default=5, help="one request in N posts")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    results = run_all(args)
    print("| database | requests | per s | p50 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        for kind in ("reads", "writes"):
            r = result[kind]
            print(
                f"| {result['database']} | {kind} | {r['per_s']} | {r['p50_ms']} | "
                f"{r['p99_ms']} | {r['errors']} |"
            )
    for result in results:
        busy = ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_share"].items() if v >= 0.05)
        print(f"{result['database']}: CPU cores busy during the load: {busy}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
