"""Virtual IPs follow the lease: claimed while this server serves a slot under a current lease,
released as soon as it does not, and on start-up released wherever they are not served."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface

import structlog

from agent.address_mover import AddressMover
from agent.clock import Clock
from agent.config import ClusterConfig
from agent.driver import InstanceStatus
from agent.lease import Lease

_log = structlog.get_logger("moonwatch.vip")


@dataclass(frozen=True, slots=True)
class Vip:
    address: IPv4Interface
    interface: str


def configured_vips(config: ClusterConfig, server: str) -> dict[str, Vip]:
    """Slot -> its virtual IP on `server` (its `vip_interface`, else the slot's interface)."""
    override = config.server(server).vip_interface
    return {
        slot.name: Vip(slot.vip.address, override or slot.vip.interface)
        for slot in config.slots
        if slot.vip is not None
    }


def leased_slots(
    leases: Mapping[str, Lease], instances: Mapping[str, InstanceStatus], now: float
) -> set[str]:
    """The slots this server may answer for at `now`: a lease that has not run out, for the
    epoch of an instance that runs here. Nothing else: a virtual IP is never claimed unfenced."""
    return {
        slot
        for slot, lease in leases.items()
        if lease.until > now
        and (status := instances.get(slot)) is not None
        and status.epoch == lease.epoch
        and status.running
        and not status.gave_up
    }


@dataclass(frozen=True, slots=True)
class VipPlan:
    claim: tuple[str, ...]
    release: tuple[str, ...]


def plan_vips(
    configured: Collection[str],
    serving: Collection[str],
    claimed: Collection[str],
    unsure: Collection[str],
) -> VipPlan:
    """Claim what is served and not yet claimed; release what is claimed, or may still be
    here (`unsure`: every VIP at start-up, or a release that failed), and is not served."""
    wanted = {s for s in serving if s in configured}
    return VipPlan(
        claim=tuple(sorted(wanted - set(claimed))),
        release=tuple(sorted((set(claimed) | set(unsure)) - wanted)),
    )


class VipKeeper:
    """Keeps this server's virtual IPs in line with its leases, every `interval_s`. A failed
    claim or release is logged, counted by `failed(slot)` and tried again next time."""

    def __init__(
        self,
        *,
        vips: Mapping[str, Vip],
        mover: AddressMover,
        serving: Callable[[], Collection[str]],
        clock: Clock,
        interval_s: float,
        failed: Callable[[str], None] = lambda _slot: None,
    ) -> None:
        self._vips = dict(vips)
        self._mover = mover
        self._serving = serving
        self._clock = clock
        self._interval_s = interval_s
        self._failed = failed
        self.claimed: set[str] = set()
        # Possibly on our interface though not claimed: at start-up an earlier run of this
        # server may have left any of them there.
        self.unsure: set[str] = set(self._vips)

    @property
    def slots(self) -> tuple[str, ...]:
        """The slots that have a virtual IP."""
        return tuple(self._vips)

    async def run(self, stopping: asyncio.Event) -> None:
        """Sync every `interval_s` until `stopping`, then release everything (shutdown)."""
        while not stopping.is_set():
            await self.sync()
            await self._clock.sleep(self._interval_s)
        await self.release_all()

    async def sync(self) -> VipPlan:
        """One pass: claim and release as `plan_vips` says; never raises."""
        try:
            serving = self._serving()
        except Exception:  # noqa: BLE001  # no answer means nothing is served
            _log.exception("vip_serving_unknown")
            serving = ()
        plan = plan_vips(self._vips, serving, self.claimed, self.unsure)
        for slot in plan.release:
            if await self._do(self._mover.release, slot):
                self.claimed.discard(slot)
                self.unsure.discard(slot)
        for slot in plan.claim:
            if await self._do(self._mover.claim, slot):
                self.claimed.add(slot)
                self.unsure.discard(slot)
            else:
                self.unsure.add(slot)  # it may have been added before the failure
        return plan

    async def release_all(self) -> None:
        """Release every VIP that may be here (at shutdown); failures are logged."""
        for slot in sorted(self.claimed | self.unsure):
            if await self._do(self._mover.release, slot):
                self.claimed.discard(slot)
                self.unsure.discard(slot)

    async def _do(
        self, action: Callable[[str, IPv4Interface, str], Awaitable[None]], slot: str
    ) -> bool:
        vip = self._vips[slot]
        name = getattr(action, "__name__", "change")
        try:
            await action(slot, vip.address, vip.interface)
        except Exception as exc:  # noqa: BLE001  # a failed move is retried on the next pass
            _log.warning(
                "vip_change_failed",
                action=name,
                slot=slot,
                address=str(vip.address),
                interface=vip.interface,
                error=str(exc),
            )
            self._failed(slot)
            return False
        return True
