#!/usr/bin/env python3
"""Leader fail-over benchmark: SIGKILL the Raft leader's process group, time the new agreement.

Each trial: a 3-voter local cluster (real agent processes on 127.0.0.1) is stable and every
agent agrees on leader L; L's whole process group gets SIGKILL; the clock stops when both
survivors report the same new leader in /v1/status. L is then restarted from its journal and
the cluster settles before the next trial. Prints a table and writes JSON.

    python scripts/bench/leader_failover.py --trials 20 --json bench-results/leader_failover.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.clock import SystemClock  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.launcher import LocalCluster  # noqa: E402
from tests.support import cluster_config, write_config  # noqa: E402


async def leaders(cluster: LocalCluster, names: list[str]) -> dict[str, Any]:
    answers = await asyncio.gather(*(cluster.get_json(n, "/v1/status") for n in names))
    return {n: (a[1].get("leader") if a else None) for n, a in zip(names, answers, strict=True)}


async def agreed(cluster: LocalCluster, names: list[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = set((await leaders(cluster, names)).values())
        if len(seen) == 1 and (leader := seen.pop()) in names:
            return str(leader)
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no agreed leader among {names} within {timeout_s} s")


async def trial(cluster: LocalCluster, settle_s: float) -> dict[str, Any]:
    everyone = list(cluster.servers)
    leader = await agreed(cluster, everyone, 30)
    await asyncio.sleep(settle_s)  # idle connections are where pysyncobj's election bug bites
    leader = await agreed(cluster, everyone, 30)
    survivors = [n for n in everyone if n != leader]
    started = time.monotonic()
    cluster.kill(leader, signal.SIGKILL)
    new_leader = await agreed(cluster, survivors, 30)
    elapsed = time.monotonic() - started
    await cluster.wait_exit(leader, 5)
    await cluster.start_server(leader)
    if await cluster.wait_ready(30, [leader]):
        raise RuntimeError(f"{leader} did not rejoin; see {cluster.log_dir}")
    return {"killed": leader, "new_leader": new_leader, "seconds": elapsed}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[rank]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="moonwatch-bench-") as tmp:
        root = Path(tmp)
        path = write_config(root / "cluster.yml", cluster_config(root / "data"))
        cluster = LocalCluster(path, load_config(path), SystemClock())
        results: list[dict[str, Any]] = []
        try:
            await cluster.start()
            if await cluster.wait_ready(30):
                raise RuntimeError(f"cluster did not start; see {cluster.log_dir}")
            for number in range(1, args.trials + 1):
                result = await trial(cluster, args.settle)
                results.append(result)
                print(
                    f"trial {number:3d}: killed {result['killed']}, "
                    f"{result['new_leader']} leads after {result['seconds']:.3f} s",
                    flush=True,
                )
        finally:
            await cluster.stop()
    seconds = [r["seconds"] for r in results]
    return {
        "benchmark": "leader_failover",
        "trials": len(results),
        "voters": 3,
        "settle_s": args.settle,
        "median_s": statistics.median(seconds),
        "p99_s": percentile(seconds, 0.99),
        "max_s": max(seconds),
        "min_s": min(seconds),
        "results": results,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--settle", type=float, default=2.0, help="stable seconds before a kill")
    parser.add_argument("--json", type=Path, default=Path("bench-results/leader_failover.json"))
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    report = asyncio.run(main_async(args))
    print()
    print(f"{'trials':>8} {'median s':>10} {'p99 s':>10} {'max s':>10} {'min s':>10}")
    print(
        f"{report['trials']:>8} {report['median_s']:>10.3f} {report['p99_s']:>10.3f} "
        f"{report['max_s']:>10.3f} {report['min_s']:>10.3f}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
