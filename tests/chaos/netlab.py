"""A network lab: one network namespace per server on a bridge, and a crash-safe record of it.

Topology (every name carries the lab's random suffix; all of it is removed by `close`):

- `mw-lab-<sfx>-sw`: the switch, a bridge `br0` in its own namespace;
- one namespace per host (each server, and `mq` for the MQTT broker) with `eth0` on a veth
  into the bridge, at 10.214.<N>.<10+i>/24 (the broker: 10.214.<N>.2);
- a management link per host straight from the root namespace (`mgmt0`, a /30 out of
  10.215.<N>.0/24) with a /32 route to the host's data address: the test process observes
  and drives every host through it, whatever the faults do to the bridge side. Fault rules
  in the namespaces only ever match `eth0`.

A record in /run/moonwatch-netlab/<sfx>.json (namespaces, tmpfs mounts, processes with their
start times, the owning process) lets a later run remove what a crashed run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PREFIX = "mw-lab-"
NETNS_DIR = Path("/run/netns")
RECORD_DIR = Path("/run/moonwatch-netlab")
# Namespaces without a record are removed once older than any lab can last.
STALE_AFTER_S = 3 * 3600.0
BROKER = "mq"


class LabUnavailable(RuntimeError):
    """This machine cannot run the lab (not root, no `ip netns`, ...): skip, do not fail."""


def run(*args: str, timeout_s: float = 15.0, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def require_lab() -> None:
    """Raise LabUnavailable with the reason when namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise LabUnavailable("the network lab needs root (ip netns, veth, iptables)")
    for tool in ("ip", "nsenter", "iptables"):
        if not any(Path(d, tool).exists() for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")):
            raise LabUnavailable(f"`{tool}` is not installed")
    probe = f"{PREFIX}probe-{secrets.token_hex(3)}"
    try:
        run("ip", "netns", "add", probe)
    except RuntimeError as exc:
        raise LabUnavailable(f"cannot create network namespaces: {exc}") from exc
    run("ip", "netns", "del", probe, check=False)


@dataclass(frozen=True)
class Host:
    """One namespace on the bridge."""

    name: str
    index: int
    netns: str
    address: str  # on eth0, in the data network
    port: str  # its veth end on the switch

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)


