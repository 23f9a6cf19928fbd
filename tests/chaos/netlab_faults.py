"""Faults of the network lab, each a method that injects one and returns its heal.

`fault = await faults.isolate("a1")` ... `await fault.heal()`; healing twice does nothing.
Network rules match only `eth0` in the namespaces, so the management links stay clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.netlab import BROKER, kill_group
from tests.chaos.netlab_cluster import LabCluster
from tests.chaos.netlab_delay_fault import start_delay

STRESS_NG = "/usr/bin/stress-ng"
FILL_CHUNK = 1 << 20


@dataclass
class Fault:
    """One injected fault; `heal` undoes it (idempotent)."""

    kind: str
    target: str
    _undo: Callable[[], Awaitable[None]] = field(repr=False)
    healed: bool = False

    async def heal(self) -> None:
        if not self.healed:
            self.healed = True
            await self._undo()

    def __str__(self) -> str:
        return f"{self.kind}({self.target})"


class Faults:
    """Inject faults into a LabCluster."""

    def __init__(self, lab: LabCluster) -> None:
        self.lab = lab
        self.topo = lab.topo

    async def _flush(self, hosts: list[str]) -> None:
        for host in hosts:
            await asyncio.to_thread(self.topo.flush_filters, host)

    async def isolate(self, name: str) -> Fault:
        """Set the switch side of `name`'s veth down: nothing in or out, no FIN, no RST."""
        await asyncio.to_thread(self.topo.set_port, name, False)

        async def undo() -> None:
            await asyncio.to_thread(self.topo.set_port, name, True)

        return Fault("isolate", name, undo)

    async def split(self, *groups: list[str]) -> Fault:
        """No traffic between servers of different groups (DROP both ways, in each member);
        the broker stays reachable from every group."""
        members = [n for g in groups for n in g]
        for group in groups:
            others = [self.topo.hosts[n].address for g in groups if g is not group for n in g]
            for name in group:
                for address in others:
                    await asyncio.to_thread(
                        self.topo.filter, name, "-A", "MWLAB-IN", "-i", "eth0", "-s", address,
                        "-j", "DROP",
                    )  # fmt: skip
                    await asyncio.to_thread(
                        self.topo.filter, name, "-A", "MWLAB-OUT", "-o", "eth0", "-d", address,
                        "-j", "DROP",
                    )  # fmt: skip
        label = " | ".join(",".join(g) for g in groups)
        return Fault("split", label, lambda: self._flush(members))

    async def one_way(self, source: str, target: str) -> Fault:
        """Drop every packet from `source` to `target`; `target` still reaches `source`."""
        address = self.topo.hosts[target].address
        await asyncio.to_thread(
            self.topo.filter, source, "-A", "MWLAB-OUT", "-o", "eth0", "-d", address, "-j", "DROP"
        )
        return Fault("one_way", f"{source}->{target}", lambda: self._flush([source]))

    async def loss(self, probability: float, names: list[str] | None = None) -> Fault:
        """Drop each packet arriving on `eth0` of every server (or `names`) with `probability`."""
        hosts = names or list(self.lab.names)
        for name in hosts:
            await asyncio.to_thread(
                self.topo.filter, name, "-A", "MWLAB-IN", "-i", "eth0", "-m", "statistic",
                "--mode", "random", "--probability", f"{probability:.3f}", "-j", "DROP",
            )  # fmt: skip
        return Fault("loss", f"{probability:.0%} on {','.join(hosts)}", lambda: self._flush(hosts))

    async def stall(self, name: str) -> Fault:
        """SIGSTOP `name`'s process group (agent and apps); heal: SIGCONT."""
        self.lab.signal(name, signal.SIGSTOP)

        async def undo() -> None:
            self.lab.signal(name, signal.SIGCONT)

        return Fault("stall", name, undo)

    async def starve_cpu(self, name: str, timeout_s: float) -> Fault:
        """Pin `name`'s processes to CPU 0 and run stress-ng on CPU 0 (bounded by `timeout_s`)
        in its namespace: it gets a fraction of one core while the others run normally."""
        pids = _group_pids(self.lab.processes[name].pid)
        for pid in pids:
            _pin(pid, {0})
        workers = max(2, os.cpu_count() or 1)
        limit = f"{timeout_s:.0f}s"
        argv = [STRESS_NG, "--cpu", str(workers), "--taskset", "0", "--timeout", limit]
        stress = await self.lab.spawn(name, argv, f"stress-{name}.log")

        async def undo() -> None:
            kill_group(stress.pid, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stress.wait(), 5.0)
            everything = set(range(os.cpu_count() or 1))
            for pid in _group_pids(self.lab.processes[name].pid):
                _pin(pid, everything)

        return Fault("starve_cpu", name, undo)

    async def fill_disk(self, name: str, percent: float = 100.0) -> Fault:
        """Fill `name`'s own state directory (a tmpfs the lab mounted) until `percent` of it
        is used (100: until ENOSPC, which also stops its Raft journal)."""
        filler = self.lab.data_dir / "servers" / name / "netlab-filler"
        await asyncio.to_thread(_fill, filler, percent)

        async def undo() -> None:
            filler.unlink(missing_ok=True)

        return Fault("fill_disk", name, undo)

    async def delay(self, name: str, ms: float) -> Fault:
        """Hold `name`'s outbound traffic to the other servers `ms` in a userspace proxy in its
        namespace (UDP: each datagram; TCP: connections it opens, both ways; see
        netlab_delay_fault); heal: flush the rules, stop the proxy."""
        peers = [self.topo.hosts[n].address for n in self.lab.names if n != name]
        undo = await start_delay(self.topo, self.lab.spawn, self.lab.log_dir, name, peers, ms)
        return Fault("delay", f"{ms:g}ms from {name}", undo)

    async def delay_all(self, ms: float) -> Fault:
        """`delay(name, ms)` on every server at once; heal undoes them all."""
        started = await asyncio.gather(
            *(self.delay(n, ms) for n in self.lab.names), return_exceptions=True
        )
        faults = [f for f in started if isinstance(f, Fault)]

        async def undo() -> None:
            await asyncio.gather(*(f.heal() for f in faults))

        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            await undo()
            raise failed[0]
        return Fault("delay", f"{ms:g}ms from every server", undo)

    async def broker_down(self) -> Fault:
        """SIGKILL mosquitto; heal: start it again."""
        await self.lab.stop_broker()
        return Fault("broker_down", BROKER, self.lab.start_broker)


def _fill(path: Path, percent: float) -> None:
    usage = os.statvfs(path.parent)
    total = usage.f_blocks * usage.f_frsize
    wanted = total * percent / 100 - (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    with path.open("wb", buffering=0) as out:
        try:
            while wanted > 0:
                out.write(b"\0" * int(min(FILL_CHUNK, wanted)))
                wanted -= FILL_CHUNK
            if percent < 100:
                return
            while True:  # the last partial pages
                out.write(b"\0" * 512)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def _group_pids(pgid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True, check=False
    ).stdout
    pids = []
    for line in out.splitlines():
        pid, group = line.split()
        if int(group) == pgid:
            pids.append(int(pid))
    return pids


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus`."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)
