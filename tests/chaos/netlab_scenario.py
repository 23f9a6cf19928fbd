"""A scenario run in the lab with all three checkers on: serving watch, writers, verdicts.

Inside `async with Scenario(lab, name) as sc:` a test injects faults with
`await sc.inject(sc.faults.isolate(name))` and heals them; on exit `sc.outcome` holds the
measured figures and every violation the checkers found.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.chaos.netlab_checks import Overlap, ServingWatch, Writer, overlap_logs
from tests.chaos.netlab_cluster import AGENT_PORT, API_TOKEN, LabCluster
from tests.chaos.netlab_faults import Fault, Faults

WRITE_INTERVAL_S = 0.25
RESULTS_ENV = "NETLAB_RESULTS"  # append each outcome as a JSON line to this file


@dataclass
class Outcome:
    """What one scenario measured; `violations` empty means every checker passed."""

    name: str
    faults: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)  # subjects of new verdicts
    decisions: list[str] = field(default_factory=list)  # "kind subject" of new decisions
    verdict_evidence: list[dict[str, Any]] = field(default_factory=list)
    detection_s: float | None = None  # first fault -> first new verdict committed
    recovery_s: dict[str, float] = field(default_factory=dict)  # slot -> served elsewhere
    longest_gap_s: dict[str, float] = field(default_factory=dict)  # slot -> no server serving
    overlaps: list[str] = field(default_factory=list)
    log_overlap: str = ""
    writes_attempted: int = 0
    writes_acked: int = 0
    lost_writes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # What the scenario did as an operator would (e.g. resume from cascade mode), and why.
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        rec = ", ".join(f"{k} {v:.2f}s" for k, v in self.recovery_s.items()) or "-"
        gap = ", ".join(f"{k} {v:.2f}s" for k, v in self.longest_gap_s.items())
        det = "-" if self.detection_s is None else f"{self.detection_s:.2f}s"
        return (
            f"{self.name}: faults {self.faults}; verdicts {self.verdicts}; detection {det}; "
            f"recovery {rec}; longest gap {gap}; overlaps {len(self.overlaps)}; "
            f"writes {self.writes_acked}/{self.writes_attempted} acked, "
            f"{len(self.lost_writes)} lost; violations {self.violations or 'none'}; "
            f"{'notes ' + str(self.notes) + '; ' if self.notes else ''}"
            f"decisions {dict(Counter(d.split()[0] for d in self.decisions))}"
        )


class Scenario:
    """Starts the checkers on enter; on exit heals what is left, waits for recovery and
    fills `outcome`. Exceptions inside the block still heal and clean up."""

    def __init__(
        self,
        lab: LabCluster,
        name: str,
        recover_s: float = 45.0,
        writers: list[Writer] | None = None,
    ) -> None:
        """`writers`: reuse provisioned writers (a soak's rounds), else one per slot is made."""
        self.lab = lab
        self.faults = Faults(lab)
        self.outcome = Outcome(name)
        self.recover_s = recover_s
        self.watch = ServingWatch(lab)
        self.writers: list[Writer] = list(writers or [])
        self._counts_before = {id(w): (w.attempts, len(w.acked)) for w in self.writers}
        self.injected: list[Fault] = []
        self.fault_at: float | None = None  # loop time of the first fault
        self.fault_wall: float | None = None
        self.owners: dict[str, str] = {}  # slot -> owner when the first fault began
        self._baseline: set[str] = set()
        self._stop = asyncio.Event()
        self._writing: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Scenario:
        self._baseline = {d["id"] for d in await self.lab.decisions()}
        status = await self.lab.status()
        assert status is not None
        self.owners = {s["name"]: s["owner"] for s in status["slots"]}
        for slot in [] if self.writers else status["slots"]:
            writer = Writer(self.lab, slot["tenants"][0], slot["name"])
            await writer.provision(self.lab.names[0])
            self.writers.append(writer)
        await self.watch.__aenter__()
        for writer in self.writers:
            task = writer.write_until(self._stop, self.lab.names, WRITE_INTERVAL_S)
            self._writing.append(asyncio.create_task(task))
        await asyncio.sleep(1.0)  # a baseline of serving answers before any fault
        return self

    async def inject(self, injecting: Awaitable[Fault]) -> Fault:
        if self.fault_at is None:
            self.fault_at, self.fault_wall = asyncio.get_running_loop().time(), time.time()
        fault = await injecting
        self.injected.append(fault)
        self.outcome.faults.append(str(fault))
        return fault

    async def __aexit__(self, *exc: object) -> None:
        try:
            for fault in self.injected:
                await fault.heal()
            if exc[0] is None:
                await self._settle()
        finally:
            self._stop.set()
            await asyncio.gather(*self._writing, return_exceptions=True)
            await self.watch.__aexit__()
        if exc[0] is None:
            await self._conclude()

    async def _settle(self) -> None:
        served = await self.lab.wait_serving(self.recover_s)
        if not served and await self._resume_from_cascade():
            served = await self.lab.wait_serving(self.recover_s)
        if not served:
            late = f"not every slot served {self.recover_s:.0f}s after heal"
            self.outcome.violations.append(late)
        await asyncio.sleep(1.5)  # writes and serving answers after recovery

    async def _resume_from_cascade(self) -> bool:
        """Several verdicts at once (or a whole failure domain lost) put the cluster in cascade
        mode, which holds replacements by design until it has been quiet for a while or an
        operator resumes: do what the operator would, and say so. False in normal mode."""
        doc = await self.lab.status()
        leader = await self.lab.leader()
        if doc is None or doc.get("mode") in (None, "normal") or leader is None:
            return False  # "cascade", and "recovering" after it, hold replacements
        url = self.lab.url(leader, AGENT_PORT, "/v1/mode/resume")
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        body = {"reason": "chaos scenario: faults healed"}
        try:
            async with self.lab.http.post(url, json=body, headers=headers) as resp:
                ok = resp.status < 300
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self.outcome.notes.append(
            f"{doc['mode']} mode held replacements; resumed through {leader}: "
            f"{'ok' if ok else 'failed'}"
        )
        return ok

    async def _conclude(self) -> None:
        o = self.outcome
        since = self.fault_at if self.fault_at is not None else 0.0
        for slot, owner in self.owners.items():
            first = self.watch.first_serving(slot, since, not_on=owner)
            if first is not None and self.fault_at is not None:
                o.recovery_s[slot] = first.at - self.fault_at
            o.longest_gap_s[slot] = self.watch.serving_gaps(slot, since)
        new = [d for d in await self.lab.decisions() if d["id"] not in self._baseline]
        o.decisions = [f"{d['kind']} {d['subject']}" for d in new]
        new = [d for d in new if d["kind"] == "server_failed"]
        o.verdicts = [v["subject"] for v in new]
        o.verdict_evidence = [{"at": v["at"], **v["evidence"]} for v in new]
        if new and self.fault_wall is not None:
            o.detection_s = min(v["at"] for v in new) - self.fault_wall
        overlaps: list[Overlap] = self.watch.overlaps()
        o.overlaps = [str(x) for x in overlaps]
        o.violations += [f"overlap seen by the watch: {x}" for x in o.overlaps]
        code, report = await asyncio.to_thread(overlap_logs, self.lab)
        o.log_overlap = report if code != 0 else ""
        if code != 0:
            o.violations.append(f"check_overlap.py exit {code}: {report[-2000:]}")
        for writer in self.writers:
            lost = await writer.lost(self.lab.alive())
            attempts, acked = self._counts_before.get(id(writer), (0, 0))
            o.writes_attempted += writer.attempts - attempts
            o.writes_acked += len(writer.acked) - acked
            o.lost_writes += lost
        if o.lost_writes:
            o.violations.append(f"acknowledged writes lost: {o.lost_writes[:10]}")
        print(o.line())
        if path := os.environ.get(RESULTS_ENV):
            await asyncio.to_thread(_append, Path(path), json.dumps(asdict(o)))

    def expect_no_verdict(self) -> None:
        if self.outcome.verdicts:
            evidence = json.dumps(self.outcome.verdict_evidence)[:3000]
            self.outcome.violations.append(
                f"false verdicts: {self.outcome.verdicts}; evidence {evidence}"
            )

    def measurements(self) -> dict[str, Any]:
        return asdict(self.outcome)


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
