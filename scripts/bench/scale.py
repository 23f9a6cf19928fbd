#!/usr/bin/env python3
"""Failure detection at 100 to 1,000 servers: verdict latency, false verdicts, probe rate, CPU.

Each size runs the in-process scale simulation (tests/cluster/scalesim.py: every agent's real
SWIM detector and codec over an in-memory network with `--loss` on every link, fake time, the
real state machine, `plan_local` and `plan_leader` on a modelled Raft log) for `--minutes` of
simulated time. `--crashes` servers, spread evenly over the run, are killed and stay down; the
latency of each is crash -> `server_failed` committed. A verdict against any other server is a
false verdict. The probe rate counts every SWIM datagram (ping, ack, ping-req) sent by live
agents, per live server and simulated second; CPU is this process's time.process_time() per
simulated minute, for the whole simulated fleet.

    python scripts/bench/scale.py --sizes 100,300,1000 --json bench-results/scale.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from consensus.state import encode_state  # noqa: E402
from healer.witnesses import WITNESSES  # noqa: E402
from tests.cluster.scalesim import ScaleSim  # noqa: E402

_WARMUP_S = 5.0
_TAIL_S = 10.0  # no crash this close to the end: its verdict could not commit in the run


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def run_size(
    n: int,
    *,
    seed: int,
    loss: float,
    seconds: float,
    crashes: int,
    witness_count: int | None = WITNESSES,
) -> dict[str, Any]:
    """One simulation of `n` servers for `seconds` of fake time; the figures as a dict."""
    started = time.process_time()
    sim = ScaleSim(n, seed=seed, loss=loss, witness_count=witness_count)
    built = time.process_time()
    pick = random.Random(f"crashes-{seed}-{n}")
    span = max(0.0, seconds - _WARMUP_S - _TAIL_S)
    times = [_WARMUP_S + span * (i + 0.5) / crashes for i in range(crashes)] if crashes else []
    server_s = 0.0
    for at in [*times, seconds]:
        while sim.now < at - 1e-9:
            sim.step()
            server_s += len(sim.swim.names) - len(sim.crashes)
        if at < seconds:
            sim.kill(pick.choice([s for s in sim.alive() if s != sim.leader]))
    server_s *= sim.timing.step_s
    cpu_s = time.process_time() - built
    latencies = [c.verdict_at - c.at for c in sim.crashes.values() if c.verdict_at is not None]
    suspected = [c.suspected_at - c.at for c in sim.crashes.values() if c.suspected_at is not None]
    sent = sum(sim.swim.sent.values())
    return {
        "servers": n,
        "simulated_s": seconds,
        "loss": loss,
        "witnesses": witness_count,
        "crashes": len(sim.crashes),
        "detected": len(latencies),
        "verdict_p50_ms": _ms(percentile(latencies, 0.5)),
        "verdict_p99_ms": _ms(percentile(latencies, 0.99)),
        "verdict_max_ms": _ms(max(latencies, default=None)),
        "suspected_p50_ms": _ms(percentile(suspected, 0.5)),
        "false_verdicts": len(sim.false_verdicts),
        "false_verdict_subjects": [s for _, s in sim.false_verdicts],
        "suspicions": sim.suspicions_opened,
        "datagrams_per_server_s": round(sent / server_s, 3),
        "datagrams_by_type": dict(sim.swim.sent),
        "log_entries_per_s": round(sum(sim.committed.values()) / seconds, 2),
        "log_entries_by_kind": dict(sim.committed),
        "state_bytes": len(encode_state(sim.state).encode()),
        "build_cpu_s": round(built - started, 2),
        "cpu_s_per_sim_minute": round(cpu_s * 60.0 / seconds, 2),
    }


def _witnesses(text: str) -> int | None:
    return None if text == "all" else int(text)


def _print(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'servers':>7} {'crashes':>7} {'detected':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'false':>5} {'susp/min':>8} {'dgram/srv/s':>11} {'log/s':>7} {'state KiB':>9} "
        f"{'cpu s/min':>9}"
    )
    print(header)
    for r in rows:
        per_min = r["suspicions"] * 60.0 / r["simulated_s"]
        print(
            f"{r['servers']:>7} {r['crashes']:>7} {r['detected']:>8} "
            f"{r['verdict_p50_ms'] or '-':>7} {r['verdict_p99_ms'] or '-':>7} "
            f"{r['false_verdicts']:>5} {per_min:>8.1f} {r['datagrams_per_server_s']:>11.2f} "
            f"{r['log_entries_per_s']:>7.1f} {r['state_bytes'] / 1024:>9.1f} "
            f"{r['cpu_s_per_sim_minute']:>9.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000", help="comma-separated server counts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss", type=float, default=0.05, help="loss on every link, 0..1")
    parser.add_argument("--minutes", type=float, default=1.0, help="simulated minutes per size")
    parser.add_argument("--crashes", type=int, default=10, help="servers killed per size")
    parser.add_argument(
        "--witnesses", type=_witnesses, default=WITNESSES, help="witnesses per suspicion, or all"
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results/scale.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows = []
    for n in sizes:
        row = run_size(
            n,
            seed=args.seed,
            loss=args.loss,
            seconds=args.minutes * 60.0,
            crashes=args.crashes,
            witness_count=args.witnesses,
        )
        rows.append(row)
        print(f"{n} servers: {row['cpu_s_per_sim_minute']} CPU s per simulated minute", flush=True)
    print()
    _print(rows)
    report = {
        "bench": "scale",
        "argv": sys.argv[1:] if argv is None else argv,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
