#!/usr/bin/env python3
"""Fail-over under packet loss: SIGKILL an active server while every server's link drops packets.

One network-lab cluster (tests/chaos/netlab*.py; root): 3 active, 2 spare, 3 voters, the default
timing, one namespace per server on a bridge. For each loss level, each trial drops that share
of the packets arriving on every server's link (the lab's loss fault), waits `--settle` seconds,
SIGKILLs the process group of one active server that is not the Raft leader (seeded choice) and
measures
  (a) detection: kill -> `server_failed` committed for it (seen in /v1/decisions of a survivor);
  (b) recovery: kill -> a survivor's edge answers one of its slot's tenants with 200 from
      another server (the serving watch's first answer elsewhere is kept in the JSON too).
Then the loss is healed, the killed agent restarted in its namespace (it comes back
quarantined) and returned to the spare pool by the operator call; the next trial waits until
the committed state shows every server up and every slot served, and up to 20 s for every agent
to agree on leader and slots (agents that do not are reported). The lab's three checkers
run through every level: two servers serving one slot (serving watch and check_overlap.py),
acknowledged writes lost, and verdicts against servers that were not killed (false verdicts,
printed with their evidence). Prints a table per loss level and writes JSON.

Voter replacement is off by default (`healing.replace_voters: false`; `--replace-voters` turns
it on), so that a trial measures fail-over alone: with it, each kill of a voter also moves a
Raft seat to a spare (about 7 s more before the cluster is whole again). `--victims a1,a3,...`
fixes the kill order, `--tcp-thin` sets the kernel's thin-stream linear retransmission
timeouts in every server's namespace, and `--keep-lab` keeps the logs and data.

    sudo .venv/bin/python scripts/bench/lossy_failover.py --loss 0,0.05,0.10 --trials 8 \
        --json bench-results/lossy_failover.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.chaos.netlab import LabUnavailable, require_lab  # noqa: E402
from tests.chaos.netlab_checks import Writer  # noqa: E402
from tests.chaos.netlab_cluster import BASE_DOMAIN, EDGE_PORT, LabCluster  # noqa: E402
from tests.chaos.netlab_fixtures import lab_dir  # noqa: E402
from tests.chaos.netlab_scenario import Scenario  # noqa: E402
from tests.support import wait_until  # noqa: E402

SERVER_HEADER = "X-Moonwatch-Server"
MEASURE_S = 40.0  # per trial: give up on a verdict or a moved slot after this long
HEALTHY_S = 120.0
# After a restore, how long every agent (the restarted one too) gets to agree on leader and
# slots before the next trial goes ahead anyway (and the laggards are reported).
AGREE_S = 20.0
# One failure every half minute is no cascade: keep cascade mode and the replacement budget out
# of the way, as scripts/bench/failover.py does (tests/chaos covers cascade mode).
# Linux: a TCP connection with few packets in flight (Raft's) retransmits at a fixed RTO for
# its first six retransmissions instead of doubling it each time.
THIN_SYSCTL = "net.ipv4.tcp_thin_linear_timeouts"
NO_CASCADE = {"min_verdicts": 1000, "normal_budget": 1000}


@dataclass
class Trial:
    loss: float
    number: int
    victim: str
    slot: str
    tenant: str
    leader: str
    killed_at: float  # wall clock, comparable with decisions' `at`
    verdict_s: float | None = None  # kill -> verdict seen in a survivor's /v1/decisions
    verdict_at_s: float | None = None  # kill -> the verdict's own `at`
    served_s: float | None = None  # kill -> 200 through a survivor's edge from another server
    served_by: str | None = None
    watch_served_s: float | None = None  # kill -> serving watch's first answer elsewhere
    restarted_at: float | None = None
    restore_s: float | None = None  # heal -> victim back as a spare and the cluster healthy
    laggards: list[str] = field(default_factory=list)  # agents not agreeing AGREE_S after that
    unrestored: str | None = None  # why the cluster was not healthy again (the level stops)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))]


def summary(values: list[float], trials: int) -> dict[str, Any]:
    if not values:
        return {"missing": trials}
    return {
        "p50_s": round(statistics.median(values), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
        "missing": trials - len(values),
    }


async def views(lab: LabCluster) -> dict[str, dict[str, Any] | None]:
    docs = await asyncio.gather(*(lab.get_json(n, "/v1/status") for n in lab.names))
    return dict(zip(lab.names, docs, strict=True))


def _view(doc: dict[str, Any]) -> tuple[Any, ...]:
    return (doc["leader"], tuple((s["name"], s["owner"], s["state"]) for s in doc["slots"]))


def laggards(docs: dict[str, dict[str, Any] | None]) -> list[str]:
    """Agents that do not answer, have no leader, or see another leader or other slots than
    the most common view."""
    seen = [_view(d) for d in docs.values() if d is not None and d["leader"] is not None]
    if not seen:
        return sorted(docs)
    common = max(set(seen), key=seen.count)
    return sorted(
        n for n, d in docs.items() if d is None or d["leader"] is None or _view(d) != common
    )


async def healthy(lab: LabCluster) -> bool:
    """The committed state, as the agents with a leader see it: one leader, every server up,
    every slot serving, normal mode, no voter change under way."""
    docs = await views(lab)
    lagging = laggards(docs)
    agreed = [d for n, d in docs.items() if d is not None and n not in lagging]
    if not agreed or len(lagging) * 2 >= len(docs):
        return False
    doc = agreed[0]
    return (
        doc["mode"] == "normal"
        and doc["voter_change"] is None
        and all(s["state"] == "up" for s in doc["servers"])
        and all(s["state"] == "serving" for s in doc["slots"])
    )


async def agree(lab: LabCluster) -> bool:
    return await healthy(lab) and not laggards(await views(lab))


async def pick_victim(
    lab: LabCluster, rng: random.Random, wanted: str | None = None
) -> tuple[str, dict[str, Any], str]:
    """A serving slot's owner that is not the Raft leader (as the agreeing agents see it):
    (victim, its slot, leader). `wanted` is taken when it qualifies."""
    docs = await views(lab)
    lagging = laggards(docs)
    doc = next(d for n, d in docs.items() if d is not None and n not in lagging)
    leader = str(doc["leader"])
    owned = {s["owner"]: s for s in doc["slots"] if s["state"] == "serving" and s["owner"]}
    candidates = sorted(n for n in owned if n != leader)
    victim = wanted if wanted in candidates else rng.choice(candidates)
    return victim, owned[victim], leader


async def first(
    probe: Callable[[], Awaitable[Any]],
    started: float,
    timeout_s: float = MEASURE_S,
    interval_s: float = 0.05,
) -> tuple[Any, float | None]:
    """Poll `probe` until it answers: (value, seconds since `started` loop time), or
    (None, None) after `timeout_s`."""
    loop = asyncio.get_running_loop()
    while loop.time() - started < timeout_s:
        value = await probe()
        if value:
            return value, loop.time() - started
        await asyncio.sleep(interval_s)
    return None, None


async def verdict_seen(
    lab: LabCluster, victim: str, survivors: list[str], before: set[str]
) -> dict[str, Any] | None:
    for d in await lab.verdicts(survivors):
        if d["subject"] == victim and d["id"] not in before:
            return d
    return None


async def served_elsewhere(
    lab: LabCluster, tenant: str, victim: str, survivors: list[str]
) -> str | None:
    """The server behind a 200 for `tenant` through the first survivor's edge that answers."""
    host = f"{tenant}.{BASE_DOMAIN}"
    for edge in survivors:
        try:
            async with lab.http.get(lab.url(edge, EDGE_PORT, "/"), headers={"Host": host}) as resp:
                await resp.read()
                server = resp.headers.get(SERVER_HEADER)
                ok = resp.status == 200 and server not in (None, "", victim)
                return server if ok else None
        except (aiohttp.ClientError, TimeoutError):
            continue
    return None


