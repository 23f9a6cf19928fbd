"""Virtual IPs: the gratuitous ARP frame, the fake mover, and when an agent claims or releases
a slot's address (served under a current lease: claim; lease gone or start-up: release)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from agent.address_mover import (
    ARP_REPLY,
    ARP_REQUEST,
    AddressMoveError,
    MemoryAddressMover,
    garp_frame,
)
from agent.config import ConfigError, parse_config
from agent.driver import InstanceStatus
from agent.lease import Lease, LeaseKeeper
from agent.metrics import AgentMetrics
from agent.vips import Vip, VipKeeper, configured_vips, leased_slots, plan_vips
from agent.wiring import build_agent
from consensus.memory import MemoryConsensus, MemoryLog
from tests.support import StaticDriver, cluster_config

MAC = bytes.fromhex("02aabbccddee")
VIP1 = IPv4Interface("10.20.0.101/24")
VIP2 = IPv4Interface("10.20.0.102/24")


class HandClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def serving(slot: str, epoch: int) -> InstanceStatus:
    """An instance of ``slot`` running and serving here at ``epoch``."""
    return InstanceStatus(slot, epoch, "127.0.0.1:1", 1, True, True, True)


# ---------------------------------------------------------------- the frame


def test_garp_request_frame_bytes() -> None:
    frame = garp_frame(MAC, IPv4Address("10.20.0.101"))
    assert frame.hex() == (
        "ffffffffffff" "02aabbccddee" "0806"  # Ethernet: broadcast, from us, ARP
        "0001" "0800" "06" "04" "0001"  # Ethernet/IPv4, lengths 6/4, request
        "02aabbccddee" "0a140065"  # sender: our MAC, the VIP
        "000000000000" "0a140065"  # target: unknown MAC, the VIP again
    )  # fmt: skip
    assert len(frame) == 42


def test_garp_reply_frame_targets_broadcast() -> None:
    frame = garp_frame(MAC, IPv4Address("192.168.1.7"), ARP_REPLY)
    assert frame[20:22] == b"\x00\x02"
    assert frame[22:28] == MAC and frame[28:32] == bytes([192, 168, 1, 7])
    assert frame[32:38] == b"\xff" * 6 and frame[38:42] == bytes([192, 168, 1, 7])


@pytest.mark.parametrize(("mac", "op"), [(b"\x01" * 5, ARP_REQUEST), (MAC, 3)])
def test_garp_frame_rejects_bad_input(mac: bytes, op: int) -> None:
    with pytest.raises(ValueError):
        garp_frame(mac, IPv4Address("10.0.0.1"), op)


# ---------------------------------------------------------------- the fake


async def test_memory_mover_is_idempotent() -> None:
    mover = MemoryAddressMover()
    await mover.claim("s1", VIP1, "eth0")
    await mover.claim("s1", VIP1, "eth0")
    assert mover.held == {VIP1: "eth0"}
    await mover.release("s1", VIP1, "eth0")
    await mover.release("s1", VIP1, "eth0")
    assert mover.held == {}
    assert [c[0] for c in mover.calls] == ["claim", "claim", "release", "release"]


async def test_memory_mover_fails_on_request() -> None:
    mover = MemoryAddressMover(fail=1)
    with pytest.raises(AddressMoveError):
        await mover.claim("s1", VIP1, "eth0")
    await mover.claim("s1", VIP1, "eth0")
    assert mover.held == {VIP1: "eth0"}


# ---------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("serving", "claimed", "unsure", "claim", "release"),
    [
        ((), (), ("s1", "s2"), (), ("s1", "s2")),  # start-up: release everything not served
        (("s1",), (), ("s1", "s2"), ("s1",), ("s2",)),  # start-up while serving s1
        (("s1",), ("s1",), (), (), ()),  # steady
        ((), ("s1",), (), (), ("s1",)),  # lease lost
        (("s1", "s9"), (), (), ("s1",), ()),  # a slot without a VIP is ignored
    ],
)
def test_plan_vips(
    serving: tuple[str, ...],
    claimed: tuple[str, ...],
    unsure: tuple[str, ...],
    claim: tuple[str, ...],
    release: tuple[str, ...],
) -> None:
    plan = plan_vips(("s1", "s2"), serving, claimed, unsure)
    assert (plan.claim, plan.release) == (claim, release)


def test_only_a_current_lease_on_a_running_instance_counts() -> None:
    running = StaticDriver({s: serving(s, e) for s, e in {"s1": 2, "s2": 1, "s3": 1}.items()})
    leases = {
        "s1": Lease(epoch=2, until=10.0, renewed_at=8.0),  # current
        "s2": Lease(epoch=1, until=5.0, renewed_at=3.0),  # run out
        "s3": Lease(epoch=2, until=10.0, renewed_at=8.0),  # for another epoch
        "s4": Lease(epoch=1, until=10.0, renewed_at=8.0),  # no instance here
    }
    assert leased_slots(leases, running.instances(), now=6.0) == {"s1"}


def keeper(
    mover: MemoryAddressMover, serving: set[str], errors: list[str] | None = None
) -> VipKeeper:
    return VipKeeper(
        vips={"s1": Vip(VIP1, "eth0"), "s2": Vip(VIP2, "eth1")},
        mover=mover,
        serving=lambda: serving,
        clock=HandClock(),
        interval_s=0.1,
        failed=(errors if errors is not None else []).append,
    )


async def test_start_up_releases_every_vip_not_served_then_claims_on_serving() -> None:
    mover, serving = MemoryAddressMover(), set[str]()
    vips = keeper(mover, serving)
    await vips.sync()
    assert mover.calls == [("release", "s1", VIP1, "eth0"), ("release", "s2", VIP2, "eth1")]
    mover.calls.clear()
    await vips.sync()
    assert mover.calls == []  # nothing more to do
    serving.add("s1")
    await vips.sync()
    await vips.sync()
    assert mover.calls == [("claim", "s1", VIP1, "eth0")]
    assert mover.held == {VIP1: "eth0"}


async def test_lease_lost_releases() -> None:
    mover, serving = MemoryAddressMover(), {"s1"}
    vips = keeper(mover, serving)
    await vips.sync()
    serving.clear()
    await vips.sync()
    assert mover.held == {}
    assert mover.calls[-1] == ("release", "s1", VIP1, "eth0")


async def test_failures_are_counted_and_retried_next_pass() -> None:
    mover, serving, errors = MemoryAddressMover(), {"s1"}, list[str]()
    vips = keeper(mover, serving, errors)
    await vips.sync()  # start-up release of s2 and the claim of s1
    serving.clear()
    mover.fail = 1
    await vips.sync()  # the release fails
    assert errors == ["s1"] and mover.held == {VIP1: "eth0"}
    await vips.sync()  # and is tried again
    assert mover.held == {}
    serving.add("s2")
    mover.fail = 1
    await vips.sync()
    assert errors == ["s1", "s2"] and VIP2 not in mover.held
    await vips.sync()
    assert mover.held == {VIP2: "eth1"}


async def test_serving_that_cannot_be_read_releases() -> None:
    mover = MemoryAddressMover()

    def broken() -> set[str]:
        raise RuntimeError("no leases")

    vips = VipKeeper(
        vips={"s1": Vip(VIP1, "eth0")},
        mover=mover,
        serving=broken,
        clock=HandClock(),
        interval_s=0.1,
    )
    await vips.sync()
    assert mover.calls == [("release", "s1", VIP1, "eth0")]


async def test_run_releases_at_shutdown() -> None:
    mover, serving = MemoryAddressMover(), {"s1", "s2"}
    vips = keeper(mover, serving)
    stopping = asyncio.Event()
    task = asyncio.create_task(vips.run(stopping))
    for _ in range(50):
        await asyncio.sleep(0)
        if len(mover.held) == 2:
            break
    assert mover.held == {VIP1: "eth0", VIP2: "eth1"}
    stopping.set()
    await asyncio.wait_for(task, 1.0)
    assert mover.held == {}


# ---------------------------------------------------------------- configuration and wiring


def vip_config(tmp_path: Path, **server_extra: Any) -> dict[str, Any]:
    raw = cluster_config(tmp_path / "data")
    raw["slots"][0]["vip"] = {"address": "10.20.0.101/24", "interface": "eth0"}
    raw["slots"][1]["vip"] = {"address": "10.20.0.102/24", "interface": "eth0"}
    raw["servers"][1].update(server_extra)
    return raw


def test_configured_vips_take_the_server_interface_when_given(tmp_path: Path) -> None:
    config = parse_config(vip_config(tmp_path, vip_interface="ens3"), tmp_path, {})
    assert configured_vips(config, "a1") == {"s1": Vip(VIP1, "eth0"), "s2": Vip(VIP2, "eth0")}
    assert configured_vips(config, "a2") == {"s1": Vip(VIP1, "ens3"), "s2": Vip(VIP2, "ens3")}


async def test_wiring_claims_under_the_lease_and_releases_when_it_runs_out(
    tmp_path: Path,
) -> None:
    config = parse_config(vip_config(tmp_path), tmp_path, {})
    clock, driver, mover = HandClock(), StaticDriver(), MemoryAddressMover()
    consensus = MemoryConsensus(MemoryLog(voters=config.voters), "a1", clock)
    parts = build_agent(config, "a1", clock, consensus=consensus, driver=driver, mover=mover)
    bound = {getattr(run, "__qualname__", ""): run for run in parts.background}
    vips: VipKeeper = bound["VipKeeper.run"].__self__  # type: ignore[attr-defined]
    leases: LeaseKeeper = bound["LeaseKeeper.run"].__self__  # type: ignore[attr-defined]
    await vips.sync()  # start-up: neither is served here
    assert mover.calls == [("release", "s1", VIP1, "eth0"), ("release", "s2", VIP2, "eth0")]
    driver.running["s1"] = serving("s1", 1)
    await vips.sync()  # running, but no lease yet: never claimed unfenced
    assert mover.held == {}
    leases.leases["s1"] = Lease(epoch=1, until=clock.now + 1.9, renewed_at=clock.now)
    await vips.sync()
    assert mover.held == {VIP1: "eth0"}
    clock.now += 2.0  # no renewal: the lease runs out
    await vips.sync()
    assert mover.held == {}


def test_vip_errors_are_exported_per_slot() -> None:
    consensus = MemoryConsensus(MemoryLog(voters=("a1", "a2", "a3")), "a1", HandClock())
    metrics = AgentMetrics(consensus.snapshot)
    metrics.vip_errors.labels("s1").inc()
    assert metrics.registry.get_sample_value("moonwatch_vip_errors_total", {"slot": "s1"}) == 1


@pytest.mark.parametrize(
    ("vip", "expected"),
    [
        ({"address": "10.20.0.101", "interface": "eth0"}, "prefix length"),
        ({"address": "10.20.0.0/24", "interface": "eth0"}, "network or broadcast"),
        ({"address": "127.0.0.5/8", "interface": "eth0"}, "not a unicast address"),
        ({"address": "fd00::1/64", "interface": "eth0"}, "IPv4"),
        ({"address": "10.20.0.101/24", "interface": "eth0/1"}, "interface name"),
        ({"address": "10.20.0.101/24"}, "interface"),
        ({"address": "10.20.0.102/24", "interface": "eth0", "x": 1}, "x"),
    ],
)
def test_bad_vips_are_reported(tmp_path: Path, vip: dict[str, object], expected: str) -> None:
    raw = cluster_config(tmp_path / "data")
    raw["slots"][0]["vip"] = vip
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, tmp_path, {})
    assert any(line.startswith("slots[0].vip") and expected in line for line in caught.value.errors)


def test_a_vip_belongs_to_one_slot(tmp_path: Path) -> None:
    raw = vip_config(tmp_path)
    raw["slots"][1]["vip"] = {"address": "10.20.0.101/16", "interface": "eth1"}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, tmp_path, {})
    assert caught.value.errors == [
        "slots[1].vip.address: virtual IP 10.20.0.101 is also slots[0].vip ('s1')"
    ]
