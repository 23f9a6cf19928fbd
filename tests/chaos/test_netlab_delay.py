"""Network namespaces: added delay through the lab's userspace proxy.

First the proxy alone, between two bare namespaces (TCP and UDP echo round trips grow by at
least the delay each way, and are direct again once healed); then a cluster with 30 ms on
every server's outbound traffic: no verdict, and a killed owner's slot still moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.chaos.netlab import LabUnavailable, Topology, kill_group, require_lab
from tests.chaos.netlab_cluster import LabCluster
from tests.chaos.netlab_delay_fault import CHAINS, PROXY_TCP_PORT, diverted, start_delay
from tests.chaos.netlab_faults import Fault
from tests.chaos.netlab_fixtures import agreed_leader, lab_cluster, lab_dir
from tests.chaos.netlab_scenario import Scenario
from tests.chaos.test_netlab_partitions import owned_slot, rejoined
from tests.support import REPO, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.processes]

ECHO_PORT = 7500
PROXY_DELAY_MS = 40.0
EXCHANGES = 8
CLUSTER_DELAY_MS = 30.0
CLUSTER_DELAY_S = 30.0


class Pair:
    """Two bare namespaces on the lab bridge (no agents) and processes started in them."""

    def __init__(self, topo: Topology, log_dir: Path) -> None:
        self.topo, self.log_dir = topo, log_dir
        self.processes: list[asyncio.subprocess.Process] = []

    async def spawn(self, host: str, argv: list[str], log_name: str) -> asyncio.subprocess.Process:
        with (self.log_dir / log_name).open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                "nsenter", f"--net={self.topo.hosts[host].netns_path}", "--", *argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, cwd=REPO,
            )  # fmt: skip
        self.topo.record.add_process(process.pid)
        self.processes.append(process)
        return process

    async def measure(self, host: str, target: str) -> dict[str, list[float]]:
        address = self.topo.hosts[target].address
        argv = [sys.executable, "-m", "tests.chaos.netlab_echo", "measure", "--host", address,
                "--port", str(ECHO_PORT), "--count", str(EXCHANGES)]  # fmt: skip
        done = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={self.topo.hosts[host].netns_path}", "--", *argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        out, err = await asyncio.wait_for(done.communicate(), 60)
        assert done.returncode == 0, err.decode()[-2000:]
        result: dict[str, list[float]] = json.loads(out.decode().splitlines()[-1])
        return result


@contextlib.asynccontextmanager
async def bare_pair() -> AsyncIterator[Pair]:
    try:
        require_lab()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    topo = Topology(["x1", "x2"])
    log_dir = lab_dir() / f"mw-lab-{topo.suffix}"
    log_dir.mkdir(parents=True)
    pair = Pair(topo, log_dir)
    try:
        await asyncio.to_thread(topo.create)
        try:
            yield pair
        except BaseException:
            print(f"\nlogs kept in {log_dir}")
            raise
        shutil.rmtree(log_dir, ignore_errors=True)
    finally:
        for process in pair.processes:
            kill_group(process.pid, None)
        await asyncio.gather(
            *(asyncio.wait_for(p.wait(), 5) for p in pair.processes), return_exceptions=True
        )
        await asyncio.to_thread(topo.close)


@pytest.mark.timeout(120)
async def test_proxy_adds_at_least_the_delay_each_way_and_heals() -> None:
    async with bare_pair() as pair:
        echo = [sys.executable, "-m", "tests.chaos.netlab_echo", "serve", "--port", str(ECHO_PORT)]
        await pair.spawn("x2", echo, "echo-x2.log")
        await wait_until(lambda: _ready(pair.log_dir / "echo-x2.log"), 20, interval_s=0.05)
        before = await pair.measure("x1", "x2")
        peers = [pair.topo.hosts["x2"].address]
        undo = await start_delay(pair.topo, pair.spawn, pair.log_dir, "x1", peers, PROXY_DELAY_MS)
        try:
            during = await pair.measure("x1", "x2")
        finally:
            await undo()
        after = await pair.measure("x1", "x2")
        rules = "".join(pair.topo.ns_run("x1", "iptables", "-t", t, "-S", c) for t, c, _ in CHAINS)
    delay_s = PROXY_DELAY_MS / 1000
    for kind in ("tcp", "udp"):
        print(
            f"\n{kind}: round trip min {min(before[kind]) * 1000:.1f} ms direct, "
            f"{min(during[kind]) * 1000:.1f} ms through the proxy ({PROXY_DELAY_MS:g} ms), "
            f"{min(after[kind]) * 1000:.1f} ms healed"
        )
        # The proxy holds the request and the answer `delay` each: a lower bound, by design.
        assert min(during[kind]) >= 2 * delay_s - 0.001, (kind, during[kind])
        assert len(after[kind]) == EXCHANGES
    assert f"--to-ports {PROXY_TCP_PORT}" not in rules, rules


async def _ready(log: Path) -> bool:
    return await asyncio.to_thread(lambda: log.exists() and b"ready" in log.read_bytes())


@pytest.mark.chaos_extended
@pytest.mark.timeout(300)
async def test_thirty_ms_on_every_server_is_no_failure_and_a_dead_owner_still_moves(
    tmp_path: Path,
) -> None:
    async with lab_cluster(tmp_path) as lab:
        leader = await wait_until(lambda: agreed_leader(lab), 20)
        label = f"{CLUSTER_DELAY_MS:g} ms on every server for {CLUSTER_DELAY_S:g}s"
        async with Scenario(lab, label) as sc:
            await sc.inject(sc.faults.delay_all(CLUSTER_DELAY_MS))
            await asyncio.sleep(CLUSTER_DELAY_S)
            held = {n: await asyncio.to_thread(diverted, lab.topo, n) for n in lab.names}
        print(f"\n(UDP datagrams delayed, TCP connections through the proxy): {held}")
        assert all(udp > 0 for udp, _ in held.values()), held
        assert any(tcp > 0 for _, tcp in held.values()), held
        sc.expect_no_verdict()
        assert not sc.outcome.violations, sc.outcome.line()

        await wait_until(lambda: rejoined(lab), 30, interval_s=0.2)
        leader = await wait_until(lambda: agreed_leader(lab), 20)
        victim = next(n for n in ("a1", "a2", "a3") if n != leader)
        slot = await owned_slot(lab, victim)
        assert slot is not None
        writers = sc.writers  # the tenants exist now: the second scenario reuses them
        async with Scenario(
            lab, f"{victim} killed under {CLUSTER_DELAY_MS:g} ms", 45.0, writers
        ) as sc:
            delay = await sc.faults.delay_all(CLUSTER_DELAY_MS)
            try:
                await asyncio.sleep(3.0)  # connections re-made through the proxies
                await sc.inject(_kill(lab, victim))
                assert sc.fault_at is not None
                moved = await wait_until(lambda: _elsewhere(sc, slot, victim), 60, interval_s=0.1)
                print(f"\n{slot} of {victim} served by {moved.server} "
                      f"{moved.at - sc.fault_at:.2f}s after the kill, under delay")  # fmt: skip
            finally:
                await delay.heal()
        o = sc.outcome
        print(f"detection {o.detection_s}, recovery {o.recovery_s}, gaps {o.longest_gap_s}")
        assert o.verdicts == [victim], o.line()
        assert not o.violations, o.line()


async def _kill(lab: LabCluster, name: str) -> Fault:
    lab.signal(name, signal.SIGKILL)

    async def undo() -> None:
        pass  # a killed agent stays down; its slot has moved

    return Fault("kill", name, undo)


async def _elsewhere(sc: Scenario, slot: str, old: str) -> object:
    assert sc.fault_at is not None
    return sc.watch.first_serving(slot, sc.fault_at, not_on=old)