async def server_state(lab: LabCluster, name: str) -> str | None:
    doc = await lab.status([n for n in lab.names if n != name])
    if doc is None:
        return None
    return next((str(s["state"]) for s in doc["servers"] if s["name"] == name), None)


async def operator_return(lab: LabCluster, name: str) -> None:
    """`moonwatch return NAME`: the operator puts a quarantined server back as a spare."""
    argv = [sys.executable, "-m", "agent", "return", name, "--config", str(lab.config_path)]
    for _ in range(3):
        done = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO
        )
        _, err = await asyncio.wait_for(done.communicate(), 60)
        if done.returncode == 0:
            return
        await asyncio.sleep(1.0)
    raise RuntimeError(f"return {name} failed: {err.decode().strip()}")


async def restore(lab: LabCluster, victim: str) -> list[str]:
    """Restart the killed agent; once it is back quarantined, return it to the spare pool; wait
    for the committed state to be healthy, then up to AGREE_S for every agent to agree.
    Returns the agents that still did not (no leader, or another view)."""
    await lab.restart_agent(victim)
    back = await wait_until(
        lambda: _state_in(lab, victim, ("quarantined", "up")), HEALTHY_S, interval_s=0.2
    )
    if back == "quarantined":
        await operator_return(lab, victim)
    await wait_until(lambda: healthy(lab), HEALTHY_S, interval_s=0.2)
    rejoined, _ = await first(lambda: agree(lab), asyncio.get_running_loop().time(), AGREE_S, 0.2)
    return [] if rejoined else laggards(await views(lab))


