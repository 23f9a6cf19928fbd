#!/usr/bin/env python3
"""Voter replacement benchmark: SIGKILL the Raft leader, time until a spare votes in its place.

Each trial starts a fresh five-server local cluster (3 active voters, 2 spares; real agent
processes on 127.0.0.1), kills the Raft leader's whole process group and measures, from the
kill, (a) the verdict, (b) `voter_added` (the spare counted by Raft, caught up), and (c)
`voter_removed` (the group is back to three voters that survive one more failure).

    python scripts/bench/voter_replacement.py --trials 5 --json bench-results/voters.json
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


async def decisions(cluster: LocalCluster, dead: str) -> list[dict[str, Any]]:
    for name in cluster.alive():
        if name == dead:
            continue
        answer = await cluster.get_json(name, "/v1/decisions")
        if answer is not None and answer[0] == 200:
            return list(answer[1]["decisions"])
    return []


async def leader_of(cluster: LocalCluster) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for name in cluster.alive():
            answer = await cluster.get_json(name, "/v1/status")
            if answer is not None and answer[1].get("leader"):
                return str(answer[1]["leader"])
        await asyncio.sleep(0.05)
    raise RuntimeError("no leader")


async def trial(index: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"moonwatch-voters-{index}-") as tmp:
        doc = cluster_config(
            Path(tmp) / "data", actives=3, spares=2, voters=3, cascade={"min_verdicts": 10}
        )
        path = write_config(Path(tmp) / "cluster.yml", doc)
        cluster = LocalCluster(path, load_config(path), SystemClock())
        try:
            await cluster.start()
            if await cluster.wait_ready(30) or not await cluster.wait_serving(30):
                raise RuntimeError(f"cluster did not come up; logs in {cluster.log_dir}")
            leader = await leader_of(cluster)
            killed = time.monotonic()
            cluster.kill(leader, signal.SIGKILL)
            seen: dict[str, float] = {}
            deadline = killed + 60
            while "voter_removed" not in seen and time.monotonic() < deadline:
                for d in await decisions(cluster, leader):
                    kind = d["kind"]
                    if kind in ("server_failed", "voter_added", "voter_removed"):
                        seen.setdefault(kind, time.monotonic() - killed)
                await asyncio.sleep(0.02)
            if "voter_removed" not in seen:
                raise RuntimeError(f"voter not replaced within 60 s; logs in {cluster.log_dir}")
            return seen
        finally:
            await cluster.stop(timeout_s=10.0)


def row(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"| {name:<22} | {statistics.median(ordered):6.3f} | {ordered[-1]:6.3f} | "
        f"{ordered[0]:6.3f} |"
    )


async def main(trials: int) -> dict[str, Any]:
    results = [await trial(i) for i in range(trials)]
    return {
        "machine": platform.node(),
        "trials": trials,
        "results": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main(args.trials))
    print(f"| from the leader's kill  | median | max    | min    |  ({args.trials} trials)")
    print("| ---------------------- | ------ | ------ | ------ |")
    for kind in ("server_failed", "voter_added", "voter_removed"):
        print(row(kind, [r[kind] for r in result["results"]]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
