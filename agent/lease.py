"""The owner's side of fencing: renew each owned slot's lease through Raft, tell the instance."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from agent.clock import Clock
from agent.driver import ServerDriver
from consensus.commands import RenewLease
from consensus.protocol import Consensus
from consensus.state import SlotRecord

_log = structlog.get_logger("moonwatch.lease")


@dataclass(frozen=True, slots=True)
class Lease:
    epoch: int
    until: float  # instant on Clock.monotonic after which the instance must not serve
    renewed_at: float


class LeaseKeeper:
    """Renews every slot this server owns, every `renew_s`, and at once for a new assignment.

    A lease is measured from the moment the renewal was *sent*, on this server's clock, so it
    ends before the leader (which counts from the later commit, stretched by the clock-drift
    bound) could hand the slot to anyone else. `guard_s` is kept back for requests in flight.
    """

    def __init__(
        self,
        *,
        server: str,
        consensus: Consensus,
        driver: ServerDriver,
        clock: Clock,
        lease_s: float,
        renew_s: float,
        guard_s: float = 0.1,
    ) -> None:
        self._server = server
        self._consensus = consensus
        self._driver = driver
        self._clock = clock
        self._lease_s = lease_s
        self._renew_s = renew_s
        self._guard_s = guard_s
        self._attempt = 0
        self.leases: dict[str, Lease] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            seen = self._consensus.snapshot().version
            due = self._due()
            if due:
                await asyncio.gather(*(self._renew(slot) for slot in due))
            self.push()
            # Sleep until the next renewal is due; a change of committed state (a new slot,
            # a new epoch) wakes us sooner.
            await self._consensus.wait_changed(seen, self._next_due_in())

    def _due(self) -> list[SlotRecord]:
        state = self._consensus.snapshot().state
        me = state.server(self._server)
        if me is None or me.state != "up":
            self.leases.clear()
            return []
        now = self._clock.monotonic()
        owned = [
            s for s in state.slots_owned_by(self._server) if s.state in ("assigned", "serving")
        ]
        held = {s.name for s in owned}
        for name in [n for n in self.leases if n not in held]:
            del self.leases[name]
        return [
            s
            for s in owned
            if (lease := self.leases.get(s.name)) is None
            or lease.epoch != s.epoch
            or now - lease.renewed_at >= self._renew_s
        ]

    async def _renew(self, slot: SlotRecord) -> None:
        self._attempt += 1
        sent = self._clock.monotonic()
        command = RenewLease(
            id=f"renew:{slot.name}:{slot.epoch}:{self._server}:{self._attempt}",
            at=self._clock.wall(),
            slot=slot.name,
            owner=self._server,
            epoch=slot.epoch,
        )
        result = await self._consensus.submit(command, timeout_s=self._renew_s)
        if result.ok:
            until = sent + self._lease_s - self._guard_s
            self.leases[slot.name] = Lease(slot.epoch, until, sent)
        else:
            _log.info("lease_not_renewed", slot=slot.name, epoch=slot.epoch, why=result.reason)

    def _next_due_in(self) -> float:
        if not self.leases:
            return self._renew_s
        now = self._clock.monotonic()
        soonest = min(lease.renewed_at for lease in self.leases.values()) + self._renew_s
        return min(self._renew_s, max(0.01, soonest - now))

    def push(self) -> None:
        """Hand every current lease to the driver (idempotent: it ignores non-extensions)."""
        now = self._clock.monotonic()
        for name, lease in self.leases.items():
            if lease.until > now:
                self._driver.grant_lease(name, lease.epoch, lease.until)