async def _state_in(lab: LabCluster, name: str, wanted: tuple[str, ...]) -> str | None:
    state = await server_state(lab, name)
    return state if state in wanted else None


async def trial(
    lab: LabCluster,
    sc: Scenario,
    loss: float,
    number: int,
    rng: random.Random,
    settle_s: float,
    victims: list[str],
) -> Trial:
    await wait_until(lambda: healthy(lab), HEALTHY_S, interval_s=0.2)
    fault = await sc.inject(sc.faults.loss(loss))  # 0: a rule that never drops, same path
    await asyncio.sleep(settle_s)
    wanted = victims[number - 1] if number <= len(victims) else None
    victim, slot, leader = await pick_victim(lab, rng, wanted)
    survivors = [n for n in lab.names if n != victim]
    before = {d["id"] for d in await lab.decisions(survivors)}
    loop = asyncio.get_running_loop()
    t = Trial(loss, number, victim, slot["name"], slot["tenants"][0], leader, time.time())
    started = loop.time()
    lab.signal(victim, signal.SIGKILL)
    detected, served = await asyncio.gather(
        first(lambda: verdict_seen(lab, victim, survivors, before), started),
        first(lambda: served_elsewhere(lab, t.tenant, victim, survivors), started),
    )
    verdict, t.verdict_s = detected[0], _rounded(detected[1])
    t.served_by, t.served_s = served[0], _rounded(served[1])
    if verdict is not None:
        t.verdict_at_s = round(float(verdict["at"]) - t.killed_at, 3)
    await fault.heal()
    healed = loop.time()
    t.restarted_at = time.time()
    try:
        t.laggards = await restore(lab, victim)
        t.restore_s = round(loop.time() - healed, 2)
    except AssertionError as exc:  # wait_until gave up: report it, do not lose the level
        t.unrestored = f"not healthy {HEALTHY_S:.0f} s after the heal: {exc}"
    moved = sc.watch.first_serving(t.slot, started, not_on=victim)
    t.watch_served_s = None if moved is None else round(moved.at - started, 3)
    return t


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def false_verdicts(new: list[dict[str, Any]], trials: list[Trial]) -> list[dict[str, Any]]:
    """Verdicts not explained by a kill: each trial explains one verdict against its victim
    committed between its kill and the victim's restart."""
    explained: set[int] = set()
    unexplained = []
    for d in new:
        match = next(
            (
                t.number
                for t in trials
                if t.number not in explained
                and t.victim == d["subject"]
                and t.killed_at - 1.0 <= d["at"] <= (t.restarted_at or float("inf"))
            ),
            None,
        )
        if match is None:
            unexplained.append(d)
        else:
            explained.add(match)
    return unexplained


