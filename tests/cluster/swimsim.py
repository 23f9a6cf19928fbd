"""A deterministic many-agent SWIM simulation: real Detectors and Codecs over a MemoryNetwork."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.swim.detector import Detector, DetectorConfig
from agent.swim.memory_transport import MemoryNetwork, MemoryTransport
from agent.swim.messages import Codec, MessageRejected, Outgoing, derive_probe_key
from agent.swim.probe import ProbeReport

WALL_EPOCH = 1_700_000_000.0


@dataclass(frozen=True)
class Seen:
    """One report, with who made it."""

    observer: str
    report: ProbeReport


@dataclass
class SimNode:
    name: str
    detector: Detector
    codec: Codec
    transport: MemoryTransport
    rng: random.Random
    alive: bool = True
    due: float = float("-inf")
    rejected: dict[str, int] = field(default_factory=dict)


class SwimSim:
    """`n` agents named s00.. probing each other; time advances in `step_s` steps.

    Each step delivers the datagrams due, then ticks every live agent in name order. Per-link loss
    is drawn once from `loss` (a (low, high) range) and per-datagram delay from `delay_s`;
    `uniform_loss` instead gives every link the same loss without a per-link table (for
    thousands of agents). `sent` counts datagrams sent by message type.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        loss: tuple[float, float] = (0.0, 0.0),
        delay_s: tuple[float, float] = (0.001, 0.005),
        config: DetectorConfig | None = None,
        step_s: float = 0.01,
        uniform_loss: float | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or DetectorConfig()
        self.step_s = step_s
        self.steps = 0
        width = max(2, len(str(n - 1)))
        self.names = [f"s{i:0{width}d}" for i in range(n)]
        self.network = MemoryNetwork(
            random.Random(self.rng.random()), loss=uniform_loss or 0.0, delay_s=delay_s
        )
        key = derive_probe_key(f"sim-{seed}")
        members = frozenset(self.names)
        self.nodes: dict[str, SimNode] = {}
        for name in self.names:
            node = SimNode(
                name=name,
                detector=Detector(name, self.config, random.Random(self.rng.random())),
                codec=Codec(key, members),
                transport=self.network.transport(name),
                rng=random.Random(self.rng.random()),
            )
            node.detector.set_members(self.names)
            node.transport.on_receive(self._receiver(node))
            self.nodes[name] = node
        if uniform_loss is None:
            for src in self.names:
                for dst in self.names:
                    if src != dst:
                        self.network.set_loss(src, dst, self.rng.uniform(*loss))
        self.seen: list[Seen] = []
        self.sent: Counter[str] = Counter()

    @property
    def now(self) -> float:
        return self.steps * self.step_s

    def wall(self) -> float:
        return WALL_EPOCH + self.now

    def kill(self, name: str) -> None:
        """Crash `name`: it stops ticking, sending and receiving."""
        self.nodes[name].alive = False
        self.network.set_up(name, False)

    def confirm(self, observer: str, target: str) -> None:
        node = self.nodes[observer]
        self._send(node, node.detector.confirm(target, self.now))
        self._collect(node)

    def step(self) -> None:
        self.steps += 1
        now = self.now
        self.network.deliver_due(now)
        for name in self.names:
            node = self.nodes[name]
            if not node.alive or now < node.due:
                continue
            self._send(node, node.detector.tick(now))
            self._collect(node)

    def run_until(self, t: float) -> None:
        while self.now < t - 1e-9:
            self.step()

    def run_while(self, t: float, each: Callable[[], None]) -> None:
        while self.now < t - 1e-9:
            self.step()
            each()

    def unreachable(
        self, *, kind: str = "periodic", since: float = 0.0, until: float = float("inf")
    ) -> list[Seen]:
        return [
            s
            for s in self.seen
            if not s.report.reachable
            and s.report.evidence["kind"] == kind
            and since <= s.report.at <= until
        ]

    def _collect(self, node: SimNode) -> None:
        """Take the node's reports and note when it next needs a tick."""
        self.seen.extend(Seen(node.name, r) for r in node.detector.take_reports())
        node.due = node.detector.next_deadline()

    def _send(self, node: SimNode, outgoing: list[Outgoing]) -> None:
        for item in outgoing:
            self.sent[type(item.message).__name__] += 1
            data = node.codec.encode(item.message, self.wall(), node.rng.randbytes(12))
            node.transport.send(item.to, data)

    def _receiver(self, node: SimNode) -> Callable[[bytes], None]:
        def receive(data: bytes) -> None:
            try:
                message = node.codec.decode(data, self.wall())
            except MessageRejected as rejected:
                node.rejected[rejected.reason] = node.rejected.get(rejected.reason, 0) + 1
                return
            self._send(node, node.detector.receive(message, self.now))
            self._collect(node)

        return receive
