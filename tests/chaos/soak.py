"""Soak: random lab faults, one after another, with all three checkers on, then a summary.

    python -m tests.chaos.soak [--minutes 30] [--seed N] [--json FILE]   (as root)

Each round builds nothing new: one lab cluster runs for the whole soak. A round picks a fault
(isolate, split, one-way, loss, added delay, short or long stall, SIGKILL of an agent and its
apps then a restart, CPU starvation, a full data disk, broker down), holds it,
heals it, waits until every slot is served again, and then returns quarantined servers to the
spare pool so the next round has spares. Every round's outcome (verdicts, detection and
recovery times, overlaps, lost writes) is printed; the summary ends the run. Exit status 1
when any round found a violation (an overlap, a lost acknowledged write, a slot not served
after healing, a verdict where none was due).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.chaos.netlab import LabUnavailable, require_lab
from tests.chaos.netlab_checks import Writer
from tests.chaos.netlab_cluster import AGENT_PORT, API_TOKEN, LabCluster, server_names
from tests.chaos.netlab_faults import Fault
from tests.chaos.netlab_fixtures import lab_dir
from tests.chaos.netlab_scenario import Outcome, Scenario

MINUTES_ENV = "SOAK_MINUTES"
Round = Callable[[LabCluster, Scenario, random.Random], Awaitable[bool]]  # True: verdict due


async def _leader(lab: LabCluster) -> str:
    for _ in range(100):
        leader = await lab.leader(lab.alive())
        if leader:
            return leader
        await asyncio.sleep(0.2)
    raise RuntimeError("the lab has no agreed leader")


async def isolate(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    fault = await sc.inject(sc.faults.isolate(rng.choice(lab.names)))
    await asyncio.sleep(rng.uniform(5, 15))
    await fault.heal()
    return True


async def split(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    names = list(lab.names)
    rng.shuffle(names)
    fault = await sc.inject(sc.faults.split(names[:2], names[2:]))
    await asyncio.sleep(rng.uniform(5, 15))
    await fault.heal()
    return True


async def one_way(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    source, target = rng.sample(lab.names, 2)
    fault = await sc.inject(sc.faults.one_way(source, target))
    await asyncio.sleep(rng.uniform(5, 15))
    await fault.heal()
    return True


async def loss(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    fault = await sc.inject(sc.faults.loss(rng.uniform(0.05, 0.30)))
    await asyncio.sleep(rng.uniform(20, 40))
    await fault.heal()
    return False


async def short_stall(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    fault = await sc.inject(sc.faults.stall(await _leader(lab)))
    await asyncio.sleep(rng.uniform(0.1, 0.5))  # well inside the default suspicion window
    await fault.heal()
    return False


async def long_stall(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    fault = await sc.inject(sc.faults.stall(rng.choice(lab.names)))
    await asyncio.sleep(rng.uniform(5, 15))
    await fault.heal()
    return True


async def starve(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    fault = await sc.inject(sc.faults.starve_cpu(rng.choice(lab.names), timeout_s=40))
    await asyncio.sleep(rng.uniform(10, 30))
    await fault.heal()
    return False


async def broker(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    fault = await sc.inject(sc.faults.broker_down())
    await asyncio.sleep(rng.uniform(5, 20))
    await fault.heal()
    return False


async def kill(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    victim = rng.choice(lab.names)

    async def restart() -> None:
        await lab.restart_agent(victim)

    async def killed() -> Fault:
        lab.signal(victim, signal.SIGKILL)  # the agent's process group: its app instances too
        return Fault("kill", victim, restart)

    fault = await sc.inject(killed())
    await asyncio.sleep(rng.uniform(3, 10))
    await fault.heal()
    return True


async def delay(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    fault = await sc.inject(sc.faults.delay_all(rng.uniform(10, 40)))
    await asyncio.sleep(rng.uniform(10, 20))
    await fault.heal()
    return False


async def full_disk(lab: LabCluster, sc: Scenario, rng: random.Random) -> bool:
    """A server's own disk filled past critical, or to the last byte: it drains itself (no
    verdict is due: draining is not failing) and is returned afterwards."""
    fault = await sc.inject(sc.faults.fill_disk(rng.choice(lab.names), rng.choice([98.0, 100.0])))
    await asyncio.sleep(rng.uniform(8, 15))
    await fault.heal()
    return False


ROUNDS: dict[str, Round] = {
    "isolate": isolate,
    "split": split,
    "one_way": one_way,
    "loss": loss,
    "short_stall": short_stall,
    "long_stall": long_stall,
    "starve_cpu": starve,
    "broker_down": broker,
    "kill": kill,
    "delay": delay,
    "full_disk": full_disk,
}
DISK_MB = 64  # each server's own tmpfs (its Raft journal, voters file, incarnation)
# Sample the disk every second and drain after 2 s critical (defaults: 5 s and 10 s).
RESOURCES = {"resources": {"interval_s": 1.0, "timeout_s": 0.5, "drain_after_s": 2.0}}


async def return_quarantined(lab: LabCluster) -> None:
    """Put every failed or quarantined server back into the spare pool (operator calls)."""
    status = await lab.status()
    for server in (status or {}).get("servers", []):
        if server["state"] in ("failed", "quarantined", "draining"):
            leader = await _leader(lab)
            url = lab.url(leader, AGENT_PORT, f"/v1/servers/{server['name']}/return")
            headers = {"Authorization": f"Bearer {API_TOKEN}"}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with lab.http.post(url, headers=headers) as resp:
                    await resp.read()  # refused while the server is not back: fine


async def soak(minutes: float, rng: random.Random, results: list[Outcome]) -> None:
    disks = dict.fromkeys(server_names(), DISK_MB)
    async with LabCluster.build(lab_dir(), tmpfs_mb=disks, extra=RESOURCES) as lab:
        print(f"lab {lab.workdir}: soaking for {minutes:g} min", flush=True)
        deadline = time.monotonic() + minutes * 60
        writers: list[Writer] = []
        while time.monotonic() < deadline:
            kind = rng.choice(sorted(ROUNDS))
            sc = Scenario(lab, kind, writers=writers)
            async with sc:
                verdict_due = await ROUNDS[kind](lab, sc, rng)
            if not verdict_due:
                sc.expect_no_verdict()
            results.append(sc.outcome)
            writers = sc.writers  # provisioned once, read back in full after every round
            await return_quarantined(lab)
            await asyncio.sleep(3.0)


def summary(results: list[Outcome]) -> str:
    lines = [f"{'fault':<12} {'rounds':>6} {'verdicts':>8} {'detect s':>9} {'recover s':>9} "
             f"{'overlaps':>8} {'acked':>6} {'lost':>5} {'bad':>4}"]  # fmt: skip
    for kind in sorted({o.name for o in results}):
        rows = [o for o in results if o.name == kind]
        det = [o.detection_s for o in rows if o.detection_s is not None]
        rec = [v for o in rows for v in o.recovery_s.values()]
        lines.append(
            f"{kind:<12} {len(rows):>6} {sum(len(o.verdicts) for o in rows):>8} "
            f"{max(det, default=0):>9.2f} {max(rec, default=0):>9.2f} "
            f"{sum(len(o.overlaps) for o in rows):>8} {sum(o.writes_acked for o in rows):>6} "
            f"{sum(len(o.lost_writes) for o in rows):>5} {sum(bool(o.violations) for o in rows):>4}"
        )
    lines.append("(detect/recover: the worst round of each kind)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = float(os.environ.get(MINUTES_ENV, "30"))
    parser.add_argument("--minutes", type=float, default=default, help=f"${MINUTES_ENV}")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every outcome here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}", flush=True)
    try:
        require_lab()
    except LabUnavailable as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    results: list[Outcome] = []
    try:
        asyncio.run(soak(args.minutes, random.Random(seed), results))
    finally:
        print(summary(results))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps([o.__dict__ for o in results], indent=1) + "\n")
    bad = [o for o in results if o.violations]
    for o in bad:
        print(f"VIOLATION {o.line()}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