def trial_line(t: Trial) -> str:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}s"

    return (
        f"loss {t.loss:.0%} trial {t.number:2d}: killed {t.victim} ({t.slot}, leader "
        f"{t.leader}): verdict {s(t.verdict_s)}, served by {t.served_by} {s(t.served_s)} "
        f"(watch {s(t.watch_served_s)}), restored in {s(t.restore_s)}"
        + (f"; not agreeing {AGREE_S:.0f}s later: {t.laggards}" if t.laggards else "")
        + (f"; {t.unrestored}" if t.unrestored else "")
    )


async def run_level(
    lab: LabCluster, loss: float, args: argparse.Namespace, rng: random.Random, seen: Seen
) -> dict[str, Any]:
    """One loss level: `args.trials` trials inside one Scenario (all checkers on)."""
    baseline = {d["id"] for d in await lab.decisions()}
    sc = Scenario(
        lab, f"{loss:.0%} loss, {args.trials} kills", recover_s=60.0, writers=seen.writers
    )
    trials: list[Trial] = []
    async with sc:
        for number in range(1, args.trials + 1):
            trials.append(await trial(lab, sc, loss, number, rng, args.settle, args.victims))
            print(trial_line(trials[-1]), flush=True)
            if trials[-1].unrestored:
                print("the cluster did not recover; this level stops here", flush=True)
                break
    seen.writers = sc.writers
    new = [d for d in await lab.verdicts() if d["id"] not in baseline]
    false = false_verdicts(new, trials)
    lost = [w for w in sc.outcome.lost_writes if w not in seen.lost]
    seen.lost.update(lost)
    detect = [t.verdict_s for t in trials if t.verdict_s is not None]
    recover = [t.served_s for t in trials if t.served_s is not None]
    return {
        "loss": loss,
        "trials": len(trials),
        "detection": summary(detect, len(trials)),
        "recovery": summary(recover, len(trials)),
        "false_verdicts": len(false),
        "false_verdict_decisions": false,
        "overlaps": sc.outcome.overlaps,
        "overlap_log_report": sc.outcome.log_overlap[-4000:],
        "writes_attempted": sc.outcome.writes_attempted,
        "writes_acked": sc.outcome.writes_acked,
        "lost_writes": lost,
        "violations": sc.outcome.violations,
        "restores_not_agreeing": sum(1 for t in trials if t.laggards),
        "not_restored": [t.unrestored for t in trials if t.unrestored],
        "suspicions_refuted": sum(
            1 for d in sc.outcome.decisions if d.startswith("server_refuted")
        ),
        "decisions": sc.outcome.decisions,
        "results": [asdict(t) for t in trials],
    }


class Seen:
    """What carries over between levels: provisioned writers and lost writes already counted."""

    def __init__(self) -> None:
        self.writers: list[Writer] = []
        self.lost: set[str] = set()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    levels: list[dict[str, Any]] = []
    started = time.monotonic()
    load_before = os.getloadavg()
    extra = {"cascade": NO_CASCADE, "healing": {"replace_voters": args.replace_voters}}
    async with LabCluster.build(lab_dir(), extra=extra) as lab:
        print(f"lab {lab.workdir}; load average {load_before}", flush=True)
        if args.tcp_thin:
            for name in lab.names:  # per namespace: the host's own setting is untouched
                lab.topo.ns_run(name, "sysctl", "-q", "-w", f"{THIN_SYSCTL}=1")
        try:
            await wait_until(lambda: healthy(lab), HEALTHY_S, interval_s=0.2)
            seen = Seen()
            for loss in args.loss:
                levels.append(await run_level(lab, loss, args, rng, seen))
        except BaseException:
            print(f"lab directory kept: {lab.workdir} (logs in {lab.log_dir})", flush=True)
            raise
    if args.keep_lab:
        print(f"lab directory kept: {lab.workdir} (logs in {lab.log_dir})", flush=True)
    else:
        shutil.rmtree(lab.workdir, ignore_errors=True)
    return {
        "benchmark": "lossy_failover",
        "shape": {"actives": 3, "spares": 2, "voters": 3, "timing": "default"},
        "replace_voters": args.replace_voters,
        "tcp_thin_linear_timeouts": args.tcp_thin,
        "settle_s": args.settle,
        "seed": args.seed,
        "levels": levels,
        "run_s": round(time.monotonic() - started, 1),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
    }


