#!/usr/bin/env python3
"""Server fail-over benchmark: SIGKILL a random active server, time the verdict and the service.

A five-server local cluster like the demo (3 active, 2 spare, 3 voters; real agent processes on
127.0.0.1). Each trial kills one active server's whole process group and measures
  (a) kill -> `server_failed` committed for it (seen in /v1/decisions of a survivor), and
  (b) kill -> the edge answers one of its tenants with 200 from another server.
The killed server is then restarted (it comes back quarantined) and returned to the spare pool
by the operator call, so every trial starts with two spares. Verdicts against servers that were
not killed are counted as false verdicts; the overlap checker runs over every instance's
records at the end. Idle CPU and RSS per agent are sampled before the first trial.

    python scripts/bench/failover.py --trials 20 --json bench-results/failover.json
    python scripts/bench/failover.py --driver docker --trials 10 \
        --json bench-results/failover-docker.json

With `--driver docker` the app instances are containers: the benchmark starts its own dockerd
(Debian's docker.io; no registry) and builds the app image first, as the tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.clock import SystemClock  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.docker_image import Layout, build_image  # noqa: E402
from agent.launcher import LocalCluster  # noqa: E402
from tests.support import cluster_config, write_config  # noqa: E402
from tests.support_docker import start_dockerd  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))]


async def status(cluster: LocalCluster) -> dict[str, Any]:
    for name in cluster.alive():
        answer = await cluster.get_json(name, "/v1/status")
        if answer is not None and answer[0] == 200:
            return answer[1]
    raise RuntimeError("no agent answers")


async def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise TimeoutError(f"not within {timeout_s} s")


async def idle_usage(cluster: LocalCluster, seconds: float) -> dict[str, dict[str, float]]:
    procs = {n: psutil.Process(s.process.pid) for n, s in cluster.servers.items()}
    for proc in procs.values():
        proc.cpu_percent(None)
    await asyncio.sleep(seconds)
    return {
        name: {
            "cpu_percent": round(proc.cpu_percent(None), 2),
            "rss_mib": round(proc.memory_info().rss / 2**20, 1),
        }
        for name, proc in procs.items()
    }


async def verdict_seen(cluster: LocalCluster, victim: str, after_seq: int) -> bool:
    for name in cluster.alive():
        answer = await cluster.get_json(name, "/v1/decisions")
        if answer is None:
            continue
        return any(
            d["kind"] == "server_failed" and d["subject"] == victim and int(d["id"][1:]) > after_seq
            for d in answer[1]["decisions"]
        )
    return False


async def served_elsewhere(
    http: aiohttp.ClientSession, edges: list[str], host: str, victim: str
) -> bool:
    for edge in edges:
        try:
            async with http.get(edge + "/", headers={"Host": host}) as resp:
                server = resp.headers.get("X-Moonwatch-Server")
                return resp.status == 200 and server not in (None, victim)
        except (aiohttp.ClientError, TimeoutError):
            continue
    return False


async def trial(
    cluster: LocalCluster, http: aiohttp.ClientSession, rng: random.Random
) -> dict[str, Any]:
    doc = await status(cluster)
    owners = {s["owner"]: s for s in doc["slots"] if s["state"] == "serving"}
    victim = rng.choice(sorted(owners))
    tenant = owners[victim]["tenants"][0]
    host = f"{tenant}.{cluster.config.base_domain}"
    decisions = await cluster.get_json(cluster.alive()[0], "/v1/decisions")
    last_seq = int(decisions[1]["decisions"][-1]["id"][1:]) if decisions else 0
    survivors = [s.edge_url for s in cluster.config.servers if s.name != victim]

    killed_at = time.monotonic()
    cluster.kill(victim, signal.SIGKILL)
    verdict_s = served_s = None
    while time.monotonic() - killed_at < 30 and (verdict_s is None or served_s is None):
        if verdict_s is None and await verdict_seen(cluster, victim, last_seq):
            verdict_s = time.monotonic() - killed_at
        if served_s is None and await served_elsewhere(http, survivors, host, victim):
            served_s = time.monotonic() - killed_at
        await asyncio.sleep(0.01)
    await cluster.wait_exit(victim, 5)
    await restore(cluster, victim)
    return {"killed": victim, "tenant": tenant, "verdict_s": verdict_s, "serving_s": served_s}


async def restore(cluster: LocalCluster, victim: str) -> None:
    """Restart the killed server, wait for it to come back quarantined, return it to the pool."""
    await cluster.start_server(victim)

    async def state_of(wanted: str) -> bool:
        doc = await status(cluster)
        return any(s["name"] == victim and s["state"] == wanted for s in doc["servers"])

    await wait_for(lambda: state_of("quarantined"), 30, 0.1)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent", "return", victim, "--config", str(cluster.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"return failed: {done.stderr}")
    await wait_for(lambda: state_of("up"), 30, 0.1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.driver == "process":
        return await run_with(args, None)
    from agent.docker_client import open_docker

    with start_dockerd() as daemon:
        if isinstance(daemon, str):
            raise SystemExit(f"no dockerd: {daemon}")
        client = open_docker(daemon.url, 300)
        image = build_image(client, Layout.of_this_interpreter(REPO / "app"))
        client.close()
        return await run_with(
            args, {"driver": "docker", "docker": {"url": daemon.url, "image": image}}
        )


async def run_with(args: argparse.Namespace, app: dict[str, Any] | None) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="moonwatch-bench-") as tmp:
        root = Path(tmp)
        # One failure at a time, every few seconds: that is not a cascade, so the benchmark
        # raises the cascade threshold out of the way (tests/chaos covers cascade mode).
        config = cluster_config(
            root / "data",
            actives=3,
            spares=2,
            voters=3,
            cascade={"min_verdicts": 1000, "normal_budget": 1000},
        )
        if app is not None:
            config["app"] = app
        path = write_config(root / "cluster.yml", config)
        cluster = LocalCluster(path, load_config(path), SystemClock())
        results: list[dict[str, Any]] = []
        try:
            await cluster.start()
            if await cluster.wait_ready(30) or not await cluster.wait_serving(30):
                raise RuntimeError(f"cluster did not start; see {cluster.log_dir}")
            usage = await idle_usage(cluster, args.idle)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
                for number in range(1, args.trials + 1):
                    await cluster.wait_serving(30)
                    result = await trial(cluster, http, rng)
                    results.append(result)
                    print(
                        f"trial {number:3d}: killed {result['killed']}: verdict "
                        f"{result['verdict_s']} s, serving again {result['serving_s']} s",
                        flush=True,
                    )
            answer = await cluster.get_json(cluster.alive()[0], "/v1/decisions")
            decisions = answer[1]["decisions"] if answer else []
        finally:
            await cluster.stop()
        overlap = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(REPO / "scripts" / "check_overlap.py"),
                str(root / "data" / "overlap"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    verdicts = [r["verdict_s"] for r in results if r["verdict_s"] is not None]
    serving = [r["serving_s"] for r in results if r["serving_s"] is not None]
    failed = [d for d in decisions if d["kind"] == "server_failed"]
    killed = [r["killed"] for r in results]
    return {
        "benchmark": "failover",
        "driver": args.driver,
        "trials": len(results),
        "verdict": summary(verdicts, len(results)),
        "serving_again": summary(serving, len(results)),
        "false_verdicts": max(0, len(failed) - len(killed)),
        "overlap_check_exit": overlap.returncode,
        "overlap_report": overlap.stdout[-4000:],
        "idle": usage,
        "results": results,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def summary(values: list[float], trials: int) -> dict[str, Any]:
    if not values:
        return {"missing": trials}
    return {
        "median_s": round(statistics.median(values), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
        "missing": trials - len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle sampling")
    parser.add_argument("--json", type=Path, default=Path("bench-results/failover.json"))
    parser.add_argument("--driver", choices=("process", "docker"), default="process")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print()
    print(f"{'measure':<22} {'median s':>9} {'p99 s':>9} {'max s':>9} {'missing':>8}")
    for key in ("verdict", "serving_again"):
        row = report[key]
        print(
            f"{key:<22} {row.get('median_s', '-'):>9} {row.get('p99_s', '-'):>9} "
            f"{row.get('max_s', '-'):>9} {row.get('missing', 0):>8}"
        )
    print(
        f"false verdicts: {report['false_verdicts']}   overlap check exit: "
        f"{report['overlap_check_exit']} (0 = no overlap)"
    )
    print(f"\n{'agent':<6} {'idle cpu %':>10} {'rss MiB':>8}")
    for name, usage in report["idle"].items():
        print(f"{name:<6} {usage['cpu_percent']:>10} {usage['rss_mib']:>8}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