@dataclass
class Record:
    """What a lab created, on disk so that a crashed run's leftovers can be removed."""

    suffix: str
    path: Path
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: float = field(default_factory=lambda: psutil.Process().create_time())
    namespaces: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    processes: list[dict[str, float]] = field(default_factory=list)

    def save(self) -> None:
        doc = {k: v for k, v in self.__dict__.items() if k != "path"}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.path)

    def add_process(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.processes.append({"pid": pid, "start": psutil.Process(pid).create_time()})
        self.save()


def kill_group(pid: int, start: float | None, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal the process group led by `pid`, only if `pid` is still the process we started
    (same start time) or, when it is gone, leave the group alone."""
    try:
        if start is not None and abs(psutil.Process(pid).create_time() - start) > 0.01:
            return
        os.killpg(pid, sig)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return


def _owner_alive(doc: dict[str, Any]) -> bool:
    try:
        started = psutil.Process(int(doc["owner_pid"])).create_time()
    except (psutil.Error, KeyError, ValueError, TypeError):
        return False
    return bool(abs(started - float(doc["owner_start"])) < 0.01)


def _remove_recorded(doc: dict[str, Any]) -> list[str]:
    for proc in doc.get("processes", []):
        kill_group(int(proc["pid"]), proc.get("start"))
    for mount in doc.get("mounts", []):
        run("umount", "-l", mount, check=False)
    for ns in doc.get("namespaces", []):
        run("ip", "netns", "del", ns, check=False)
    return list(doc.get("namespaces", []))


def remove_leftovers() -> list[str]:
    """Remove what crashed labs left: their processes, tmpfs mounts and namespaces (recorded
    ones whose owner is gone; unrecorded `mw-lab-` namespaces older than STALE_AFTER_S)."""
    removed: list[str] = []
    live: set[str] = set()
    for path in RECORD_DIR.glob("*.json") if RECORD_DIR.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _owner_alive(doc):
            live.update(doc.get("namespaces", []))
        else:
            removed += _remove_recorded(doc)
            path.unlink(missing_ok=True)
    for entry in NETNS_DIR.iterdir() if NETNS_DIR.is_dir() else []:
        if not entry.name.startswith(PREFIX) or entry.name in live:
            continue
        with contextlib.suppress(OSError):
            if time.time() - entry.stat().st_mtime > STALE_AFTER_S:
                run("ip", "netns", "del", entry.name, check=False)
                removed.append(entry.name)
    return removed


def _free_lab_number() -> int:
    used = run("ip", "-4", "route", "show") + run("ip", "-4", "addr", "show")
    for _ in range(100):
        n = secrets.randbelow(250) + 1
        if f"10.214.{n}." not in used and f"10.215.{n}." not in used:
            return n
    raise RuntimeError("no free 10.214.N.0/24 lab network")


class Topology:
    """The namespaces, the bridge and the links of one lab. Build with `create`; `close`
    removes everything (idempotent)."""

    def __init__(self, names: list[str]) -> None:
        self.suffix = secrets.token_hex(2)
        self.number = _free_lab_number()
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        self.record = Record(self.suffix, RECORD_DIR / f"{self.suffix}.json")
        self.switch = f"{PREFIX}{self.suffix}-sw"
        self.hosts: dict[str, Host] = {}
        for i, name in enumerate([*names, BROKER]):
            last = 2 if name == BROKER else 10 + i
            self.hosts[name] = Host(
                name,
                i,
                f"{PREFIX}{self.suffix}-{name}",
                f"10.214.{self.number}.{last}",
                f"mw{self.suffix}s{i}",
            )

    def ns_run(self, host: str, *args: str, check: bool = True) -> str:
        return run("nsenter", f"--net={self.hosts[host].netns_path}", *args, check=check)

    def create(self) -> None:
        self.record.save()
        try:
            self._add_netns(self.switch)
            run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for host in self.hosts.values():
                self._add_host(host)
        except BaseException:
            self.close()
            raise

    def _add_netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.record.namespaces.append(name)
        self.record.save()

    def _add_host(self, host: Host) -> None:
        ns, sw, n = host.netns, self.switch, self.number
        self._add_netns(ns)
        run("ip", "-n", sw, "link", "add", host.port, "type", "veth", "peer", "name", "eth0",
            "netns", ns)  # fmt: skip
        run("ip", "-n", sw, "link", "set", host.port, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        root_end = f"mw{self.suffix}m{host.index}"
        run("ip", "link", "add", root_end, "type", "veth", "peer", "name", "mgmt0", "netns", ns)
        root_ip, ns_ip = f"10.215.{n}.{4 * host.index + 1}", f"10.215.{n}.{4 * host.index + 2}"
        run("ip", "addr", "add", f"{root_ip}/30", "dev", root_end)
        run("ip", "link", "set", root_end, "up")
        run("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", "mgmt0")
        run("ip", "-n", ns, "link", "set", "mgmt0", "up")
        run("ip", "route", "add", f"{host.address}/32", "via", ns_ip, "dev", root_end)
        for chain, hook in (("MWLAB-IN", "INPUT"), ("MWLAB-OUT", "OUTPUT")):
            self.ns_run(host.name, "iptables", "-N", chain)
            self.ns_run(host.name, "iptables", "-A", hook, "-j", chain)

    def mount_tmpfs(self, path: Path, size_mb: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path))
        self.record.mounts.append(str(path))
        self.record.save()

    def set_port(self, host: str, up: bool) -> None:
        """The switch side of `host`'s cable: down cuts it off without a FIN or RST."""
        run("ip", "-n", self.switch, "link", "set", self.hosts[host].port, "up" if up else "down")

    def filter(self, host: str, *rule: str) -> None:
        """Append an iptables rule (`-A MWLAB-IN ...` or `-A MWLAB-OUT ...`) in `host`."""
        self.ns_run(host, "iptables", *rule)

    def flush_filters(self, host: str) -> None:
        for chain in ("MWLAB-IN", "MWLAB-OUT"):
            self.ns_run(host, "iptables", "-F", chain, check=False)

    def close(self) -> None:
        """Kill our processes, unmount our tmpfs, delete our namespaces; forget the record."""
        for proc in self.record.processes:
            kill_group(int(proc["pid"]), proc["start"])
        for mount in reversed(self.record.mounts):
            run("umount", "-l", mount, check=False)
        for ns in reversed(self.record.namespaces):
            run("ip", "netns", "del", ns, check=False)
        # A veth lives as long as either end: the root-side ends went with their peers.
        left = [ns for ns in self.record.namespaces if (NETNS_DIR / ns).exists()]
        if not left:
            self.record.path.unlink(missing_ok=True)
        self.record.namespaces = left