def _cells(row: dict[str, Any], widths: tuple[int, ...]) -> str:
    keys = ("p50_s", "p99_s", "max_s")
    values = [f"{row[k]:.2f}" if k in row else "-" for k in keys] + [str(row["missing"])]
    return " ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'loss':>5} {'trials':>6} | {'detect p50':>10} {'p99':>6} {'max':>6} {'miss':>4} | "
        f"{'recover p50':>11} {'p99':>6} {'max':>6} {'miss':>4} | {'false v.':>8} "
        f"{'overlaps':>8} {'writes acked/lost':>17}"
    )
    lines = [head, "-" * len(head)]
    for level in report["levels"]:
        overlaps = len(level["overlaps"]) + (1 if level["overlap_log_report"] else 0)
        writes = f"{level['writes_acked']}/{len(level['lost_writes'])}"
        lines.append(
            f"{level['loss']:>5.0%} {level['trials']:>6} | "
            f"{_cells(level['detection'], (10, 6, 6, 4))} | "
            f"{_cells(level['recovery'], (11, 6, 6, 4))} | "
            f"{level['false_verdicts']:>8} {overlaps:>8} {writes:>17}"
        )
    lines.append("(seconds from SIGKILL; detection: verdict committed, recovery: a tenant answered")
    lines.append(" 200 through a survivor's edge by another server; p99 is nearest-rank)")
    return "\n".join(lines)


def loss_levels(text: str) -> list[float]:
    levels = [float(x) for x in text.split(",") if x.strip()]
    if not levels or any(not 0.0 <= p < 1.0 for p in levels):
        raise argparse.ArgumentTypeError("loss levels are fractions in [0, 1), e.g. 0,0.05,0.1")
    return levels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", type=loss_levels, default=[0.0, 0.05, 0.10])
    parser.add_argument("--trials", type=int, default=8, help="kills per loss level")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of loss before a kill")
    parser.add_argument("--json", type=Path, default=Path("bench-results/lossy_failover.json"))
    parser.add_argument(
        "--replace-voters",
        action="store_true",
        help="let the cluster replace a killed voter by a spare (off: see the module docstring)",
    )
    parser.add_argument(
        "--victims",
        type=lambda v: [n for n in v.split(",") if n],
        default=[],
        help="servers to kill in this order, trial by trial (when one owns a serving slot "
        "and is not the leader; otherwise the seeded choice)",
    )
    parser.add_argument("--keep-lab", action="store_true", help="keep the lab's logs and data")
    parser.add_argument(
        "--tcp-thin",
        action="store_true",
        help=f"set {THIN_SYSCTL}=1 in every server's namespace (Raft's TCP under heavy loss)",
    )
    args = parser.parse_args()
    try:
        require_lab()
    except LabUnavailable as exc:
        print(f"lossy_failover: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run(args))
    print()
    print(table(report))
    refuted = ", ".join(f"{v['loss']:.0%}: {v['suspicions_refuted']}" for v in report["levels"])
    print(f"suspicions refuted without a verdict (server_refuted) per loss level: {refuted}")
    for level in report["levels"]:
        if level["restores_not_agreeing"]:
            print(
                f"at {level['loss']:.0%} loss {level['restores_not_agreeing']} restores left an "
                f"agent not agreeing on leader and slots {AGREE_S:.0f} s later (see trial lines)"
            )
        for d in level["false_verdict_decisions"]:
            print(f"false verdict at {level['loss']:.0%} loss: {json.dumps(d)[:1500]}")
        for v in level["violations"]:
            print(f"violation at {level['loss']:.0%} loss: {v[:1500]}")
    print(f"run time {report['run_s']:.0f} s; load average before/after {report['load_average']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
