"""An in-memory network for tests: seeded loss, partitions and delay on caller-driven time."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterable

from agent.swim.transport import Receiver


class MemoryNetwork:
    """Routes datagrams between MemoryTransports by name, deterministically for a given `rng`.

    Time is whatever the caller last passed to `deliver_due(now)`: a datagram sent then is due at
    `now + delay` and is handed over by the first later `deliver_due` call at or after that instant
    (never by the call that is running while it was sent). Loss is drawn when sending; blocked
    links and down endpoints drop at both ends of the flight.
    """

    def __init__(
        self,
        rng: random.Random,
        loss: float = 0.0,
        delay_s: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        if not 0.0 <= delay_s[0] <= delay_s[1]:
            raise ValueError("delay_s must be an ordered (low, high) pair of non-negative numbers")
        self._rng = rng
        self._default_loss = _probability(loss)
        self._delay_s = delay_s
        self._loss: dict[tuple[str, str], float] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._transports: dict[str, MemoryTransport] = {}
        self._up: set[str] = set()
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._sent = 0
        self._now = 0.0
        self.stats: Counter[str] = Counter()

    def transport(self, name: str) -> MemoryTransport:
        """The endpoint for `name` (created once, up from the start)."""
        if name not in self._transports:
            self._transports[name] = MemoryTransport(self, name)
            self._up.add(name)
        return self._transports[name]

    def set_up(self, name: str, up: bool) -> None:
        """Bring `name` up or down (a down endpoint neither sends nor receives: a crash)."""
        if up:
            self._up.add(name)
        else:
            self._up.discard(name)

    def set_loss(self, src: str, dst: str, probability: float) -> None:
        """Loss probability of the directed link src -> dst."""
        self._loss[(src, dst)] = _probability(probability)

    def block(self, src: str, dst: str) -> None:
        """Drop everything on the directed link src -> dst until unblocked."""
        self._blocked.add((src, dst))

    def unblock(self, src: str, dst: str) -> None:
        self._blocked.discard((src, dst))

    def isolate(self, name: str, peers: Iterable[str] | None = None) -> None:
        """Cut every link between `name` and `peers` (default: every known endpoint)."""
        for peer in sorted(self._transports if peers is None else peers):
            if peer != name:
                self.block(name, peer)
                self.block(peer, name)

    def heal(self) -> None:
        """Unblock every link."""
        self._blocked.clear()

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def send(self, src: str, dst: str, data: bytes) -> bool:
        """Queue one datagram; False when `dst` has never been seen (an unknown peer)."""
        if dst not in self._transports:
            return False
        if src not in self._up or dst not in self._up:
            self.stats["dropped_down"] += 1
        elif (src, dst) in self._blocked:
            self.stats["dropped_blocked"] += 1
        elif self._rng.random() < self._loss.get((src, dst), self._default_loss):
            self.stats["dropped_loss"] += 1
        else:
            low, high = self._delay_s
            delay = low if low == high else self._rng.uniform(low, high)
            self._sent += 1
            heapq.heappush(self._queue, (self._now + delay, self._sent, src, dst, data))
        return True

    def deliver_due(self, now: float) -> int:
        """Hand over every datagram due by `now`; returns how many were delivered."""
        self._now = max(self._now, now)
        due: list[tuple[float, int, str, str, bytes]] = []
        while self._queue and self._queue[0][0] <= now:
            due.append(heapq.heappop(self._queue))
        delivered = 0
        for _, _, src, dst, data in due:
            if (src, dst) in self._blocked:
                self.stats["dropped_blocked"] += 1
            elif dst not in self._up:
                self.stats["dropped_down"] += 1
            elif self._transports[dst].deliver(data):
                delivered += 1
        self.stats["delivered"] += delivered
        return delivered


class MemoryTransport:
    """One server's endpoint on a MemoryNetwork (a PeerTransport)."""

    def __init__(self, network: MemoryNetwork, name: str) -> None:
        self._network = network
        self.name = name
        self._receiver: Receiver | None = None
        self.errors: Counter[str] = Counter()

    async def start(self) -> None:
        self._network.set_up(self.name, True)

    def send(self, to: str, data: bytes) -> None:
        if not self._network.send(self.name, to, data):
            self.errors["unknown_peer"] += 1

    def on_receive(self, callback: Receiver) -> None:
        self._receiver = callback

    async def close(self) -> None:
        self._network.set_up(self.name, False)

    def deliver(self, data: bytes) -> bool:
        """Hand one datagram to the receiver; False (and counted) when nobody listens."""
        if self._receiver is None:
            self.errors["no_receiver"] += 1
            return False
        self._receiver(data)
        return True


def _probability(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError("a probability must be within 0..1")
    return p
